#!/usr/bin/env bash
# scripts/status.sh — what of the project is running, and where.
source "$(dirname "$0")/lib.sh"
load_env
rc=0
if [ -f "$(pg_data)/PG_VERSION" ] && pg_running; then
    echo "postgresql  up    127.0.0.1:$PG_PORT  data $(pg_data)$(! pg2_on || echo "  (all services but $(pg2_services | tr ' ' ','))")"
else
    echo "postgresql  down"
    rc=1
fi
# The second cluster (make up PG2=...): the schemas of the services named.
if pg2_on; then
    if [ -f "$(PG_CLUSTER=2 pg_data)/PG_VERSION" ] && PG_CLUSTER=2 pg_running; then
        echo "postgresql2 up    127.0.0.1:$(pg2_port)  data $(PG_CLUSTER=2 pg_data)  (for $(pg2_services | tr ' ' ','))"
    else
        echo "postgresql2 down  (for $(pg2_services | tr ' ' ','))"
        rc=1
    fi
elif [ -f "$(PG_CLUSTER=2 pg_data)/PG_VERSION" ] && PG_CLUSTER=2 pg_running; then
    # Left running after make up PG2=0: make down stops it.
    echo "postgresql2 up    127.0.0.1:$(pg2_port)  data $(PG_CLUSTER=2 pg_data)  (no service uses it: PG2=0)"
fi
for k in $(seq 1 "$(rmq_nodes)"); do
    export RMQ_NODE=$k
    off=$(rmq_node_off "$k")
    name=rabbitmq
    [ "$(rmq_nodes)" = 1 ] || name="rabbitmq-$k"
    if [ -d "$(rmq_node_dir "$k")" ] && rmq_running; then
        printf '%-11s up    127.0.0.1:%s%s  management http://localhost:%s%s\n' "$name" "$(($(rmq_port) + off))" \
            "$(tls_on && echo " (amqps)")" "$((MGMT_PORT + off))" "$([ "$(rmq_nodes)" = 1 ] || echo "  node $(rmq_node_name "$k")")"
    else
        echo "$name    down"
        rc=1
    fi
done
export RMQ_NODE=1
# A cluster: which node leads each quorum queue, and its members.
if [ "$(rmq_nodes)" -gt 1 ] && rmq_running; then
    echo "queue leaders (vhost queue leader members):"
    mgmt_curl -fsS -m 10 "http://127.0.0.1:$MGMT_PORT/api/queues?columns=vhost,name,type,leader,members" 2>/dev/null |
        python3 -c '
import json, sys
for q in sorted(json.load(sys.stdin), key=lambda q: (q["vhost"], q["name"])):
    if q.get("type") == "quorum":
        print("  %-18s %-32s %-26s %s" % (q["vhost"], q["name"], q.get("leader", "?"),
              ",".join(m.split("@")[0] for m in q.get("members", []))))
' || echo "  (the management API did not answer)"
fi
if [ -d "$VAR/run" ]; then
    "$ROOT/scripts/services.sh" status || true
fi
exit $rc
