#!/bin/bash
# docker/postgres-entry.sh — the PostgreSQL container's command. First start:
# initdb (as scripts/up.sh does: superuser only through the local socket),
# the settings of the local cluster, then the migration owner role
# `ordersuite_owner` with PG_OWNER_PASSWORD; `migrate` makes the database and
# the service roles. Every start: exec postgres in the foreground.
set -euo pipefail
: "${PG_OWNER_PASSWORD:?PG_OWNER_PASSWORD is not set (see .env.example)}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<CONF
# ---- ordersuite (docker/postgres-entry.sh; as scripts/up.sh) ----
listen_addresses = '*'
max_connections = 300
shared_buffers = 256MB
wal_buffers = 16MB
checkpoint_timeout = 15min
max_wal_size = 2GB
log_min_messages = warning
log_min_error_statement = error
CONF
    # The containers' network, with passwords; never trust.
    echo 'host all all all scram-sha-256' >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -w -t 60 -o "-c listen_addresses=''" start >/dev/null
    # The password from psql's environment (\getenv), never its command line.
    psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres <<'SQL'
\getenv pw PG_OWNER_PASSWORD
CREATE ROLE ordersuite_owner LOGIN CREATEDB CREATEROLE PASSWORD :'pw';
-- Lets tools and tests end a service's backend (never a superuser's).
GRANT pg_signal_backend TO ordersuite_owner;
SQL
    pg_ctl -D "$PGDATA" -w -t 60 stop >/dev/null
    echo "postgres-entry: cluster made, role ordersuite_owner created"
fi
exec postgres -D "$PGDATA"
