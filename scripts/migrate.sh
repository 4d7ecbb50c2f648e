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
MIGRATE_DATABASE_URL=$(db_url ordersuite_owner "$PG_OWNER_PASSWORD") \
    DB_ROLE_PASSWORDS_FILE="$pwfile" "$1" --dir "$ROOT/migrations" || exit 1

# The broker side, as the administrator. First the operator's settings of
# each work queue, as policies (a policy changes in place; a queue argument
# cannot): DELIVERY_LIMIT (default 20), or <NAME>_DELIVERY_LIMIT for one
# service, from the environment or var/ordersuite.env.
source "$ROOT/scripts/broker-perms.sh"
for s in $(suite_names); do
    var="$(up_name "$s")_DELIVERY_LIMIT"
    broker_policy "$ORDERSUITE_VHOST" "$s" "${!var:-${DELIVERY_LIMIT:-20}}" || die "the policy of $s failed"
done
# Then the shared exchanges (no service may declare them) and every service's
# queues, so that nothing is published before the queues that must receive
# it exist.
bin=$(dirname "$1")
for s in $(suite_names); do
    if [ -x "$bin/$s" ]; then
        AMQP_URL=$(amqp_url admin) "$bin/$s" --declare-topology 2>&1 | sed 's/^/    /' || die "$s --declare-topology failed"
    fi
done
