#!/usr/bin/env bash
# bench/otel_down.sh WORK — make bench's receiver-down stage (issue #16: "with
# a receiver down, the bench's accepted/s and completed/s are within noise of
# the figures without export"). scripts/bench.sh runs it after its other
# stages, or alone with BENCH_ONLY=otel_down; it can also be run by hand
# after make up + make migrate (it restarts the services).
#
# Three modes, each a restart of every service and one loadgen run
# (POST /orders at BENCH_OTEL_CONNS connections for BENCH_OTEL_SECONDS,
# drained to a final status with --e2e, checked by the ledger):
#   none     no OTEL_EXPORTER_OTLP_ENDPOINT: no export (the default)
#   refused  the endpoint a port where nothing listens: every export fails
#            at once (connection refused)
#   silent   the endpoint a receiver that accepts connections, reads, and
#            never answers: every export waits OTEL_EXPORTER_OTLP_TIMEOUT
#            (default 10 s) and the queue fills and drops meanwhile; it runs
#            only during its own runs (stopped before the next restart, so
#            the services' flush at exit does not wait on it)
# The exporter's settings are the defaults (OTEL_BSP_*: a user's). Each run
# restocks the SKUs first: a rejected order is cheaper, so not comparable.
# Each service's spans exported and dropped are read from its /metrics when
# loadgen has seen every order final (so a batch still queued is not in them).
# BENCH_OTEL_ROUNDS rounds of the three, interleaved, the order rotated by
# one each round (none refused silent, refused silent none, ...) so a load
# that drifts during the stage (other work on the machine) weighs on every
# mode alike. The noise band is the spread of the no-export runs of this
# same stage: a mode is within noise when its mean lies between their
# lowest and highest figure. bench/otel_down.py writes WORK/otel_down.json
# and WORK/otel_down.md (bench/report.py puts them into the bench's report)
# and prints the ratios.
#
# Knobs: BENCH_OTEL_ROUNDS (default 3), BENCH_OTEL_SECONDS (default 10),
# BENCH_OTEL_CONNS (default 16); BUILD and HTTP_THREADS as make bench's.
source "$(dirname "$0")/../scripts/lib.sh"
load_env
export_suite_urls

WORK=${1:?usage: bench/otel_down.sh WORK}
BIN="$ROOT/${BUILD:-build}/bin"
ROUNDS=${BENCH_OTEL_ROUNDS:-3}
SECS=${BENCH_OTEL_SECONDS:-10}
CONNS=${BENCH_OTEL_CONNS:-16}
API="http://127.0.0.1:$(svc_port order-api)"
DIR="$WORK/otel_down"
mkdir -p "$DIR"
rm -f "$DIR/runs"
for v in ROUNDS SECS CONNS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "BENCH_OTEL_${v/SECS/SECONDS}: a positive whole number, not '${!v}'"
done

free_port() { # FROM: the first port from FROM on that nothing listens on
    local p=$1
    while port_in_use "$p"; do p=$((p + 1)); done
    echo "$p"
}

# The silent receiver: accepts every connection and reads what comes, never
# writes a byte; ends with its parent's kill. Its port in $DIR/silent.port.
SILENT_PID=
start_silent() {
    rm -f "$DIR/silent.port"
    python3 -c '
import os, selectors, socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(128)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(srv.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is srv:
            c, _ = srv.accept()
            sel.register(c, selectors.EVENT_READ)
        elif not key.fileobj.recv(65536):
            sel.unregister(key.fileobj)
            key.fileobj.close()
' "$DIR/silent.port" >"$DIR/silent.log" 2>&1 &
    SILENT_PID=$!
    wait_for 10 "the silent receiver" test -s "$DIR/silent.port" || die "the silent receiver did not start; see $DIR/silent.log"
}
stop_silent() {
    if [ -n "$SILENT_PID" ]; then
        kill "$SILENT_PID" 2>/dev/null || true
        wait "$SILENT_PID" 2>/dev/null || true # its status is the kill's
    fi
    SILENT_PID=
}
trap stop_silent EXIT

# restart MODE: every service stopped, then started with MODE's endpoint.
restart() {
    local endpoint=
    case "$1" in
    refused) endpoint="http://127.0.0.1:$(free_port 14318)" ;;
    silent) endpoint="http://127.0.0.1:$(cat "$DIR/silent.port")" ;;
    esac
    "$ROOT/scripts/services.sh" stop >/dev/null
    if [ -n "$endpoint" ]; then
        OTEL_EXPORTER_OTLP_ENDPOINT=$endpoint "$ROOT/scripts/services.sh" start >/dev/null
    else
        env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
            "$ROOT/scripts/services.sh" start >/dev/null
    fi
    for s in $(suite_names); do
        wait_for 30 "$s" svc_ready "$s" || die "$s is not ready; see $(svc_log_dir)/$s.log"
    done
    echo "$endpoint"
}

# spans TAG: each service's exported and dropped span counters, "name exported dropped".
spans() {
    local s p m
    for s in $(suite_names); do
        p=$(svc_ops_port "$s")
        m=$(curl -fsS -m 5 "http://127.0.0.1:${p:-$(svc_port "$s")}/metrics") || die "no /metrics from $s"
        echo "$s $(echo "$m" | awk '/^ordersuite_otel_spans_exported_total/ { print $2 }') $(echo "$m" | awk '/^ordersuite_otel_spans_dropped_total/ { print $2 }')"
    done >"$DIR/$1.spans"
}

modes=(none refused silent)
printf 'date %s\ncommit %s\ncpus %s\nloadavg_start %s\n' "$(date -u +%Y-%m-%dT%H%M%SZ)" \
    "$(git -C "$ROOT" rev-parse --short HEAD)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)" >"$DIR/meta"
say "receiver down: $ROUNDS rounds of no export / nothing listening / a receiver that never answers, ${SECS}s at $CONNS connections each"
for r in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2; do
        mode=${modes[$(((i + r - 1) % 3))]}
        tag="otel-$mode-$r-$(date -u +%H%M%S)"
        [ "$mode" != silent ] || start_silent
        endpoint=$(restart "$mode")
        # Every order finds stock (a rejected order is cheaper: not comparable).
        restock 2000000 "make bench: otel_down restock"
        API_TOKEN=$API_DEMO_TOKEN DATABASE_URL=$OWNER_DATABASE_URL "$BIN/loadgen" -u "$API" -t "$tag" \
            --skus "$LOAD_SKUS" -c "$CONNS" -d "$SECS" --e2e 300 -o "$DIR/$tag.ids" --json "$DIR/$tag.json" \
            >"$DIR/$tag.out" 2>&1 || die "loadgen $tag failed; see $DIR/$tag.out"
        spans "$tag"
        DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL \
            "$BIN/ledger" --tag "$tag" --ids "$DIR/$tag.ids" --wait 600 >"$DIR/$tag.ledger" 2>&1 ||
            die "the ledger of $tag is not clean; see $DIR/$tag.ledger"
        # The silent receiver goes before the next restart: the services'
        # flush at SIGTERM then fails at once instead of waiting on it (up to
        # 30 s each, docs/TRACING.md), which is not what is measured here.
        stop_silent
        printf '%s %s %s %s\n' "$r" "$mode" "$tag" "${endpoint:--}" >>"$DIR/runs"
        echo "    round $r, $mode${endpoint:+ ($endpoint)}: $(python3 "$ROOT/bench/otel_down.py" run "$DIR/$tag")"
    done
done
echo "loadavg_end $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)" >>"$DIR/meta"
restart none >/dev/null
python3 "$ROOT/bench/otel_down.py" report "$WORK" || die "bench/otel_down.py failed"
