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
# NODES=1 (default) or NODES=3 (make up NODES=3): one RabbitMQ node, or a
# cluster of three on this machine (lib.sh rmq_env says where each lives);
# without it the count the env file recorded stays.
want_nodes=${NODES:-}
case "$want_nodes" in
'' | 1 | 3) ;;
*) die "NODES=$want_nodes: use NODES=1 (one RabbitMQ node) or NODES=3 (a cluster of three)" ;;
esac
# PG2=SERVICES (make up PG2=inventory): a second PostgreSQL cluster holding
# those services' schemas (lib.sh pg2_services); PG2=0 none; without it the
# placement the env file recorded stays.
want_pg2=${PG2:-}
if [ -n "$want_pg2" ] && [ "$want_pg2" != 0 ]; then
    for s in ${want_pg2//,/ }; do
        [[ " $(suite_names | tr '\n' ' ') " == *" $s "* ]] ||
            die "PG2=$want_pg2: $s is no service (the services: $(suite_names | tr '\n' ' '); e.g. PG2=inventory)"
    done
fi
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
    if pg_running || PG_CLUSTER=2 pg_running || rmq_running; then
        die "the servers run with TLS=$ORDERSUITE_TLS; stop them first (make down), then make up TLS=$want_tls"
    fi
    sed -i "s/^ORDERSUITE_TLS=.*/ORDERSUITE_TLS=$want_tls/" "$ENV_FILE"
    load_env
fi
grep -q '^ORDERSUITE_NODES=' "$ENV_FILE" || echo "ORDERSUITE_NODES=1" >>"$ENV_FILE"
load_env
if [ -n "$want_nodes" ] && [ "$want_nodes" != "$ORDERSUITE_NODES" ]; then
    # A broker with data (any node's folder) keeps its size: its quorum
    # queues have members on the nodes that would go, which would lose their
    # majority. Starting over (the folders removed) is the honest way, and
    # then any size goes.
    left=0
    for k in $(seq 1 "$ORDERSUITE_NODES"); do [ ! -e "$(rmq_node_dir "$k")" ] || left=1; done
    if [ "$want_nodes" -lt "$ORDERSUITE_NODES" ] && [ $left = 1 ]; then
        die "the broker is a cluster of $ORDERSUITE_NODES nodes; to go back to $want_nodes: make down, rm -rf var/rabbitmq* var/log/rabbitmq* (the broker's messages go with them), make up NODES=$want_nodes && make migrate"
    fi
    sed -i "s/^ORDERSUITE_NODES=.*/ORDERSUITE_NODES=$want_nodes/" "$ENV_FILE"
    load_env
fi
grep -q '^ORDERSUITE_PG2=' "$ENV_FILE" || echo "ORDERSUITE_PG2=0" >>"$ENV_FILE"
grep -q '^PG2_PORT=' "$ENV_FILE" || echo "PG2_PORT=$(pg2_port)" >>"$ENV_FILE"
load_env
if [ -n "$want_pg2" ] && [ "$want_pg2" != "$ORDERSUITE_PG2" ]; then
    # A service's rows stay on the cluster they were written to: moving a
    # schema is a dump and a restore, not a setting (docs/SCALING.md). The
    # services read DATABASE_URL at start: running ones keep the old one.
    say "PG2=$want_pg2: the services named use the second cluster from their next start (make migrate first)"
    sed -i "s/^ORDERSUITE_PG2=.*/ORDERSUITE_PG2=$want_pg2/" "$ENV_FILE"
    load_env
fi
if [ "$ORDERSUITE_NODES" -gt 1 ] && tls_on; then
    die "NODES=$ORDERSUITE_NODES with TLS=1 is not supported (the cluster's nodes listen in plain text on loopback)"
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
# start_postgres: the cluster PG_CLUSTER (1, or 2 with PG2; lib.sh pg_dir).
start_postgres() {
    local data sock port logd name=PostgreSQL var=PG_PORT
    data=$(pg_data)
    sock=$(pg_sock)
    port=$(cur_pg_port)
    logd=$(pg_log_dir)
    if [ "${PG_CLUSTER:-1}" = 2 ]; then
        name="PostgreSQL 2 (for $(pg2_services | tr ' ' ','))"
        var=PG2_PORT
    fi
    if pg_running; then
        say "$name already running on 127.0.0.1:$port"
        return
    fi
    check_port "$port" "$var"
    mkdir -p "$(pg_dir)" "$sock" "$logd"
    chown postgres:postgres "$(pg_dir)" "$sock" "$logd"
    if [ ! -f "$data/PG_VERSION" ]; then
        say "creating the PostgreSQL cluster in $data"
        # initdb refuses to run as root: run it as the postgres user.
        as_user postgres "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=peer --auth-host=scram-sha-256 >"$logd/initdb.log" 2>&1 ||
            die "initdb failed; see $logd/initdb.log"
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
log_directory = '$logd'
log_filename = 'postgresql.log'
log_min_messages = warning
log_min_error_statement = error
EOF
    fi
    pg_tls_config "$data"
    pg_stats_config "$data"
    say "starting $name on 127.0.0.1:$port$(tls_on && echo " (TLS only)")"
    if ! pgctl start -w -t 60 -l "$logd/startup.log" -o "-p $port" >/dev/null; then
        die "$name did not start; see $logd/startup.log and $logd/postgresql.log"
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
        die "PostgreSQL does not answer; see $(pg_log_dir)/postgresql.log"
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
# rmq_config K: node K's folders and configuration files (rewritten at every
# start). RMQ_NODE=K is set by the caller.
rmq_config() {
    local k=$1 r off logd
    r=$(rmq_node_dir "$k")
    off=$(rmq_node_off "$k")
    logd=$(rmq_log_dir "$k")
    mkdir -p "$r/home" "$r/mnesia" "$logd"
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
            echo "listeners.tcp.1 = 127.0.0.1:$((AMQP_PORT + off))"
        fi
        if [ "$(rmq_nodes)" -gt 1 ]; then
            # A node on the minority side of a partition pauses (its clients
            # move to the majority) instead of going on alone and diverging.
            echo "cluster_partition_handling = pause_minority"
        fi
    } >"$r/rabbitmq.conf"
    cat >>"$r/rabbitmq.conf" <<EOF
management.tcp.ip = 127.0.0.1
management.tcp.port = $((MGMT_PORT + off))
loopback_users = none
log.file.level = ${RMQ_LOG_LEVEL:-warning}
log.console = false
# Publishers get basic.nack instead of unbounded memory growth.
vm_memory_high_watermark.relative = 0.4
EOF
    echo '[rabbitmq_management].' >"$r/enabled_plugins"
    # A cluster's node K opens its distribution connections from 127.0.0.K
    # (it listens on 127.0.0.1 like the others): make chaos's partition
    # scenario tells its traffic apart by that address and its port.
    if [ "$(rmq_nodes)" -gt 1 ]; then
        echo "[{kernel, [{inet_dist_connect_options, [{ip, {127,0,0,$k}}]}]}]." >"$r/advanced.config"
    else
        echo "[]." >"$r/advanced.config"
    fi
    # Erlang distribution (the node's and rabbitmqctl's) on loopback only; by
    # default it listens on every address.
    cat >"$r/rabbitmq-env.conf" <<'EOF'
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    # One Erlang cookie for the cluster: node 1's (made at its first start),
    # which rabbitmqctl reads from the same HOME.
    if [ "$k" != 1 ] && [ -f "$VAR/rabbitmq/home/.erlang.cookie" ]; then
        install -m 400 "$VAR/rabbitmq/home/.erlang.cookie" "$r/home/.erlang.cookie"
    fi
    chown -R rabbitmq:rabbitmq "$r" "$logd"
    [ ! -f "$r/tls/server.key" ] || chmod 600 "$r/tls/server.key"
}

# start_rabbitmq: every node not running yet is started, all at once (a
# cluster's node that stopped before the others waits at its start for
# them), then each is waited for.
start_rabbitmq() {
    local k off pids=() started=()
    for k in $(seq 1 "$(rmq_nodes)"); do
        # UP_NODES="2" starts only those nodes (make chaos brings one of two
        # stopped nodes back); the others are left as they are.
        [ -z "${UP_NODES:-}" ] || [[ " $UP_NODES " == *" $k "* ]] || continue
        export RMQ_NODE=$k
        off=$(rmq_node_off "$k")
        rmq_config "$k"
        if rmq_running; then
            say "RabbitMQ$([ "$(rmq_nodes)" = 1 ] || echo " node $k ($(rmq_node_name "$k"))") already running on 127.0.0.1:$(($(rmq_port) + off))"
            continue
        fi
        if [ "$(rmq_nodes)" -gt 1 ] && rmqctl -q ping >/dev/null 2>&1; then
            # Its Erlang VM runs, RabbitMQ does not: a node that paused when
            # it found itself in a minority (pause_minority). It resumes by
            # itself once it sees a majority: wait for it below.
            say "RabbitMQ node $k ($(rmq_node_name "$k")) is paused (it was in a minority); it resumes when the others are up"
            started+=("$k")
            pids+=("")
            continue
        fi
        local plus=
        [ "$off" = 0 ] || plus="+$off"
        check_port "$(($(rmq_port) + off))" "$(tls_on && echo AMQPS_PORT || echo AMQP_PORT)$plus"
        check_port "$((MGMT_PORT + off))" "MGMT_PORT$plus"
        check_port "$((AMQP_PORT + 20000 + off))" "AMQP_PORT+$((20000 + off)) (Erlang distribution)"
        say "starting RabbitMQ$([ "$(rmq_nodes)" = 1 ] || echo " node $k ($(rmq_node_name "$k"))") on 127.0.0.1:$(($(rmq_port) + off))$(tls_on && echo " (amqps only)") (management UI on http://localhost:$((MGMT_PORT + off)))"
        # shellcheck disable=SC2046
        setsid runuser -u rabbitmq -- env $(rmq_env) "$RMQ_BIN/rabbitmq-server" \
            >"$(rmq_log_dir "$k")/startup.log" 2>&1 </dev/null &
        pids+=($!)
        started+=("$k")
        if [ "$k" = 1 ] && [ "$(rmq_nodes)" -gt 1 ] && [ ! -f "$VAR/rabbitmq/home/.erlang.cookie" ]; then
            # The other nodes need node 1's cookie: wait for it to exist.
            wait_for 30 "node 1's Erlang cookie" test -f "$VAR/rabbitmq/home/.erlang.cookie" ||
                die "RabbitMQ node 1 made no Erlang cookie; see $(rmq_log_dir 1)/"
        fi
    done
    RMQ_STARTED=${#started[@]}
    local j i
    for j in "${!started[@]}"; do
        export RMQ_NODE=${started[$j]}
        for i in $(seq 1 120); do
            if rmqctl -q await_startup --timeout 2 >/dev/null 2>&1; then
                continue 2
            fi
            [ -z "${pids[$j]}" ] || kill -0 "${pids[$j]}" 2>/dev/null ||
                die "RabbitMQ exited during start; see $(rmq_log_dir "$RMQ_NODE")/startup.log and $(rmq_log_dir "$RMQ_NODE")/"
        done
        die "RabbitMQ did not answer within the time limit; see $(rmq_log_dir "$RMQ_NODE")/"
    done
    export RMQ_NODE=1
}

# join_cluster: nodes 2..NODES join node 1's cluster when they are not in it
# yet (a fresh node: its data is new), and the quorum queues that exist get
# members on them (rabbitmq-queues grow), so each has one on every node.
join_cluster() {
    [ "$(rmq_nodes)" -gt 1 ] || return 0
    local k first
    first=$(rmq_node_name 1)
    for k in $(seq 2 "$(rmq_nodes)"); do
        [ -z "${UP_NODES:-}" ] || [[ " $UP_NODES " == *" $k "* ]] || continue
        if RMQ_NODE=1 rmqctl -q cluster_status --formatter json 2>/dev/null |
            python3 -c 'import json,sys; sys.exit(0 if sys.argv[1] in json.load(sys.stdin)["running_nodes"] else 1)' "$(rmq_node_name "$k")"; then
            continue
        fi
        # Node 1 may not answer (paused by pause_minority until this node
        # is back): a node that knows node 1 as a member has joined before.
        if RMQ_NODE=$k rmqctl -q cluster_status --formatter json 2>/dev/null |
            python3 -c 'import json,sys; sys.exit(0 if sys.argv[1] in json.load(sys.stdin)["disk_nodes"] else 1)' "$first"; then
            continue
        fi
        say "node $k ($(rmq_node_name "$k")) joins $first"
        RMQ_NODE=$k rmqctl -q stop_app >/dev/null || die "node $k: stop_app failed"
        RMQ_NODE=$k rmqctl -q join_cluster "$first" >/dev/null || die "node $k could not join $first; see $(rmq_log_dir "$k")/"
        RMQ_NODE=$k rmqctl -q start_app >/dev/null || die "node $k: start_app failed"
        # shellcheck disable=SC2046
        as_user rabbitmq env $(RMQ_NODE=1 rmq_env) "$RMQ_BIN/rabbitmq-queues" -q grow "$(rmq_node_name "$k")" all \
            >"$VAR/log/grow-n$k.log" 2>&1 || die "adding node $k to the quorum queues failed; see $VAR/log/grow-n$k.log"
    done
}

# What the broker's users, vhosts, permissions and policies are made from:
# the env file (passwords), the service registry and their routing keys, and
# these scripts. Its hash is kept in node 1's folder (gone with the broker's
# data) once bootstrap_rabbitmq has applied it.
bootstrap_inputs() {
    cat "$ENV_FILE" "$ROOT/scripts/up.sh" "$ROOT/scripts/broker-perms.sh" "$ROOT/scripts/suite.sh" \
        "$ROOT"/services/*/main.c "$ROOT/contracts/events.h" 2>/dev/null | sha256sum | cut -d' ' -f1
}
bootstrap_stamp() { echo "$(rmq_node_dir 1)/bootstrapped"; }

bootstrap_rabbitmq() {
    local u=$RABBITMQ_ADMIN_USER
    # A node that comes back (after a kill -9, a reboot) finds the users and
    # permissions where they were: the broker keeps them, and a cluster's
    # nodes share them. Applying them again costs ~80 rabbitmqctl calls, each
    # a fresh Erlang VM (1.5 s on this 2-core machine idle, 5 s and more
    # loaded): a node killed under load took minutes to come back through
    # make up that way. So when this run only started nodes and nothing the
    # definitions are made from changed, they are left as they are; make up
    # with every node running (nothing started) applies them again, which
    # repairs a permission changed by hand.
    if [ "${RMQ_STARTED:-0}" -gt 0 ] && [ "$(cat "$(bootstrap_stamp)" 2>/dev/null)" = "$(bootstrap_inputs)" ] &&
        rmqctl -q list_users 2>/dev/null | awk '{print $1}' | grep -qx "$u"; then
        say "RabbitMQ users and permissions as the last make up left them (nothing they are made from changed)"
        wait_for 30 "management UI" bash -c "exec 3<>/dev/tcp/127.0.0.1/$MGMT_PORT" ||
            die "the management UI does not answer on port $MGMT_PORT; see $VAR/log/rabbitmq/"
        return
    fi
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
    bootstrap_inputs >"$(bootstrap_stamp)"
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

# Each cluster with the same owner role and password (and, by make migrate,
# the same service roles and passwords).
for PG_CLUSTER in $(pg_clusters); do
    export PG_CLUSTER
    start_postgres
    bootstrap_postgres
done
export PG_CLUSTER=1
start_rabbitmq
join_cluster
bootstrap_rabbitmq
if tls_on; then
    say "TLS: amqps:// and sslmode=verify-full, verified against $(tls_ca) (bash scripts/env.sh prints the URLs)"
fi
say "up: PostgreSQL 127.0.0.1:$PG_PORT$(! pg2_on || echo " and 127.0.0.1:$(pg2_port) (for $(pg2_services | tr ' ' ','))"), RabbitMQ 127.0.0.1:$(rmq_port)$([ "$(rmq_nodes)" = 1 ] || echo " (node 1 of a cluster of $(rmq_nodes): make status lists them)"), management http://localhost:$MGMT_PORT (user $RABBITMQ_ADMIN_USER, password in var/ordersuite.env)"
