#!/usr/bin/env bash
# scripts/demo.sh BUILD — start the suite (infrastructure is up and migrated
# by the Makefile first) and show where to look.
source "$(dirname "$0")/lib.sh"
load_env
BUILD=${1:-build}
say "starting the services"
"$ROOT/scripts/services.sh" start "$BUILD"
cat <<EOT

ordersuite is up.
  RabbitMQ management UI  http://localhost:$MGMT_PORT  (user $RABBITMQ_ADMIN_USER, password: grep RABBITMQ_ADMIN_PASSWORD var/ordersuite.env)
  PostgreSQL              127.0.0.1:$PG_PORT, database ordersuite (passwords in var/ordersuite.env)
  Logs                    var/log/
Stop with: make down
EOT
