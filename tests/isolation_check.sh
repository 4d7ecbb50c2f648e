#!/usr/bin/env bash
# tests/isolation_check.sh — make test leaves the development environment
# alone, and a mistyped SUITES= fails.
#
#   suites_typo_fails   SUITES="check_nonesuch" makes run-tests.sh fail, rather
#                       than run zero suites and pass;
#   dev_env_untouched   the dev vhost "/" (every queue and its message count,
#                       and a message planted in inventory.dlq) and the dev
#                       database "ordersuite" (stock, orders, invoices, mail,
#                       outboxes) are the same after a nested run of the suites
#                       that purge the DLQ and move stock (check_dlq,
#                       check_workers) as before it.
#
# Needs make up and make migrate (the dev environment, which make test makes).
# Run by scripts/run-tests.sh; prints a Check-style summary line.
source "$(dirname "$0")/../scripts/lib.sh"
load_env
set +e
BUILD=${ORDERSUITE_BIN:-$ROOT/build/bin}
BUILD=${BUILD%/bin}
BUILD=${BUILD#"$ROOT"/}
passed=0 failed=0
check() { # NAME OK DETAIL
    if [ "$2" = 1 ]; then
        passed=$((passed + 1))
        echo "ok   $1"
    else
        failed=$((failed + 1))
        echo "FAIL $1: $3"
    fi
}

# -------------------------------------------------------- suites_typo_fails
out=$(SUITES="check_nonesuch" bash "$ROOT/scripts/run-tests.sh" "$BUILD" 2>&1)
rc=$?
check suites_typo_fails "$([ $rc -ne 0 ] && echo 1)" "SUITES=check_nonesuch exited $rc: $(echo "$out" | tail -1)"

# -------------------------------------------------------- dev_env_untouched
DEV_DB="postgresql://ordersuite_owner:$PG_OWNER_PASSWORD@127.0.0.1:$PG_PORT/ordersuite"
MGMT="http://127.0.0.1:$MGMT_PORT/api"
# The password goes to curl on stdin, never on its command line.
mgmt() {
    curl -fsS -m 10 -K - -H 'content-type: application/json' "$@" \
        <<<"user = \"$RABBITMQ_ADMIN_USER:$RABBITMQ_ADMIN_PASSWORD\""
}
# Every queue of "/" with its message count (rabbitmqctl: live counts, not
# the management API's sampled ones).
dev_queues() { rmqctl -q list_queues -p / name messages 2>/dev/null | sort; }
dev_rows() {
    psql -X -qAt "$DEV_DB" -v ON_ERROR_STOP=1 <<'SQL'
SELECT 'stock ' || string_agg(sku || '=' || on_hand, ',' ORDER BY sku) FROM inventory.stock;
SELECT 'orders ' || count(*) || ' ' || coalesce(max(status), '') FROM orders.orders;
SELECT 'invoices ' || count(*) FROM billing.invoices;
SELECT 'mail ' || count(*) FROM email.messages;
SELECT 'reservations ' || count(*) FROM inventory.reservations;
SELECT 'outboxes ' || (SELECT count(*) FROM orders.outbox) || ' ' || (SELECT count(*) FROM inventory.outbox)
       || ' ' || (SELECT count(*) FROM billing.outbox) || ' ' || (SELECT count(*) FROM email.outbox);
SQL
}
dlq_depth() { dev_queues | awk '$1 == "inventory.dlq" { print $2 }'; }

depth0=$(dlq_depth)
if [ -z "$depth0" ] || ! dev_rows >/dev/null 2>&1; then
    check dev_env_untouched 0 "no dev environment to compare (inventory.dlq in / and the database ordersuite): run make migrate first"
else
    # Something to lose: a message in the dev inventory.dlq (check_dlq purges
    # that queue when it runs in the dev vhost).
    marker="isolation-$(cat /proc/sys/kernel/random/uuid)"
    mgmt -X POST "$MGMT/exchanges/%2F/amq.default/publish" -d "{\"routing_key\":\"inventory.dlq\",
        \"properties\":{\"delivery_mode\":2,\"message_id\":\"$marker\"},\"payload\":\"$marker\",
        \"payload_encoding\":\"string\"}" | grep -q '"routed":true' || echo "    could not plant $marker"
    marked() { [ "$(dlq_depth)" = $((depth0 + 1)) ]; }
    wait_for 10 "the marker" marked || echo "    $marker is not in inventory.dlq"
    q_before=$(dev_queues)
    rows_before=$(dev_rows)
    echo "    nested run: SUITES=\"check_dlq check_workers\""
    SUITES="check_dlq check_workers" bash "$ROOT/scripts/run-tests.sh" "$BUILD" 2>&1 |
        grep -E '^(---|[0-9]+%: Checks|checks:|error|failing)' | sed 's/^/      /'
    q_after=$(dev_queues)
    rows_after=$(dev_rows)
    detail=""
    [ "$q_before" = "$q_after" ] ||
        detail="dev vhost / changed: $(diff <(echo "$q_before") <(echo "$q_after") | grep '^[<>]' | tr '\n' ' ')"
    [ "$rows_before" = "$rows_after" ] ||
        detail="$detail dev database changed: $(diff <(echo "$rows_before") <(echo "$rows_after") | grep '^[<>]' | cut -c1-160 | tr '\n' ' ')"
    check dev_env_untouched "$([ -z "$detail" ] && echo 1)" "$detail"
    # Take the marker back out, but only when it is all the queue holds.
    if [ "$depth0" = 0 ] && [ "$(dlq_depth)" = 1 ] &&
        mgmt -X POST "$MGMT/queues/%2F/inventory.dlq/get" \
            -d '{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}' | grep -q "$marker"; then
        rmqctl -q purge_queue -p / inventory.dlq >/dev/null 2>&1
    fi
fi

echo "100%: Checks: $((passed + failed)), Failures: $failed, Errors: 0"
[ $failed -eq 0 ]
