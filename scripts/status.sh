#!/usr/bin/env bash
# scripts/status.sh — what of the project is running, and where.
source "$(dirname "$0")/lib.sh"
load_env
rc=0
if [ -f "$(pg_data)/PG_VERSION" ] && pg_running; then
    echo "postgresql  up    127.0.0.1:$PG_PORT  data $(pg_data)"
else
    echo "postgresql  down"
    rc=1
fi
if [ -d "$VAR/rabbitmq" ] && rmq_running; then
    echo "rabbitmq    up    127.0.0.1:$(rmq_port)$(tls_on && echo " (amqps)")  management http://localhost:$MGMT_PORT"
else
    echo "rabbitmq    down"
    rc=1
fi
if [ -d "$VAR/run" ]; then
    "$ROOT/scripts/services.sh" status || true
fi
exit $rc
