#!/usr/bin/env bash
# scripts/down.sh — stop the services started by 'make demo', then the
# project's RabbitMQ node and PostgreSQL cluster. Data under var/ is kept.
source "$(dirname "$0")/lib.sh"
load_env

if [ -d "$VAR/run" ]; then
    "$ROOT/scripts/services.sh" stop || true
fi
if [ -f "$(pg_data)/PG_VERSION" ] && pg_running; then
    say "stopping PostgreSQL"
    pgctl stop -m fast -w -t 60 >/dev/null || die "PostgreSQL did not stop; see $VAR/log/postgresql/"
fi
# A cluster's nodes from the last to node 1 (make up starts them all at once,
# so the order only keeps node 1, the default one, up the longest).
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
