#!/usr/bin/env bash
# scripts/fuzz.sh DIR RUNS TARGET... — run each libFuzzer target for RUNS
# executions (bounded), seeded from tests/fuzz/corpus/<target>/. Fails on the
# first crash, leak or sanitizer report.
set -euo pipefail
dir=$1 runs=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
for t in "$@"; do
    corpus="$dir/corpus-$t"
    mkdir -p "$corpus"
    seeds="$root/tests/fuzz/corpus/$t"
    echo "==> fuzz $t: $runs runs"
    "$dir/$t" -runs="$runs" -max_len=4096 -timeout=10 -max_total_time=600 \
        -artifact_prefix="$dir/$t-" "$corpus" ${seeds:+$( [ -d "$seeds" ] && echo "$seeds")} 2>"$dir/$t.log" ||
        { tail -40 "$dir/$t.log"; echo "fuzz $t: FAILED (artifacts in $dir/)"; exit 1; }
    grep -E '^(Done|#[0-9]+ *DONE)' "$dir/$t.log" | tail -1
done
echo "fuzz: all targets clean"
