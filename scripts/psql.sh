#!/usr/bin/env bash
# scripts/psql.sh [PSQL ARGS...] — psql on the project's database as the
# migration owner (ordersuite_owner), e.g.
#   bash scripts/psql.sh -c "SELECT inventory.adjust_stock('MUG-WHITE', 100, 'delivery 42')"
# on the first PostgreSQL cluster; PG_CLUSTER=2 on the second (make up
# PG2=...: the schemas of the services it names live there, e.g. inventory's).
# The password (var/ordersuite.env) reaches psql in its environment, never on
# its command line, where every user of the machine could read it.
source "$(dirname "$0")/lib.sh"
[ -f "$ENV_FILE" ] || die "no $ENV_FILE: run 'make up' first"
load_env
url=$(db_url ordersuite_owner "$PG_OWNER_PASSWORD" "$(cur_pg_port)")
psql "$url" "$@"
