#!/usr/bin/env bash
# scripts/run-tests.sh [--units | --no-units] BUILD — run every Check suite in
# BUILD/test against the project's own servers (make up has run), one after
# another. Prints each suite's Check summary, then a total line; exits
# non-zero if any suite failed. SUITES="check_x ..." limits the run to those
# suites; a name that is no suite is an error.
#
# The unit suites (BUILD/test/check_units_*: pure logic, no server, under 2 s
# together) run first. --units runs only them, without servers (make test
# does so before make up, so that a logic error fails in seconds);
# --no-units runs the rest (make test's second step).
#
# The tests run in their own database and vhost (lib.sh use_test_env), which
# this script empties, creates and migrates first, so every run starts from
# the same state (nothing left by an earlier run, a killed test or an older
# topology): a demo running beside them keeps its queues, messages and rows
# (tests/isolation_check.sh checks it).
source "$(dirname "$0")/lib.sh"
UNITS=all
case "${1:-}" in
--units) UNITS=only && shift ;;
--no-units) UNITS=none && shift ;;
esac
BUILD=${1:-build}

# Every suite there is (the unit suites first), and the ones asked for. A
# binary whose tests/check_*.c is gone (renamed or merged) is left over from
# an older build, not a suite.
ALL=()
suite() { [ -x "$1" ] && { [[ "$1" != "$ROOT/$BUILD"/test/* ]] || [ -f "$ROOT/tests/$(basename "$1").c" ]; }; }
for t in "$ROOT/$BUILD"/test/check_units_*; do
    suite "$t" && ALL+=("$t")
done
for t in "$ROOT/$BUILD"/test/check_* "$ROOT"/tests/*_check.py "$ROOT"/tests/*_check.sh; do
    case "$(basename "$t")" in check_units_*) continue ;; esac
    suite "$t" && ALL+=("$t")
done
for want in ${SUITES:-}; do
    found=0
    for t in "${ALL[@]}"; do
        [ "$(basename "${t%.sh}" .py)" = "$want" ] && found=1
    done
    [ $found = 1 ] || die "SUITES: no suite named '$want' (the suites: $(for t in "${ALL[@]}"; do basename "${t%.sh}" .py; done | tr '\n' ' '))"
done

is_unit() { [[ "$(basename "$1")" == check_units_* ]]; }
wanted() { [ -z "${SUITES:-}" ] || [[ " $SUITES " == *" $(basename "${1%.sh}" .py) "* ]]; }

passed=0 failed=0 bad_suites=()
# Runs suite $1 and adds its Check summary to the totals.
run_suite() {
    local t=$1 name out rc line checks fails errs
    name=$(basename "${t%.sh}" .py)
    echo "--- $name"
    out=$("$t" 2>"$LOGDIR/$name.stderr")
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
        echo "    (stderr of $name: $LOGDIR/$name.stderr)"
    fi
}
summary() {
    echo
    if [ ${#bad_suites[@]} -gt 0 ]; then
        echo "failing suites: ${bad_suites[*]}"
    fi
    echo "checks: $passed passed, $failed failed"
    [ ${#bad_suites[@]} -eq 0 ]
}

# Check forks each test; a hung test is killed after CK_DEFAULT_TIMEOUT seconds.
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120}
export CK_VERBOSITY=${CK_VERBOSITY:-normal}

# The unit suites need no server: they run before anything is checked or
# reset, and alone with --units.
if [ $UNITS != none ]; then
    LOGDIR="$VAR/log/tests"
    mkdir -p "$LOGDIR"
    set +e
    for t in "${ALL[@]}"; do
        is_unit "$t" && wanted "$t" && run_suite "$t"
    done
    set -e
    if [ $UNITS = only ]; then
        [ $((passed + failed)) -eq 0 ] && exit 0 # none asked for
        summary
        exit
    fi
fi

[ -f "$ENV_FILE" ] || die "no $ENV_FILE: run 'make up' first"
load_env
# The suites' own helpers (tests/testutil*.c, URL edits in the suites) speak
# plain AMQP and build plain database URLs; TLS has a suite of its own
# (check_tls, with its own TLS pair), so the servers here must be plain.
tls_on && die "the servers run with TLS (make up TLS=1); the suites need them plain and test TLS
with a pair of their own (check_tls). Run: make down && make up TLS=0 && make test"
# The suites read every schema through OWNER_DATABASE_URL, on one cluster;
# the placement of a schema on a second cluster has a check of its own
# (pg2_check, with its own pair of clusters).
pg2_on && die "the servers run with PG2=$ORDERSUITE_PG2 (a second PostgreSQL cluster); the suites
need one cluster and test PG2 with clusters of their own (pg2_check). Run: make up PG2=0 && make test"
use_test_env
say "the tests' database $ORDERSUITE_DB and vhost $ORDERSUITE_VHOST, made afresh"
# A fresh database: dropped (ending what still holds it) and made again by
# migrate. Only ever TEST_DB and TEST_VHOST, never the dev ones.
PGPASSWORD=$PG_OWNER_PASSWORD psql -X -q -v ON_ERROR_STOP=1 "postgresql://ordersuite_owner@127.0.0.1:$PG_PORT/postgres" \
    -c "DROP DATABASE IF EXISTS $TEST_DB WITH (FORCE)" >"$VAR/log/tests-reset.log" 2>&1 ||
    die "dropping the tests' database failed; see $VAR/log/tests-reset.log"
# An empty vhost: its queues and exchanges deleted through the management API
# (the vhost itself and its users' permissions, made by make up, stay).
# (The password goes to curl on stdin, never on its command line.)
mgmt() { curl -fsS -m 10 -K - "$@" <<<"user = \"$RABBITMQ_ADMIN_USER:$RABBITMQ_ADMIN_PASSWORD\""; }
for kind in queues exchanges; do
    names=$(mgmt "http://127.0.0.1:$MGMT_PORT/api/$kind/$TEST_VHOST?columns=name" |
        python3 -c 'import json, sys; print("\n".join(x["name"] for x in json.load(sys.stdin)))') ||
        die "listing the $kind of vhost $TEST_VHOST failed (make up?)"
    for n in $names; do
        case "$n" in amq.*) continue ;; esac
        mgmt -X DELETE "http://127.0.0.1:$MGMT_PORT/api/$kind/$TEST_VHOST/$n" >/dev/null ||
            die "deleting $n in vhost $TEST_VHOST failed"
    done
done
bash "$ROOT/scripts/migrate.sh" "$ROOT/$BUILD/bin/migrate" >"$VAR/log/tests-migrate.log" 2>&1 ||
    die "migrating the tests' database failed; see $VAR/log/tests-migrate.log"
# pg_stat_statements (make up loads it) in the tests' database, in a schema
# of its own that only order-api's role may use (as itself it reads its own
# statements' text): check_orders counts the statements its POSTs make.
pg_super -d "$TEST_DB" -c 'CREATE SCHEMA IF NOT EXISTS stats' \
    -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA stats' \
    -c 'GRANT USAGE ON SCHEMA stats TO orders' >>"$VAR/log/tests-migrate.log" 2>&1 ||
    die "creating pg_stat_statements in the tests' database failed; see $VAR/log/tests-migrate.log"
set +e
export_suite_urls
export ORDERSUITE_ROOT="$ROOT" ORDERSUITE_BIN="$ROOT/$BUILD/bin" ORDERSUITE_TEST_BIN="$ROOT/$BUILD/test"
export ORDERSUITE_VAR="$VAR" PG_PORT AMQP_PORT AMQPS_PORT MGMT_PORT
LOGDIR="$VAR/log/tests"
mkdir -p "$LOGDIR"
# Every process a suite starts inherits this mark. A suite whose fixture
# fails half-way (Check runs no teardown after a failed setup) can leave the
# services it started running, holding their ports and queues, and the next
# suites then fail for it: after each suite, the project's executables (and
# mail catchers) that carry this run's mark are ended and named.
export ORDERSUITE_TEST_RUN="$$.$(date +%s%N)"
reap_leftovers() { # SUITE
    local p exe n=0 names=""
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" != $$ ] || continue
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        case "$exe" in
        "$ROOT/$BUILD/bin/"*) ;;
        */python3*) tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "$ROOT/tools/mailcatcher/" || continue ;;
        *) continue ;;
        esac
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "ORDERSUITE_TEST_RUN=$ORDERSUITE_TEST_RUN" || continue
        kill -KILL "${p#/proc/}" 2>/dev/null && n=$((n + 1)) && names="$names $(basename "$exe")"
    done
    [ $n = 0 ] || echo "    ($1 left $n process(es) running; ended:$names)"
}
# SUITES="check_db check_spine" runs only those.
# The Check suites, then the scripted checks (tests/*_check.py), which print
# the same summary line.
for t in "${ALL[@]}"; do
    is_unit "$t" || ! wanted "$t" || { run_suite "$t"; reap_leftovers "$(basename "${t%.sh}" .py)"; }
done
summary
