#!/usr/bin/env bash
# scripts/chaos.sh [--short] [SCENARIO...] — make chaos: faults under load,
# the ledger checked after each (docs/RELIABILITY.md).
#
#   0 the ledger catches a loss, a duplicate, stock drift, a stuck mail and a
#     parked outbox row made by hand, and ignores another run's mail and rows
#   1 kill -9 each worker in turn (stopped first, so it holds deliveries)
#   2 a crash between a handler's COMMIT and its ack (CRASH_AFTER_COMMIT)
#   3 kill -9 order-api mid-load; clients retry with the same Idempotency-Key
#   4 kill -9 the RabbitMQ node and start it again
#   5 PostgreSQL stopped with -m immediate: the API answers 503, then recovers
#   6 a poison message and an unknown schema version; a fixed message replayed
#   7 a worker stalled past the heartbeat
#   rowlock  an operator holds a stock row in an open transaction: inventory's
#      lock wait times out (DB_LOCK_TIMEOUT_MS) and the message is retried
#   mail  the SMTP server (tools/mailcatcher) down under load (until the
#      mailer has failed MAIL_DOWN_TRIES (10) tries), then back;
#      then a permanent refusal (550): each mail at the server once, the
#      refused one in email.dlq with the reply; email runs with the
#      scenario's SMTP_URL, and is restarted after it with the one it had
#   cluster, cluster2down, partition  a RabbitMQ cluster's faults
#      (scripts/chaos-cluster.sh says what each does): kill -9 of the node
#      leading the most work queues, two of three nodes stopped then one
#      back, one node's distribution cut off by iptables. They need a
#      cluster of three: plain `make chaos` (no scenario named) on a single
#      node runs them last on a cluster instance of their own
#      (tests/cluster-instance.sh: var/cluster-check/, ports 5832 and
#      5872/5882/5892, services +23000), brought up and stopped by it, and
#      prints their rows in the same table; on a cluster (make up NODES=3)
#      they run there, in the default list.
#   unroutable  inventory.released (one binding: order-api's queue) unbound
#      under load: the relay does not back off, the other orders complete
#      while the releases are refused, then these are parked; re-bound and
#      `dlq outbox replay`, each arrives once
#   saga  billing stopped past the saga's timeout (ORDER_TIMEOUT_S) under
#      load: the orders waiting for it expire and are compensated, and
#      billing's return changes none of them
#   instances  three billings and two order-apis (services.sh's
#      INSTANCES_), loadgen spread over both APIs: kill -9 billing@2 while it
#      holds deliveries and order-api@2 mid-burst; the others take over
#      (redeliveries, loadgen's failovers with the same keys), and the
#      recovery is the time until orders placed after the kills complete at
#      the load's rate again
#
# Needs make up + make migrate; starts the services if they are not running
# (and stops them again at the end if it started them). --short runs shorter
# loads and one round of scenario 1 (make test runs --short 0 1 4 6 unroutable saga instances). Prints a
# table and a Check-style summary line; exits non-zero if a scenario failed.
# A scenario that dies half-way (set -e, INT, TERM) is a FAIL row: the EXIT
# trap prints the table, stops what was started and heals a partition.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/chaos-cluster.sh"
load_env
export_suite_urls
set -o pipefail
# Each service's tables through that service's own URLs (<ROLE>_DATABASE_URL
# to read, <ROLE>_OWNER_DATABASE_URL to change them as the owner): with make up
# PG2=... a schema lives on a second cluster, so no statement here joins two
# services' schemas. tag_orders TAG: the ids of customer TAG's orders, as an
# array literal, for a statement on another schema.
tag_orders() {
    psql -qAt "$ORDERS_DATABASE_URL" -c "SELECT coalesce(array_agg(id), '{}') FROM orders.orders WHERE customer_id = '$1'"
}

SHORT=0
if [ "${1:-}" = --short ]; then
    SHORT=1
    shift
fi
SCENARIOS=("$@")
CLUSTER_SCENARIOS=(cluster cluster2down partition)
CLUSTER_APART=0 # the cluster scenarios on tests/cluster-instance.sh, after the others
if [ ${#SCENARIOS[@]} = 0 ]; then
    SCENARIOS=(0 1 2 3 4 5 6 7 rowlock mail unroutable saga instances)
    if [ "$(rmq_nodes)" -ge 3 ]; then
        SCENARIOS+=("${CLUSTER_SCENARIOS[@]}")
    else
        CLUSTER_APART=1
    fi
fi
export BUILD=${BUILD:-build}
BIN="$ROOT/$BUILD/bin"
RUNID=$(date -u +%H%M%S)-$$
WORK="$VAR/chaos/$RUNID"
mkdir -p "$WORK"
WORKERS=(inventory billing email)
ROWS=()
API="http://127.0.0.1:$(svc_port order-api)"
passed=0 failed=0

port_of() { svc_port "$1"; }
pid_of() { cat "$(run_dir)/$1.pid" 2>/dev/null; }
svc() { "$ROOT/scripts/services.sh" "$@" >>"$WORK/services.log" 2>&1; }
# The SMTP_URL the running email process has ("" when it only records mail),
# from its environment: restarts keep it (a demo's email keeps its catcher).
email_smtp_url() {
    local pid
    pid=$(pid_of email) && [ -n "$pid" ] || return 0
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^SMTP_URL=//p'
}
FOUND_SMTP_URL= # email's SMTP_URL when chaos started
restart() { # NAME [ENV=V...]: start it (with extra environment) and wait until ready
    local name=$1
    shift
    if [ "$name" = email ] && [ -n "$FOUND_SMTP_URL" ] && [[ " $* " != *" SMTP_URL="* ]]; then
        set -- SMTP_URL="$FOUND_SMTP_URL" "$@"
    fi
    # Exported, not env's arguments: SMTP_URL may hold the mail server's
    # password, and every user can read every process's argv.
    (
        for kv in "$@"; do export "${kv?}"; done
        exec "$ROOT/scripts/services.sh" start "$name"
    ) >>"$WORK/services.log" 2>&1
    wait_for 60 "$name ready" svc_ready "$name"
}
metrics_page() { # NAME: its /metrics (order-api's on its operations port); nothing if down
    local port
    port=$(svc_ops_port "$1")
    [ -n "$port" ] || port=$(port_of "$1")
    curl -fsS -m 2 "http://127.0.0.1:$port/metrics" 2>/dev/null || true
}
metric() { # NAME METRIC: the sum of that counter on the service's /metrics (0 if down)
    metrics_page "$1" | awk -v m="$2" 'index($0, m "{") == 1 { s += $NF } END { printf "%d\n", s }'
}
now_ms() { date +%s%3N; }
elapsed_s() { awk -v a="$(now_ms)" -v b="$1" 'BEGIN { printf "%.1f\n", (a - b) / 1000 }'; }

load_start() { # TAG RATE SECONDS [loadgen args]: orders (and sales) in the background
    local tag=$1 rate=$2 secs=$3
    shift 3
    # LOAD_URLS (default: order-api's) lists the order-apis loadgen spreads over.
    API_TOKEN=$API_DEMO_TOKEN DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$POS_AMQP_URL "$BIN/loadgen" -u "${LOAD_URLS:-$API}" -t "$tag" -c 8 --skus "$LOAD_SKUS" \
        -r "$rate" -d "$secs" --retry 90 -o "$WORK/$tag.ids" "$@" >"$WORK/$tag.load" 2>&1 &
    LOAD_PID=$!
}
# load_flowing [N]: waits (bounded) until N (5) orders of the load ($TAG) are
# CONFIRMED, so a fault hits a load that runs end to end rather than one still
# starting.
load_confirmed_ge() {
    [ "$(psql -qAt "$ORDERS_OWNER_DATABASE_URL" -c "SELECT count(*) FROM orders.orders
        WHERE customer_id = '$TAG' AND status = 'CONFIRMED'")" -ge "$1" ]
}
load_flowing() {
    local n=${1:-5}
    wait_for 30 "the load's first $n orders confirmed" load_confirmed_ge "$n" ||
        { echo "    FAIL: not $n orders of the load confirmed within 30 s"; return 1; }
}
load_wait() {
    wait "$LOAD_PID"
    local rc=$?
    sed 's/^/      /' "$WORK/$TAG.load"
    return $rc
}

# check TAG NAME RECOVERY OK [ledger args]: runs the ledger, adds a table row.
check() {
    local tag=$1 name=$2 recovery=$3 ok=$4
    shift 4
    # A failing ledger (or a grep that finds nothing) is a FAIL row, not the
    # end of the run: every command here is guarded against set -e.
    local lrc=0 res sent done lost dup stuck bad
    DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL \
        "$BIN/ledger" --tag "$tag" --ids "$WORK/$tag.ids" --wait 240 "$@" >"$WORK/$tag.ledger" 2>&1 || lrc=$?
    sed 's/^/      /' "$WORK/$tag.ledger" || true
    res=$(grep '^RESULT' "$WORK/$tag.ledger") || res=
    sent=$(grep -c '^O ' "$WORK/$tag.ids" 2>/dev/null) || sent=0
    done=$(grep -oE '[0-9]+ with exactly their effects' "$WORK/$tag.ledger" | grep -oE '^[0-9]+') || done=0
    lost=$(echo "$res" | sed -nE 's/.*lost=([0-9]+).*/\1/p')
    dup=$(echo "$res" | sed -nE 's/.*duplicated=([0-9]+).*/\1/p')
    stuck=$(echo "$res" | sed -nE 's/.*stuck=([0-9]+).*/\1/p')
    bad=$(echo "$res" | sed -nE 's/.*inconsistent=([0-9]+).*/\1/p')
    if [ $lrc -ne 0 ] || [ "$ok" != 1 ]; then
        failed=$((failed + 1))
        ok=FAIL
    else
        passed=$((passed + 1))
        ok=ok
    fi
    ROWS+=("$(printf '%-34s %6s %9s %5s %10s %5s %12s  %s' "$name" "${sent:-0}" "${done:-0}" \
        "${lost:-?}" "${dup:-?}" "${stuck:-?}" "$recovery" \
        "$ok$([ "${bad:-0}" != 0 ] && echo " (inconsistent $bad)")")")
}

# The broker's figures, from the management API (as the ledger reads them:
# rabbitmqctl takes seconds a call on a busy machine, longer than a step of
# scenario 1 may). Each fails when the API does not answer.
queue_unacked() { # QUEUE: deliveries of it that consumers hold unacked (up to 5 s old)
    mgmt_curl -fsS -m 5 "http://127.0.0.1:$MGMT_PORT/api/queues/$(vhost_api)/$1?columns=messages_unacknowledged" |
        python3 -c 'import json, sys; print(int(json.load(sys.stdin)["messages_unacknowledged"]))'
}
holds_unacked() {
    local n
    n=$(queue_unacked "$1") && [ "$n" -gt 0 ]
}
queue_consumers() { # QUEUE: its consumers (up to 5 s old)
    mgmt_curl -fsS -m 5 "http://127.0.0.1:$MGMT_PORT/api/queues/$(vhost_api)/$1?columns=consumers" |
        python3 -c 'import json, sys; print(int(json.load(sys.stdin)["consumers"]))'
}
# The API lists a new consumer at its next statistics round and drops one
# only once the broker has closed its channel.
has_consumer() {
    local n
    n=$(queue_consumers "$1") && [ "$n" -gt 0 ]
}
no_consumer() {
    local n
    n=$(queue_consumers "$1") && [ "$n" = 0 ]
}

dlq_depth() { # SERVICE
    DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL "$BIN/dlq" list 2>/dev/null |
        awk -v q="$1.dlq" '$1 == q { print $2 }'
}

# ------------------------------------------------------------- scenarios
# 0: the ledger itself must see a loss, a duplicate and a stock drift (each
# made by hand and undone), or its "ok" after the other scenarios means nothing.
scenario_0() {
    local ok=1 id out t0
    TAG=c0-$RUNID
    say "0: the ledger sees a lost order, a duplicated mail, stock off its ledger, a stuck mail, a parked row"
    load_start "$TAG" 5 0.2
    load_wait || ok=0
    led() { DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL "$BIN/ledger" --tag "$TAG" "$@"; }
    led --ids "$WORK/$TAG.ids" --wait 60 >/dev/null || { echo "    FAIL: not clean before"; ok=0; }
    id=$(awk '$1 == "O" { print $3; exit }' "$WORK/$TAG.ids")
    cp "$WORK/$TAG.ids" "$WORK/$TAG.lost"
    echo "O $TAG-lost $(cat /proc/sys/kernel/random/uuid)" >>"$WORK/$TAG.lost"
    out=$(led --ids "$WORK/$TAG.lost" | tail -1) || true
    echo "    an accepted id that is not stored:  $out"
    [[ "$out" == *"lost=1 "*"ok=0"* ]] || ok=0
    psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "INSERT INTO email.messages (cause_id, kind, correlation_id,
        recipient, subject, body, status) VALUES (gen_random_uuid(), 'order_confirmed', '$id',
        'x@example.com', 'dup', 'dup', 'recorded')" || ok=0
    out=$(led --ids "$WORK/$TAG.ids" | tail -1) || true
    echo "    a second confirmation mail:        $out"
    [[ "$out" == *"duplicated=1 "*"ok=0"* ]] || ok=0
    psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "DELETE FROM email.messages WHERE subject = 'dup'
        AND correlation_id = '$id'" || ok=0
    psql -qAt "$INVENTORY_OWNER_DATABASE_URL" -c "UPDATE inventory.stock SET on_hand = on_hand + 1
        WHERE sku = 'FLT-PAPER'" || ok=0
    out=$(led --ids "$WORK/$TAG.ids" | tail -1) || true
    echo "    stock changed behind its ledger:   $out"
    [[ "$out" == *"inconsistent=1 "*"ok=0"* ]] || ok=0
    psql -qAt "$INVENTORY_OWNER_DATABASE_URL" -c "UPDATE inventory.stock SET on_hand = on_hand - 1
        WHERE sku = 'FLT-PAPER'" || ok=0
    # A mail the mailer will not try for an hour: undelivered after the drain.
    psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "INSERT INTO email.messages (cause_id, kind, correlation_id,
        recipient, subject, body, status, next_attempt_at) VALUES (gen_random_uuid(), 'stuck',
        '$id', 'x@example.com', 'stuck', 'stuck', 'pending', now() + interval '1 hour')" || ok=0
    out=$(led --ids "$WORK/$TAG.ids" | tail -1) || true
    echo "    a mail left undelivered:           $out"
    [[ "$out" == *"stuck=1 "*"ok=0"* ]] || ok=0
    psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "DELETE FROM email.messages WHERE kind = 'stuck'
        AND correlation_id = '$id'" || ok=0
    # The same mail of another run (an order not of this tag): not this run's.
    psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "INSERT INTO email.messages (cause_id, kind, correlation_id,
        recipient, subject, body, status, next_attempt_at) VALUES (gen_random_uuid(), 'stuck',
        gen_random_uuid(), 'x@example.com', 'stuck-other', 'stuck', 'pending',
        now() + interval '1 hour')" || ok=0
    out=$(led --ids "$WORK/$TAG.ids" | tail -1) || true
    echo "    another run's undelivered mail:    $out"
    [[ "$out" == *"stuck=0 "*"ok=1"* ]] || ok=0
    psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "DELETE FROM email.messages WHERE subject = 'stuck-other'" || ok=0
    # An outbox row the relay parked (the broker refused it): it never moves
    # again by itself, so the ledger counts it stuck, whatever its age.
    psql -qAt "$ORDERS_OWNER_DATABASE_URL" -c "INSERT INTO orders.outbox (message_id, routing_key,
        correlation_id, body, attempts, parked_at, last_error) VALUES (gen_random_uuid(),
        'order.chaos_parked', '$id', '{}', 5, now(), 'chaos scenario 0: parked by hand')" || ok=0
    # --wait must not wait for it (it will not move): it answers at once.
    t0=$(now_ms)
    led --ids "$WORK/$TAG.ids" --wait 30 >"$WORK/$TAG.parked" || true
    out=$(tail -1 "$WORK/$TAG.parked")
    echo "    a parked outbox row:               $out ($(elapsed_s "$t0") s, --wait 30)"
    [[ "$out" == *"stuck=1 "*"ok=0"* ]] || ok=0
    grep -q ', 1 parked,' "$WORK/$TAG.parked" || { echo "    FAIL: not counted as parked"; ok=0; }
    [ "$(($(now_ms) - t0))" -lt 10000 ] || { echo "    FAIL: the ledger waited for a parked row"; ok=0; }
    psql -qAt "$ORDERS_OWNER_DATABASE_URL" -c "DELETE FROM orders.outbox WHERE routing_key = 'order.chaos_parked'
        AND correlation_id = '$id'" || ok=0
    # Another run's outbox rows (an order not of this tag), one parked and one
    # the relay still tries (a key nothing routes: it stays unpublished): not
    # this run's work, so not this run's stuck.
    psql -qAt "$ORDERS_OWNER_DATABASE_URL" -c "INSERT INTO orders.outbox (message_id, routing_key,
        correlation_id, body, attempts, parked_at, last_error) VALUES (gen_random_uuid(),
        'order.chaos_other', gen_random_uuid(), '{}', 5, now(), 'chaos scenario 0: parked by hand'),
        (gen_random_uuid(), 'order.chaos_other', gen_random_uuid(), '{}', 0, NULL, NULL)" || ok=0
    out=$(led --ids "$WORK/$TAG.ids" | tail -1) || true
    echo "    another run's outbox rows:         $out"
    [[ "$out" == *"stuck=0 "*"ok=1"* ]] || ok=0
    psql -qAt "$ORDERS_OWNER_DATABASE_URL" -c "DELETE FROM orders.outbox WHERE routing_key = 'order.chaos_other'" || ok=0
    check "$TAG" "0 the ledger catches faults" "-" "$ok"
}

scenario_1() {
    local rounds=3 secs=60 red=0 t0 worst=0 ok=1
    [ $SHORT = 1 ] && rounds=1 secs=15
    TAG=c1-$RUNID
    say "1: kill -9 each worker in turn, $rounds round(s), under load"
    load_start "$TAG" 60 "$secs" --sales 200
    load_flowing || ok=0
    for _ in $(seq 1 "$rounds"); do
        for w in "${WORKERS[@]}"; do
            # Stopped first, it holds up to PREFETCH deliveries unacked: the
            # kill is made once the broker shows some (while the load runs),
            # so it leaves some for the broker to deliver again.
            red=$((red + $(metric "$w" ordersuite_messages_redelivered_total)))
            kill -STOP "$(pid_of "$w")"
            if wait_for 15 "$w to hold deliveries unacked" holds_unacked "$w"; then
                echo "    $w stopped, holding deliveries unacked"
            elif kill -0 "$LOAD_PID" 2>/dev/null; then
                echo "    FAIL: $w stopped held no delivery unacked within 15 s"
                ok=0
            else
                echo "    $w stopped after the load ended: no delivery to hold"
            fi
            svc kill "$w"
            t0=$(now_ms)
            restart "$w" || ok=0
            local r
            r=$(elapsed_s "$t0")
            echo "    $w killed and back in ${r}s"
            worst=$(awk -v a="$r" -v b="$worst" 'BEGIN { print (a > b ? a : b) }')
        done
    done
    load_wait || ok=0
    check "$TAG" "1 kill -9 workers x$rounds" "${worst}s" "$ok"
    for w in "${WORKERS[@]}"; do
        red=$((red + $(metric "$w" ordersuite_messages_redelivered_total)))
    done
    echo "    redeliveries observed: $red"
    if [ "$red" -lt 1 ]; then
        echo "    FAIL: no redelivery observed"
        ROWS[-1]="${ROWS[-1]/ ok/ FAIL (no redelivery)}"
        passed=$((passed - 1)) failed=$((failed + 1))
    fi
}

scenario_2() {
    local ok=1 dup before
    TAG=c2-$RUNID
    say "2: billing exits between COMMIT and ack (CRASH_AFTER_COMMIT=1)"
    svc stop billing
    restart billing CRASH_AFTER_COMMIT=1 || ok=0
    load_start "$TAG" 5 1
    load_wait || ok=0
    wait_for 30 "billing to crash after its first commit" \
        bash -c "! kill -0 $(pid_of billing) 2>/dev/null" || ok=0
    before=$(psql -qAt "$BILLING_DATABASE_URL" -c "SELECT count(*) FROM billing.invoices
        WHERE order_id = ANY('$(tag_orders "$TAG")'::uuid[])")
    echo "    invoices committed before the ack: $before"
    rm -f "$(run_dir)/billing.pid"
    restart billing || ok=0
    check "$TAG" "2 crash between commit and ack" "-" "$ok"
    dup=$(metric billing ordersuite_messages_duplicate_total)
    echo "    redelivered and absorbed by the inbox: $dup"
    if [ "$dup" -lt 1 ] || [ "$before" -lt 1 ]; then
        echo "    FAIL: expected a committed invoice and an inbox hit on redelivery"
        ROWS[-1]="${ROWS[-1]/ ok/ FAIL (no inbox hit)}"
        passed=$((passed - 1)) failed=$((failed + 1))
    fi
}

scenario_3() {
    local ok=1 t0 r secs=20
    [ $SHORT = 1 ] && secs=10
    TAG=c3-$RUNID
    say "3: kill -9 order-api mid-load; clients retry with the same key"
    load_start "$TAG" 80 "$secs"
    load_flowing || ok=0
    svc kill order-api
    t0=$(now_ms)
    # Down until it is started again: the clients' POSTs are refused meanwhile.
    refused() {
        api_curl -s -m 2 -o /dev/null -X POST -H 'Content-Type: application/json' -d '{}' "$API/orders"
        [ $? = 7 ] # curl: could not connect
    }
    wait_for 10 "order-api to refuse connections" refused ||
        { echo "    FAIL: order-api still takes connections after kill -9"; ok=0; }
    restart order-api || ok=0
    r=$(elapsed_s "$t0")
    load_wait || ok=0
    check "$TAG" "3 kill -9 order-api" "${r}s" "$ok"
}

scenario_4() {
    local ok=1 t0 r secs=40 all
    [ $SHORT = 1 ] && secs=25
    TAG=c4-$RUNID
    say "4: kill -9 the RabbitMQ node, start it again"
    load_start "$TAG" 40 "$secs" --sales 100
    load_flowing || ok=0
    # Our node only (its home is under var/), not any other RabbitMQ on the machine.
    local node="beam.smp.* -home $VAR/rabbitmq/home"
    pkill -KILL -u rabbitmq -f "$node" || ok=0
    t0=$(now_ms)
    wait_for 30 "RabbitMQ to be down" bash -c "! pgrep -u rabbitmq -f '$node' >/dev/null"
    # The services notice: order-api stops reporting ready (orders are still taken).
    wait_for 15 "order-api to see the broker gone" bash -c "! curl -fsS -m 2 $API/readyz" ||
        { echo "    FAIL: order-api still ready with the broker down"; ok=0; }
    "$ROOT/scripts/up.sh" >"$WORK/up.log" 2>&1 || { ok=0; cat "$WORK/up.log"; }
    echo "    broker back $(elapsed_s "$t0")s after the kill"
    t0=$(now_ms)
    all() { for s in $(suite_names); do svc_ready "$s" || return 1; done; }
    if wait_for 30 "every service to reconnect" all; then
        r="$(elapsed_s "$t0")s"
    else
        r=">30s"
        ok=0
    fi
    echo "    services ready ${r} after the broker was back"
    load_wait || ok=0
    check "$TAG" "4 kill -9 RabbitMQ" "$r" "$ok"
}

scenario_5() {
    local ok=1 t0 r code start end
    TAG=c5-$RUNID
    say "5: PostgreSQL stopped with -m immediate, then started"
    load_start "$TAG" 40 20
    load_flowing || ok=0
    pgctl stop -m immediate >/dev/null || ok=0
    start=$(now_ms)
    code=$(api_curl -s -m 10 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        -d '{"customer_id":"c5","customer_email":"c5@example.com","currency":"EUR","items":[{"sku":"FLT-PAPER","quantity":1}]}' \
        "$API/orders")
    end=$(now_ms)
    echo "    POST during the outage: $code in $((end - start)) ms"
    [ "$code" = 503 ] || ok=0
    pgctl start -w -t 60 -l "$VAR/log/postgresql/startup.log" -o "-p $PG_PORT" >/dev/null || ok=0
    t0=$(now_ms)
    post_ok() {
        [ "$(api_curl -s -m 5 -o /dev/null -w '%{http_code}' "$API/orders?limit=1")" = 200 ]
    }
    if wait_for 10 "the API to answer again" post_ok; then r="$(elapsed_s "$t0")s"; else r=">10s" ok=0; fi
    echo "    API answering ${r} after PostgreSQL was back"
    load_wait || ok=0
    check "$TAG" "5 PostgreSQL -m immediate" "$r" "$ok"
}

publish() { # ROUTING_KEY SCHEMA_VERSION BODY: through the management API, as the administrator
    local mid
    mid=$(cat /proc/sys/kernel/random/uuid)
    mgmt_curl -fsS -H 'content-type: application/json' \
        -X POST "http://127.0.0.1:$MGMT_PORT/api/exchanges/$(vhost_api)/sales.events/publish" \
        -d "$(python3 -c 'import json,sys; print(json.dumps({"routing_key": sys.argv[1],
            "properties": {"message_id": sys.argv[4], "correlation_id": sys.argv[4],
                "delivery_mode": 2, "headers": {"schema_version": int(sys.argv[2])}},
            "payload": sys.argv[3], "payload_encoding": "string"}))' "$1" "$2" "$3" "$mid")" |
        grep -q '"routed":true'
}

scenario_6() {
    local ok=1 base t0 r
    TAG=c6-$RUNID
    say "6: a poison message, an unknown schema version, and a fixed message replayed"
    # In make test (CHAOS_EMPTY_DLQ=1, the tests' own vhost) inventory.dlq
    # holds what earlier suites left there on purpose (check_privileges'
    # forged messages): replayed --all below, some would be handled and the
    # count would be off. Emptied first there; never in a demo's vhost.
    if [ "${CHAOS_EMPTY_DLQ:-0}" = 1 ]; then
        AMQP_URL=$TEST_AMQP_URL "$BIN/dlq" purge inventory --yes >/dev/null || ok=0
    fi
    base=$(dlq_depth inventory)
    t0=$(now_ms)
    publish order.placed 1 '{"order_id": "not json' || ok=0
    publish order.placed 99 '{"order_id":"00000000-0000-4000-8000-000000000000"}' || ok=0
    dl() { [ "$(dlq_depth inventory)" -ge $((base + 2)) ]; }
    if wait_for 10 "both in inventory's DLQ" dl; then r="$(elapsed_s "$t0")s"; else r=">10s" ok=0; fi
    echo "    in the DLQ after $r:"
    AMQP_URL=$TEST_AMQP_URL "$BIN/dlq" show inventory --limit 50 | grep -E 'error' | tail -2 | sed 's/^/    /'
    AMQP_URL=$TEST_AMQP_URL "$BIN/dlq" show inventory --limit 50 | grep -q 'schema_version 99' || ok=0
    svc_ready inventory || { echo "    FAIL: inventory is not ready"; ok=0; }
    # A good message that fails for a reason an operator can fix: a bad grant.
    psql -qAt "$INVENTORY_OWNER_DATABASE_URL" -c "REVOKE INSERT ON inventory.reservations FROM inventory" || ok=0
    load_start "$TAG" 5 0.2
    load_wait || ok=0
    dl3() { [ "$(dlq_depth inventory)" -ge $((base + 3)) ]; }
    wait_for 15 "the order in inventory's DLQ" dl3 || ok=0
    psql -qAt "$INVENTORY_OWNER_DATABASE_URL" -c "GRANT INSERT ON inventory.reservations TO inventory" || ok=0
    # Replays all three: the order completes; the two bad ones come back to the DLQ.
    AMQP_URL=$TEST_AMQP_URL "$BIN/dlq" replay inventory --all | tail -1 | sed 's/^/    /'
    check "$TAG" "6 poison + version + replay" "$r" "$ok" --dlq "inventory=$((base + 2))"
}

scenario_7() {
    local ok=1 red t0
    TAG=c7-$RUNID
    say "7: billing stalls (SIGSTOP) past a 5 s heartbeat"
    svc stop billing
    restart billing HEARTBEAT_S=5 || ok=0
    load_start "$TAG" 40 25
    load_flowing || ok=0
    # Its consumer seen first, so that its going means the broker closed it.
    wait_for 30 "the API to list billing's consumer" has_consumer billing ||
        { echo "    FAIL: billing's queue has no consumer"; ok=0; }
    kill -STOP "$(pid_of billing)"
    t0=$(now_ms)
    # The stall lasts until the broker has closed the connection of
    # billing's consumer (two heartbeats missed, about 10 s), bounded; then
    # billing runs again.
    if wait_for 40 "the broker to drop billing's consumer" no_consumer billing; then
        echo "    the broker dropped billing's consumer $(elapsed_s "$t0") s into the stall"
    else
        echo "    FAIL: billing's consumer still there after a $(elapsed_s "$t0") s stall"
        ok=0
    fi
    # The fault itself is a stall well past the heartbeat: however soon the
    # management API stops listing the consumer (its figures lag up to 5 s,
    # and once showed none 2.9 s in, before the broker had closed anything),
    # the stall lasts at least 25 s: three heartbeat timeouts (the broker
    # took 19.8 s to drop it in one run) plus that lag. This wait is the
    # fault's length, not a condition.
    while [ $(($(now_ms) - t0)) -lt 25000 ]; do sleep 0.2; done
    kill -CONT "$(pid_of billing)"
    wait_for 30 "billing to reconnect" svc_ready billing || ok=0
    load_wait || ok=0
    check "$TAG" "7 worker stalled past heartbeat" "-" "$ok"
    red=$(metric billing ordersuite_messages_redelivered_total)
    echo "    redeliveries after the stall: $red"
    svc stop billing
    restart billing || true
    if [ "$red" -lt 1 ]; then
        ROWS[-1]="${ROWS[-1]/ ok/ FAIL (no redelivery)}"
        passed=$((passed - 1)) failed=$((failed + 1))
    fi
}

# rowlock: an operator's open transaction holds a stock row the load uses for
# 12 s, longer than DB_LOCK_TIMEOUT_MS (5 s): inventory gives up the wait and
# retries (the order is not stuck behind it, nor are orders for other stock);
# /healthz of inventory and order-api answer at once throughout.
scenario_rowlock() {
    local ok=1 lockpid sku retried0 retried worst=0 t code ms
    TAG=crl-$RUNID
    sku=${LOAD_SKUS%%,*}
    say "rowlock: a stock row ($sku) held 12 s in an open transaction, under 40 orders/s"
    retried0=$(metric inventory ordersuite_messages_retried_total)
    load_start "$TAG" 40 20
    load_flowing 20 || ok=0
    psql -qAt "$INVENTORY_OWNER_DATABASE_URL" -v sku="$sku" >/dev/null 2>&1 <<'SQL' &
BEGIN;
SELECT on_hand FROM inventory.stock WHERE sku = :'sku' FOR UPDATE;
SELECT pg_sleep(12);
COMMIT;
SQL
    lockpid=$!
    t=$(($(now_ms) + 11000))
    while [ "$(now_ms)" -lt $t ]; do
        for s in inventory order-api; do
            code=$(curl -s -m 5 -o /dev/null -w '%{http_code} %{time_total}' \
                "http://127.0.0.1:$(port_of "$s")/healthz")
            ms=$(awk -v x="${code#* }" 'BEGIN { printf "%d\n", x * 1000 }')
            [ "${code%% *}" = 200 ] || ok=0
            [ "$ms" -gt "$worst" ] && worst=$ms
        done
        sleep 0.2 # the probes' interval while the row is held (11 s), not a wait
    done
    wait "$lockpid" || ok=0
    retried=$(($(metric inventory ordersuite_messages_retried_total) - retried0))
    echo "    /healthz slowest answer while the row was held: ${worst} ms; inventory retries: $retried"
    # The issue's bound, as check_workers holds it: health answers never wait
    # on the database, so a held row does not slow them (21 ms at worst
    # under this load with the machine's load average at 16).
    [ "$worst" -lt 100 ] || { echo "    FAIL: /healthz took ${worst} ms (bound 100 ms)"; ok=0; }
    [ "$retried" -ge 1 ] || { echo "    FAIL: inventory never gave up a lock wait"; ok=0; }
    load_wait || ok=0
    check "$TAG" "rowlock: stock row held 12 s" "-" "$ok"
}

# mail: the mail server (tools/mailcatcher) goes away under load (for as long
# as the mailer takes to try it MAIL_DOWN_TRIES times) and comes back, then refuses one recipient for good. Every other mail of the run
# reaches the server exactly once (counted there, by Message-ID), nothing is
# left pending, and the refused one is in email.dlq with the server's reply.
MAIL_PID=
mail_up() { # SMTP_PORT WEB_PORT: the catcher, keeping its mails in $WORK/mail.jsonl
    rm -f "$WORK/mail.ready"
    "$ROOT/tools/mailcatcher/mailcatcher.py" --smtp-port "$1" --http-port "$2" \
        --store "$WORK/mail.jsonl" --ready-file "$WORK/mail.ready" >>"$WORK/mail.log" 2>&1 &
    MAIL_PID=$!
    wait_for 15 "the mail catcher" test -f "$WORK/mail.ready"
}
mail_down() {
    [ -n "$MAIL_PID" ] || return 0
    kill -TERM "$MAIL_PID" 2>/dev/null
    wait "$MAIL_PID" 2>/dev/null
    MAIL_PID=
}
MAIL_DOWN_TRIES=10
mail_pending() { psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "SELECT count(*) FROM email.messages WHERE status = 'pending'"; }

scenario_mail() {
    local ok=1 base t0 r secs=30 code rcpt report tries0 back
    local smtp=$((2525 + ORDERSUITE_PORT_OFFSET)) web=$((2580 + ORDERSUITE_PORT_OFFSET))
    [ $SHORT = 1 ] && secs=20
    TAG=cm-$RUNID
    rcpt="refused-$TAG@example.com"
    say "mail: the mail server down under load ($MAIL_DOWN_TRIES failed tries), then back; then a recipient refused (5xx)"
    base=$(dlq_depth email)
    mail_up "$smtp" "$web" || ok=0
    svc stop email
    restart email SMTP_URL="smtp://127.0.0.1:$smtp" MAIL_RETRY_MAX_MS=2000 || ok=0
    [ "$(email_smtp_url)" = "smtp://127.0.0.1:$smtp" ] ||
        { echo "    FAIL: email runs without this scenario's SMTP_URL (smtp://127.0.0.1:$smtp)"; ok=0; }
    load_start "$TAG" 20 "$secs"
    # The outage starts once mail of the load goes out, and lasts until the
    # mailer has tried the server MAIL_DOWN_TRIES times without it and tried
    # one mail a third time, the load going on meanwhile. Each try claims a
    # mail (attempts + 1) and fails; the mails it holds back meanwhile get
    # their attempt back, and no mail of the run leaves 'pending' while the
    # server is down: the sum of the pending mails' attempts counts the tries.
    run_mail() { psql -qAt "$EMAIL_DATABASE_URL" -c "SELECT coalesce($1, 0) FROM email.messages m
        WHERE m.correlation_id = ANY('$(tag_orders "$TAG")'::uuid[]) AND $2"; }
    flowing() { [ "$(run_mail 'count(*)' "m.status = 'sent'")" -ge 20 ]; }
    wait_for 30 "the load's first 20 mails sent" flowing || ok=0
    mail_down
    t0=$(now_ms)
    tries0=$(run_mail 'sum(attempts)' "m.status = 'pending'")
    echo "    mail server stopped; $(mail_pending) mail(s) pending"
    tried() {
        [ "$(run_mail 'sum(attempts)' "m.status = 'pending'")" -ge $((tries0 + MAIL_DOWN_TRIES)) ] &&
            [ "$(run_mail 'max(attempts)' "m.status = 'pending'")" -ge 3 ]
    }
    wait_for 60 "the mailer to try the server $MAIL_DOWN_TRIES times while it is down" tried ||
        { echo "    FAIL: the mailer did not try the server again while it was down"; ok=0; }
    echo "    $(mail_pending) mail(s) pending after $(elapsed_s "$t0") s and $(($(run_mail 'sum(attempts)' "m.status = 'pending'") - tries0)) failed tries; starting it again"
    mail_up "$smtp" "$web" || ok=0
    t0=$(now_ms)
    back=$(psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "SELECT now()")
    # What waited for the server (the load goes on: newer mail comes and goes).
    drained() { [ "$(psql -qAt "$EMAIL_OWNER_DATABASE_URL" -c "SELECT count(*) FROM email.messages
        WHERE status = 'pending' AND created_at <= '$back'")" = 0 ]; }
    if wait_for 30 "the pending mail to go out" drained; then r="$(elapsed_s "$t0")s"; else r=">30s" ok=0; fi
    echo "    pending mail delivered ${r} after the server was back"
    curl -fsS -X POST "http://127.0.0.1:$web/api/refuse" -d "{\"address\": \"$rcpt\"}" >/dev/null || ok=0
    code=$(api_curl -s -o /dev/null -w '%{http_code}' -X POST "$API/orders" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: $TAG-refused" -d "{\"customer_id\":\"$TAG\",\"customer_email\":\"$rcpt\",
        \"currency\":\"EUR\",\"items\":[{\"sku\":\"${LOAD_SKUS%%,*}\",\"quantity\":1}]}")
    [ "$code" = 201 ] || { echo "    FAIL: the order to $rcpt was answered $code"; ok=0; }
    load_wait || ok=0
    check "$TAG" "mail: SMTP down+back, a 5xx" "$r" "$ok" --dlq "email=$((base + 1))"
    # At the server: every mail the run marked sent exactly once, the refused
    # one never; in email.dlq: the refused one, with the 5xx reply.
    psql -qAt "$EMAIL_DATABASE_URL" -c "SELECT '<' || m.cause_id || '.' || m.kind || '@ordersuite>', m.status,
        coalesce(m.last_error, '') FROM email.messages m
        WHERE m.correlation_id = ANY('$(tag_orders "$TAG")'::uuid[])" >"$WORK/$TAG.mails" || ok=0
    report=$(curl -fsS "http://127.0.0.1:$web/api/messages" | python3 -c '
import json, sys
at = {}
for m in json.load(sys.stdin):
    at[m["message_id"]] = at.get(m["message_id"], 0) + 1
rows = [l.rstrip("\n").split("|", 2) for l in open(sys.argv[1]) if l.strip()]
sent = [r for r in rows if r[1] == "sent"]
refused = [r for r in rows if r[1] == "refused"]
missing = sum(1 for r in sent if at.get(r[0], 0) == 0)
extra = sum(max(at.get(r[0], 0) - 1, 0) for r in sent)
leaked = sum(at.get(r[0], 0) for r in refused)
other = len(rows) - len(sent) - len(refused)
print("mails %d: %d sent, at the server missing %d, extra copies %d; refused %d (%s), at the server %d; other %d"
      % (len(rows), len(sent), missing, extra, len(refused), refused[0][2][:60] if refused else "-", leaked, other))
sys.exit(0 if missing == 0 and extra == 0 and len(refused) == 1 and refused[0][2].startswith("550")
         and leaked == 0 and other == 0 else 1)' "$WORK/$TAG.mails")
    code=$?
    echo "    $report"
    # Into a file first: grep -q would end the pipe early (SIGPIPE, and pipefail).
    AMQP_URL=$TEST_AMQP_URL "$BIN/dlq" show email --limit 1000 >"$WORK/$TAG.dlq" 2>&1 || true
    grep -q '550 5.1.1' "$WORK/$TAG.dlq" || {
        echo "    FAIL: no 550 reply in email.dlq"
        code=1
    }
    # Email as it was found: with the SMTP_URL it had (a demo's catcher), or none.
    mail_down
    svc stop email
    restart email || true
    if [ "$(email_smtp_url)" != "$FOUND_SMTP_URL" ]; then
        echo "    FAIL: email restarted with SMTP_URL '$(email_smtp_url)', found with '$FOUND_SMTP_URL'"
        code=1
    fi
    if [ "$code" != 0 ]; then
        ROWS[-1]="${ROWS[-1]/ ok/ FAIL (mail at the server, or the SMTP_URL of email)}"
        passed=$((passed - 1)) failed=$((failed + 1))
    fi
}

# unroutable: inventory.released has exactly one binding (order-api's queue).
# With it unbound, the broker returns every release inventory publishes
# (mandatory publishing) while the connection stays fine. Checked as
# behaviour, not as a timing:
#   - the relay never backs off for them (inventory's
#     ordersuite_outbox_relay_failures_total does not move);
#   - every order of the load completes (the ledger on the load alone: lost,
#     duplicated and stuck 0) while the releases are still refused and not
#     parked (each returned OUTBOX_PARK_AFTER (5) times or more);
#   - they are then parked: after OUTBOX_PARK_MIN_AGE_S (30 s) in make chaos;
#     with --short (make test) the scenario dates their first return an hour
#     back, as check_e2e does, and the relay parks them at its next round;
#     counted in ordersuite_outbox_parked_rows and listed by `dlq outbox list`
#     with the broker's reply;
#   - re-bound and `dlq outbox replay`, each is handled by order-api once
#     (consumed once, no inbox duplicate), the cancelled orders end CANCELLED
#     and the ledger finds nothing lost, doubled or stuck.
# make chaos (not --short) also compares the load's POST -> CONFIRMED p95 with
# a baseline load just before (within 3x, at least +1 s): a timing, so only
# there.
released_binding() { # POST|DELETE
    local url="http://127.0.0.1:$MGMT_PORT/api/bindings/$(vhost_api)/e/sales.events/q/order-api"
    if [ "$1" = DELETE ]; then
        mgmt_curl -fsS -X DELETE "$url/inventory.released"
    else
        mgmt_curl -fsS -H 'content-type: application/json' -X POST "$url" \
            -d '{"routing_key": "inventory.released"}'
    fi
}
parked_released() {
    psql -qAt "$INVENTORY_OWNER_DATABASE_URL" -c "SELECT count(*) FROM inventory.outbox
        WHERE routing_key = 'inventory.released' AND parked_at IS NOT NULL"
}
# The releases of this run's over-limit orders ($TAG-over): how many there
# are, how many were returned at least $1 times, how many are parked.
over_releases() {
    psql -qAt -F ' ' "$INVENTORY_DATABASE_URL" -c "SELECT count(*), count(*) FILTER (WHERE attempts >= $1),
        count(*) FILTER (WHERE parked_at IS NOT NULL) FROM inventory.outbox x
        WHERE x.routing_key = 'inventory.released'
          AND x.correlation_id = ANY('$(tag_orders "$TAG-over")'::uuid[])"
}
metric_key() { # NAME METRIC KEY: that counter for one routing key (0 if none)
    metrics_page "$1" | awk -v m="$2" -v k="routing_key=\"$3\"" 'index($0, m "{") == 1 && index($0, k) { s += $NF }
            END { printf "%d\n", s }'
}
UNROUTABLE_N=5
PARK_AFTER=5 # OUTBOX_PARK_AFTER's default, as the services run
e2e_p95() { sed -nE 's/^POST -> CONFIRMED ms: .*p95 ([0-9.]+).*/\1/p' "$WORK/$1.load"; }

scenario_unroutable() {
    local ok=1 secs=20 base= p95 bound code parked0 replayed r i body oid fail0 fail cons0 dup0 cons dup
    local e2e=()
    [ $SHORT = 1 ] && secs=8
    say "unroutable: inventory.released unbound under 20 orders/s; $UNROUTABLE_N releases parked, replayed"
    if [ $SHORT = 0 ]; then
        e2e=(--e2e 60)
        TAG=cub-$RUNID
        load_start "$TAG" 20 10 "${e2e[@]}"
        load_wait || ok=0
        base=$(e2e_p95 "$TAG")
    fi
    TAG=cur-$RUNID
    parked0=$(parked_released)
    fail0=$(metric inventory ordersuite_outbox_relay_failures_total)
    cons0=$(metric_key order-api ordersuite_messages_consumed_total inventory.released)
    dup0=$(metric_key order-api ordersuite_messages_duplicate_total inventory.released)
    released_binding DELETE || { echo "    FAIL: could not unbind inventory.released"; ok=0; }
    load_start "$TAG" 20 "$secs" "${e2e[@]}"
    load_flowing 5 || ok=0
    # Over the credit limit: billing refuses the payment, inventory releases
    # the stock and publishes inventory.released, which nothing can route.
    # A customer of their own (loadgen's latency is for its own orders, and
    # the ledger on the load alone must not see them); the last ledger
    # checks them through the ids file.
    : >"$WORK/$TAG.over"
    for i in $(seq 1 "$UNROUTABLE_N"); do
        body=$(api_curl -s -w '\n%{http_code}' -X POST "$API/orders" -H 'Content-Type: application/json' \
            -H "Idempotency-Key: $TAG-over-$i" \
            -d "{\"customer_id\":\"$TAG-over\",\"customer_email\":\"$TAG@example.com\",
            \"currency\":\"EUR\",\"items\":[{\"sku\":\"MUG-WHITE\",\"quantity\":70}]}")
        code=${body##*$'\n'}
        oid=$(echo "$body" | grep -oE '"id" *: *"[0-9a-f-]{36}"' | head -1 | grep -oE '[0-9a-f-]{36}')
        [ "$code" = 201 ] && [ -n "$oid" ] ||
            { echo "    FAIL: an order over the credit limit was answered $code"; ok=0; }
        echo "O $TAG-over-$i $oid" >>"$WORK/$TAG.over"
    done
    # Each release returned by the broker PARK_AFTER times or more: refused
    # again and again, and (OUTBOX_PARK_MIN_AGE_S) not parked yet.
    returned() { [ "$(over_releases $PARK_AFTER | cut -d' ' -f2)" -ge "$UNROUTABLE_N" ]; }
    wait_for 30 "each release returned $PARK_AFTER times" returned ||
        { echo "    FAIL: the releases were not returned $PARK_AFTER times each ($(over_releases $PARK_AFTER))"; ok=0; }
    load_wait || ok=0
    # The load alone (its tag and ids; the over-limit orders are another
    # customer's): every order complete, nothing of it left anywhere.
    DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL "$BIN/ledger" --tag "$TAG" \
        --ids "$WORK/$TAG.ids" --wait 60 >"$WORK/$TAG.load-ledger" 2>&1 || ok=0
    r=$(over_releases $PARK_AFTER)
    echo "    the load alone, with the releases refused: $(tail -1 "$WORK/$TAG.load-ledger")"
    echo "    the releases meanwhile (rows, returned >= $PARK_AFTER times, parked): $r"
    [ "$(echo "$r" | cut -d' ' -f3)" = 0 ] ||
        { echo "    FAIL: the releases were parked before the load's orders completed"; ok=0; }
    fail=$(($(metric inventory ordersuite_outbox_relay_failures_total) - fail0))
    echo "    inventory's relay rounds that failed (backed off) meanwhile: $fail"
    [ "$fail" = 0 ] || { echo "    FAIL: the relay backed off for returned rows"; ok=0; }
    cat "$WORK/$TAG.over" >>"$WORK/$TAG.ids"
    if [ $SHORT = 0 ]; then
        p95=$(e2e_p95 "$TAG")
        bound=$(awk -v b="${base:-0}" 'BEGIN { x = 3 * b; if (x < b + 1000) x = b + 1000; printf "%.0f\n", x }')
        echo "    POST -> CONFIRMED p95: baseline ${base:-?} ms, with the key unbound ${p95:-?} ms (bound $bound ms)"
        awk -v p="${p95:-1e9}" -v b="$bound" 'BEGIN { exit !(p <= b) }' ||
            { echo "    FAIL: orders slowed behind the unroutable rows"; ok=0; }
    else
        # Their first return an hour back: parked at the relay's next round.
        psql -qAt "$INVENTORY_OWNER_DATABASE_URL" -c "UPDATE inventory.outbox x SET refused_since = now() - interval '1 hour'
            WHERE x.correlation_id = ANY('$(tag_orders "$TAG-over")'::uuid[])
            AND x.routing_key = 'inventory.released' AND x.refused_since IS NOT NULL" >/dev/null || ok=0
    fi
    all_parked() { [ "$(over_releases $PARK_AFTER | cut -d' ' -f3)" -ge "$UNROUTABLE_N" ]; }
    wait_for "$([ $SHORT = 1 ] && echo 15 || echo 60)" "the releases parked" all_parked || { echo "    FAIL: not parked ($(over_releases $PARK_AFTER))"; ok=0; }
    gauge() { [ "$(metric inventory ordersuite_outbox_parked_rows)" -ge $((parked0 + UNROUTABLE_N)) ]; }
    wait_for 10 "ordersuite_outbox_parked_rows of inventory to count them" gauge || ok=0
    replayed=$(parked_released)
    echo "    parked: $replayed release(s); ordersuite_outbox_parked_rows of inventory: $(metric inventory ordersuite_outbox_parked_rows)"
    DATABASE_URL=$INVENTORY_OWNER_DATABASE_URL "$BIN/dlq" outbox list inventory >"$WORK/$TAG.parked" 2>&1 || ok=0
    { head -1 "$WORK/$TAG.parked"; tail -1 "$WORK/$TAG.parked"; } | sed 's/^/    /'
    grep -q "^$replayed parked row" "$WORK/$TAG.parked" ||
        { echo "    FAIL: dlq outbox list does not show the $replayed parked row(s)"; ok=0; }
    [ "$(grep -c 'basic.return 312' "$WORK/$TAG.parked")" -ge "$UNROUTABLE_N" ] ||
        { echo "    FAIL: dlq outbox list does not show the broker's reply (basic.return 312)"; ok=0; }
    released_binding POST || { echo "    FAIL: could not bind inventory.released again"; ok=0; }
    DATABASE_URL=$INVENTORY_OWNER_DATABASE_URL "$BIN/dlq" outbox replay inventory --all 2>&1 | tail -1 | sed 's/^/    /'
    check "$TAG" "unroutable: released unbound" "-" "$ok"
    # After the ledger's wait (outboxes of the run empty, queues drained,
    # nothing unacked): each replayed release was handled once by order-api.
    cons=$(($(metric_key order-api ordersuite_messages_consumed_total inventory.released) - cons0))
    dup=$(($(metric_key order-api ordersuite_messages_duplicate_total inventory.released) - dup0))
    echo "    order-api: inventory.released consumed $cons time(s) for $replayed replayed, $dup inbox duplicate(s)"
    if { [ "$cons" != "$replayed" ] || [ "$dup" != 0 ]; } && [[ "${ROWS[-1]}" == *" ok" ]]; then
        ROWS[-1]="${ROWS[-1]/ ok/ FAIL (replayed releases not handled once each)}"
        passed=$((passed - 1)) failed=$((failed + 1))
    fi
}

# saga: billing stopped past the saga's timeout (ORDER_TIMEOUT_S, short here)
# under load. The orders placed while it is down expire (order.expired:
# stock released, one mail each); billing starts again once the load has
# ended and every open order of it has expired, handles what waited for it
# (their reservations and expiries: voids, no invoice kept), and the ledger
# is clean with the EXPIRED orders counted as final and their compensation
# checked. order-api runs with the short timeout for the scenario only.
scenario_saga() {
    local ok=1 secs=30 timeout=8 t0 n c
    [ $SHORT = 1 ] && secs=15 timeout=6
    TAG=csaga-$RUNID
    say "saga: billing stopped past ORDER_TIMEOUT_S ($timeout s) under load"
    count_of() { # STATUS...: orders of the load in those statuses
        local in
        in=$(printf "'%s'," "$@")
        psql -qAt "$ORDERS_OWNER_DATABASE_URL" -c "SELECT count(*) FROM orders.orders
            WHERE customer_id = '$TAG' AND status IN (${in%,})"
    }
    none_open() { [ "$(count_of PENDING RESERVED)" = 0 ]; }
    svc stop order-api
    restart order-api ORDER_TIMEOUT_S=$timeout || ok=0
    load_start "$TAG" 20 "$secs"
    load_flowing 3 || ok=0
    svc stop billing
    t0=$(now_ms)
    echo "    billing stopped"
    load_wait || ok=0
    wait_for $((timeout * 3 + 30)) "every open order of the load to expire" none_open ||
        { echo "    FAIL: orders of the load still open $((timeout * 3 + 30)) s after the load"; ok=0; }
    n=$(count_of EXPIRED)
    echo "    billing down $(elapsed_s "$t0")s: $n order(s) expired"
    restart billing || ok=0
    check "$TAG" "saga billing down past the timeout" "$(elapsed_s "$t0")s" "$ok"
    c=$(count_of CONFIRMED)
    echo "    $c confirmed before the stop, $n expired; $(count_of EXPIRED) expired after billing's return"
    # After check's row: a failure turns that row into a FAIL (once: a row
    # that is FAIL already is left, and counted once).
    fail_row() {
        if [[ "${ROWS[-1]}" == *" ok" ]]; then
            ROWS[-1]="${ROWS[-1]% ok} FAIL ($1)"
            passed=$((passed - 1)) failed=$((failed + 1))
        fi
    }
    if [ "${n:-0}" -lt 1 ] || [ "${c:-0}" -lt 1 ] || [ "$(count_of EXPIRED)" != "$n" ]; then
        echo "    FAIL: want orders confirmed and expired, and none changed by billing's return"
        fail_row "no expiry, or one undone"
    fi
    # order-api back with its own ORDER_TIMEOUT_S for the scenarios after
    # this one; a failure here was ignored before (review of #17, item 11).
    svc stop order-api
    if ! restart order-api; then
        echo "    FAIL: order-api did not start again with its own ORDER_TIMEOUT_S"
        fail_row "order-api not restarted"
    fi
}

# instances: competing instances under load lose one of theirs each. Three
# billings (billing, billing@2, billing@3) and two order-apis (order-api,
# order-api@2), started by services.sh as INSTANCES_billing=3
# INSTANCES_order_api=2 start them; loadgen's connections spread over both
# APIs. Mid-burst billing@2 and order-api@2 are stopped (SIGSTOP: billing@2
# keeps being handed deliveries it does not ack, order-api@2 requests it
# does not answer), then killed with -9 together: the broker hands
# billing@2's deliveries to the other two (redelivered), loadgen's requests
# to order-api@2 get no answer and go, with the same Idempotency-Key, to
# order-api (failovers). Recovery: from the kill to the end of the first
# second in which the load's orders placed after the kill were CONFIRMED at
# 80 % of the load's rate or more (from the timelines, once the run is
# over; the load goes on 15 s or more after the kill). The instances are
# left as they were found: those this scenario started are stopped, a
# killed one that was running before is started again.
INSTANCE_EXTRA=(billing@2 billing@3 order-api@2)
scenario_instances() {
    # The load outlasts the kill by 15 s or more: a quarter of it runs first,
    # then the stop lasts until the management API (figures up to 5 s old)
    # shows the held deliveries, up to 15 s.
    local ok=1 secs=60 rate=40 t0 r s red0=0 red=0 need before=() api2
    [ $SHORT = 1 ] && secs=40
    TAG=cin-$RUNID
    say "instances: kill -9 one of three billings and one of two order-apis under $rate orders/s"
    for s in "${INSTANCE_EXTRA[@]}"; do
        [ -n "$(pid_of "$s")" ] && kill -0 "$(pid_of "$s")" 2>/dev/null && before+=("$s")
    done
    (
        export INSTANCES_billing=3 INSTANCES_order_api=2
        exec "$ROOT/scripts/services.sh" start billing order-api
    ) >>"$WORK/services.log" 2>&1 || ok=0
    for s in billing "${INSTANCE_EXTRA[@]}"; do
        wait_for 60 "$s ready" svc_ready "$s" || { echo "    FAIL: $s not ready"; ok=0; }
    done
    three() { [ "$(queue_consumers billing)" = 3 ]; }
    wait_for 30 "three consumers on billing" three ||
        { echo "    FAIL: billing's queue does not have three consumers"; ok=0; }
    for s in billing billing@3; do red0=$((red0 + $(metric "$s" ordersuite_messages_redelivered_total))); done
    api2="http://127.0.0.1:$(svc_port order-api@2)"
    LOAD_URLS="$API,$api2" load_start "$TAG" "$rate" "$secs" --sales 100
    # Mid-burst: a quarter of the run's orders confirmed first.
    load_flowing $((rate * secs / 4)) || ok=0
    kill -STOP "$(pid_of billing@2)" "$(pid_of order-api@2)"
    t0=$(now_ms)
    # The other two billings ack within milliseconds: five or more unacked
    # in the queue are deliveries the stopped one holds.
    held() { local n; n=$(queue_unacked billing) && [ "$n" -ge 5 ]; }
    if wait_for 15 "billing@2 to hold deliveries unacked" held; then
        echo "    billing@2 and order-api@2 stopped; $(elapsed_s "$t0") s later billing's queue has $(queue_unacked billing) deliveries unacked"
    else
        echo "    FAIL: billing@2 stopped held no deliveries within 15 s"
        ok=0
    fi
    svc kill billing@2 order-api@2
    t0=$(now_ms)
    echo "    killed billing@2 and order-api@2 (kill -9)"
    kill -0 "$LOAD_PID" 2>/dev/null || { echo "    FAIL: the load ended before the kill"; ok=0; }
    load_wait || ok=0
    # The first second, after the kill, in which orders placed after it
    # were confirmed at 80 % of the rate: its end, from the kill.
    need=$(((rate * 8 + 9) / 10))
    r=$(psql -qAt "$ORDERS_OWNER_DATABASE_URL" -v tag="$TAG" -v t0="$t0" -v need="$need" <<'SQL'
WITH c AS (SELECT t.at FROM orders.order_timeline t JOIN orders.orders o ON o.id = t.order_id
            WHERE o.customer_id = :'tag' AND t.status = 'CONFIRMED'
              AND o.created_at >= to_timestamp(:t0 / 1000.0))
SELECT round(extract(epoch FROM min(e.at) - to_timestamp(:t0 / 1000.0))::numeric, 1)
  FROM c e
 WHERE (SELECT count(*) FROM c w WHERE w.at > e.at - interval '1 second' AND w.at <= e.at) >= :need;
SQL
    )
    if [ -n "$r" ]; then
        r="${r}s"
        echo "    orders placed after the kills confirmed at >= $need/s ${r} after them"
    else
        r="never"
        echo "    FAIL: orders placed after the kills never confirmed at $need/s"
        ok=0
    fi
    grep -E '^accepted by order-api' "$WORK/$TAG.load" | sed 's/^/    /'
    [ "$(grep -oE '[0-9]+ failovers' "$WORK/$TAG.load" | grep -oE '^[0-9]+')" -gt 0 ] ||
        { echo "    FAIL: no request of the load failed over from order-api@2"; ok=0; }
    check "$TAG" "instances: kill a billing + an API" "$r" "$ok"
    for s in billing billing@3; do red=$((red + $(metric "$s" ordersuite_messages_redelivered_total))); done
    echo "    billing@2's deliveries redelivered to billing and billing@3: $((red - red0))"
    if [ $((red - red0)) -lt 1 ]; then
        ROWS[-1]="${ROWS[-1]/ ok/ FAIL (no redelivery)}"
        passed=$((passed - 1)) failed=$((failed + 1))
    fi
    # As found: what was running before runs again, what this started stops.
    for s in "${INSTANCE_EXTRA[@]}"; do
        if [[ " ${before[*]} " == *" $s "* ]]; then
            restart "$s" || true
        else
            svc stop "$s"
        fi
    done
}

# ------------------------------------------------------------------ main
started=0
for s in $(suite_names); do
    svc_ready "$s" && continue
    svc start "$s"
    started=1
done
# Whatever happens, leave the services as they were found, stop the
# cluster instance if it is up and heal a partition if one is cut; and if a
# scenario dies half-way (a command failing under set -e, a signal), it is a
# FAIL row and the table is printed all the same, with a non-zero exit.
cleanup() { [ $started = 1 ] && "$ROOT/scripts/services.sh" stop >/dev/null 2>&1; return 0; }
CURRENT=       # the scenario running
FINISHED=0     # the table printed
CLUSTER_INST=  # tests/cluster-instance.sh while its instance is up
report() { # the rows for a caller (CHAOS_ROWS_FILE), the table, the summary line
    if [ -n "${CHAOS_ROWS_FILE:-}" ]; then
        { printf 'ROW %s\n' "${ROWS[@]}"; echo "COUNTS $passed $failed"; } >"$CHAOS_ROWS_FILE"
    fi
    echo
    printf '%-34s %6s %9s %5s %10s %5s %12s  %s\n' scenario orders completed lost duplicated stuck recovery result
    for r in "${ROWS[@]}"; do echo "$r"; done
    echo "chaos: ${#ROWS[@]} scenario(s) in $(elapsed_s "$t_all") s; work files in $WORK"
    # The summary line run-tests.sh reads (the EXIT trap stops what we started).
    echo "100%: Checks: $((passed + failed)), Failures: $failed, Errors: 0"
    FINISHED=1
}
on_exit() {
    local rc=$?
    set +e
    [ ${#PART_RULES[@]} = 0 ] || part_heal # the partition's rules (chaos-cluster.sh)
    mail_down
    cleanup
    if [ -n "$CLUSTER_INST" ]; then
        bash "$CLUSTER_INST" down >>"$WORK/cluster-instance.log" 2>&1 ||
            echo "    stopping the cluster instance failed; see $WORK/cluster-instance.log"
    fi
    if [ $FINISHED = 0 ] && [ -n "$CURRENT" ]; then
        echo "    FAIL: scenario $CURRENT ended the run (exit $rc); its output is above"
        ROWS+=("$(printf '%-34s %s' "$CURRENT" "FAIL (aborted, exit $rc)")")
        failed=$((failed + 1))
        report
        [ $rc != 0 ] || rc=1
    fi
    exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for s in $(suite_names); do
    wait_for 60 "$s ready" svc_ready "$s" || die "$s did not become ready; see $(svc_log_dir)/$s.log"
done
FOUND_SMTP_URL=$(email_smtp_url)
restock 100000 "make chaos: restock"

t_all=$(now_ms)
for n in "${SCENARIOS[@]}"; do
    declare -F "scenario_$n" >/dev/null || die "no scenario $n (0-7, rowlock, mail, unroutable, saga, instances, ${CLUSTER_SCENARIOS[*]})"
    CURRENT=$n
    "scenario_$n"
done
CURRENT=
if [ $CLUSTER_APART = 1 ]; then
    # This instance's services stay up; the cluster instance's are its own.
    say "the cluster scenarios, on a cluster of three of their own (tests/cluster-instance.sh)"
    CURRENT="cluster scenarios"
    inst="$ROOT/tests/cluster-instance.sh"
    CLUSTER_INST=$inst # the EXIT trap stops it, also if this run dies
    if BUILD=$BUILD bash "$inst" up >"$WORK/cluster-instance.log" 2>&1; then
        # Its failure is its rows' (a FAIL row each), never this run's end;
        # a run that died before writing them is one FAIL row.
        irc=0
        BUILD=$BUILD CHAOS_ROWS_FILE="$WORK/cluster.rows" bash "$inst" run bash "$ROOT/scripts/chaos.sh" \
            $([ $SHORT = 1 ] && echo --short) "${CLUSTER_SCENARIOS[@]}" || irc=$?
        if grep -q '^COUNTS ' "$WORK/cluster.rows" 2>/dev/null; then
            while IFS= read -r r; do ROWS+=("$r"); done < <(sed -n 's/^ROW //p' "$WORK/cluster.rows")
            read -r p f < <(sed -n 's/^COUNTS //p' "$WORK/cluster.rows")
            passed=$((passed + ${p:-0})) failed=$((failed + ${f:-1}))
        else
            ROWS+=("$(printf '%-34s %s' "cluster scenarios" "FAIL (their run ended with exit $irc and no rows)")")
            failed=$((failed + 1))
        fi
    else
        tail -5 "$WORK/cluster-instance.log"
        ROWS+=("$(printf '%-34s %s' "cluster scenarios" "FAIL (the cluster instance did not come up: $WORK/cluster-instance.log)")")
        failed=$((failed + 1))
    fi
    CLUSTER_INST=
    bash "$inst" down >>"$WORK/cluster-instance.log" 2>&1 || echo "    stopping the cluster instance failed; see $WORK/cluster-instance.log"
    CURRENT=
fi
report
[ $failed -eq 0 ]
