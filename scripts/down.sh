#!/usr/bin/env bash
# scripts/down.sh — stop the services started by 'make demo', then the
# project's RabbitMQ node and PostgreSQL cluster. Data under var/ is kept.
source "$(dirname "$0")/lib.sh"
load_env

if [ -d "$VAR/run" ]; then
    "$ROOT/scripts/services.sh" stop || true
fi
# Both clusters (the second, make up PG2=..., whenever it has data: it may
# run while the env file no longer names any service for it).
for PG_CLUSTER in 1 2; do
    export PG_CLUSTER
    if [ -f "$(pg_data)/PG_VERSION" ] && pg_running; then
        say "stopping PostgreSQL$([ "$PG_CLUSTER" = 1 ] || echo " 2")"
        pgctl stop -m fast -w -t 60 >/dev/null || die "PostgreSQL$([ "$PG_CLUSTER" = 1 ] || echo " 2") did not stop; see $(pg_log_dir)/"
    fi
done
export PG_CLUSTER=1
# A cluster's nodes from the last to node 1 (make up starts them all at once,
# so the order only keeps node 1, the default one, up the longest).
# Each rabbitmqctl bounded (lib.sh rmqctl): a node that cannot answer must
# not hang make down, nor the EXIT traps of the tests that stop their own.
export RMQCTL_TIMEOUT_S=${RMQCTL_TIMEOUT_S:-180}
for k in $(seq "$(rmq_nodes)" -1 1); do
    export RMQ_NODE=$k
    # ping, not status: a node whose VM runs while RabbitMQ is paused or
    # still starting (status fails then) is stopped too.
    if [ -d "$(rmq_node_dir "$k")" ] && { rmq_running || rmqctl -q ping >/dev/null 2>&1; }; then
        say "stopping RabbitMQ$([ "$(rmq_nodes)" = 1 ] || echo " node $k")"
        rmqctl -q shutdown >/dev/null 2>&1 || rmqctl -q stop >/dev/null 2>&1 || die "RabbitMQ$([ "$(rmq_nodes)" = 1 ] || echo " node $k") did not stop"
    fi
done
export RMQ_NODE=1
# Second pairs of servers under var/NAME/ (check_tls's TLS pair, when a run
# of it ended before it could stop them).
if [ -z "${ORDERSUITE_INSTANCE:-}" ]; then
    for f in "$VAR"/*/ordersuite.env; do
        [ -f "$f" ] || continue
        ORDERSUITE_INSTANCE=$(basename "$(dirname "$f")") bash "$0"
    done
fi
say "down${ORDERSUITE_INSTANCE:+ ($ORDERSUITE_INSTANCE)}"
