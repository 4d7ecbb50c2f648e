#!/bin/sh
# docker/migrate.sh — the one-shot `migrate` job of docker-compose.yml:
# migrations as the owner, the service roles' passwords, then every
# service's queues declared as that service's own broker user.
set -eu
pwfile=$(mktemp)
trap 'rm -f "$pwfile"' EXIT
for role in orders inventory billing email; do
    var="PG_$(echo "$role" | tr 'a-z' 'A-Z')_PASSWORD"
    eval "pw=\${$var}"
    echo "$role $pw" >>"$pwfile"
done
MIGRATE_DATABASE_URL="postgresql://ordersuite_owner:${PG_OWNER_PASSWORD}@postgres:5432/ordersuite" \
    DB_ROLE_PASSWORDS_FILE="$pwfile" migrate --dir /app/migrations
AMQP_URL="amqp://order-api:${RMQ_ORDER_API_PASSWORD}@rabbitmq:5672" order-api --declare-topology
AMQP_URL="amqp://inventory:${RMQ_INVENTORY_PASSWORD}@rabbitmq:5672" inventory --declare-topology
AMQP_URL="amqp://billing:${RMQ_BILLING_PASSWORD}@rabbitmq:5672" billing --declare-topology
AMQP_URL="amqp://email:${RMQ_EMAIL_PASSWORD}@rabbitmq:5672" email --declare-topology
echo "migrate: done"
