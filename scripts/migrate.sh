#!/usr/bin/env bash
# scripts/migrate.sh MIGRATE_BIN — apply the migrations to the project's own
# cluster as the owner role, then set the service roles' passwords from
# var/ordersuite.env (PG_<SERVICE>_PASSWORD). The database (ORDERSUITE_DB,
# created when missing) and the vhost (ORDERSUITE_VHOST) are the
# environment's: the dev one unless the caller ran use_test_env (lib.sh).
source "$(dirname "$0")/lib.sh"
[ -f "$ENV_FILE" ] || die "no $ENV_FILE: run 'make up' first"
load_env
pwfile="$VAR/db-role-passwords"
umask 077
: >"$pwfile"
while IFS='=' read -r k v; do
    case "$k" in
    PG_OWNER_PASSWORD) ;;
    PG_*_PASSWORD)
        role=${k#PG_}
        role=${role%_PASSWORD}
        echo "$(echo "$role" | tr 'A-Z' 'a-z') $v" >>"$pwfile"
        ;;
    esac
done <"$ENV_FILE"
umask 022
# Every migration on each cluster (with PG2 the second too): each is a whole
# ordersuite database with the same roles and passwords, and each service
# uses only its own schema on its own cluster (docs/SCALING.md says why).
for c in $(pg_clusters); do
    [ "$c" = 1 ] || say "migrating the second PostgreSQL cluster (127.0.0.1:$(pg2_port))"
    MIGRATE_DATABASE_URL=$(db_url ordersuite_owner "$PG_OWNER_PASSWORD" "$(PG_CLUSTER=$c cur_pg_port)") \
        DB_ROLE_PASSWORDS_FILE="$pwfile" "$1" --dir "$ROOT/migrations" || exit 1
done

# The broker side, as the administrator. First the operator's settings of
# each work queue, as policies (a policy changes in place; a queue argument
# cannot): DELIVERY_LIMIT (default 20), or <NAME>_DELIVERY_LIMIT for one
# service, from the environment or var/ordersuite.env. The worker reads the
# same variables and enforces the limit itself (common/worker.h,
# worker_delivery_limit); the policy is the broker's backstop.
source "$ROOT/scripts/broker-perms.sh"
# bound_keys QUEUE: the routing keys QUEUE is bound with on sales.events,
# separated by spaces; nothing for a queue that does not exist yet. (The
# admin's password reaches python on stdin, never on a command line.)
bound_keys() {
    python3 -c '
import base64, json, sys, urllib.error, urllib.parse, urllib.request
port, vhost, queue = sys.argv[1:4]
user, password = sys.stdin.read().split("\n")[:2]
url = "http://127.0.0.1:%s/api/queues/%s/%s/bindings" % (
    port, urllib.parse.quote(vhost, safe=""), urllib.parse.quote(queue, safe=""))
req = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(
    ("%s:%s" % (user, password)).encode()).decode()})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(" ".join(b["routing_key"] for b in json.load(r) if b["source"] == "sales.events"))
except urllib.error.HTTPError as e:
    if e.code != 404:
        raise
' "$MGMT_PORT" "$ORDERSUITE_VHOST" "$1" <<<"$RABBITMQ_ADMIN_USER
$RABBITMQ_ADMIN_PASSWORD"
}
for s in $(suite_names); do
    var="$(up_name "$s")_DELIVERY_LIMIT"
    broker_policy "$ORDERSUITE_VHOST" "$s" "${!var:-${DELIVERY_LIMIT:-20}}" || die "the policy of $s failed"
done
# Then the shared exchanges (no service may declare them) and every service's
# queues, so that nothing is published before the queues that must receive
# it exist. Each is given the keys its work queue is bound with now
# (BOUND_KEYS, read from the management API: AMQP cannot list bindings), so
# that a key it no longer handles is unbound, also one the contract dropped.
bin=$(dirname "$1")
for s in $(suite_names); do
    if [ -x "$bin/$s" ]; then
        bound=$(bound_keys "$s") || die "listing the bindings of queue $s failed (management API on port $MGMT_PORT)"
        (
            [ -z "$bound" ] || export BOUND_KEYS="$bound" # none: unset (an empty setting is an error)
            AMQP_URL=$(amqp_url admin) "$bin/$s" --declare-topology
        ) 2>&1 | sed 's/^/    /'
        [ "${PIPESTATUS[0]}" = 0 ] || die "$s --declare-topology failed"
    fi
done
# A cluster (make up NODES=3): the queues were declared through node 1, so
# RabbitMQ 3.10 put every quorum queue's leader there (its leader locator for
# quorum queues is the declaring client's node; 3.10 has no
# queue-leader-locator setting). Spread the leaders over the nodes.
if [ "$(rmq_nodes)" -gt 1 ]; then
    # shellcheck disable=SC2046
    as_user rabbitmq env $(rmq_env) "$RMQ_BIN/rabbitmq-queues" -q rebalance quorum >"$VAR/log/rebalance.log" 2>&1 ||
        die "spreading the quorum queues' leaders failed; see $VAR/log/rebalance.log"
    say "quorum queue leaders spread over the $(rmq_nodes) nodes (make status lists them)"
fi
