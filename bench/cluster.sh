#!/usr/bin/env bash
# bench/cluster.sh [OUT STAMP] — make bench's cluster stage (issue #18 item 6;
# docs/SCALING.md has the method and the figures): the same loadgen runs on
#   single:  one RabbitMQ node, one instance of each service;
#   cluster: the same RabbitMQ grown to a cluster of three (make up NODES=3:
#            every quorum queue with a member on each node, leaders spread),
#            BENCH_CLUSTER_INSTANCES (2) instances of each service, loadgen's
#            connections spread over the order-apis;
#   again:   one RabbitMQ node made afresh (the same PostgreSQL), one
#            instance each, as single: the machine is shared, and how far
#            the two single-node sets differ says how far its load moved;
# each run drained and checked by the ledger (lost, duplicated, stuck all 0,
# or the stage fails). Reports accepted/s, completed/s and the
# POST->CONFIRMED p99 of each set, the cluster's as ratios of the single
# node's. Writes OUT/STAMP-cluster.{json,md} (OUT default bench/results) and
# OUT/latest-cluster.*.
#
# It runs on a pair of servers of its own (ORDERSUITE_INSTANCE=bench-cluster
# under var/bench-cluster/, made afresh each run: PostgreSQL 5442, AMQP
# 6672/6682/6692, management 16672/16682/16692, Erlang distribution
# 26672/26682/26692, services at +25000: order-api 33080), so make up's own
# servers and a demo on them are untouched; it stops every process it
# started (services, nodes, PostgreSQL, and epmd when none ran before),
# keeps the servers' and services' logs in var/bench/STAMP/cluster-logs/ and
# removes the pair's folder.
#
# Knobs (environment): BENCH_CLUSTER_CONNS (16), BENCH_CLUSTER_SECONDS (the
# accepted-rate run, BENCH_SECONDS or 10), BENCH_CLUSTER_ORDERS (the
# capacity probe, 2000), BENCH_CLUSTER_LATENCY_SECONDS (20),
# BENCH_CLUSTER_INSTANCES (2), HTTP_THREADS (16).
set -euo pipefail
# A clean environment: scripts/bench.sh has exported the main pair's env file
# (its passwords and ports), which up.sh would take for this pair's.
if [ -z "${BENCH_CLUSTER_CLEAN:-}" ]; then
    exec env -i BENCH_CLUSTER_CLEAN=1 PATH="$PATH" BUILD="${BUILD:-build}" \
        BENCH_SECONDS="${BENCH_SECONDS:-}" BENCH_CLUSTER_CONNS="${BENCH_CLUSTER_CONNS:-}" \
        BENCH_CLUSTER_SECONDS="${BENCH_CLUSTER_SECONDS:-}" BENCH_CLUSTER_ORDERS="${BENCH_CLUSTER_ORDERS:-}" \
        BENCH_CLUSTER_LATENCY_SECONDS="${BENCH_CLUSTER_LATENCY_SECONDS:-}" \
        BENCH_CLUSTER_INSTANCES="${BENCH_CLUSTER_INSTANCES:-}" HTTP_THREADS="${HTTP_THREADS:-}" \
        bash "$0" "$@"
fi
export ORDERSUITE_INSTANCE=bench-cluster
export PG_PORT=5442 AMQP_PORT=6672 AMQPS_PORT=6671 MGMT_PORT=16672 ORDERSUITE_PORT_OFFSET=25000
source "$(dirname "$0")/../scripts/lib.sh"
set -o pipefail

BIN="$ROOT/$BUILD/bin"
CONNS=${BENCH_CLUSTER_CONNS:-16}
SECS=${BENCH_CLUSTER_SECONDS:-${BENCH_SECONDS:-10}}
ORDERS=${BENCH_CLUSTER_ORDERS:-2000}
LAT_SECS=${BENCH_CLUSTER_LATENCY_SECONDS:-20}
INSTANCES=${BENCH_CLUSTER_INSTANCES:-2}
export HTTP_THREADS=${HTTP_THREADS:-16}
OUT=${1:-$ROOT/bench/results}
STAMP=${2:-$(date -u +%Y-%m-%dT%H%M%SZ)}
for v in CONNS SECS ORDERS LAT_SECS INSTANCES HTTP_THREADS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "bench/cluster.sh: $v=${!v} is not a positive whole number"
done
for b in loadgen ledger migrate $(suite_names); do
    [ -x "$BIN/$b" ] || die "no $BIN/$b: run make first"
done
# var/ (or the folder it links to) as make up makes it; the run's files go
# beside make bench's, outside the pair's folder, which the next run removes.
ensure_var
WORK="$(dirname "$VAR")/bench/$STAMP"
mkdir -p "$OUT" "$WORK"
t_start=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------- the pair, and its end
epmd_before=0
port_in_use 4369 && epmd_before=1
stop_all() {
    local rc=$?
    set +e
    if [ -f "$ENV_FILE" ]; then
        load_env
        bash "$ROOT/scripts/services.sh" stop >/dev/null 2>&1
        if bash "$ROOT/scripts/down.sh" >/dev/null 2>&1; then
            # The logs kept, the pair's data gone: the next run makes it afresh.
            mkdir -p "$WORK/cluster-logs"
            cp -r "$VAR/log/." "$WORK/cluster-logs/" 2>/dev/null
            rm -rf "$VAR"
        else
            echo "bench/cluster.sh: stopping the bench-cluster servers failed; they are in $VAR" >&2
        fi
    fi
    # epmd, started by the first node when none ran in this network
    # namespace, and only once no node of any instance is registered with it
    # (epmd -names): another instance's node may have come up meanwhile.
    if [ "$epmd_before" = 0 ]; then
        local pid
        pid=$(ss -ltnpH 'sport = :4369' 2>/dev/null | sed -n 's/.*"epmd",pid=\([0-9]*\).*/\1/p' | head -1)
        if [ -n "$pid" ] && ! epmd -names 2>/dev/null | grep -q '^name '; then
            kill "$pid" 2>/dev/null
        fi
    fi
    exit $rc
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Made afresh: a cluster cannot go back to one node (scripts/up.sh), and the
# single-node run must start from one.
if [ -f "$ENV_FILE" ]; then
    bash "$ROOT/scripts/down.sh" >/dev/null || die "stopping an earlier bench-cluster pair failed"
fi
rm -rf "$VAR"

say "cluster stage $STAMP: its own pair (PostgreSQL $PG_PORT, RabbitMQ $AMQP_PORT, services +$ORDERSUITE_PORT_OFFSET), one node first"
NODES=1 bash "$ROOT/scripts/up.sh" >"$WORK/cluster-up1.out" 2>&1 || die "make up NODES=1 failed; see $WORK/cluster-up1.out"
bash "$ROOT/scripts/migrate.sh" "$BIN/migrate" >"$WORK/cluster-migrate1.out" 2>&1 ||
    die "make migrate failed; see $WORK/cluster-migrate1.out"
load_env
export_suite_urls

# --------------------------------------------------------------- helpers
# ledger_wait TAG: waits for the run to drain and checks it; prints the
# RESULT line. Not called in a $(...): its die would end only that subshell.
ledger_wait() {
    local rc=0
    DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL \
        "$BIN/ledger" --tag "$1" --ids "$WORK/$1.ids" --wait 600 >"$WORK/$1.ledger" 2>&1 || rc=$?
    echo "    drained: $(tail -1 "$WORK/$1.ledger")"
    [ $rc -eq 0 ] || die "the ledger of $1 is not clean; see $WORK/$1.ledger"
}
loadgen() { # TAG ARGS...: one loadgen run, JSON in $WORK/TAG.json
    local tag=$1
    shift
    API_TOKEN=$API_DEMO_TOKEN DATABASE_URL=$OWNER_DATABASE_URL "$BIN/loadgen" -u "$API" -t "$tag" --skus "$LOAD_SKUS" \
        -o "$WORK/$tag.ids" --json "$WORK/$tag.json" "$@" >"$WORK/$tag.out" 2>&1 ||
        die "loadgen $tag failed; see $WORK/$tag.out"
    sed 's/^/    /' "$WORK/$tag.out"
}
all_ready() { # N: every instance of every service answers /readyz
    local s k
    for s in $(suite_names); do
        for k in $(seq 1 "$1"); do svc_ready "$(inst_name "$s" "$k")" || return 1; done
    done
}
# start_services N: N instances of each service (scripts/services.sh,
# INSTANCES_<name>), and API, the order-apis' URLs for loadgen's -u.
start_services() {
    local s k
    for s in $(suite_names); do export "INSTANCES_${s//-/_}=$1"; done
    bash "$ROOT/scripts/services.sh" start >"$WORK/services-$1.out" 2>&1 ||
        die "starting the services failed; see $WORK/services-$1.out"
    wait_for 60 "the services" all_ready "$1" || die "the services are not ready; see $(svc_log_dir)/"
    API=
    for k in $(seq 1 "$1"); do
        API="${API:+$API,}http://127.0.0.1:$(svc_port "$(inst_name order-api "$k")")"
    done
}
stop_services() {
    bash "$ROOT/scripts/services.sh" stop >/dev/null || die "stopping the services failed"
}

# run_set NAME: the stage's runs, the same for both shapes: a warm-up, the
# accepted rate (CONNS connections as fast as answered for SECS), a capacity
# probe (ORDERS orders; completed/s), and the latency run at RATE orders/s
# (half the single node's capacity, fixed by the first set). Every run waits
# (--e2e) for its orders to be final before the ledger looks: the ledger
# reads the unacked counts from the management API's samples (5 s apart), and
# right after a short run the sample it reads can be one taken before the
# last deliveries (it saw 0, then 23 on its next look, and failed a run
# whose orders were all CONFIRMED).
RATE=
run_set() {
    local n=$1
    cut -d' ' -f1 /proc/loadavg >"$WORK/$n.load0"
    say "$n: warm-up, 5 s at $CONNS connections"
    loadgen "$n-warm-$STAMP" -c "$CONNS" -d 5 --e2e 300
    ledger_wait "$n-warm-$STAMP"
    say "$n: orders accepted, ${SECS}s at $CONNS connections"
    loadgen "$n-acc-$STAMP" -c "$CONNS" -d "$SECS" --e2e 300
    ledger_wait "$n-acc-$STAMP"
    say "$n: capacity probe, $ORDERS orders at $CONNS connections, as fast as answered"
    loadgen "$n-cap-$STAMP" -c "$CONNS" -n "$ORDERS" --e2e 300
    ledger_wait "$n-cap-$STAMP"
    if [ -z "$RATE" ]; then
        RATE=$(python3 -c "import json;print(max(1,int(json.load(open('$WORK/$n-cap-$STAMP.json'))['e2e']['completed_per_s'])//2))")
    fi
    say "$n: ${LAT_SECS}s at $RATE orders/s for the POST->CONFIRMED latency"
    loadgen "$n-lat-$STAMP" -c "$CONNS" -d "$LAT_SECS" -r "$RATE" --e2e 300
    ledger_wait "$n-lat-$STAMP"
    cut -d' ' -f1 /proc/loadavg >"$WORK/$n.load1"
}

# ------------------------------------------------------------ single node
start_services 1
restock 2000000 "make bench cluster stage: restock"
run_set single
stop_services

# ----------------------------------------- cluster of three, N instances
say "growing the pair's RabbitMQ to a cluster of three (make up NODES=3, make migrate)"
NODES=3 bash "$ROOT/scripts/up.sh" >"$WORK/cluster-up3.out" 2>&1 || die "make up NODES=3 failed; see $WORK/cluster-up3.out"
bash "$ROOT/scripts/migrate.sh" "$BIN/migrate" >"$WORK/cluster-migrate3.out" 2>&1 ||
    die "make migrate on the cluster failed; see $WORK/cluster-migrate3.out"
load_env
export_suite_urls
RMQ_NODE=1 rmqctl -q list_queues name type leader members --formatter json >"$WORK/cluster-queues.json" 2>/dev/null ||
    die "listing the cluster's queues failed"
start_services "$INSTANCES"
run_set cluster
stop_services

# ------------------------------------------------- one node again, afresh
# The way back to one node that up.sh's refusal names: the servers down,
# the broker's data removed (every run above was drained: nothing is lost
# with it). The pair's env file still records 3 nodes, and up.sh refuses to
# go down from the count it records, also with no data left: the record
# goes back to 1 here.
say "one RabbitMQ node again, made afresh (same PostgreSQL)"
bash "$ROOT/scripts/down.sh" >"$WORK/cluster-down3.out" 2>&1 || die "stopping the cluster failed; see $WORK/cluster-down3.out"
mkdir -p "$WORK/cluster-logs/rabbitmq-cluster"
for k in 1 2 3; do
    cp -r "$(rmq_log_dir "$k")" "$WORK/cluster-logs/rabbitmq-cluster/" 2>/dev/null || true
    rm -rf "$(rmq_node_dir "$k")" "$(rmq_log_dir "$k")"
done
sed -i 's/^ORDERSUITE_NODES=.*/ORDERSUITE_NODES=1/' "$ENV_FILE"
NODES=1 bash "$ROOT/scripts/up.sh" >"$WORK/cluster-up1-again.out" 2>&1 || die "make up NODES=1 failed; see $WORK/cluster-up1-again.out"
bash "$ROOT/scripts/migrate.sh" "$BIN/migrate" >"$WORK/cluster-migrate1-again.out" 2>&1 ||
    die "make migrate failed; see $WORK/cluster-migrate1-again.out"
load_env
export_suite_urls
start_services 1
run_set again
stop_services

t_end=$(date +%s)
python3 "$ROOT/bench/cluster_report.py" "$WORK" "$STAMP" "$OUT" "$((t_end - t_start))" "$(nproc)" \
    "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(git -C "$ROOT" rev-parse --short HEAD)" \
    "$CONNS" "$SECS" "$ORDERS" "$LAT_SECS" "$RATE" "$INSTANCES" "$HTTP_THREADS" ||
    die "writing the cluster report failed"
cp "$OUT/$STAMP-cluster.json" "$OUT/latest-cluster.json"
cp "$OUT/$STAMP-cluster.md" "$OUT/latest-cluster.md"
say "cluster stage done in $((t_end - t_start)) s: bench/results/$STAMP-cluster.{json,md} (and latest-cluster.*)"
cat "$OUT/$STAMP-cluster.md"
