# scripts/suite.sh — the suite's long-running services, in one place.
# Sourced by the scripts (up, migrate, services, run-tests, broker-perms) and
# by docker/migrate.sh. `make new-service` adds a line.
#
# One line per service, in start order (consumers before producers, so their
# queues exist before anything is published):
#   name  database-role  topic-prefix-it-publishes(- for none)  port-variable  port
#   [ops-port-variable ops-port]  (a second listener with /healthz, /readyz and
#   /metrics alone, for a service whose port carries an API behind a token)
SUITE_SERVICES="
inventory inventory inventory METRICS_PORT 9101
billing billing billing METRICS_PORT 9102
email email - METRICS_PORT 9103
order-api orders order HTTP_PORT 8080 OPS_PORT 9100
"

# suite_names: the service names, one per line, in start order.
suite_names() { echo "$SUITE_SERVICES" | awk 'NF { print $1 }'; }
# suite_field NAME N: field N (2 role, 3 topic, 4 port variable, 5 port,
# 6 and 7 the operations port's variable and port, or empty) of NAME.
suite_field() { echo "$SUITE_SERVICES" | awk -v n="$1" -v f="$2" '$1 == n { print $f }'; }
# up_name NAME: NAME as a variable-name part (order-api -> ORDER_API).
up_name() { echo "$1" | tr 'a-z-' 'A-Z_'; }
