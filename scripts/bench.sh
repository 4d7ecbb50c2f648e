#!/usr/bin/env bash
# scripts/bench.sh — make bench: the suite against the machine's own limits,
# in one run (docs/PERFORMANCE.md explains the method).
#
# Needs make up + make migrate. Restarts the services with the bench's
# settings, restocks the SKUs it orders (through inventory.adjust_stock, so the
# ledger stays true), then measures, in this order:
#   1. PostgreSQL: bench/order_tx.sql with pgbench at 1, 16, 64 clients
#   2. RabbitMQ:   tools/mqbench, confirms to and acks from a quorum queue
#   3. HTTP:       wrk on order-api's /healthz (same server, same threads)
#   4. the suite:  loadgen POST /orders at 1, 16, 64 connections, each run
#                  drained and checked by the ledger before the next, with
#                  PostgreSQL's commits and statements per order
#   5. end to end: a capacity probe, 60 s sustained at 90 % of it (with each
#                  process's CPU seconds and the broker's publishes,
#                  deliveries and acks per order), and a latency run at half
#   (1b. the disk: pg_test_fsync; the order transaction with 16 and 64 orders
#        per commit, BENCH_PG_BATCH)
#   otel_down, receiver down: accepted/s and completed/s without span export and with
#      OTEL_EXPORTER_OTLP_ENDPOINT at a port nothing listens on and at a
#      receiver that never answers, interleaved rounds, against the noise
#      band of the no-export rounds (bench/otel_down.sh says how)
# and writes bench/results/<date>.{json,md,png} and bench/results/latest.*.
#
#   cluster, one RabbitMQ node against a cluster of three: the same loadgen
#      runs on one node, on the cluster with 2 instances of each service and
#      on one node again, each drained and checked by the ledger, as ratios;
#      on a pair of servers of its own (bench/cluster.sh says how)
# Knobs (environment): BENCH_SECONDS (each accepted-rate run, default 10),
# BENCH_SUSTAIN_SECONDS (default 60), HTTP_THREADS (order-api, default 16),
# BENCH_CONNS (default "1 16 64"), BENCH_PG_BATCH (default "16 64"),
# BENCH_OTEL_ROUNDS (otel_down's rounds, default 3; 0 leaves the stage out),
# BENCH_OTEL_SECONDS (its runs, default 10), BENCH_OTEL_CONNS (default 16),
# BENCH_CLUSTER (1; 0 leaves the cluster stage out; bench/cluster.sh lists
# its own knobs).
# BENCH_ONLY=otel_down runs that stage alone (after the restart and restock
# every run starts with) and writes bench/results/<date>-otel_down.{json,md},
# leaving latest.* alone. BENCH_ONLY=cluster runs the cluster stage alone,
# on its own servers (make up's are neither needed nor touched), and writes
# bench/results/<date>-cluster.{json,md} and latest-cluster.*.
# The issue #15 targets are printed met / NOT met; the CPU target compares
# with bench/baseline.json (the CPU per 1 000 orders measured before #15).
#
# bench.sh --needs-main-pair: exit 0 when the run needs make up's own
# servers (every run but BENCH_ONLY=cluster); make bench brings them up then.
source "$(dirname "$0")/lib.sh"

STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
OUT="$ROOT/bench/results"
cluster_stage() {
    BUILD=${BUILD:-build} bash "$ROOT/bench/cluster.sh" "$OUT" "$STAMP" || die "the cluster stage failed"
}
if [ "${1:-}" = --needs-main-pair ]; then
    [ "${BENCH_ONLY:-}" != cluster ]
    exit
fi
if [ "${BENCH_ONLY:-}" = cluster ]; then
    cluster_stage
    exit 0
fi
case "${BENCH_CLUSTER:-1}" in
0 | 1) ;;
*) die "BENCH_CLUSTER: 1 (the cluster stage runs after the others) or 0 (it does not), not '$BENCH_CLUSTER'" ;;
esac

load_env
export_suite_urls
set -o pipefail

BIN="$ROOT/${BUILD:-build}/bin"
SECS=${BENCH_SECONDS:-10}
SUSTAIN=${BENCH_SUSTAIN_SECONDS:-60}
CONNS=${BENCH_CONNS:-1 16 64}
PG_BATCH=${BENCH_PG_BATCH:-16 64}
export HTTP_THREADS=${HTTP_THREADS:-16}
WORK="$VAR/bench/$STAMP"
API="http://127.0.0.1:8080"
mkdir -p "$OUT" "$WORK"
t_start=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

for b in loadgen ledger mqbench order-api; do
    [ -x "$BIN/$b" ] || die "no $BIN/$b: run make first"
done
for t in pgbench wrk gnuplot python3; do
    command -v "$t" >/dev/null || die "$t is not installed: run make deps"
done

ledger_wait() { # TAG: wait for the run to drain, check it; the RESULT line
    DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL \
        "$BIN/ledger" --tag "$1" --ids "$WORK/$1.ids" --wait 600 >"$WORK/$1.ledger" 2>&1
    local rc=$?
    tail -1 "$WORK/$1.ledger"
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

say "bench $STAMP: services restart with HTTP_THREADS=$HTTP_THREADS"
"$ROOT/scripts/services.sh" stop >/dev/null
"$ROOT/scripts/services.sh" start >/dev/null
wait_for 30 "order-api" svc_ready order-api || die "order-api is not ready"
restock 2000000 "make bench: restock"

# One stage alone: its own report, latest.* untouched (a partial run is not
# the bench's figures).
case "${BENCH_ONLY:-}" in
"") ;;
otel_down)
    bash "$ROOT/bench/otel_down.sh" "$WORK" || die "the receiver-down stage failed"
    cp "$WORK/otel_down.json" "$OUT/$STAMP-otel_down.json"
    cp "$WORK/otel_down.md" "$OUT/$STAMP-otel_down.md"
    say "bench/results/$STAMP-otel_down.{json,md}"
    exit 0
    ;;
*) die "BENCH_ONLY: otel_down or cluster (the stages that run alone), not '$BENCH_ONLY'" ;;
esac

# ----------------------------------------------------------------- limits
say "PostgreSQL limit: bench/order_tx.sql (pgbench -M prepared, ${SECS}s per client count)"
pg_limit "$SECS" "$CONNS" "$WORK"

# The database's commit capacity: fsyncs/s of the disk its WAL is on, and the
# order transaction with BENCH_PG_BATCH orders per commit (what group commit
# can reach), at 16 clients.
say "disk limit: pg_test_fsync -s 1 on $VAR's file system"
"$PG_BIN/pg_test_fsync" -s 1 -f "$WORK/fsync.tmp" >"$WORK/pg_test_fsync.out" 2>&1 ||
    die "pg_test_fsync failed; see $WORK/pg_test_fsync.out"
rm -f "$WORK/fsync.tmp"
echo "    $(grep -m1 -E '^\s+fdatasync' "$WORK/pg_test_fsync.out" | tr -s ' ')"
say "PostgreSQL limit, batched: bench/order_tx_batch.sql, $PG_BATCH orders per transaction, 16 clients"
psql -q "$OWNER_DATABASE_URL" -f "$ROOT/bench/setup.sql" || die "bench/setup.sql failed"
for b in $PG_BATCH; do
    pgbench -n -M prepared -c 16 -j 2 -T "$SECS" -D batch="$b" -f "$ROOT/bench/order_tx_batch.sql" \
        "$OWNER_DATABASE_URL" >"$WORK/pgbench-batch$b.out" 2>&1 ||
        die "pgbench failed; see $WORK/pgbench-batch$b.out"
    echo "    $b per transaction: $(grep -E '^tps' "$WORK/pgbench-batch$b.out")"
done
psql -q "$OWNER_DATABASE_URL" -c "TRUNCATE bench.orders, bench.order_lines, bench.order_timeline, bench.outbox"

# The size of the suite's own messages: one order.placed of loadgen's order,
# read (and requeued) from inventory's queue while inventory is stopped.
"$ROOT/scripts/services.sh" stop inventory >/dev/null
API_TOKEN=$API_DEMO_TOKEN "$BIN/loadgen" -u "$API" -t "size-$STAMP" --skus "$LOAD_SKUS" -c 1 -n 1 >/dev/null || die "loadgen failed"
MSG_BYTES=
for _ in $(seq 1 50); do
    MSG_BYTES=$(mgmt_curl -fsS \
        -H 'content-type: application/json' -X POST \
        -d '{"count":1,"ackmode":"reject_requeue_true","encoding":"auto"}' \
        "http://127.0.0.1:$MGMT_PORT/api/queues/%2F/inventory/get" |
        python3 -c 'import json,sys; m=json.load(sys.stdin); print(m[0]["payload_bytes"] if m else "")')
    [ -n "$MSG_BYTES" ] && break
    sleep 0.1
done
"$ROOT/scripts/services.sh" start inventory >/dev/null
[ -n "$MSG_BYTES" ] || die "could not read an order.placed from the inventory queue"
say "RabbitMQ limit: 20000 persistent $MSG_BYTES-byte messages, confirms, quorum queue"
AMQP_URL=$SPINE_AMQP_URL "$BIN/mqbench" -n 20000 -s "$MSG_BYTES" >"$WORK/mqbench.json" ||
    die "mqbench failed"
echo "    $(cat "$WORK/mqbench.json")"
# Consumed as the workers consume (PREFETCH 64; what has arrived, up to
# BATCH_MAX 64, acked with one multiple-ack): the broker-only bound's rate.
AMQP_URL=$SPINE_AMQP_URL "$BIN/mqbench" -n 20000 -s "$MSG_BYTES" -p 64 -a 64 >"$WORK/mqbench-batched.json" ||
    die "mqbench failed"
echo "    $(cat "$WORK/mqbench-batched.json")"

say "HTTP limit: wrk on $API/healthz, 5 s per connection count"
for c in $CONNS; do
    th=2
    [ "$c" -lt 2 ] && th=1
    wrk -t "$th" -c "$c" -d 5 "$API/healthz" >"$WORK/wrk-$c.out" 2>&1 || die "wrk failed"
    echo "    $c connections: $(grep Requests/sec "$WORK/wrk-$c.out")"
done

# -------------------------------------------------------------- the suite
say "warm-up: 5 s at 16 connections"
loadgen "warm-$STAMP" -c 16 -d 5
ledger_wait "warm-$STAMP" | sed 's/^/    /'

# PostgreSQL's work per order in the accepted-rate runs: the database's
# commits (pg_stat_database.xact_commit) and, when pg_stat_statements is
# loaded (scripts/up.sh; a cluster started before needs make down && make up),
# each role's statements, before each run and after it drained.
PGSS=0
if [[ "$(pg_super -At -d "$ORDERSUITE_DB" -c 'SHOW shared_preload_libraries')" == *pg_stat_statements* ]] &&
    pg_super -d "$ORDERSUITE_DB" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements'; then
    PGSS=1
else
    say "pg_stat_statements is not loaded: no statement counts (make down && make up loads it)"
fi
pg_counters() { # FILE: "name value" lines
    pg_super -At -F ' ' -d "$ORDERSUITE_DB" \
        -c "SELECT 'xact_commit', xact_commit FROM pg_stat_database WHERE datname = current_database()" >"$1" ||
        die "reading pg_stat_database failed"
    [ $PGSS = 1 ] || return 0
    pg_super -At -F ' ' -d "$ORDERSUITE_DB" \
        -c "SELECT 'calls.' || r.rolname, sum(s.calls)::bigint FROM pg_stat_statements s
            JOIN pg_roles r ON r.oid = s.userid JOIN pg_database d ON d.oid = s.dbid
            WHERE d.datname = current_database() GROUP BY r.rolname" >>"$1" ||
        die "reading pg_stat_statements failed"
}

say "orders accepted: POST /orders for ${SECS}s at $CONNS connections"
for c in $CONNS; do
    pg_counters "$WORK/acc$c-$STAMP.pg0"
    loadgen "acc$c-$STAMP" -c "$c" -d "$SECS"
    # Piped, not in a $(...): die in a command substitution ends only that
    # subshell, and a run whose ledger was not clean went on.
    ledger_wait "acc$c-$STAMP" | sed 's/^/    drained: /'
    # A busy backend publishes its commit counts at most once a second, an
    # idle one 10 s after its last transaction (PostgreSQL 15): no signal
    # says when, so wait them out (pg_stat_statements counts at once).
    sleep 11
    pg_counters "$WORK/acc$c-$STAMP.pg1"
done

say "end to end: capacity probe (3000 orders, 16 connections, as fast as answered)"
loadgen "cap-$STAMP" -c 16 -n 3000 --e2e 300
ledger_wait "cap-$STAMP" | sed 's/^/    /'
cap=$(python3 -c "import json;print(max(1,int(json.load(open('$WORK/cap-$STAMP.json'))['e2e']['completed_per_s'])))")
rate=$((cap * 9 / 10))
half=$((rate / 2))
# The sustained run's cost: each process's CPU seconds from its start to the
# last order final (loadgen waits for that), and the broker's message
# counters around it (bench/counters.py).
METRICS=
for s in $(suite_names); do
    p=$(svc_ops_port "$s")
    METRICS+="$s=http://127.0.0.1:${p:-$(svc_port "$s")} "
done
counters() { # KIND FILE
    BENCH_METRICS=$METRICS RABBITMQ_ADMIN_USER=$RABBITMQ_ADMIN_USER RABBITMQ_ADMIN_PASSWORD=$RABBITMQ_ADMIN_PASSWORD \
        python3 "$ROOT/bench/counters.py" "$1" "$([ "$1" = cpu ] && echo "$VAR" || echo "http://127.0.0.1:$MGMT_PORT")" \
        "$WORK/$2" || die "reading the $1 counters failed"
}
say "end to end: ${SUSTAIN}s sustained at $rate orders/s (90 % of $cap/s)"
counters amqp sus.amqp0
counters cpu sus.cpu0
loadgen "sus-$STAMP" -c 16 -d "$SUSTAIN" -r "$rate" --e2e 300
counters cpu sus.cpu1
ledger_wait "sus-$STAMP" | sed 's/^/    /'
counters amqp sus.amqp1
say "end to end: 20 s at $half orders/s (half) for the latency"
loadgen "half-$STAMP" -c 16 -d 20 -r "$half" --e2e 300
ledger_wait "half-$STAMP" | sed 's/^/    /'

if [ "${BENCH_OTEL_ROUNDS:-3}" != 0 ]; then
    bash "$ROOT/bench/otel_down.sh" "$WORK" || die "the receiver-down stage failed"
fi

t_end=$(date +%s)
python3 "$ROOT/bench/report.py" "$WORK" "$STAMP" "$OUT" "$((t_end - t_start))" "$HTTP_THREADS" "$MSG_BYTES" \
    "$(nproc)" "$CONNS" "$PG_BATCH" "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(git -C "$ROOT" rev-parse --short HEAD)" || die "writing the report failed"
cp "$OUT/$STAMP.json" "$OUT/latest.json"
cp "$OUT/$STAMP.md" "$OUT/latest.md"
cp "$OUT/$STAMP.png" "$OUT/latest.png"
say "bench done in $((t_end - t_start)) s: bench/results/$STAMP.{json,md,png} (and latest.*)"
cat "$OUT/$STAMP.md"
# After the report: it runs on servers of its own and has its own.
[ "${BENCH_CLUSTER:-1}" = 0 ] || cluster_stage
