#!/usr/bin/env bash
# tests/tls-instance.sh up OUT | connections OUT | demo OUT | down — check_tls's own pair of servers, made
# by `make up TLS=1` itself (scripts/up.sh) under var/tls-check/ on ports of
# their own (PostgreSQL 5532, amqps 5771, management 15772; plain AMQP 5772
# is configured off), so a plain `make test` tests TLS without touching the
# servers the other suites use.
#
# up: starts and migrates them (ORDERSUITE_BIN has the binaries), then writes
# to OUT the instance's URLs as export lines (scripts/env.sh), and
# TLS_PLAIN_AMQP_URL / TLS_PLAIN_TO_TLS_AMQP_URL: the administrator without
# TLS, to the plain port and to the TLS port.
set -euo pipefail
# A clean environment: run-tests.sh exports the main pair's env file (its
# passwords and ports), which up.sh would take for this pair's.
if [ -z "${TLS_INSTANCE_CLEAN:-}" ]; then
    exec env -i TLS_INSTANCE_CLEAN=1 ORDERSUITE_TEST_RUN="${ORDERSUITE_TEST_RUN:-}" PATH="$PATH" ORDERSUITE_BIN="${ORDERSUITE_BIN:-}" bash "$0" "$@"
fi
export ORDERSUITE_INSTANCE=tls-check TLS=1
export PG_PORT=5532 AMQP_PORT=5772 AMQPS_PORT=5771 MGMT_PORT=15772
scripts=$(cd "$(dirname "$0")/../scripts" && pwd)
case "${1:-}" in
up)
    out=${2:?usage: tls-instance.sh up OUT}
    bash "$scripts/up.sh"
    bash "$scripts/migrate.sh" "${ORDERSUITE_BIN:?}/migrate"
    bash "$scripts/env.sh" >"$out"
    # shellcheck source=/dev/null
    source "$scripts/lib.sh"
    load_env
    {
        printf 'export TLS_PLAIN_AMQP_URL=%q\n' "amqp://$RABBITMQ_ADMIN_USER:$RABBITMQ_ADMIN_PASSWORD@127.0.0.1:$AMQP_PORT"
        printf 'export TLS_PLAIN_TO_TLS_AMQP_URL=%q\n' "amqp://$RABBITMQ_ADMIN_USER:$RABBITMQ_ADMIN_PASSWORD@127.0.0.1:$AMQPS_PORT"
    } >>"$out"
    ;;
connections)
    # Who is connected to each server, and whether over TLS, as the servers
    # see it: "pg ROLE t|f" (pg_stat_ssl) and "amqp USER true|false"
    # (rabbitmqctl list_connections), one line each, into OUT.
    out=${2:?usage: tls-instance.sh connections OUT}
    # shellcheck source=/dev/null
    source "$scripts/lib.sh"
    load_env
    {
        pg_super -d postgres -At -F ' ' -c "SELECT 'pg', a.usename, s.ssl FROM pg_stat_ssl s
            JOIN pg_stat_activity a USING (pid) WHERE a.backend_type = 'client backend'
            AND a.client_addr IS NOT NULL ORDER BY 2"
        rmqctl -q list_connections user ssl | awk '$2 == "true" || $2 == "false" { print "amqp", $1, $2 }'
    } >"$out"
    ;;
demo)
    # `make demo`'s own script (scripts/demo.sh: services.sh start with this
    # pair's env file, a POS burst, three orders) against the pair, with
    # its services and mail catcher on ports of their own (the tests'
    # +21000: API 29080; mail 22025 and 22080), so a demo or the other
    # suites beside it keep theirs. Writes demo.sh's output to OUT; while the
    # services still run, who is connected to each server to OUT.conn (as
    # connections), the mails the catcher got to OUT.mails (JSON), and what
    # the `curl -N` line the demo printed for its order's status stream
    # prints when pasted (run by bash from the clone's root, as a reader
    # would, its output and exit status) to OUT.stream; then stops the
    # services and the catcher. Exits with demo.sh's status.
    out=${2:?usage: tls-instance.sh demo OUT}
    # shellcheck source=/dev/null
    source "$scripts/lib.sh"
    load_env
    export ORDERSUITE_PORT_OFFSET=21000 HTTP_PORT=29080 MAIL_SMTP_PORT=22025 MAIL_WEB_PORT=22080
    build=$(realpath --relative-to="$ROOT" "$(dirname "${ORDERSUITE_BIN:?}")")
    rm -f "$VAR/mailcatcher.jsonl" "$out.conn" "$out.mails" "$out.stream" # this run's only
    rc=0
    bash "$scripts/demo.sh" "$build" >"$out" 2>&1 || rc=$?
    bash "$0" connections "$out.conn" || rc=$?
    line=$(grep -m1 -E '^ *curl -sN .*/orders/[0-9a-f-]{36}/events$' "$out" || true)
    if [ -n "$line" ]; then
        # A stream that does not end (no final status) is cut: timeout's 124.
        (cd "$ROOT" && timeout 30 bash -c "$line" >"$out.stream" 2>&1) && st=0 || st=$?
        echo "exit status $st" >>"$out.stream"
    else
        echo "no 'curl -sN ... /orders/ID/events' line in the demo's output" >"$out.stream"
    fi
    curl -sf "http://127.0.0.1:$MAIL_WEB_PORT/api/messages" >"$out.mails" || rc=$?
    bash "$scripts/services.sh" stop >/dev/null || rc=$?
    exit $rc
    ;;
down)
    bash "$scripts/down.sh"
    ;;
*)
    echo "usage: tls-instance.sh up OUT | connections OUT | demo OUT | down" >&2
    exit 2
    ;;
esac
