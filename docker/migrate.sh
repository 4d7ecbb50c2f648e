#!/bin/sh
# docker/migrate.sh — the one-shot `migrate` job of docker-compose.yml:
# migrations as the owner, the service roles' passwords (PG_<ROLE>_PASSWORD),
# then every service's queues declared by the broker's administrator
# (RABBITMQ_ADMIN_USER / _PASSWORD; the services may not declare what is
# shared). The services come from scripts/suite.sh.
set -eu
. /app/scripts/suite.sh
pwfile=$(mktemp)
trap 'rm -f "$pwfile"' EXIT
for name in $(suite_names); do
    role=$(suite_field "$name" 2)
    eval "pw=\${PG_$(up_name "$role")_PASSWORD}"
    echo "$role $pw" >>"$pwfile"
done
MIGRATE_DATABASE_URL="postgresql://ordersuite_owner:${PG_OWNER_PASSWORD}@postgres:5432/ordersuite" \
    DB_ROLE_PASSWORDS_FILE="$pwfile" migrate --dir /app/migrations
for name in $(suite_names); do
    AMQP_URL="amqp://${RABBITMQ_ADMIN_USER}:${RABBITMQ_ADMIN_PASSWORD}@rabbitmq:5672" "$name" --declare-topology
done
echo "migrate: done"
