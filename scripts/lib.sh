# scripts/lib.sh — shared by the infra scripts (up, down, status, migrate, demo).
#
# Sourced, never run. Works out where the project's own RabbitMQ node and
# PostgreSQL cluster live (var/), which ports they use, and provides the small
# helpers every script needs. All state lives under var/; nothing is written
# to the system's own /var/lib/postgresql or /var/lib/rabbitmq.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# var/ may be a link to a folder the service users can reach (see ensure_var);
# every path handed to them must be the real one, not one through the link.
# ORDERSUITE_INSTANCE=NAME puts a second pair of servers (own ports, own data)
# under var/NAME/: check_tls brings up its TLS pair that way.
set_var() {
    VAR="$ROOT/var"
    if [ -L "$VAR" ]; then
        VAR=$(readlink -f "$VAR")
    fi
    if [ -n "${ORDERSUITE_INSTANCE:-}" ]; then
        VAR="$VAR/$ORDERSUITE_INSTANCE"
    fi
    ENV_FILE="$VAR/ordersuite.env"
}
set_var
source "$ROOT/scripts/suite.sh"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
RMQ_BIN=${RMQ_BIN:-/usr/lib/rabbitmq/bin}

die() { echo "error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# The ports: from the environment when up first runs, then from var/ordersuite.env,
# so that later commands (migrate, test, demo) talk to the same servers.
load_env() {
    if [ -f "$ENV_FILE" ]; then
        set -a
        # shellcheck disable=SC1090
        . "$ENV_FILE"
        set +a
    fi
}

# Runs a command as a service user with a clean, predictable environment.
# From /: the clone's own folder may not be reachable by that user.
as_user() {
    local user=$1; shift
    (cd / && runuser -u "$user" -- "$@")
}

# True when both service users can walk into and list $1.
reachable_by_services() {
    local d=$1
    as_user postgres test -x "$d" -a -r "$d" 2>/dev/null &&
        as_user rabbitmq test -x "$d" -a -r "$d" 2>/dev/null
}

# var/ must be reachable by the postgres and rabbitmq users. A clone under a
# path they cannot traverse (e.g. /root/src/ordersuite) gets var/ as a link to
# a folder under /var/tmp that they can reach, named after the clone's path.
ensure_var() {
    local inst=${ORDERSUITE_INSTANCE:-}
    ORDERSUITE_INSTANCE= ensure_base_var
    set_var
    if [ -n "$inst" ]; then
        mkdir -p "$VAR/log"
        chmod 755 "$VAR"
    fi
}
ensure_base_var() {
    [ "$(id -u)" = 0 ] || die "make up runs the servers as the postgres and rabbitmq users and must be run as root (try: sudo make up)"
    if [ -L "$ROOT/var" ]; then
        mkdir -p "$(readlink "$ROOT/var")"
    else
        mkdir -p "$ROOT/var"
    fi
    set_var
    chmod 755 "$VAR"
    if ! reachable_by_services "$VAR"; then
        if [ -L "$ROOT/var" ]; then
            die "$ROOT/var points to $VAR, which the postgres/rabbitmq users cannot reach"
        fi
        local alt
        alt="/var/tmp/ordersuite-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
        say "the postgres/rabbitmq users cannot reach $VAR; using $alt (linked as var/)"
        rmdir "$VAR" 2>/dev/null || die "$VAR is not empty and not reachable by the service users; move it away"
        mkdir -p "$alt"
        chmod 755 "$alt"
        ln -s "$alt" "$ROOT/var"
        set_var
        reachable_by_services "$VAR" || die "neither $ROOT/var nor $alt is reachable by the postgres/rabbitmq users"
    fi
    mkdir -p "$VAR/log"
}

# port_in_use PORT: true when something listens on 127.0.0.1:PORT (or any address).
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# who_listens PORT: a line naming the process on PORT, when ss can tell.
who_listens() {
    ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*"\).*/\1/p' | head -1
}

# amqp_url USER [VHOST]: the AMQP URL of a service's broker user (admin:
# "admin") in VHOST (default: this environment's, ORDERSUITE_VHOST); with TLS
# (make up TLS=1) amqps:// to AMQPS_PORT, verifying the broker against the
# project's CA (common/mq.h).
amqp_url() {
    local user=$1 path pw
    if [ $# -ge 2 ]; then path="/$2"; else path=$(vhost_path); fi
    if [ "$user" = admin ]; then
        user=$RABBITMQ_ADMIN_USER
        pw=$RABBITMQ_ADMIN_PASSWORD
    else
        local v
        v="RMQ_$(up_name "$user")_PASSWORD"
        pw=${!v}
    fi
    if tls_on; then
        echo "amqps://$user:$pw@127.0.0.1:$AMQPS_PORT$path?cacertfile=$(tls_ca)"
    elif [ "$(rmq_nodes)" -gt 1 ] && [ "$1" != admin ]; then
        # A cluster: a service's URL lists every node (common/mq.h says how
        # a list is tried), starting at a node chosen by the user's name, so
        # the services' connections are spread over the nodes. The
        # administrator's stays node 1's: the tools that take it (ledger,
        # dlq, mqbench) speak to one node.
        # AMQP_FIRST_NODE=K starts the list at node K instead (make chaos
        # puts a client on a node it will not kill).
        local i k n list=
        n=$(rmq_nodes)
        k=$(($(printf '%s' "$user" | cksum | cut -d' ' -f1) % n))
        [ -z "${AMQP_FIRST_NODE:-}" ] || k=$(((AMQP_FIRST_NODE - 1) % n))
        for i in $(seq 1 "$n"); do
            list="${list:+$list,}amqp://$user:$pw@127.0.0.1:$((AMQP_PORT + $(rmq_node_off $((k + 1)))))$path"
            k=$(((k + 1) % n))
        done
        echo "$list"
    else
        echo "amqp://$user:$pw@127.0.0.1:$AMQP_PORT$path"
    fi
}

# ------------------------------------------- which environment: dev or tests
# The development environment (make demo, make chaos, make bench) lives in
# the database "ordersuite" and the broker's vhost "/". make test runs in a
# database and a vhost of its own (use_test_env), made and migrated by the
# run itself, with its services on other ports and their pid files and logs
# elsewhere, so that a test run beside a demo takes nothing of the demo's.
ORDERSUITE_DB=${ORDERSUITE_DB:-ordersuite}
ORDERSUITE_VHOST=${ORDERSUITE_VHOST:-/}
ORDERSUITE_PORT_OFFSET=${ORDERSUITE_PORT_OFFSET:-0}
TEST_DB=ordersuite_test
TEST_VHOST=ordersuite-tests

# vhost_path: the URL path of ORDERSUITE_VHOST ("" for "/": rabbitmq-c reads
# "/" as the empty vhost, and no path means the default "/").
vhost_path() { [ "$ORDERSUITE_VHOST" = / ] || echo "/$ORDERSUITE_VHOST"; }
# vhost_api: ORDERSUITE_VHOST as a management API path part.
vhost_api() { [ "$ORDERSUITE_VHOST" = / ] && echo %2F || echo "$ORDERSUITE_VHOST"; }
# ------------------------------------------ several instances of a service
# services.sh start runs INSTANCES_<name> copies of a service (the name with
# '-' as '_': INSTANCES_billing=3, INSTANCES_order_api=2; default 1, at most
# 9), competing consumers on the service's one queue. Instance 1 is NAME
# itself, as it always was (NAME.pid, NAME.log, the ports of suite.sh);
# instance K (2..9) is NAME@K, with NAME@K.pid, NAME@K.log and each of its
# ports + 100 × (K − 1): billing@2's metrics on 9202, order-api@2's API on
# 8180 and its operations port on 9200 (each + the environment's offset:
# 29202 under make test). Not to be confused with ORDERSUITE_INSTANCE
# above, which is a second pair of servers.
INSTANCES_MAX=9
# svc_instances NAME: INSTANCES_<name> of the environment, checked (default 1).
svc_instances() {
    local v="INSTANCES_${1//-/_}"
    local n=${!v:-1}
    [[ "$n" =~ ^[1-9]$ ]] || die "$v must be a number from 1 to $INSTANCES_MAX, not '$n'"
    echo "$n"
}
# inst_svc NAME[@K]: the service's name (billing@2 -> billing).
inst_svc() { echo "${1%@*}"; }
# inst_num NAME[@K]: the instance's number (billing -> 1, billing@2 -> 2).
inst_num() { if [[ "$1" == *@* ]]; then echo "${1##*@}"; else echo 1; fi; }
# inst_name NAME K: instance K's name (billing 1 -> billing, billing 2 -> billing@2).
inst_name() { if [ "$2" = 1 ]; then echo "$1"; else echo "$1@$2"; fi; }
# inst_off NAME[@K]: what the instance adds to each of the service's ports.
inst_off() { echo $((100 * ($(inst_num "$1") - 1))); }

# inst_amqp_url NAME[@K]: the AMQP_URL of instance K: amqp_url of the
# service's user, and on a cluster (a list of nodes) the list turned K − 1
# places on, so the instances of one service start at different nodes
# rather than all at the one their user's name picks.
inst_amqp_url() {
    local url k n i out= parts
    url=$(amqp_url "$(inst_svc "$1")")
    k=$(inst_num "$1")
    IFS=, read -ra parts <<<"$url"
    n=${#parts[@]}
    if [ "$n" -le 1 ] || [ "$k" = 1 ]; then
        echo "$url"
        return
    fi
    for i in $(seq 0 $((n - 1))); do out="${out:+$out,}${parts[$(((i + k - 1) % n))]}"; done
    echo "$out"
}

# svc_port NAME[@K]: the port the service (instance K of it) listens on in
# this environment.
svc_port() { echo $(($(suite_field "$(inst_svc "$1")" 5) + ORDERSUITE_PORT_OFFSET + $(inst_off "$1"))); }
# svc_ops_port NAME[@K]: its operations port in this environment (empty: none).
svc_ops_port() {
    local p
    p=$(suite_field "$(inst_svc "$1")" 7)
    [ -z "$p" ] || echo $((p + ORDERSUITE_PORT_OFFSET + $(inst_off "$1")))
}
# run_dir / svc_log_dir: where services.sh keeps pid files and logs.
run_dir() { echo "${ORDERSUITE_RUN_DIR:-$VAR/run}"; }
svc_log_dir() { echo "${ORDERSUITE_LOG_DIR:-$VAR/log}"; }

# use_test_env: switch this shell (and its children) to the tests' database,
# vhost, ports (+20000: 28080, 29101...) and run folder.
use_test_env() {
    export ORDERSUITE_DB=$TEST_DB ORDERSUITE_VHOST=$TEST_VHOST ORDERSUITE_PORT_OFFSET=20000
    export ORDERSUITE_RUN_DIR="$VAR/tests/run" ORDERSUITE_LOG_DIR="$VAR/log/tests"
}

# db_url ROLE PASSWORD [PORT]: the PostgreSQL URL of a role on the cluster
# at PORT (default PG_PORT, the first); with TLS, sslmode verify-full against
# the project's CA (libpq checks the chain and the name).
db_url() {
    local port=${3:-$PG_PORT}
    if tls_on; then
        echo "postgresql://$1:$2@127.0.0.1:$port/$ORDERSUITE_DB?sslmode=verify-full&sslrootcert=$(tls_ca)"
    else
        echo "postgresql://$1:$2@127.0.0.1:$port/$ORDERSUITE_DB"
    fi
}

# ------------------------------------------ a second PostgreSQL cluster (PG2)
# make up PG2=inventory (recorded as ORDERSUITE_PG2 in the env file: service
# names, comma-separated; empty or 0 for none) starts a second cluster of the
# project's own, data in var/postgres2/, on PG2_PORT (default PG_PORT + 1),
# with the same roles and passwords; the services named have their
# DATABASE_URL on it, the others stay on the first. make migrate applies
# every migration to both clusters (docs/SCALING.md says why); each service
# uses only its own schema, on its own cluster. PG_CLUSTER=2 makes pg_data,
# pg_sock, pgctl, pg_super and pg_running speak of the second (default 1).
pg2_services() { [ "${ORDERSUITE_PG2:-0}" = 0 ] || echo "${ORDERSUITE_PG2//,/ }"; }
pg2_on() { [ -n "$(pg2_services)" ]; }
pg2_port() { echo "${PG2_PORT:-$((PG_PORT + 1))}"; }
# pg_clusters: 1, or 1 and 2 when the second is on.
pg_clusters() { if pg2_on; then echo 1 2; else echo 1; fi; }
# cur_pg_port: the port of cluster PG_CLUSTER.
cur_pg_port() { if [ "${PG_CLUSTER:-1}" = 2 ]; then pg2_port; else echo "$PG_PORT"; fi; }
# svc_pg_port NAME: the port of the cluster that holds service NAME's schema.
svc_pg_port() {
    if [[ " $(pg2_services) " == *" $1 "* ]]; then pg2_port; else echo "$PG_PORT"; fi
}
# role_svc ROLE: the service whose database role is ROLE (orders: order-api).
role_svc() { echo "$SUITE_SERVICES" | awk -v r="$1" '$2 == r { print $1; exit }'; }
# role_pg_port ROLE: the port of the cluster that holds ROLE's schema.
role_pg_port() { svc_pg_port "$(role_svc "$1")"; }
# owner_db_url ROLE: the migration owner's URL on the cluster holding ROLE's
# schema (the scripts' writes there as the owner: restock, chaos's faults).
owner_db_url() { db_url ordersuite_owner "$PG_OWNER_PASSWORD" "$(role_pg_port "$1")"; }

# TLS (make up TLS=1, recorded as ORDERSUITE_TLS in the env file): the
# certificates scripts/tls-certs.sh made under var/tls/.
tls_on() { [ "${ORDERSUITE_TLS:-0}" = 1 ]; }
tls_dir() { echo "$VAR/tls"; }
tls_ca() { echo "$VAR/tls/ca.crt"; }
# rmq_listener_env: the plain listener's variables for rmq_env; none with TLS
# (they would open a plain-text listener beside the TLS one).
rmq_listener_env() {
    tls_on || echo RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$AMQP_PORT"
}
# rmq_port: the port the node's AMQP listener is on (AMQPS_PORT with TLS).
rmq_port() { if tls_on; then echo "$AMQPS_PORT"; else echo "$AMQP_PORT"; fi; }

# api_tokens_file: order-api's API_TOKENS_FILE (client ids and token hashes,
# scripts/api-token.sh adds to it; make up adds the demo client's).
api_tokens_file() { echo "$VAR/api-tokens"; }

# Random hex secret for the local passwords; generated once by up.
gen_secret() {
    head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n'
}

# RabbitMQ environment of the project's own node. Everything it listens on is
# loopback: AMQP and management (rabbitmq.conf), epmd (ERL_EPMD_ADDRESS, when
# the node starts it) and Erlang distribution (rabbitmq-env.conf, written by
# up.sh: its value has spaces, which this word-split list cannot carry). rabbitmq-server and
# rabbitmqctl are run directly as the rabbitmq user (not through Debian's
# wrapper, which would drop output in /var/log/rabbitmq).
#
# A cluster (make up NODES=3, recorded as ORDERSUITE_NODES in the env file):
# node 1 is the one above; node K (2..NODES) is ordersuite-nK@localhost, its
# data in var/rabbitmq-nK/, its ports node 1's + 10 × (K - 1) (AMQP 5682,
# management 15682, distribution 25682 for node 2). RMQ_NODE=K chooses the
# node rmq_env and rmqctl speak of (default 1).
rmq_nodes() { echo "${ORDERSUITE_NODES:-1}"; }
rmq_node_dir() { if [ "${1:-1}" = 1 ]; then echo "$VAR/rabbitmq"; else echo "$VAR/rabbitmq-n$1"; fi; }
rmq_node_name() {
    echo "ordersuite${ORDERSUITE_INSTANCE:+-$ORDERSUITE_INSTANCE}$([ "${1:-1}" = 1 ] || echo "-n$1")@localhost"
}
rmq_log_dir() { if [ "${1:-1}" = 1 ]; then echo "$VAR/log/rabbitmq"; else echo "$VAR/log/rabbitmq-n$1"; fi; }
rmq_node_off() { echo $((10 * (${1:-1} - 1))); }
rmq_env() {
    local k=${RMQ_NODE:-1}
    local r off
    r=$(rmq_node_dir "$k")
    off=$(rmq_node_off "$k")
    echo HOME="$r/home" \
        RABBITMQ_NODENAME="$(rmq_node_name "$k")" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_CONF_ENV_FILE="$r/rabbitmq-env.conf" \
        $(AMQP_PORT=$((AMQP_PORT + off)) rmq_listener_env) \
        RABBITMQ_DIST_PORT="$((AMQP_PORT + 20000 + off))" \
        RABBITMQ_MNESIA_BASE="$r/mnesia" \
        RABBITMQ_LOG_BASE="$(rmq_log_dir "$k")" \
        RABBITMQ_CONFIG_FILE="$r/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$r/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$r/enabled_plugins" \
        RABBITMQ_PID_FILE="$r/rabbitmq.pid"
}

# RMQCTL_TIMEOUT_S=N bounds the call (TERM after N s, KILL 10 s later; exit
# 124/137): rabbitmqctl reaches a node through its distribution port and
# hangs on a node that cannot answer (a partition). Unset: no bound (up.sh's
# calls and scripts/rmqctl.sh, which an operator may use to wait).
rmqctl() {
    local bound=()
    [ -z "${RMQCTL_TIMEOUT_S:-}" ] || bound=(timeout -k 10 "$RMQCTL_TIMEOUT_S")
    # shellcheck disable=SC2046
    as_user rabbitmq "${bound[@]}" env $(rmq_env) "$RMQ_BIN/rabbitmqctl" "$@"
}

# pg_client PROGRAM ARGS...: a libpq program (psql, pgbench) with the
# password of a postgresql:// URL argument moved into PGPASSWORD (%-escapes
# decoded): every user can read every process's argv, so no secret may be on
# a client's. psql and pgbench below are this, so a script's
# `psql "$OWNER_DATABASE_URL"` keeps the password off the command line.
pg_client() {
    local prog=$1 a pw= args=()
    shift
    for a in "$@"; do
        if [[ "$a" =~ ^(postgres(ql)?://[^:@/]+):([^@]*)@(.*)$ ]]; then
            pw=${BASH_REMATCH[3]}
            pw=${pw//\\/\\\\}
            printf -v pw '%b' "${pw//%/\\x}"
            a="${BASH_REMATCH[1]}@${BASH_REMATCH[4]}"
        fi
        args+=("$a")
    done
    if [ -n "$pw" ]; then
        PGPASSWORD=$pw command "$prog" "${args[@]}"
    else
        command "$prog" "$@"
    fi
}
psql() { pg_client psql "$@"; }
pgbench() { pg_client pgbench "$@"; }

# mgmt_curl ARGS...: curl as the broker administrator, the credentials in a
# netrc read from a pipe (curl -u would put them on its command line).
mgmt_curl() {
    curl --netrc-file <(printf 'machine 127.0.0.1\nlogin %s\npassword %s\n' \
        "$RABBITMQ_ADMIN_USER" "$RABBITMQ_ADMIN_PASSWORD") "$@"
}

# api_curl ARGS...: curl to order-api as the demo client, the bearer token in
# a header file read from a pipe (-H "Authorization: Bearer ..." would put it
# on curl's command line).
api_curl() {
    curl -H @<(printf 'Authorization: Bearer %s\n' "$API_DEMO_TOKEN") "$@"
}

# The cluster PG_CLUSTER's folders (1: var/postgres, 2: var/postgres2).
pg_dir() { if [ "${PG_CLUSTER:-1}" = 2 ]; then echo "$VAR/postgres2"; else echo "$VAR/postgres"; fi; }
pg_log_dir() { if [ "${PG_CLUSTER:-1}" = 2 ]; then echo "$VAR/log/postgresql2"; else echo "$VAR/log/postgresql"; fi; }
pg_data() { echo "$(pg_dir)/data"; }
pg_sock() { echo "$(pg_dir)/run"; }

pgctl() {
    as_user postgres "$PG_BIN/pg_ctl" -D "$(pg_data)" "$@"
}

# psql as the cluster's superuser over the project's socket (peer auth).
pg_super() {
    as_user postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$(pg_sock)" -p "$(cur_pg_port)" -U postgres "$@"
}

pg_running() { pgctl status >/dev/null 2>&1; }
rmq_running() { rmqctl -q status >/dev/null 2>&1; }

# wait_for SECONDS DESCRIPTION COMMAND...: bounded poll, once every 0.5 s.
wait_for() {
    local secs=$1 what=$2; shift 2
    local i=0 n=$((secs * 2))
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        [ "$i" -lt "$n" ] || return 1
        sleep 0.5
    done
    return 0
}

AMQP_PORT=${AMQP_PORT:-5672}
PG_PORT=${PG_PORT:-5432}
MGMT_PORT=${MGMT_PORT:-15672}
AMQPS_PORT=${AMQPS_PORT:-5671}

# Exports the URLs the tests, tools and load scripts use: OWNER_DATABASE_URL,
# <ROLE>_DATABASE_URL and <NAME>_AMQP_URL per service, TEST_AMQP_URL (the
# administrator) and SPINE_AMQP_URL. Needs load_env first.
export_suite_urls() {
    local name role pw
    export OWNER_DATABASE_URL
    OWNER_DATABASE_URL=$(db_url ordersuite_owner "$PG_OWNER_PASSWORD")
    # <ROLE>_DATABASE_URL and <NAME>_AMQP_URL for every service (its own role and
    # broker user), e.g. BILLING_DATABASE_URL, ORDER_API_AMQP_URL; the
    # database URL on the cluster that holds the service's schema (PG2), and
    # <ROLE>_OWNER_DATABASE_URL, the owner's there.
    for name in $(suite_names) pos; do
        export "$(up_name "$name")_AMQP_URL=$(amqp_url "$name")"
        [ "$name" = pos ] && continue
        role=$(suite_field "$name" 2)
        pw="PG_$(up_name "$role")_PASSWORD"
        export "$(up_name "$role")_DATABASE_URL=$(db_url "$role" "${!pw}" "$(svc_pg_port "$name")")"
        export "$(up_name "$role")_OWNER_DATABASE_URL=$(owner_db_url "$role")"
    done
    # The administrator, in this environment's vhost.
    TEST_AMQP_URL=$(amqp_url admin)
    # The spine suite's own vhost (made by make up): its test events stay out of
    # the services' queues.
    SPINE_AMQP_URL=$(amqp_url admin ordersuite-test)
    export TEST_AMQP_URL SPINE_AMQP_URL
}

# ---------------------------------------------- load runs (bench, chaos, soak)
# The SKUs the load runs order (loadgen --skus); restock keeps them in stock.
LOAD_SKUS="MUG-WHITE,FLT-PAPER,TEA-EARLGREY,COF-FILTER"

# svc_ready NAME: the service's /readyz answers 200 (on its registry port).
svc_ready() { curl -fsS -m 2 "http://127.0.0.1:$(svc_port "$1")/readyz" >/dev/null 2>&1; }

# pg_limit SECONDS "CLIENTS..." DIR: make bench's PostgreSQL limit,
# bench/order_tx.sql under pgbench -M prepared for SECONDS at each client
# count, on bench/setup.sql's scratch tables (emptied after); pgbench's output
# in DIR/pgbench-N.out, its tps line on stdout. Needs export_suite_urls.
pg_limit() {
    local secs=$1 conns=$2 dir=$3 c
    psql -q "$OWNER_DATABASE_URL" -f "$ROOT/bench/setup.sql" || die "bench/setup.sql failed"
    for c in $conns; do
        pgbench -n -M prepared -c "$c" -j 2 -T "$secs" -f "$ROOT/bench/order_tx.sql" \
            "$OWNER_DATABASE_URL" >"$dir/pgbench-$c.out" 2>&1 || die "pgbench failed; see $dir/pgbench-$c.out"
        echo "    $c clients: $(grep -E '^tps' "$dir/pgbench-$c.out")"
    done
    psql -q "$OWNER_DATABASE_URL" -c "TRUNCATE bench.orders, bench.order_lines, bench.order_timeline, bench.outbox"
}

# restock LEVEL REASON: brings each of LOAD_SKUS up to at least LEVEL through
# inventory.adjust_stock (as the owner, on inventory's cluster), so the stock
# ledger stays true. Needs export_suite_urls.
restock() {
    psql -qAt "$INVENTORY_OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -v level="$1" -v reason="$2" -v skus="$LOAD_SKUS" >/dev/null <<'SQL' ||
SELECT count(inventory.adjust_stock(sku, :level - on_hand, :'reason'))
  FROM inventory.stock
 WHERE sku = ANY(string_to_array(:'skus', ',')) AND on_hand < :level;
SQL
        die "restocking $LOAD_SKUS failed"
}
