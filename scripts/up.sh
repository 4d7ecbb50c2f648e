#!/usr/bin/env bash
# scripts/up.sh — start the project's own PostgreSQL cluster and RabbitMQ node.
#
# Idempotent: what is already running is left alone. Data and logs live under
# var/. Waits (bounded) until both servers answer, and fails fast, naming the
# port or the log to read, instead of hanging.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/broker-perms.sh"

# TLS=1 / TLS=0 (make up TLS=1) chooses the mode; without it the mode the
# env file recorded stays.
want_tls=${TLS:-}
case "$want_tls" in
'' | 0 | 1) ;;
*) die "TLS=$want_tls: use TLS=1 (TLS on) or TLS=0 (off)" ;;
esac
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
AMQPS_PORT=$AMQPS_PORT
ORDERSUITE_TLS=${want_tls:-0}
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
# order-api's demo client: a bearer token for client "demo". order-api keeps
# only its hash (var/api-tokens, API_TOKENS_FILE); the token itself is kept
# here with the other local secrets for make demo and the README's curl lines.
if [ -z "${API_DEMO_TOKEN:-}" ]; then
    echo "API_DEMO_TOKEN=$(bash "$ROOT/scripts/api-token.sh" demo "$(api_tokens_file)")" >>"$ENV_FILE"
fi
load_env
demo_hash=$(printf '%s' "$API_DEMO_TOKEN" | sha256sum | cut -d' ' -f1)
if ! grep -qx "demo $demo_hash" "$(api_tokens_file)" 2>/dev/null; then
    (umask 077 && echo "demo $demo_hash" >>"$(api_tokens_file)")
fi
# The token as a curl header file (mode 600) for the README's curl -H @FILE
# lines: a header given on the command line would show in every ps listing.
(umask 077 && printf 'Authorization: Bearer %s\n' "$API_DEMO_TOKEN" >"$VAR/api-auth.header")
chmod 600 "$VAR/api-auth.header"

# Env files from before TLS existed get the two lines; a mode change needs
# the servers stopped, since both read their TLS settings only at start.
grep -q '^AMQPS_PORT=' "$ENV_FILE" || echo "AMQPS_PORT=$AMQPS_PORT" >>"$ENV_FILE"
grep -q '^ORDERSUITE_TLS=' "$ENV_FILE" || echo "ORDERSUITE_TLS=0" >>"$ENV_FILE"
load_env
if [ -n "$want_tls" ] && [ "$want_tls" != "$ORDERSUITE_TLS" ]; then
    if pg_running || rmq_running; then
        die "the servers run with TLS=$ORDERSUITE_TLS; stop them first (make down), then make up TLS=$want_tls"
    fi
    sed -i "s/^ORDERSUITE_TLS=.*/ORDERSUITE_TLS=$want_tls/" "$ENV_FILE"
    load_env
fi
if tls_on; then
    bash "$ROOT/scripts/tls-certs.sh" "$(tls_dir)" || die "making the TLS certificates in $(tls_dir) failed"
    chmod 755 "$(tls_dir)"
fi

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
    pg_tls_config "$data"
    pg_stats_config "$data"
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT$(tls_on && echo " (TLS only)")"
    if ! pgctl start -w -t 60 -l "$VAR/log/postgresql/startup.log" -o "-p $PG_PORT" >/dev/null; then
        die "PostgreSQL did not start; see $VAR/log/postgresql/startup.log and $VAR/log/postgresql/postgresql.log"
    fi
}

# pg_stat_statements loaded, at every start (ordersuite-stats.conf): make bench
# counts the statements per order with it. A cluster already running loads it
# at its next start.
pg_stats_config() {
    local data=$1
    grep -q "^include_if_exists = 'ordersuite-stats.conf'" "$data/postgresql.conf" ||
        echo "include_if_exists = 'ordersuite-stats.conf'" | as_user postgres tee -a "$data/postgresql.conf" >/dev/null
    as_user postgres tee "$data/ordersuite-stats.conf" >/dev/null <<EOF
# Written by scripts/up.sh: per-statement counts for make bench.
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
EOF
}

# TLS on or off, at every start: ssl and its files in ordersuite-tls.conf
# (included by postgresql.conf), and pg_hba.conf: TCP connections by password,
# with TLS only "hostssl" lines, so a plain-text client finds no entry and is
# refused. The Unix socket (peer, the superuser of the scripts) stays.
pg_tls_config() {
    local data=$1 host=host
    grep -q "^include_if_exists = 'ordersuite-tls.conf'" "$data/postgresql.conf" ||
        echo "include_if_exists = 'ordersuite-tls.conf'" | as_user postgres tee -a "$data/postgresql.conf" >/dev/null
    if tls_on; then
        host=hostssl
        install -o postgres -g postgres -m 600 "$(tls_dir)/server.key" "$data/server.key"
        install -o postgres -g postgres -m 644 "$(tls_dir)/server.crt" "$data/server.crt"
        as_user postgres tee "$data/ordersuite-tls.conf" >/dev/null <<EOF
# Written by scripts/up.sh (make up TLS=1).
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
    else
        echo "# Written by scripts/up.sh: TLS off (make up TLS=1 turns it on)." |
            as_user postgres tee "$data/ordersuite-tls.conf" >/dev/null
    fi
    as_user postgres tee "$data/pg_hba.conf" >/dev/null <<EOF
# Written by scripts/up.sh at every start (TLS=${ORDERSUITE_TLS}).
# TYPE   DATABASE USER ADDRESS      METHOD
local    all      all                peer
$host    all      all  127.0.0.1/32 scram-sha-256
EOF
}

# The migration owner role; the database itself and everything in it are made
# by 'make migrate' (tools/migrate), connected as this role.
bootstrap_postgres() {
    wait_for 30 "PostgreSQL" pg_super -d postgres -c 'SELECT 1' ||
        die "PostgreSQL does not answer; see $VAR/log/postgresql/postgresql.log"
    # The password reaches psql in its environment (\getenv), never on its
    # command line (psql -v), where every user of the machine could read it.
    PG_OWNER_PASSWORD=$PG_OWNER_PASSWORD pg_super -d postgres <<'EOF'
SELECT 'CREATE ROLE ordersuite_owner LOGIN CREATEDB CREATEROLE'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ordersuite_owner') \gexec
\getenv pw PG_OWNER_PASSWORD
ALTER ROLE ordersuite_owner PASSWORD :'pw';
-- Lets tools and tests end a service's backend (never a superuser's).
GRANT pg_signal_backend TO ordersuite_owner;
EOF
}

# ------------------------------------------------------------------ RabbitMQ
start_rabbitmq() {
    local r="$VAR/rabbitmq"
    mkdir -p "$r/home" "$r/mnesia" "$VAR/log/rabbitmq"
    {
        echo "# Written by scripts/up.sh. The project's own node: loopback only."
        if tls_on; then
            # TLS only: no plain-text AMQP listener at all. A client
            # certificate is optional, and checked against the CA when sent.
            mkdir -p "$r/tls"
            cp "$(tls_dir)/ca.crt" "$(tls_dir)/server.crt" "$(tls_dir)/server.key" "$r/tls/"
            cat <<EOF
listeners.tcp = none
listeners.ssl.1 = 127.0.0.1:$AMQPS_PORT
ssl_options.cacertfile = $r/tls/ca.crt
ssl_options.certfile = $r/tls/server.crt
ssl_options.keyfile = $r/tls/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
EOF
        else
            echo "listeners.tcp.1 = 127.0.0.1:$AMQP_PORT"
        fi
    } >"$r/rabbitmq.conf"
    cat >>"$r/rabbitmq.conf" <<EOF
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
    [ ! -f "$r/tls/server.key" ] || chmod 600 "$r/tls/server.key"
    if rmq_running; then
        say "RabbitMQ already running on 127.0.0.1:$(rmq_port)"
        return
    fi
    check_port "$(rmq_port)" "$(tls_on && echo AMQPS_PORT || echo AMQP_PORT)"
    check_port "$MGMT_PORT" MGMT_PORT
    check_port "$((AMQP_PORT + 20000))" "AMQP_PORT+20000 (Erlang distribution)"
    say "starting RabbitMQ on 127.0.0.1:$(rmq_port)$(tls_on && echo " (amqps only)") (management UI on http://localhost:$MGMT_PORT)"
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
        rmqctl -q add_user "$u" <<<"$RABBITMQ_ADMIN_PASSWORD" >/dev/null
    fi
    rmqctl -q set_user_tags "$u" administrator >/dev/null
    local entry user pw_var
    for entry in $BROKER_USERS; do
        user=${entry%%:*}
        pw_var="RMQ_$(up_name "$user")_PASSWORD"
        if ! rmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$user"; then
            rmqctl -q add_user "$user" <<<"${!pw_var}" >/dev/null
        else
            rmqctl -q change_password "$user" <<<"${!pw_var}" >/dev/null
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
if tls_on; then
    say "TLS: amqps:// and sslmode=verify-full, verified against $(tls_ca) (bash scripts/env.sh prints the URLs)"
fi
say "up: PostgreSQL 127.0.0.1:$PG_PORT, RabbitMQ 127.0.0.1:$(rmq_port), management http://localhost:$MGMT_PORT (user $RABBITMQ_ADMIN_USER, password in var/ordersuite.env)"
