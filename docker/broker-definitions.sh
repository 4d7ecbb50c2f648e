#!/bin/bash
# docker/broker-definitions.sh — runs in the RabbitMQ image before the
# broker starts (the `broker-init` job) and writes the definitions file the
# broker loads: the admin user, one user per service with the permissions of
# scripts/broker-perms.sh, the vhost and the shared exchanges. Passwords come from .env and are
# stored hashed as RabbitMQ's rabbit_password_hashing_sha256 does: base64 of
# a 4-byte random salt followed by SHA-256(salt + password). (RabbitMQ 3.10's
# rabbitmqctl has no hash_password; coreutils suffice.)
set -euo pipefail
# The services' sources (their routes[] tables and the contract's keys) for
# service_keys: copied into the image beside the scripts.
export ORDERSUITE_SRC=/ordersuite
source /ordersuite/broker-perms.sh
out=${1:-/definitions/definitions.json}
hash() {
    local salt pw digest
    salt=$(head -c 4 /dev/urandom | basenc --base16 -w0)
    pw=$(printf '%s' "$1" | basenc --base16 -w0)
    digest=$(printf '%s%s' "$salt" "$pw" | basenc --base16 -d | sha256sum | cut -c1-64 | tr 'a-f' 'A-F')
    printf '%s%s' "$salt" "$digest" | basenc --base16 -d | base64 -w0
}
json() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
{
    echo '{"vhosts": [{"name": "/"}],'
    echo ' "users": ['
    printf '  {"name": "%s", "password_hash": "%s", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]}' \
        "$RABBITMQ_ADMIN_USER" "$(hash "$RABBITMQ_ADMIN_PASSWORD")"
    for entry in $BROKER_USERS; do
        user=${entry%%:*}
        var="RMQ_$(echo "$user" | tr 'a-z-' 'A-Z_')_PASSWORD"
        printf ',\n  {"name": "%s", "password_hash": "%s", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}' \
            "$user" "$(hash "${!var}")"
    done
    echo '],'
    echo ' "permissions": ['
    printf '  {"user": "%s", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}' "$RABBITMQ_ADMIN_USER"
    for entry in $BROKER_USERS; do
        user=${entry%%:*}
        perms=$(broker_perms "$user" "${entry#*:}")
        { read -r conf; read -r write; read -r read; } <<<"$perms"
        printf ',\n  {"user": "%s", "vhost": "/", "configure": "%s", "write": "%s", "read": "%s"}' \
            "$user" "$(json "$conf")" "$(json "$write")" "$(json "$read")"
    done
    echo '],'
    echo ' "topic_permissions": ['
    sep=''
    for entry in $BROKER_USERS; do
        user=${entry%%:*}
        perms=$(broker_perms "$user" "${entry#*:}")
        { read -r _; read -r _; read -r _; read -r twrite; read -r own; read -r tread; read -r trpc; } <<<"$perms"
        printf '%s  {"user": "%s", "vhost": "/", "exchange": "sales.events", "write": "%s", "read": "%s"}' \
            "$sep" "$user" "$(json "$twrite")" "$(json "$tread")"
        sep=$',\n'
        for ex in sales.retry sales.dlx; do
            printf '%s  {"user": "%s", "vhost": "/", "exchange": "%s", "write": "%s", "read": "%s"}' \
                "$sep" "$user" "$ex" "$(json "$own")" "$(json "$own")"
        done
        printf '%s  {"user": "%s", "vhost": "/", "exchange": "sales.rpc", "write": "%s", "read": "%s"}' \
            "$sep" "$user" "$(json "$trpc")" "$(json '(?!)')"
    done
    echo '],'
    # Each work queue's delivery limit, as a policy (DELIVERY_LIMIT, default 20;
    # see broker_policy in scripts/broker-perms.sh).
    echo ' "policies": ['
    sep=''
    for entry in $BROKER_USERS; do
        user=${entry%%:*}
        [ "$user" = pos ] && continue
        var="$(echo "$user" | tr 'a-z-' 'A-Z_')_DELIVERY_LIMIT"
        limit=${!var:-${DELIVERY_LIMIT:-20}}
        case "$limit" in '' | *[!0-9]*) echo "broker-init: $var must be a number" >&2; exit 1 ;; esac
        printf '%s  {"vhost": "/", "name": "ordersuite-%s", "pattern": "^%s$", "apply-to": "queues", "priority": %s, "definition": {"delivery-limit": %s}}' \
            "$sep" "$user" "$user" "$BROKER_POLICY_PRIORITY" "$limit"
        sep=$',\n'
    done
    echo '],'
    # The shared exchanges are the administrator's: no service may declare them.
    echo ' "exchanges": ['
    sep=''
    for ex in sales.events sales.retry sales.dlx sales.rpc; do
        printf '%s  {"name": "%s", "vhost": "/", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}' \
            "$sep" "$ex"
        sep=$',\n'
    done
    echo ']}'
} >"$out"
echo "broker-init: wrote $out"
