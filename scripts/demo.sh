#!/usr/bin/env bash
# scripts/demo.sh BUILD — start the suite (the Makefile has built, started
# RabbitMQ + PostgreSQL and migrated), send a POS burst and three orders with
# three different outcomes, and show how they ended and where to look. It
# ends with the confirmed order to watch: its trace (build/bin/trace), a
# `curl -N` line for its status stream (the line it runs itself, so one that
# works pasted from the clone's root; the token stays in the header file),
# and the live order board's URL (tests/check_tls.c make_demo_runs_over_tls).
source "$(dirname "$0")/lib.sh"
load_env
BUILD=${1:-build}
BIN="$ROOT/$BUILD/bin"
API="http://127.0.0.1:${HTTP_PORT:-8080}"
AMQP=$(amqp_url pos)
# sql ROLE QUERY: QUERY on ROLE's schema, through ROLE's own URL on its
# cluster (make up PG2=... may put a schema on a second one). Built here, not
# exported: the services started below inherit this shell's environment.
sql() {
    local pw url
    pw="PG_$(up_name "$1")_PASSWORD"
    url=$(db_url "$1" "${!pw}" "$(role_pg_port "$1")")
    psql -X -q -t -A "$url" -c "$2"
}

# Paths as a reader pastes them, from the clone's root: the demo client's
# curl header file (make up writes it) and, for build/bin/trace, the logs.
# Under ORDERSUITE_INSTANCE (check_tls's TLS pair) they are in var/NAME/.
REL_VAR="var${ORDERSUITE_INSTANCE:+/$ORDERSUITE_INSTANCE}"
AUTH_HEADER="$REL_VAR/api-auth.header"
TRACE_CMD="${ORDERSUITE_INSTANCE:+ORDERSUITE_VAR=$REL_VAR }$BUILD/bin/trace"

# The mail catcher (tools/mailcatcher): email delivers to it over SMTP and
# its web page shows what arrived. services.sh stop (make demo-stop) ends it.
MAIL_SMTP_PORT=${MAIL_SMTP_PORT:-1025}
MAIL_WEB_PORT=${MAIL_WEB_PORT:-1080}
say "starting the mail catcher (SMTP 127.0.0.1:$MAIL_SMTP_PORT, web http://127.0.0.1:$MAIL_WEB_PORT/)"
"$ROOT/scripts/services.sh" mailcatcher "$MAIL_SMTP_PORT" "$MAIL_WEB_PORT" ||
    die "the mail catcher did not start; see $REL_VAR/log/mailcatcher.log"
export SMTP_URL="smtp://127.0.0.1:$MAIL_SMTP_PORT"

say "starting the services (logs in $REL_VAR/log/)"
BUILD=$BUILD "$ROOT/scripts/services.sh" start
wait_for 30 "order-api" curl -sf "$API/readyz" || die "order-api is not ready; see $REL_VAR/log/order-api.log"
# More order-apis (INSTANCES_order_api=N, README "Several instances"): each
# ready too, and listed at the end.
APIS=$API
for k in $(seq 2 "$(svc_instances order-api)"); do
    wait_for 30 "order-api@$k" svc_ready "order-api@$k" || die "order-api@$k is not ready; see $REL_VAR/log/order-api@$k.log"
    APIS="$APIS, http://127.0.0.1:$(svc_port "order-api@$k")"
done

pos_before=$(sql billing "SELECT count(*) FROM billing.invoices WHERE sale_id IS NOT NULL")
say "a POS burst: 20 sales from NEPAL-01, one with a receipt by mail (the till's log: $REL_VAR/log/pos.log)"
# The till logs a line per span on stderr: into its log beside the
# services', where build/bin/trace finds a sale's publish.
POS_LOG="$(svc_log_dir)/pos.log"
AMQP_URL=$AMQP CATALOG_URL="$API/products" POS_SPOOL_DIR="$VAR" "$BIN/pos" --count 20 --rate 40 --store NEPAL-01 2>>"$POS_LOG" ||
    die "the till could not send its sales; see $POS_LOG"
AMQP_URL=$AMQP CATALOG_URL="$API/products" POS_SPOOL_DIR="$VAR" "$BIN/pos" --count 1 --store NEPAL-01 --email walk-in@example.com 2>>"$POS_LOG" ||
    die "the till could not send its sale; see $POS_LOG"

place() { # NAME BODY: POST an order, print its id
    api_curl -sf -X POST "$API/orders" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: demo-$1-$(date +%s%N)" -d "$2" |
        sed -n 's/^{"id" : "\([0-9a-f-]*\)".*/\1/p'
}
say "three orders"
ok=$(place confirmed '{"customer_id":"ada","customer_email":"ada@example.com","currency":"EUR","items":[{"sku":"TEA-SENCHA","quantity":2},{"sku":"MUG-WHITE","quantity":1}]}')
rejected=$(place rejected '{"customer_id":"bob","customer_email":"bob@example.com","currency":"EUR","items":[{"sku":"TEA-MATCHA","quantity":1}]}')
# 70 mugs at 8.00 = 560.00: over billing's 500.00 credit limit, plenty in stock.
failed=$(place payment '{"customer_id":"cyd","customer_email":"cyd@example.com","currency":"EUR","items":[{"sku":"MUG-WHITE","quantity":70}]}')
[ -n "$ok" ] && [ -n "$rejected" ] && [ -n "$failed" ] || die "order-api refused an order; see $REL_VAR/log/order-api.log"

final() { # ID: the order's status once it stops moving
    sql orders "SELECT status FROM orders.orders WHERE id = '$1' AND status IN ('CONFIRMED','REJECTED','CANCELLED')"
}
settled() { [ -n "$(final "$ok")" ] && [ -n "$(final "$rejected")" ] && [ -n "$(final "$failed")" ]; }
wait_for 30 "the orders" settled || die "the orders did not settle in 30 s; see $REL_VAR/log/*.log"
pos_done() { [ "$(sql billing "SELECT count(*) - $pos_before >= 21 FROM billing.invoices WHERE sale_id IS NOT NULL")" = t ]; }
wait_for 15 "the POS invoices" pos_done || die "the POS sales were not all invoiced in 15 s; see $REL_VAR/log/billing.log"

echo
printf '%-38s %-22s %-10s %s\n' ORDER EXPECTED STATUS DETAIL
for pair in "$ok:confirmed" "$rejected:rejected (no stock)" "$failed:payment failure"; do
    id=${pair%%:*}
    printf '%-38s %-22s %-10s %s\n' "$id" "${pair#*:}" "$(final "$id")" \
        "$(sql orders "SELECT coalesce('invoice ' || invoice_number, reason, '') FROM orders.orders WHERE id = '$id'")"
done
echo
echo "timeline of $ok:"
sql orders "SELECT '  ' || status || '  ' || to_char(at, 'HH24:MI:SS.MS') FROM orders.order_timeline WHERE order_id = '$ok' ORDER BY at"
echo
echo "invoices: $(sql billing "SELECT count(*) FILTER (WHERE order_id IS NOT NULL) || ' for orders, ' || count(*) FILTER (WHERE sale_id IS NOT NULL) || ' for POS sales' FROM billing.invoices")"
mails_sent() { [ "$(sql email "SELECT count(*) FROM email.messages WHERE status = 'pending'")" = 0 ]; }
wait_for 15 "the mails" mails_sent || echo "    (some mail is still pending; see $REL_VAR/log/email.log)"
echo "emails:   $(sql email "SELECT string_agg(kind || ' ' || n, ', ' ORDER BY kind) FROM (SELECT kind, count(*) n FROM email.messages GROUP BY kind) k")"
echo "          $(curl -sf "http://127.0.0.1:$MAIL_WEB_PORT/api/messages" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') in the mail catcher"
# Request/reply: order-api asks inventory over the broker (README "Request/reply").
echo "availability (asked of inventory over the broker): $(api_curl -s "$API/products/TEA-SENCHA/availability")"
pending=0
for r in orders inventory billing email; do
    pending=$((pending + $(sql "$r" "SELECT count(*) FROM $r.outbox")))
done
echo "outboxes pending: $pending"
cat <<EOT

Where to look
  Live order board        $API/   (paste the demo client's token: the part after "Bearer " in $AUTH_HEADER)
  RabbitMQ management UI  http://localhost:$MGMT_PORT  user $RABBITMQ_ADMIN_USER, password: grep RABBITMQ_ADMIN_PASSWORD $REL_VAR/ordersuite.env
  Order API               $APIS   (OpenAPI: docs/openapi.yaml)
  Mail catcher (the mails) http://127.0.0.1:$MAIL_WEB_PORT/   (JSON: /api/messages; SMTP on 127.0.0.1:$MAIL_SMTP_PORT)
  Logs                    $REL_VAR/log/{order-api,inventory,billing,email,pos}.log, NAME@K.log of instance K   (one order's waterfall: $TRACE_CMD ID)

Try (the API wants the demo client's bearer token, as a curl header file in $AUTH_HEADER; the catalog is public)
  curl -s $API/products
  curl -s -X POST $API/orders -H @$AUTH_HEADER -H 'Content-Type: application/json' \\
       -H 'Idempotency-Key: my-key-1' \\
       -d '{"customer_id":"me","customer_email":"me@example.com","currency":"EUR","items":[{"sku":"MUG-WHITE","quantity":2}]}'
  curl -s -H @$AUTH_HEADER $API/orders/$ok
  curl -s -H @$AUTH_HEADER $API/products/TEA-SENCHA/availability   (inventory answers, or 504)
  curl -s -H @$AUTH_HEADER '$API/orders?status=CONFIRMED&limit=5'
  More clients: scripts/api-token.sh NAME prints a new token (restart order-api to use it)
  AMQP_URL=... $BUILD/bin/pos --store NEPAL-01        (a till; see README)

Watch order $ok ($(final "$ok"), the one placed to be confirmed)
EOT
# Its way through the suite, from the spans in the logs (docs/TRACING.md).
echo "  its trace: $TRACE_CMD $ok"
ORDERSUITE_VAR="$VAR" "$BIN/trace" "$ok" | sed 's/^/    /' || echo "    (no spans logged for it)"
# Its status changes as Server-Sent Events (README "Live order status"),
# fetched with the very line printed, so the line shown is one that works
# when pasted: the stream ends by itself after the final status.
stream_line="curl -sN -H @$AUTH_HEADER $API/orders/$ok/events"
echo "  its live status stream (Server-Sent Events; ends at its final status):"
echo "  $stream_line"
# curl's own status decides (a pipeline's is sed's, which never fails).
# shellcheck disable=SC2086 # the line as printed, split into words as a shell would
if stream=$(cd "$ROOT" && $stream_line --max-time 10); then
    printf '%s\n' "$stream" | grep -v '^$' | sed 's/^/    /'
else
    echo "    (no stream; see $REL_VAR/log/order-api.log)"
fi
echo "  on the live order board: $API/   (the token: the part after \"Bearer \" in $AUTH_HEADER)"
echo
echo "Stop everything with: make down"
