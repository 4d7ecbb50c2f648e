#!/usr/bin/env bash
# tests/compose_test.sh — `make compose-test`: the docker compose path, for real.
#
# Starts a Docker engine if none answers (docker/engine.sh), makes
# debian:bookworm-slim if it is missing (docker/base-image.sh), builds every
# image of docker-compose.yml, then runs the project's own compose file, as
# the README's "With Docker" section tells a user to, under the project name
# ordersuite-test-<checksum of the checkout's path> and with a fresh .env
# from docker/make-env.sh:
#   up -d, every health check green; three orders by curl through the published
#   port (CONFIRMED, REJECTED, CANCELLED after a failed payment); a POS burst
#   with `run --rm pos`; the management API shows the exchange, each quorum
#   queue with its DLQ and a consumer; the mail catcher shows the confirmation;
#   --scale billing=3: three consumers, a burst of orders each CONFIRMED with
#   one invoice; `restart rabbitmq` under a trickle of orders, then the ledger
#   against the compose database: nothing lost or doubled; down -v leaves no
#   container, network or volume of the project.
# Ports are published on 127.0.0.1 only, on free ports chosen here (never the
# usual 8080/15672/1080, which the local servers may hold). The whole run is
# bounded by COMPOSE_TEST_TIMEOUT seconds (1500); past it, it fails saying
# which step ran out. It cleans up what it started; images stay (warm cache
# in var/docker/data), an engine it started is stopped.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VAR="$ROOT/var"
[ -L "$VAR" ] && VAR=$(readlink -f "$VAR")
WORK="$VAR/compose-test"
# One project per checkout: its cleanup (down -v --remove-orphans) can only
# reach what this checkout's run made, never another checkout's project.
PROJECT=${COMPOSE_TEST_PROJECT:-ordersuite-test-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)}
BOUND=${COMPOSE_TEST_TIMEOUT:-1500}
DEADLINE=$((SECONDS + BOUND))
mkdir -p "$WORK" "$VAR/log"
: >"$WORK/orders.ids" # this run's orders only (the ledger reads them)

say() { echo "==> compose-test: $*"; }
# fd 3 is the test's stdout: a failure inside $(...) is reported, not captured.
exec 3>&1
fail() {
    echo "compose-test: FAIL: $*" >&2
    echo "tests/compose_test.sh:F:$step: $*" >&3
    exit 1
}
left() { echo $((DEADLINE - SECONDS)); }
# bounded SECONDS CMD...: CMD with at most SECONDS, and never past the
# deadline; a CMD killed by the bound fails the test naming the step.
bounded() {
    local s=$1 rc=0
    shift
    [ "$(left)" -gt 0 ] || fail "out of time (COMPOSE_TEST_TIMEOUT=${BOUND}s) before: $*"
    [ "$s" -le "$(left)" ] || s=$(left)
    timeout --kill-after=10 "$s" "$@" || rc=$?
    case $rc in
    124 | 137) fail "$step exceeded ${s}s (in: $*)" ;;
    esac
    return $rc
}
# Every docker and docker-compose call of the checks: bounded by the time left.
d() { bounded "$(left)" docker "$@"; }
# poll SECONDS WHAT CMD...: CMD until it succeeds, at most SECONDS.
poll() {
    local s=$1 what=$2 end why=
    shift 2
    [ "$s" -le "$(left)" ] || { s=$(left) && why=" (COMPOSE_TEST_TIMEOUT=${BOUND}s reached)"; }
    end=$((SECONDS + s))
    until "$@"; do
        [ $SECONDS -lt $end ] || fail "$what: not within ${s}s$why"
        sleep 1
    done
}
# Step timings, printed at the end.
step=setup
t0=$SECONDS
times=()
begin() {
    times+=("$(printf '%-28s %4ss' "$step" $((SECONDS - t0)))")
    step=$1
    t0=$SECONDS
    say "$step ($(date -u +%T))"
}

# ------------------------------------------------------------------ engine
started_project=0
trickle=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ $started_project = 1 ]; then
        if [ $rc -ne 0 ]; then
            say "logs of the failed run: var/log/compose-test.log"
            timeout --kill-after=5 60 "${DC[@]}" logs --no-color --tail=200 >"$VAR/log/compose-test.log" 2>&1 || true
        fi
        timeout 120 "${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    [ -z "${trickle:-}" ] || kill "$trickle" 2>/dev/null || true
    rm -f "$WORK/test.env"
    # An engine this run started and cannot stop is a failure, not a footnote.
    if ! bash docker/engine.sh stop; then
        echo "compose-test: FAIL: the Docker engine this run started could not be stopped (var/docker/started.pid)" >&2
        echo "tests/compose_test.sh:F:engine-stop: the engine this run started is still running"
        [ $rc -ne 0 ] || rc=1
    fi
    exit $rc
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

begin engine
bounded 120 bash docker/engine.sh start
eval "$(bash docker/engine.sh env)"
export DOCKER_HOST
command -v docker-compose >/dev/null || fail "docker-compose not found: make deps installs it"

begin base-image
bounded 600 bash docker/base-image.sh

# ------------------------------------------------------------------ project
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rm -f "$WORK/test.env"
bash docker/make-env.sh "$WORK/test.env" >/dev/null
API_PORT=$(free_port)
MGMT_PORT=$(free_port)
MAIL_PORT=$(free_port)
sed -i -e "s/^ORDERSUITE_API_PORT=.*/ORDERSUITE_API_PORT=$API_PORT/" \
    -e "s/^ORDERSUITE_MGMT_PORT=.*/ORDERSUITE_MGMT_PORT=$MGMT_PORT/" \
    -e "s/^ORDERSUITE_MAIL_PORT=.*/ORDERSUITE_MAIL_PORT=$MAIL_PORT/" "$WORK/test.env"
set -a
# shellcheck disable=SC1091
. "$WORK/test.env"
set +a
DC=(docker-compose --ansi never -f "$ROOT/docker-compose.yml" --project-directory "$ROOT"
    --env-file "$WORK/test.env" -p "$PROJECT")
dc() { bounded "$(left)" "${DC[@]}" "$@"; }
API="http://127.0.0.1:$API_PORT"
MGMT="http://127.0.0.1:$MGMT_PORT"
MAIL="http://127.0.0.1:$MAIL_PORT"

begin build
bounded 1200 "${DC[@]}" build -q >"$VAR/log/compose-build.log" 2>&1 ||
    fail "image build failed; see var/log/compose-build.log"

begin up
# A project left by an interrupted run goes first.
bounded 120 "${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
started_project=1
bounded 300 "${DC[@]}" up -d >"$VAR/log/compose-up.log" 2>&1 ||
    fail "docker-compose up failed; see var/log/compose-up.log"
# up -d waits for the conditions of depends_on; the services' own health
# checks are waited for here.
all_healthy() {
    local c bad=0
    for svc in rabbitmq postgres mailcatcher order-api inventory billing email; do
        c=$(dc ps -q "$svc") || return 1
        [ -n "$c" ] || return 1
        for id in $c; do
            [ "$(d inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] || bad=1
        done
    done
    [ $bad = 0 ]
}
poll 180 "every health check green" all_healthy
hello_said() { dc logs --no-color hello | grep -q "ordersuite is up"; }
poll 30 "the hello job printing where to look" hello_said

# ------------------------------------------------------------------ checks
sql() { dc exec -T postgres psql -qAt -d ordersuite -c "$1"; }
# api_curl / mgmt_curl ARGS...: curl with the bearer token or the broker
# admin's credentials read from a pipe, never on curl's command line.
api_curl() { curl -H @<(printf 'Authorization: Bearer %s\n' "$API_DEMO_TOKEN") "$@"; }
mgmt_curl() {
    curl --netrc-file <(printf 'machine 127.0.0.1\nlogin %s\npassword %s\n' \
        "$RABBITMQ_ADMIN_USER" "$RABBITMQ_ADMIN_PASSWORD") "$@"
}
# place BODY: POST an order through the published port, print its id.
# place BODY: POSTs an order, prints its id and notes it for the ledger
# ("O <key> <id>", loadgen's format), which checks each order's effects at the end.
place() {
    local key="ct-$RANDOM-$RANDOM-$SECONDS" id
    id=$(api_curl -sf --max-time 10 -X POST "$API/orders" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: $key" -d "$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') || return 1
    echo "O $key $id" >>"$WORK/orders.ids"
    echo "$id"
}
status_of() {
    api_curl -sf --max-time 10 "$API/orders/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])'
}
is_status() { [ "$(status_of "$1")" = "$2" ]; }

begin orders
ok=$(place '{"customer_id":"ada","customer_email":"ada@example.com","currency":"EUR","items":[{"sku":"TEA-SENCHA","quantity":2},{"sku":"MUG-WHITE","quantity":1}]}') ||
    fail "POST /orders on $API refused the order"
rejected=$(place '{"customer_id":"bob","customer_email":"bob@example.com","currency":"EUR","items":[{"sku":"TEA-MATCHA","quantity":1}]}') ||
    fail "POST /orders refused the out-of-stock order"
# 70 mugs at 8.00 = 560.00: over billing's 500.00 credit limit.
failed=$(place '{"customer_id":"cyd","customer_email":"cyd@example.com","currency":"EUR","items":[{"sku":"MUG-WHITE","quantity":70}]}') ||
    fail "POST /orders refused the over-limit order"
poll 60 "order $ok CONFIRMED" is_status "$ok" CONFIRMED
poll 60 "order $rejected REJECTED" is_status "$rejected" REJECTED
poll 60 "order $failed CANCELLED (payment failed, stock released)" is_status "$failed" CANCELLED

begin pos
# The project is fresh and this till is the only one that sells in it, so
# its 10 sales are exactly the sale invoices and the sales inventory took
# stock for (billing keeps no store id; pos confirms its own count).
sales_before=$(sql "SELECT count(*) FROM billing.invoices WHERE sale_id IS NOT NULL")
[ "$sales_before" = 0 ] || fail "a fresh project already has $sales_before sale invoices"
bounded 120 "${DC[@]}" run --rm pos --count 10 --rate 20 --store DOCKER-01 </dev/null >"$VAR/log/compose-pos.log" 2>&1 ||
    fail "docker-compose run --rm pos failed; see var/log/compose-pos.log"
grep -q "^pos DOCKER-01: 10 sale(s) sent and confirmed" "$VAR/log/compose-pos.log" ||
    fail "pos DOCKER-01 did not confirm 10 sales: $(grep '^pos ' "$VAR/log/compose-pos.log" | tail -1)"
pos_done() { [ "$(sql "SELECT count(DISTINCT sale_id) FROM inventory.sale_lines")" = 10 ] &&
    [ "$(sql "SELECT count(*) || ' ' || count(DISTINCT sale_id) FROM billing.invoices WHERE sale_id IS NOT NULL")" = "10 10" ]; }
poll 60 "the 10 POS sales of DOCKER-01 each invoiced once (invoices, distinct sales: $(sql "SELECT count(*) || ' ' || count(DISTINCT sale_id) FROM billing.invoices WHERE sale_id IS NOT NULL" 2>/dev/null))" pos_done

begin management-api
# queues_ok EXPECTED_BILLING_CONSUMERS: the exchange, every service's quorum
# queue with a consumer (billing: exactly N), every DLQ.
queues_ok() {
    mgmt_curl -sf --max-time 10 "$MGMT/api/queues/%2F" >"$WORK/queues.json" || return 1
    mgmt_curl -sf --max-time 10 "$MGMT/api/exchanges/%2F/sales.events" >"$WORK/exchange.json" || return 1
    python3 - "$1" "$WORK" <<'PY' >"$WORK/queues.why"
import json, sys
want, work = int(sys.argv[1]), sys.argv[2]
ex = json.load(open(work + "/exchange.json"))
qs = {q["name"]: q for q in json.load(open(work + "/queues.json"))}
bad = []
if ex.get("type") != "topic" or not ex.get("durable"):
    bad.append("sales.events is not a durable topic exchange")
for s in ("order-api", "inventory", "billing", "email"):
    q = qs.get(s)
    if q is None:
        bad.append(f"no queue {s}"); continue
    if q.get("type") != "quorum":
        bad.append(f"{s} is {q.get('type')}, not quorum")
    n = q.get("consumers", 0)
    if (s == "billing" and n != want) or n < 1:
        bad.append(f"{s} has {n} consumers")
    if s + ".dlq" not in qs:
        bad.append(f"no DLQ {s}.dlq")
print("; ".join(bad))
sys.exit(1 if bad else 0)
PY
}
poll 30 "the management API on $MGMT: $(cat "$WORK/queues.why" 2>/dev/null)" queues_ok 1
curl -sf --max-time 10 -o /dev/null "$MGMT/" || fail "the management UI does not answer on $MGMT"

begin mail
confirmation_seen() {
    curl -sf --max-time 10 "$MAIL/api/messages" | python3 -c '
import json, sys
ms = json.load(sys.stdin)
want = "Order %s confirmed" % sys.argv[1][:8]
sys.exit(0 if any("ada@example.com" in m["rcpt_tos"] and m["subject"].startswith(want) for m in ms) else 1)' "$ok"
}
poll 60 "the confirmation mail of order $ok to ada@example.com in the mail catcher ($MAIL/api/messages)" confirmation_seen
curl -sf --max-time 10 "$MAIL/" | grep -q "mailcatcher:" || fail "the mail catcher's page does not answer on $MAIL"

begin scale-billing
# --no-deps billing: only billing changes (a plain `up` would run the
# one-shot jobs again).
bounded 180 "${DC[@]}" up -d --no-deps --scale billing=3 billing >>"$VAR/log/compose-up.log" 2>&1 ||
    fail "up --scale billing=3 failed; see var/log/compose-up.log"
poll 120 "three billing containers healthy" all_healthy
say "three billing containers healthy ($(date -u +%T))"
poll 60 "three consumers on billing: $(cat "$WORK/queues.why" 2>/dev/null)" queues_ok 3
# 30 orders, six at a time, so that the three consumers compete.
burst=()
rm -f "$WORK"/burst.*
for i in $(seq 1 30); do
    place "{\"customer_id\":\"burst-$i\",\"customer_email\":\"burst$i@example.com\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"FLT-PAPER\",\"quantity\":1}]}" >"$WORK/burst.$i" &
    [ $((i % 6)) != 0 ] || wait
done
wait
for i in $(seq 1 30); do
    id=$(cat "$WORK/burst.$i")
    [ -n "$id" ] || fail "POST /orders refused burst order $i"
    burst+=("$id")
done
in_list=$(printf "'%s'," "${burst[@]}")
in_list=${in_list%,}
burst_done() { [ "$(sql "SELECT count(*) FROM orders.orders WHERE id IN ($in_list) AND status = 'CONFIRMED'")" = 30 ]; }
poll 90 "30 burst orders CONFIRMED" burst_done
got=$(sql "SELECT count(*) || ' ' || count(DISTINCT order_id) FROM billing.invoices WHERE order_id IN ($in_list)")
[ "$got" = "30 30" ] || fail "30 burst orders have invoices (count, distinct orders) = $got, not one each"

begin restart-rabbitmq
: >"$WORK/trickle.ids"
: >"$WORK/trickle.times"
rm -f "$WORK/trickle.stop"
# A trickle of orders, one every 0.2 s, while the broker restarts: order-api
# takes them into its outbox even while the broker is away. trickle.times
# has the time each accepted order was sent ("SECONDS.NANOS ID").
(
    i=0
    while [ ! -e "$WORK/trickle.stop" ]; do
        i=$((i + 1))
        key="trickle-$$-$i"
        sent=$(date +%s.%N)
        id=$(api_curl -sf --max-time 5 -X POST "$API/orders" -H 'Content-Type: application/json' \
            -H "Idempotency-Key: $key" \
            -d "{\"customer_id\":\"trickle\",\"customer_email\":\"trickle@example.com\",\"currency\":\"EUR\",\"items\":[{\"sku\":\"FLT-PAPER\",\"quantity\":1}]}" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' 2>/dev/null) &&
            echo "O $key $id" >>"$WORK/trickle.ids" && echo "$sent $id" >>"$WORK/trickle.times"
        sleep 0.2
    done
) &
trickle=$!
# sent_between A B: orders of the trickle sent at A or later and B or earlier.
sent_between() { awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b' "$WORK/trickle.times" | wc -l; }
trickle_flows() { [ -s "$WORK/trickle.times" ]; }
poll 30 "the trickle's first order accepted" trickle_flows
say "restart rabbitmq ($(date -u +%T))"
bounded 120 "${DC[@]}" restart rabbitmq >>"$VAR/log/compose-up.log" 2>&1 || fail "docker-compose restart rabbitmq failed"
# From here the broker has been stopped and is starting: an order accepted
# before it is healthy again was accepted without it.
restart_at=$(date +%s.%N)
broker_healthy() {
    local id
    id=$(dc ps -q rabbitmq) || return 1
    [ -n "$id" ] && [ "$(d inspect -f '{{.State.Health.Status}}' "$id")" = healthy ]
}
poll 120 "rabbitmq healthy again after its restart" broker_healthy
healthy_at=$(date +%s.%N)
during=$(sent_between "$restart_at" "$healthy_at")
say "rabbitmq healthy again ($(date -u +%T)); $during orders sent while it restarted"
[ "$during" -ge 1 ] || fail "no order was accepted between the restart and the broker healthy again: the restart was not under load"
api_ready() { curl -sf --max-time 5 -o /dev/null "$API/readyz"; }
poll 60 "order-api /readyz after the broker restart" api_ready
poll 90 "every queue with its consumer again after the broker restart: $(cat "$WORK/queues.why" 2>/dev/null)" queues_ok 3
poll 120 "every health check green after the broker restart" all_healthy
recovered_at=$(date +%s.%N)
say "order-api ready and every consumer back ($(date -u +%T))"
# The trickle goes on until an order sent after the recovery was accepted.
sent_after() { [ "$(sent_between "$recovered_at" 9999999999)" -ge 1 ]; }
poll 30 "an order accepted after the broker's recovery" sent_after
touch "$WORK/trickle.stop"
wait "$trickle" || true
trickle=
rm -f "$WORK/trickle.stop"
n=$(wc -l <"$WORK/trickle.ids")
[ "$n" -ge 10 ] || fail "only $n trickle orders were accepted around the restart"
say "$n orders accepted around the broker restart; the ledger checks every order of the run"
# and the orders placed before (CONFIRMED, REJECTED, CANCELLED with its stock
# released, the scaled burst): each with exactly its effects
cat "$WORK/orders.ids" >>"$WORK/trickle.ids"
# The ledger, in a one-off container of the suite's image on the compose
# network, against the compose database (as the owner) and broker (admin).
# The URLs hold passwords: exported, passed by name (-e NAME), not on the argv.
export DATABASE_URL="postgresql://ordersuite_owner:$PG_OWNER_PASSWORD@postgres:5432/ordersuite"
export AMQP_URL="amqp://$RABBITMQ_ADMIN_USER:$RABBITMQ_ADMIN_PASSWORD@rabbitmq:5672"
bounded 300 "${DC[@]}" run --rm --no-deps -T -v "$WORK/trickle.ids:/tmp/trickle.ids:ro" \
    -e DATABASE_URL -e AMQP_URL \
    --entrypoint ledger migrate --ids /tmp/trickle.ids --wait 120 >"$WORK/ledger.out" 2>"$VAR/log/compose-ledger.log" || {
    cat "$WORK/ledger.out"
    fail "the ledger after the broker restart: $(grep RESULT "$WORK/ledger.out" || echo 'no RESULT; see var/log/compose-ledger.log')"
}
grep -q '^RESULT .*ok=1$' "$WORK/ledger.out" ||
    fail "the ledger printed no 'RESULT ... ok=1' line: $(tail -3 "$WORK/ledger.out" | tr '\n' ' '); see var/log/compose-ledger.log"
grep RESULT "$WORK/ledger.out"
say "ledger done ($(date -u +%T))"

begin down
bounded 180 "${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || fail "docker-compose down -v failed"
started_project=0
label="label=com.docker.compose.project=$PROJECT"
containers=$(d ps -aq --filter "$label") || fail "docker ps failed after down -v"
networks=$(d network ls -q --filter "$label") || fail "docker network ls failed after down -v"
volumes=$(d volume ls -q --filter "$label") || fail "docker volume ls failed after down -v"
left_behind="$containers $networks $volumes"
[ -z "${left_behind// /}" ] || fail "down -v left behind: $left_behind"

begin "done"
say "passed; step times:"
printf '    %s\n' "${times[@]:1}"
echo "100%: Checks: 10, Failures: 0, Errors: 0"
