# scripts/broker-perms.sh — the broker permissions of each service, in one
# place for `make up` (scripts/up.sh) and docker compose
# (docker/broker-definitions.sh). Sourced.
#
# BROKER_USERS lists "user:topic": the user is the service (and its queue
# name); topic is the prefix of the routing keys it may publish on
# sales.events ("" = none).
source "$(dirname "${BASH_SOURCE[0]}")/suite.sh"
BROKER_USERS="$(echo "$SUITE_SERVICES" | awk 'NF { printf "%s:%s ", $1, ($3 == "-" ? "" : $3) }')pos:sale"

# broker_perms USER TOPIC: prints four lines, the configure, write and read
# regexes of USER's queues and exchanges, and its topic-write regex.
broker_perms() {
    local q=$1 topic=$2
    local own="$q|$q\\.retry\\..*|$q\\.dlq"
    echo "^($own|sales\\.(events|dlx|retry))\$"
    echo "^($own|sales\\.(events|dlx|retry)|amq\\.default)\$"
    echo "^($own|sales\\.(events|dlx|retry))\$"
    echo "^${topic:+$topic\\..*}\$"
}
