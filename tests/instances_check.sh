#!/usr/bin/env bash
# tests/instances_check.sh — several instances of a service (README "Several
# instances of a service"), started as make demo starts them and driven by
# the real executables, in the tests' environment:
#
#   on_a_cluster_the_instances_start_at_different_nodes
#       the AMQP_URL services.sh gives billing, billing@2 and billing@3 on a
#       cluster of three lists the same three nodes from a different first;
#   every_instance_starts_on_its_own_ports
#       INSTANCES_billing=3 INSTANCES_order_api=2 scripts/services.sh start:
#       `services.sh status` lists billing, billing@2, billing@3, order-api,
#       order-api@2 (and inventory, email), each live and ready on its own
#       port (instance K: + 100 × (K − 1));
#   billing_queue_has_three_consumers
#       the three billings compete on the one quorum queue "billing";
#   each_billing_instance_handled_some
#       a burst of orders and POS sales (loadgen, as fast as answered):
#       every billing instance consumed some of its inventory.reserved and
#       sale.completed (read from each instance's own /metrics), so the
#       work was really shared, not taken by one;
#   each_order_api_took_requests
#       loadgen -u API1,API2: both order-apis priced orders of the burst
#       (ordersuite_price_cache_{hits,misses}_total on each one's
#       operations port) and each order the burst got back was placed by
#       exactly one of them (its "placed" log line: none twice, none
#       missing);
#   one_effect_per_message
#       the billings' deliveries of the burst add up to its invoices (one
#       per order and per sale) and no instance saw a message again, retried
#       or dead-lettered one;
#   ledger_clean
#       tools/ledger on the burst: lost=0 duplicated=0 stuck=0;
#   the_same_key_on_the_other_api_is_the_same_order
#       a POST to order-api, then the same Idempotency-Key and body to
#       order-api@2: 201, then 200 with the same order; another body 409;
#       one order stored;
#   kill_one_instance_leaves_the_others
#       services.sh kill billing@2 ends that one alone: billing and
#       billing@3 stay up and its queue goes down to two consumers;
#   stop_ends_every_instance
#       services.sh stop (no names, INSTANCES_ unset) ends every instance
#       and leaves no pid file.
#
# Needs make up and make migrate; run by scripts/run-tests.sh (after
# use_test_env); prints a Check-style summary line.
source "$(dirname "$0")/../scripts/lib.sh"
load_env
export_suite_urls
set +e
BUILD=${ORDERSUITE_BIN:-$ROOT/build/bin}
BUILD=${BUILD%/bin}
export BUILD=${BUILD#"$ROOT"/}
BIN="$ROOT/$BUILD/bin"
RUN=$(run_dir)
WORK="$VAR/log/tests/instances-$$"
mkdir -p "$WORK"
TAG=inst-$$
SVC=("$ROOT/scripts/services.sh")
passed=0 failed=0
check() { # NAME OK DETAIL
    if [ "$2" = 1 ]; then
        passed=$((passed + 1))
        echo "ok   $1${3:+ ($3)}"
    else
        failed=$((failed + 1))
        echo "FAIL $1: $3"
    fi
}
# Whatever happens, no instance of this check is left running.
trap 'INSTANCES_billing="" INSTANCES_order_api="" "${SVC[@]}" stop >/dev/null 2>&1' EXIT

# metric BASE "SERIES...": the sum of those series' samples on BASE/metrics
# (a series is a metric's name with the start of its labels, if any; a
# space between two).
metric() {
    curl -fsS -m 5 "$1/metrics" 2>/dev/null | awk -v list="$2" '
        BEGIN { n = split(list, want, " ") }
        { for (i = 1; i <= n; i++) if (index($0, want[i]) == 1) s += $NF }
        END { printf "%d\n", s }'
}
CONSUMED='ordersuite_messages_consumed_total{service="billing",routing_key="inventory.reserved"} ordersuite_messages_consumed_total{service="billing",routing_key="sale.completed"}'
AGAIN='ordersuite_messages_duplicate_total{service="billing" ordersuite_messages_retried_total{service="billing" ordersuite_messages_dead_lettered_total{service="billing"'
PRICED='ordersuite_price_cache_hits_total ordersuite_price_cache_misses_total'
billing_base() { echo "http://127.0.0.1:$(svc_port "$1")"; }
api_ops_base() { echo "http://127.0.0.1:$(svc_ops_port "$1")"; }
queue_consumers() { # QUEUE: its consumers, from the management API (up to 5 s old)
    mgmt_curl -fsS -m 5 "http://127.0.0.1:$MGMT_PORT/api/queues/$(vhost_api)/$1?columns=consumers" |
        python3 -c 'import json, sys; print(int(json.load(sys.stdin)["consumers"]))' 2>/dev/null
}
consumers_are() { [ "$(queue_consumers "$1")" = "$2" ]; }
BILLINGS=(billing billing@2 billing@3)
APIS=(order-api order-api@2)

# ------------------------------------------ on_a_cluster_the_instances_start_at_different_nodes
# What services.sh gives each instance as AMQP_URL on a cluster of three
# (lib.sh inst_amqp_url; worked out, no cluster needed): the same three
# nodes, each instance's list starting at another one.
firsts= ok=1
for s in "${BILLINGS[@]}"; do
    url=$(ORDERSUITE_NODES=3 inst_amqp_url "$s")
    set=$(tr ',' '\n' <<<"$url" | sort | tr '\n' ' ')
    [ -z "${set0:-}" ] && set0=$set
    [ "$set" = "$set0" ] && [ "$(tr ',' '\n' <<<"$url" | wc -l)" = 3 ] || ok=0
    firsts="$firsts ${url%%,*}"
done
firsts=$(sed -E 's#amqp://[^@]*@##g' <<<"$firsts")
[ "$(tr ' ' '\n' <<<"$firsts" | sed '/^$/d' | sort -u | wc -l)" = 3 ] || ok=0
check on_a_cluster_the_instances_start_at_different_nodes "$ok" "first nodes of billing, billing@2, billing@3:$firsts"

# ------------------------------------------ every_instance_starts_on_its_own_ports
# From nothing: what an earlier run of the tests' environment left is stopped.
"${SVC[@]}" stop >/dev/null 2>&1
INSTANCES_billing=3 INSTANCES_order_api=2 "${SVC[@]}" start >"$WORK/start.log" 2>&1 ||
    check services_start 0 "$(tail -3 "$WORK/start.log")"
status=$("${SVC[@]}" status)
echo "$status" | sed 's/^/     /'
ok=1 why=
for s in inventory "${BILLINGS[@]}" email "${APIS[@]}"; do
    line=$(echo "$status" | awk -v s="$s" '$1 == s')
    port=$(svc_port "$s")
    if [ -z "$line" ] || [[ "$line" != *" port $port"* ]]; then
        ok=0 why="$why $s not listed with port $port;"
    elif ! wait_for 60 "$s ready" svc_ready "$s"; then
        ok=0 why="$why $s not ready on $port within 60 s (see $(svc_log_dir)/$s.log);"
    fi
done
[ "$(echo "$status" | grep -c ' up ')" = 7 ] || { ok=0 why="$why $(echo "$status" | grep -c ' up ') instances listed, want 7;"; }
check every_instance_starts_on_its_own_ports "$ok" "$why"

# ------------------------------------------ billing_queue_has_three_consumers
wait_for 30 "three consumers on billing" consumers_are billing 3
n=$(queue_consumers billing)
check billing_queue_has_three_consumers "$([ "$n" = 3 ] && echo 1)" "billing has ${n:-?} consumer(s), want 3"

# ------------------------------------------ the burst
declare -A consumed0 consumed again0 priced0
for s in "${BILLINGS[@]}"; do
    consumed0[$s]=$(metric "$(billing_base "$s")" "$CONSUMED")
    again0[$s]=$(metric "$(billing_base "$s")" "$AGAIN")
done
for s in "${APIS[@]}"; do priced0[$s]=$(metric "$(api_ops_base "$s")" "$PRICED"); done
restock 100000 "instances_check: restock"
API_TOKEN=$API_DEMO_TOKEN DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$POS_AMQP_URL \
    "$BIN/loadgen" -u "http://127.0.0.1:$(svc_port order-api),http://127.0.0.1:$(svc_port order-api@2)" \
    -t "$TAG" -c 8 -n 150 --sales 60 --retry 60 --skus "$LOAD_SKUS" -o "$WORK/$TAG.ids" \
    >"$WORK/$TAG.load" 2>&1
lrc=$?
sed 's/^/     /' "$WORK/$TAG.load"
[ $lrc = 0 ] || check loadgen_burst 0 "loadgen exited $lrc"
DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL \
    "$BIN/ledger" --tag "$TAG" --ids "$WORK/$TAG.ids" --wait 120 >"$WORK/$TAG.ledger" 2>&1
ledger_rc=$?

# ------------------------------------------ each_billing_instance_handled_some
ok=1 spread=
for s in "${BILLINGS[@]}"; do
    consumed[$s]=$(($(metric "$(billing_base "$s")" "$CONSUMED") - consumed0[$s]))
    spread="$spread $s ${consumed[$s]},"
    [ "${consumed[$s]}" -gt 0 ] || ok=0
done
check each_billing_instance_handled_some "$ok" "consumed of the burst:${spread%,}"

# ------------------------------------------ each_order_api_took_requests
ok=1 spread=
placed_total=0
awk '$1 == "O" { print $3 }' "$WORK/$TAG.ids" | sort >"$WORK/$TAG.accepted"
for s in "${APIS[@]}"; do
    d=$(($(metric "$(api_ops_base "$s")" "$PRICED") - priced0[$s]))
    # The ids of the burst this instance logged as placed.
    grep -oE '"msg":"order [0-9a-f-]{36} placed' "$(svc_log_dir)/$s.log" | grep -oE '[0-9a-f-]{36}' |
        sort | comm -12 - "$WORK/$TAG.accepted" >"$WORK/$TAG.placed-$s"
    p=$(wc -l <"$WORK/$TAG.placed-$s")
    placed_total=$((placed_total + p))
    spread="$spread $s priced $d and placed $p,"
    [ "$d" -gt 0 ] && [ "$p" -gt 0 ] || ok=0
done
accepted=$(wc -l <"$WORK/$TAG.accepted")
twice=$(sort "$WORK/$TAG.placed-"* | uniq -d | wc -l)
[ "$placed_total" = "$accepted" ] && [ "$twice" = 0 ] && [ "$accepted" -gt 0 ] || ok=0
check each_order_api_took_requests "$ok" "${spread%,}; $accepted accepted, $placed_total placed, $twice by both"

# ------------------------------------------ one_effect_per_message
# Each inventory.reserved and sale.completed of the burst was handled by one
# billing alone, once: the instances' deliveries add up to the invoices (one
# per order and per sale: the ledger checks that too), and none of them saw
# a message again (an inbox hit), retried or dead-lettered one. The burst
# is the only traffic of the tests' vhost meanwhile, and nothing fails in
# it, so every delivery is a first one.
# Each schema through its own service's URL (with make up PG2=... they may
# be on two clusters): the burst's order ids from orders, then their
# invoices and the sales' from billing.
sales="{$(awk '$1 == "S" { print $2 }' "$WORK/$TAG.ids" | paste -sd,)}"
orders=$(psql -qAt "$ORDERS_OWNER_DATABASE_URL" -v tag="$TAG" <<'SQL'
SELECT coalesce(array_agg(id), '{}') FROM orders.orders WHERE customer_id = :'tag';
SQL
)
invoices=$(psql -qAt "$BILLING_OWNER_DATABASE_URL" -v orders="$orders" -v sales="$sales" <<'SQL'
SELECT (SELECT count(*) FROM billing.invoices WHERE order_id = ANY(:'orders'::uuid[]))
     + (SELECT count(*) FROM billing.invoices WHERE sale_id = ANY(:'sales'::uuid[]));
SQL
)
sum=0 again=0
for s in "${BILLINGS[@]}"; do
    sum=$((sum + consumed[$s]))
    again=$((again + $(metric "$(billing_base "$s")" "$AGAIN") - again0[$s]))
done
check one_effect_per_message "$([ "$sum" = "${invoices:-x}" ] && [ "$again" = 0 ] && [ "$sum" -gt 0 ] && echo 1)" \
    "$sum deliveries to the billings, ${invoices:-?} invoices of the burst; $again seen again, retried or dead-lettered"

# ------------------------------------------ ledger_clean
sed 's/^/     /' "$WORK/$TAG.ledger" | tail -4
check ledger_clean "$([ $ledger_rc = 0 ] && echo 1)" "$(grep '^RESULT' "$WORK/$TAG.ledger")"

# ------------------------------------------ the_same_key_on_the_other_api_is_the_same_order
# A client that retries on another instance (loadgen's failover, a load
# balancer's retry) with the same Idempotency-Key and body gets the order
# the first one made (200), with another body 409: the keys are in the one
# database both use.
post() { # API KEY QUANTITY: "status id" of a POST /orders
    api_curl -s -m 10 -w '\n%{http_code}' -X POST "$1/orders" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: $2" -d "{\"customer_id\":\"$TAG-key\",\"customer_email\":\"$TAG@example.com\",
        \"currency\":\"EUR\",\"items\":[{\"sku\":\"${LOAD_SKUS%%,*}\",\"quantity\":$3}]}" |
        python3 -c 'import json, sys
lines = sys.stdin.read().rsplit("\n", 1)
try:
    oid = json.loads(lines[0]).get("id", "-")
except ValueError:
    oid = "-"
print(lines[-1], oid)'
}
key="$TAG-retried-elsewhere"
a=$(post "http://127.0.0.1:$(svc_port order-api)" "$key" 1)
b=$(post "http://127.0.0.1:$(svc_port order-api@2)" "$key" 1)
c=$(post "http://127.0.0.1:$(svc_port order-api@2)" "$key" 2)
n=$(psql -qAt "$OWNER_DATABASE_URL" -v tag="$TAG-key" <<<"SELECT count(*) FROM orders.orders WHERE customer_id = :'tag';")
check the_same_key_on_the_other_api_is_the_same_order \
    "$([ "${a%% *}" = 201 ] && [ "${b%% *}" = 200 ] && [ "${a#* }" = "${b#* }" ] && [ "${c%% *}" = 409 ] && [ "$n" = 1 ] && echo 1)" \
    "order-api: $a; order-api@2, same key and body: $b; another body: $c; $n order(s) stored"

# ------------------------------------------ kill_one_instance_leaves_the_others
"${SVC[@]}" kill billing@2 >/dev/null
status=$("${SVC[@]}" status billing)
gone() { [ "$(queue_consumers billing)" = 2 ]; }
ok=1
[ -f "$RUN/billing@2.pid" ] && ok=0
echo "$status" | grep -q '^billing@2 ' && ok=0
svc_ready billing && svc_ready billing@3 || ok=0
wait_for 30 "billing down to two consumers" gone || ok=0
check kill_one_instance_leaves_the_others "$ok" "after kill billing@2: $(echo "$status" | tr '\n' ';') consumers $(queue_consumers billing)"

# ------------------------------------------ stop_ends_every_instance
pids=$(cat "$RUN"/*.pid 2>/dev/null)
INSTANCES_billing="" INSTANCES_order_api="" "${SVC[@]}" stop >/dev/null 2>&1
left=
for p in $pids; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
files=$(cd "$RUN" 2>/dev/null && ls ./*.pid 2>/dev/null | tr '\n' ' ')
check stop_ends_every_instance "$([ -z "$left" ] && [ -z "$files" ] && echo 1)" \
    "still running:${left:- none}; pid files left: ${files:-none}"

echo "100%: Checks: $((passed + failed)), Failures: $failed, Errors: 0"
[ $failed -eq 0 ]
