#!/usr/bin/env bash
# scripts/up.sh — start the project's own PostgreSQL cluster and RabbitMQ node.
#
# Idempotent: what is already running is left alone. Data and logs live under
# var/. Waits (bounded) until both servers answer, and fails fast, naming the
# port or the log to read, instead of hanging.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/broker-perms.sh"

ensure_var
load_env

# First run: fix the ports and make the local secrets, once.
if [ ! -f "$ENV_FILE" ]; then
    umask 077
    cat >"$ENV_FILE" <<EOF
# Written by 'make up' on $(date -u +%FT%TZ). Local development secrets: never commit.
AMQP_PORT=$AMQP_PORT
PG_PORT=$PG_PORT
MGMT_PORT=$MGMT_PORT
RABBITMQ_ADMIN_USER=ordersuite
RABBITMQ_ADMIN_PASSWORD=$(gen_secret)
PG_OWNER_PASSWORD=$(gen_secret)
EOF
    umask 022
    load_env
fi
# A database role and a broker user per service (added to older env files
# too, and for services made later by `make new-service`).
for entry in $BROKER_USERS; do
    var="RMQ_$(up_name "${entry%%:*}")_PASSWORD"
    if [ -z "${!var:-}" ]; then
        echo "$var=$(gen_secret)" >>"$ENV_FILE"
    fi
done
for name in $(suite_names); do
    var="PG_$(up_name "$(suite_field "$name" 2)")_PASSWORD"
    if [ -z "${!var:-}" ]; then
        echo "$var=$(gen_secret)" >>"$ENV_FILE"
    fi
done
load_env

check_port() { # PORT NAME
    if port_in_use "$1"; then
        local who
        who=$(who_listens "$1")
        die "port $1 ($2) is already taken${who:+ by $who}; stop that process or choose another port, e.g. $2=$(($1 + 1)) make up (after rm -rf var/ if the project was set up before)"
    fi
}

# ---------------------------------------------------------------- PostgreSQL
start_postgres() {
    local data sock
    data=$(pg_data)
    sock=$(pg_sock)
    if pg_running; then
        say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
        return
    fi
    check_port "$PG_PORT" PG_PORT
    mkdir -p "$VAR/postgres" "$sock" "$VAR/log/postgresql"
    chown postgres:postgres "$VAR/postgres" "$sock" "$VAR/log/postgresql"
    if [ ! -f "$data/PG_VERSION" ]; then
        say "creating the PostgreSQL cluster in $data"
        # initdb refuses to run as root: run it as the postgres user.
        as_user postgres "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=peer --auth-host=scram-sha-256 >"$VAR/log/postgresql/initdb.log" 2>&1 ||
            die "initdb failed; see $VAR/log/postgresql/initdb.log"
        as_user postgres tee -a "$data/postgresql.conf" >/dev/null <<EOF

# ---- ordersuite (scripts/up.sh) ----
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 300
shared_buffers = 256MB
wal_buffers = 16MB
checkpoint_timeout = 15min
max_wal_size = 2GB
# Durability stays on: synchronous_commit and fsync keep their defaults.
logging_collector = on
log_directory = '$VAR/log/postgresql'
log_filename = 'postgresql.log'
log_min_messages = warning
log_min_error_statement = error
EOF
    fi
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    if ! pgctl start -w -t 60 -l "$VAR/log/postgresql/startup.log" -o "-p $PG_PORT" >/dev/null; then
        die "PostgreSQL did not start; see $VAR/log/postgresql/startup.log and $VAR/log/postgresql/postgresql.log"
    fi
}

# The migration owner role; the database itself and everything in it are made
# by 'make migrate' (tools/migrate), connected as this role.
bootstrap_postgres() {
    wait_for 30 "PostgreSQL" pg_super -d postgres -c 'SELECT 1' ||
        die "PostgreSQL does not answer; see $VAR/log/postgresql/postgresql.log"
    pg_super -d postgres -v pw="$PG_OWNER_PASSWORD" <<'EOF'
SELECT 'CREATE ROLE ordersuite_owner LOGIN CREATEDB CREATEROLE'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ordersuite_owner') \gexec
ALTER ROLE ordersuite_owner PASSWORD :'pw';
-- Lets tools and tests end a service's backend (never a superuser's).
GRANT pg_signal_backend TO ordersuite_owner;
EOF
}

# ------------------------------------------------------------------ RabbitMQ
start_rabbitmq() {
    local r="$VAR/rabbitmq"
    mkdir -p "$r/home" "$r/mnesia" "$VAR/log/rabbitmq"
    cat >"$r/rabbitmq.conf" <<EOF
# Written by scripts/up.sh. The project's own node: loopback only.
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
loopback_users = none
log.file.level = warning
log.console = false
# Publishers get basic.nack instead of unbounded memory growth.
vm_memory_high_watermark.relative = 0.4
EOF
    echo '[rabbitmq_management].' >"$r/enabled_plugins"
    # Erlang distribution (the node's and rabbitmqctl's) on loopback only; by
    # default it listens on every address.
    cat >"$r/rabbitmq-env.conf" <<'EOF'
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    chown -R rabbitmq:rabbitmq "$r" "$VAR/log/rabbitmq"
    if rmq_running; then
        say "RabbitMQ already running on 127.0.0.1:$AMQP_PORT"
        return
    fi
    check_port "$AMQP_PORT" AMQP_PORT
    check_port "$MGMT_PORT" MGMT_PORT
    check_port "$((AMQP_PORT + 20000))" "AMQP_PORT+20000 (Erlang distribution)"
    say "starting RabbitMQ on 127.0.0.1:$AMQP_PORT (management UI on http://localhost:$MGMT_PORT)"
    # shellcheck disable=SC2046
    setsid runuser -u rabbitmq -- env $(rmq_env) "$RMQ_BIN/rabbitmq-server" \
        >"$VAR/log/rabbitmq/startup.log" 2>&1 </dev/null &
    local pid=$! i
    for i in $(seq 1 120); do
        if rmqctl -q await_startup --timeout 2 >/dev/null 2>&1; then
            return
        fi
        kill -0 "$pid" 2>/dev/null ||
            die "RabbitMQ exited during start; see $VAR/log/rabbitmq/startup.log and $VAR/log/rabbitmq/"
    done
    die "RabbitMQ did not answer within the time limit; see $VAR/log/rabbitmq/"
}

bootstrap_rabbitmq() {
    local u=$RABBITMQ_ADMIN_USER
    if ! rmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$u"; then
        rmqctl -q add_user "$u" "$RABBITMQ_ADMIN_PASSWORD" >/dev/null
    fi
    rmqctl -q set_user_tags "$u" administrator >/dev/null
    local entry user pw_var
    for entry in $BROKER_USERS; do
        user=${entry%%:*}
        pw_var="RMQ_$(up_name "$user")_PASSWORD"
        if ! rmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$user"; then
            rmqctl -q add_user "$user" "${!pw_var}" >/dev/null
        else
            rmqctl -q change_password "$user" "${!pw_var}" >/dev/null
        fi
    done
    # The services' vhosts: "/" for the development environment, TEST_VHOST
    # for make test (lib.sh), each with the same users and permissions.
    local vhost
    for vhost in / "$TEST_VHOST"; do
        rmqctl -q add_vhost "$vhost" >/dev/null 2>&1 || true
        grant_vhost "$vhost"
    done
    # A vhost of its own for the messaging spine's tests, so that their test
    # events never reach the services' queues.
    rmqctl -q add_vhost ordersuite-test >/dev/null 2>&1 || true
    rmqctl -q set_permissions -p ordersuite-test "$u" '.*' '.*' '.*' >/dev/null
    # Nothing runs as guest.
    rmqctl -q delete_user guest >/dev/null 2>&1 || true
    wait_for 30 "management UI" bash -c "exec 3<>/dev/tcp/127.0.0.1/$MGMT_PORT" ||
        die "the management UI does not answer on port $MGMT_PORT; see $VAR/log/rabbitmq/"
}

# grant_vhost VHOST: the administrator and every service's user on VHOST.
grant_vhost() {
    local vhost=$1 u=$RABBITMQ_ADMIN_USER
    rmqctl -q set_permissions -p "$vhost" "$u" '.*' '.*' '.*' >/dev/null
    # Least privilege (scripts/broker-perms.sh says what each user may do).
    local entry
    for entry in $BROKER_USERS; do
        broker_grant "$vhost" "${entry%%:*}" "${entry#*:}"
    done
}

start_postgres
bootstrap_postgres
start_rabbitmq
bootstrap_rabbitmq
say "up: PostgreSQL 127.0.0.1:$PG_PORT, RabbitMQ 127.0.0.1:$AMQP_PORT, management http://localhost:$MGMT_PORT (user $RABBITMQ_ADMIN_USER, password in var/ordersuite.env)"
