#!/usr/bin/env bash
# tests/cluster-instance.sh up | run CMD [ARG...] | down — a RabbitMQ
# cluster of three (make up NODES=3 itself: scripts/up.sh) with a PostgreSQL
# of its own, under var/cluster-check/, on ports of their own: PostgreSQL
# 5832, AMQP 5872/5882/5892, management 15872/15882/15892, Erlang
# distribution 25872/25882/25892; its services at the registry's ports
# +23000 (order-api 31080). tests/cluster_check.sh (make test) and make
# chaos's cluster scenarios use it, so neither touches the servers of the
# main instance (5432/5672) or of the tests (+20000) beside it.
#
#   up    starts the servers (what is not running), migrates (the quorum
#         queues get three members, their leaders spread) and writes
#         var/cluster-check/epmd-ours when no epmd ran before (this run
#         started it, so down stops it; an epmd that was there, e.g. the main
#         node's in make test's namespace, stays)
#   run   runs CMD with the instance's environment (ORDERSUITE_INSTANCE,
#         ports, the +23000 service ports), e.g. run scripts/chaos.sh cluster
#   down  stops the instance's services, its three nodes and its PostgreSQL,
#         and the epmd up started, if it did
set -euo pipefail
# A clean environment: a caller (run-tests.sh, make chaos) may have the main
# instance's env file exported (its passwords and ports), which up.sh would
# take for this instance's.
if [ -z "${CLUSTER_INSTANCE_CLEAN:-}" ]; then
    exec env -i CLUSTER_INSTANCE_CLEAN=1 ORDERSUITE_TEST_RUN="${ORDERSUITE_TEST_RUN:-}" PATH="$PATH" HOME="${HOME:-/root}" \
        BUILD="${BUILD:-build}" ORDERSUITE_BIN="${ORDERSUITE_BIN:-}" \
        RMQ_LOG_LEVEL="${RMQ_LOG_LEVEL:-}" CHAOS_ROWS_FILE="${CHAOS_ROWS_FILE:-}" bash "$0" "$@"
fi
export ORDERSUITE_INSTANCE=cluster-check NODES=3 TLS=0
export PG_PORT=5832 AMQP_PORT=5872 AMQPS_PORT=5871 MGMT_PORT=15872
export ORDERSUITE_PORT_OFFSET=23000
ROOT=$(cd "$(dirname "$0")/.." && pwd)
scripts=$ROOT/scripts
bin=${ORDERSUITE_BIN:-$ROOT/${BUILD:-build}/bin}
# shellcheck source=/dev/null
source "$scripts/lib.sh"

epmd_up() { port_in_use 4369; }
# The epmd this instance started: the one listening on 4369 (in this
# network namespace) when epmd-ours says it was not there before.
epmd_pid() { ss -ltnpH 'sport = :4369' 2>/dev/null | grep -o 'epmd",pid=[0-9]*' | head -1 | grep -o '[0-9]*$'; }

case "${1:-}" in
up)
    ensure_var
    if ! epmd_up; then
        touch "$VAR/epmd-ours"
    fi
    bash "$scripts/up.sh"
    bash "$scripts/migrate.sh" "$bin/migrate"
    ;;
run)
    shift
    [ $# -gt 0 ] || die "usage: cluster-instance.sh run CMD [ARG...]"
    exec "$@"
    ;;
down)
    rc=0
    if [ -d "$VAR/run" ]; then
        bash "$scripts/services.sh" stop >/dev/null 2>&1 || rc=1
    fi
    bash "$scripts/down.sh" || rc=1
    if [ -f "$VAR/epmd-ours" ]; then
        pid=$(epmd_pid || true)
        # Only once no node of any instance is registered with it (epmd -names).
        if [ -n "$pid" ] && ! epmd -names 2>/dev/null | grep -q '^name '; then
            kill "$pid" 2>/dev/null || true
        fi
        rm -f "$VAR/epmd-ours"
    fi
    exit $rc
    ;;
*)
    echo "usage: cluster-instance.sh up | run CMD [ARG...] | down" >&2
    exit 2
    ;;
esac
