#!/usr/bin/env bash
# scripts/run-tests.sh BUILD — run every Check suite in BUILD/test against the
# project's own servers (make up + make migrate have run), one after another.
# Prints each suite's Check summary, then a total line; exits non-zero if any
# suite failed. SUITES="check_x ..." limits the run to those suites.
source "$(dirname "$0")/lib.sh"
BUILD=${1:-build}
[ -f "$ENV_FILE" ] || die "no $ENV_FILE: run 'make up' first"
load_env
set +e

export_suite_urls
# The suites start their own services on the same queues: a running demo
# would take their messages.
running=$("$ROOT/scripts/services.sh" status)
[ -z "$running" ] || die "the suite's services are running (make demo?); the tests consume from
the same queues. Stop them first: make demo-stop
$running"
export ORDERSUITE_ROOT="$ROOT" ORDERSUITE_BIN="$ROOT/$BUILD/bin" ORDERSUITE_TEST_BIN="$ROOT/$BUILD/test"
export ORDERSUITE_VAR="$VAR" PG_PORT AMQP_PORT MGMT_PORT
# Check forks each test; a hung test is killed after CK_DEFAULT_TIMEOUT seconds.
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120}
export CK_VERBOSITY=${CK_VERBOSITY:-normal}

mkdir -p "$VAR/log/tests"
passed=0 failed=0 bad_suites=()
# SUITES="check_db check_spine" runs only those.
# The Check suites, then the scripted checks (tests/*_check.py), which print
# the same summary line.
for t in "$ROOT/$BUILD"/test/check_* "$ROOT"/tests/*_check.py "$ROOT"/tests/*_check.sh; do
    [ -x "$t" ] || continue
    name=$(basename "${t%.sh}" .py)
    if [ -n "${SUITES:-}" ] && ! [[ " $SUITES " == *" $name "* ]]; then
        continue
    fi
    echo "--- $name"
    out=$("$t" 2>"$VAR/log/tests/$name.stderr")
    rc=$?
    echo "$out"
    line=$(echo "$out" | grep -E '^[0-9]+%: Checks: [0-9]+' | tail -1)
    if [ -n "$line" ]; then
        checks=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
        fails=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
        errs=$(echo "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
        passed=$((passed + checks - fails - errs))
        failed=$((failed + fails + errs))
    fi
    if [ $rc -ne 0 ] || [ -z "$line" ]; then
        bad_suites+=("$name")
        [ -n "$line" ] || failed=$((failed + 1))
        echo "    (stderr of $name: $VAR/log/tests/$name.stderr)"
    fi
done
echo
if [ ${#bad_suites[@]} -gt 0 ]; then
    echo "failing suites: ${bad_suites[*]}"
fi
echo "checks: $passed passed, $failed failed"
[ ${#bad_suites[@]} -eq 0 ]
