# scripts/broker-perms.sh — the broker permissions of each service, in one
# place for `make up` (scripts/up.sh), the tests (tests/new_service_check.py)
# and docker compose (docker/broker-definitions.sh). Sourced.
#
# BROKER_USERS lists "user:topic": the user is the service (and its queue
# name); topic is the prefix of the routing keys it may publish on
# sales.events ("" = none).
#
# What a service's user S may do, and why that is enough against a service
# whose credentials an attacker holds:
#   - configure only its own queues (S, S.retry.*, S.dlq): it declares them
#     and binds them at start; the exchanges are the administrator's
#     (`make migrate`), so no service can declare, change or delete them;
#   - write (publish, be bound) only on its own queues and the three shared
#     exchanges, never on amq.default (""), so nothing reaches a queue by
#     name; read (consume, bind from) only its own queues and those exchanges;
#   - topic permissions (the broker checks them on every publish to, and
#     every binding from, a topic exchange): on sales.events it publishes only
#     TOPIC.* and binds (reads) only the event keys it handles, exactly
#     (service_keys: the routes of its main.c), so no queue of its own, nor
#     sales.retry, is bound for `#` or for another service's events; on
#     sales.retry and sales.dlx it publishes and binds only the
#     keys common/mq_*.c use (S, and S.retry.<ms>ms for its tiers), so its
#     retries and dead letters reach its own queues only and it cannot bind
#     its queue to another's, nor sales.retry to sales.events under an event
#     key. What topic permissions do not cover (CC/BCC keys, a queue's
#     dead-letter key, exchange-to-exchange bindings) the consumer catches:
#     mq_event_type in common/mq_msg.c.
# pos publishes sale.* on sales.events and has no queue.
#
# Request/reply (common/mq_rpc.h, README "Request/reply"): RPC_ASKS lists
# "service:key" for each question a service may ask, RPC_ANSWERS each one
# a service answers. An asker may write on sales.rpc, with topic permission
# for exactly its keys; its replies come on amq.rabbitmq.reply-to, which
# needs no permission. An answerer may read its queue S.requests (declared
# and bound by `make migrate`: it configures and binds nothing new) and
# write on amq.default, the only exchange that reaches a reply-to name. That
# last right is wider than the replies: RabbitMQ cannot narrow the default
# exchange by routing key, so the answerer's user can put a message into
# any queue by its name. The consumers hold that door (mq_event_type: a
# delivery through "" carries the queue's name as its key, which is no
# event, and goes to the DLQ unhandled; check_privileges tries it and
# checks the tables), and only the answering services have it.
RPC_ASKS="order-api:inventory.availability"
RPC_ANSWERS="inventory:inventory.availability"

# rpc_keys LIST USER: the keys of USER in LIST (RPC_ASKS or RPC_ANSWERS) as
# a regex alternation (\. escaped), or nothing.
rpc_keys() {
    local e out=''
    for e in $1; do
        [ "${e%%:*}" = "$2" ] || continue
        out="$out${out:+|}$(echo "${e#*:}" | sed 's/\./\\./g')"
    done
    echo "$out"
}
source "$(dirname "${BASH_SOURCE[0]}")/suite.sh"
BROKER_USERS="$(echo "$SUITE_SERVICES" | awk 'NF { printf "%s:%s ", $1, ($3 == "-" ? "" : $3) }')pos:sale"

# service_keys NAME: the event keys service NAME handles, one a line: the
# routes[] table of services/NAME/main.c (its EV_ names, which is what binds
# its queue), through the RK_ defines of contracts/events.h. The sources are
# under ORDERSUITE_SRC (default: this script's tree; the broker image has a
# copy). Fails, printing nothing, when the table names no event or one that
# is not in the contract.
service_keys() {
    local src=${ORDERSUITE_SRC:-$(dirname "${BASH_SOURCE[0]}")/..}
    [ -r "$src/services/$1/main.c" ] && [ -r "$src/contracts/events.h" ] || {
        echo "service_keys: no $src/services/$1/main.c or $src/contracts/events.h" >&2
        return 1
    }
    awk -v name="$1" '
        FNR == NR {
            if ($1 == "#define" && $2 ~ /^RK_/) { k = $3; gsub(/"/, "", k); rk["EV_" substr($2, 4)] = k }
            next
        }
        /worker_route routes\[\] = \{/ { inr = 1; next }
        inr && /^[ \t]*\};/ { inr = 0 }
        inr {
            while (match($0, /\{EV_[A-Z_]+,/)) {
                ev = substr($0, RSTART + 1, RLENGTH - 2)
                if (!(ev in rk)) { print "service_keys: " name ": " ev " is not an event" >"/dev/stderr"; bad = 1 }
                out = out rk[ev] "\n"
                $0 = substr($0, RSTART + RLENGTH)
            }
        }
        END {
            if (bad || out == "") { if (!bad) print "service_keys: " name ": no routes[] table" >"/dev/stderr"; exit 1 }
            printf "%s", out
        }' "$src/contracts/events.h" "$src/services/$1/main.c"
}

# broker_perms USER TOPIC [HAS_QUEUES]: prints seven lines: the configure,
# write and read regexes of USER, its topic-write regex on sales.events, its
# topic regex (write and read) on sales.retry and sales.dlx, its
# topic-read regex on sales.events (the keys of service_keys), and its
# topic-write regex on sales.rpc (the keys it asks; it reads none there). HAS_QUEUES
# is 1 (default) for a consuming service, 0 for a publisher only (pos).
# Fails when a consuming service's keys cannot be read.
broker_perms() {
    local q=$1 topic=$2 queues=${3:-}
    [ -n "$queues" ] || { [ "$q" = pos ] && queues=0 || queues=1; }
    local own="$q|$q\\.retry\\..*|$q\\.dlq" keys='' asks answers wx='' rx=''
    asks=$(rpc_keys "$RPC_ASKS" "$q")
    answers=$(rpc_keys "$RPC_ANSWERS" "$q")
    [ -z "$asks" ] || wx='|sales\.rpc'
    [ -z "$answers" ] || { wx="$wx|amq\.default"; rx="|$q\.requests"; }
    if [ "$queues" = 1 ]; then
        keys=$(service_keys "$q") || return 1
        keys=$(echo "$keys" | sed 's/\./\\./g' | paste -sd '|')
    fi
    if [ "$queues" = 1 ]; then
        echo "^($own)\$"
        echo "^($own|sales\\.(events|retry|dlx)$wx)\$"
        echo "^($own|sales\\.(events|retry|dlx)$rx)\$"
    else
        echo '^$'
        echo "^(sales\\.events$wx)\$"
        echo '^$'
    fi
    # No topic: no key at all. '^$' would still let the empty key through
    # (check_privileges tries it); '(?!)', an empty lookahead that always
    # fails, matches nothing.
    if [ -n "$topic" ]; then echo "^$topic\\..*\$"; else echo '(?!)'; fi
    if [ "$queues" = 1 ]; then echo "^($q|$q\\.retry\\.[0-9]+ms)\$"; else echo '^$'; fi
    if [ "$queues" = 1 ]; then echo "^($keys)\$"; else echo '(?!)'; fi
    if [ -n "$asks" ]; then echo "^($asks)\$"; else echo '(?!)'; fi
}

# broker_grant VHOST USER TOPIC: sets USER's permissions on VHOST with
# rabbitmqctl (the caller defines rmqctl, as scripts/lib.sh does).
broker_grant() {
    local vhost=$1 user=$2 topic=$3 perms conf write read twrite own tread trpc
    perms=$(broker_perms "$user" "$topic") || return 1
    { read -r conf; read -r write; read -r read; read -r twrite; read -r own; read -r tread; read -r trpc; } <<<"$perms"
    rmqctl -q set_permissions -p "$vhost" "$user" "$conf" "$write" "$read" >/dev/null
    rmqctl -q set_topic_permissions -p "$vhost" "$user" sales.events "$twrite" "$tread" >/dev/null
    rmqctl -q set_topic_permissions -p "$vhost" "$user" sales.retry "$own" "$own" >/dev/null
    rmqctl -q set_topic_permissions -p "$vhost" "$user" sales.dlx "$own" "$own" >/dev/null
    rmqctl -q set_topic_permissions -p "$vhost" "$user" sales.rpc "$trpc" '(?!)' >/dev/null
}

# broker_policy VHOST SERVICE DELIVERY_LIMIT: the operator-tunable settings
# of SERVICE's work queue, as a policy. Queue arguments are fixed when a
# queue is declared (declaring it again with other values fails with 406 and
# would stop the worker); a policy changes in place, on the queue as it is.
# Only the administrator sets policies: a service user that could would
# reach every other queue through a pattern. RabbitMQ applies one policy
# per queue, the highest priority's: BROKER_POLICY_PRIORITY (100) is high so
# that an operator's broad policy (".*", priority 0) does not silently
# replace the delivery limit; an operator who means to replace it for a
# queue uses a higher priority and includes delivery-limit (README). The
# worker enforces DELIVERY_LIMIT itself either way.
BROKER_POLICY_PRIORITY=100
broker_policy() {
    local vhost=$1 svc=$2 limit=$3
    [[ "$limit" =~ ^[0-9]+$ ]] && [ "$limit" -ge 1 ] && [ "$limit" -le 1000 ] ||
        { echo "DELIVERY_LIMIT for $svc must be 1..1000, not '$limit'" >&2; return 1; }
    rmqctl -q set_policy -p "$vhost" --apply-to queues --priority "$BROKER_POLICY_PRIORITY" "ordersuite-$svc" "^$svc\$" \
        "{\"delivery-limit\": $limit}" >/dev/null
}
