#!/usr/bin/env bash
# scripts/soak.sh — make soak: steady orders and sales for SOAK_SECONDS
# (default 600) at SOAK_RATE orders/s (default 100); RSS and open fds of
# every service after a warm-up and at the end; then the ledger. Fails when
# anything was lost or duplicated, or a service grew by more than
# SOAK_MAX_RSS_GROWTH_KB (default 20480) or SOAK_MAX_FD_GROWTH (default 8).
source "$(dirname "$0")/lib.sh"
load_env
export_suite_urls
SECS=${SOAK_SECONDS:-600}
RATE=${SOAK_RATE:-100}
MAX_RSS=${SOAK_MAX_RSS_GROWTH_KB:-20480}
MAX_FD=${SOAK_MAX_FD_GROWTH:-8}
BIN="$ROOT/${BUILD:-build}/bin"
TAG=soak-$(date -u +%Y%m%dT%H%M%S)
WORK="$VAR/soak/$TAG"
mkdir -p "$WORK"

sample() { # LABEL: one line per service: name rss_kb fds
    for s in $(suite_names); do
        pid=$(cat "$VAR/run/$s.pid" 2>/dev/null) || die "$s is not running"
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
        fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
        echo "$s $rss $fds"
    done >"$WORK/$1"
}

"$ROOT/scripts/services.sh" start >/dev/null
for s in $(suite_names); do wait_for 60 "$s" svc_ready "$s" || die "$s is not ready"; done
restock 1000000 "make soak: restock"

say "soak $TAG: $RATE orders/s and $((RATE / 10)) sales/s for $SECS s"
API_TOKEN=$API_DEMO_TOKEN DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$POS_AMQP_URL "$BIN/loadgen" -t "$TAG" -c 8 --skus "$LOAD_SKUS" -r "$RATE" \
    -d "$SECS" --sales $((RATE * SECS / 10)) --retry 60 -o "$WORK/ids" >"$WORK/load" 2>&1 &
load=$!
# Warm-up: the first minute (or a tenth of a short run) fills pools and caches.
warm=$((SECS / 10 < 60 ? SECS / 10 : 60))
# A duration, not a condition: it ends early only if loadgen died.
wait_for "$warm" "warm-up" bash -c "! kill -0 $load 2>/dev/null" || true
sample start
wait $load || { cat "$WORK/load"; die "loadgen failed"; }
sample end
sed 's/^/    /' "$WORK/load"
DATABASE_URL=$OWNER_DATABASE_URL AMQP_URL=$TEST_AMQP_URL "$BIN/ledger" --tag "$TAG" \
    --ids "$WORK/ids" --wait 300 | tee "$WORK/ledger" | sed 's/^/    /'
lrc=${PIPESTATUS[0]}

bad=0
printf '    %-10s %10s %10s %8s %8s %8s %8s\n' service rss_start rss_end growth fd_start fd_end growth
while read -r s r0 f0 && read -r _ r1 f1 <&3; do
    printf '    %-10s %8s kB %8s kB %+8d %8s %8s %+8d\n' "$s" "$r0" "$r1" $((r1 - r0)) "$f0" "$f1" $((f1 - f0))
    [ $((r1 - r0)) -le "$MAX_RSS" ] && [ $((f1 - f0)) -le "$MAX_FD" ] || bad=1
done <"$WORK/start" 3<"$WORK/end"
[ $lrc -eq 0 ] || die "the ledger is not clean"
[ $bad -eq 0 ] || die "a service grew beyond the limits"
say "soak clean: $SECS s, files in $WORK"
