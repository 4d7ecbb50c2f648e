#!/usr/bin/env bash
# tests/pg2_check.sh — a service's database on another PostgreSQL server:
# inventory's schema on a second cluster of the project's own, the other
# services' on the first, and the whole flow and the ledger still pass.
#
# Its own instance (ORDERSUITE_INSTANCE=pg2-check, under var/pg2-check/),
# made by `make up PG2=inventory` itself (scripts/up.sh): PostgreSQL 5632 and
# 5633 (inventory's), AMQP 5972, management 15972, services at +22000 (API
# 30080, metrics 31100-31103: below the kernel's ephemeral ports, which start at 32768; mail catcher 25025/25080), so the main test instance is left alone.
# Everything it started is stopped when it ends, passed or failed.
#
#   up_two_clusters       make up PG2=inventory and make migrate made and
#                         migrated both clusters; make status lists both
#   inventory_url_on_pg2  services.sh gives inventory a DATABASE_URL on 5633,
#                         the others one on 5632 (and so do the exported
#                         <ROLE>_DATABASE_URL)
#   demo_flow             make demo's script: 21 POS sales invoiced, and its
#                         orders CONFIRMED, REJECTED (no stock), CANCELLED
#                         (payment failure)
#   load_flow             a short loadgen run: orders and POS sales with
#                         receipts, all accepted
#   mails                 the mail catcher got the confirmation, the
#                         rejection, the payment failure and the receipt
#   ledger_clean          the ledger over the demo's and the load's orders
#                         and sales: lost, duplicated, stuck, inconsistent 0
#                         (it reads each schema through its service's URL)
#   rows_on_pg2           inventory's reservations, rejections and sale lines
#                         of the run are on the second cluster, and none on
#                         the first (whose unused inventory schema stays
#                         empty): the placement is real, not ignored
#
# PG2_CHECK_BREAK=1 gives inventory the first cluster's URL instead (the
# placement ignored, once both are made): inventory_url_on_pg2 and
# rows_on_pg2 must then fail.
# Run by scripts/run-tests.sh (ORDERSUITE_BIN has the binaries); prints a
# Check-style summary line. 3 to 4 minutes on this loaded machine, most of it
# make up (RabbitMQ's start); docs/SCALING.md has the figures.
set -uo pipefail
# A clean environment: run-tests.sh exports the main pair's env file (its
# passwords and ports), which up.sh would take for this instance's.
if [ -z "${PG2_CHECK_CLEAN:-}" ]; then
    exec env -i PG2_CHECK_CLEAN=1 ORDERSUITE_TEST_RUN="${ORDERSUITE_TEST_RUN:-}" PATH="$PATH" ORDERSUITE_BIN="${ORDERSUITE_BIN:-}" \
        PG2_CHECK_BREAK="${PG2_CHECK_BREAK:-}" bash "$0" "$@"
fi
export ORDERSUITE_INSTANCE=pg2-check PG2=inventory
export PG_PORT=5632 PG2_PORT=5633 AMQP_PORT=5972 AMQPS_PORT=5971 MGMT_PORT=15972
scripts=$(cd "$(dirname "$0")/../scripts" && pwd)
source "$scripts/lib.sh"
set +e
BIN=${ORDERSUITE_BIN:-}
[ -n "$BIN" ] || BIN="$ROOT/build/bin"
BUILD=$(realpath --relative-to="$ROOT" "$(dirname "$BIN")")
export ORDERSUITE_PORT_OFFSET=22000 HTTP_PORT=30080 MAIL_SMTP_PORT=25025 MAIL_WEB_PORT=25080
WORK=$(mktemp -d)

passed=0 failed=0
T0=$(date +%s)
check() { # NAME OK DETAIL (with the seconds since the start)
    if [ "$2" = 1 ]; then
        passed=$((passed + 1))
        echo "ok   $1 ($(($(date +%s) - T0)) s)"
    else
        failed=$((failed + 1))
        echo "FAIL $1: $3"
    fi
}
finish() {
    # Everything this check started, whatever happened: the services and
    # the mail catcher, then both clusters and the broker node.
    bash "$scripts/services.sh" stop >/dev/null 2>&1
    bash "$scripts/down.sh" >"$WORK/down.log" 2>&1 || { echo "    make down failed:"; sed 's/^/      /' "$WORK/down.log"; }
    rm -rf "$WORK"
    echo "$((100 * passed / (passed + failed > 0 ? passed + failed : 1)))%: Checks: $((passed + failed)), Failures: $failed, Errors: 0"
    [ "$failed" = 0 ]
}
trap 'finish; exit $?' EXIT
trap 'exit 1' INT TERM

# ---------------------------------------------------------- up_two_clusters
# From nothing each time (a fresh clone's run): an earlier run's stock,
# orders and queues are not this run's.
bash "$scripts/down.sh" >/dev/null 2>&1
case "$VAR" in
*/pg2-check) rm -rf "$VAR" ;;
esac
ok=1
# Bounded (up.sh's own waits are too, per server): on this loaded machine
# RabbitMQ's start alone has taken 95 s.
timeout 420 bash "$scripts/up.sh" >"$WORK/up.log" 2>&1 || ok=0
[ $ok = 0 ] || timeout 300 bash "$scripts/migrate.sh" "$BIN/migrate" >"$WORK/migrate.log" 2>&1 || ok=0
status=$(bash "$scripts/status.sh" 2>&1)
echo "$status" | grep -q "^postgresql  up    127.0.0.1:5632" || ok=0
echo "$status" | grep -q "^postgresql2 up    127.0.0.1:5633 .*(for inventory)" || ok=0
check up_two_clusters $ok "$(tail -3 "$WORK/up.log" "$WORK/migrate.log" 2>/dev/null; echo "$status")"
if [ $ok = 0 ]; then
    exit 1
fi
load_env
if [ "${PG2_CHECK_BREAK:-}" = 1 ]; then
    # The placement ignored: inventory's URL on the first cluster.
    sed -i 's/^ORDERSUITE_PG2=.*/ORDERSUITE_PG2=0/' "$ENV_FILE"
    load_env
    echo "    PG2_CHECK_BREAK=1: inventory is given the first cluster's URL"
fi

# The URLs the checks below read through: each service's own, and each
# cluster's owner, for the placement.
export_suite_urls
PG1_OWNER=$(db_url ordersuite_owner "$PG_OWNER_PASSWORD" 5632)
PG2_OWNER=$(db_url ordersuite_owner "$PG_OWNER_PASSWORD" 5633)

# ---------------------------------------------------------------- demo_flow
ok=1
timeout 120 bash "$scripts/demo.sh" "$BUILD" >"$WORK/demo.out" 2>&1 || ok=0
for want in "confirmed  *CONFIRMED" "rejected \(no stock\)  *REJECTED" "payment failure  *CANCELLED"; do
    grep -qE "^[0-9a-f-]{36}   $want" "$WORK/demo.out" || ok=0
done
check demo_flow $ok "$(grep -vE '^\{' "$WORK/demo.out" | tail -15)"
# The demo's orders, for the ledger.
grep -oE '^[0-9a-f-]{36}   ' "$WORK/demo.out" | awk '{ print "O demo " $1 }' >"$WORK/run.ids"

# ----------------------------------------------------- inventory_url_on_pg2
# The port of each running service's DATABASE_URL, from its own environment
# (services.sh started it for demo.sh), and the exported URLs.
ok=1
detail=
for s in $(suite_names); do
    want=5632
    [ "$s" != inventory ] || want=5633
    pid=$(cat "$(run_dir)/$s.pid" 2>/dev/null)
    got=$(tr '\0' '\n' <"/proc/${pid:-0}/environ" 2>/dev/null |
        sed -n 's/^DATABASE_URL=postgresql:\/\/[^@]*@127\.0\.0\.1:\([0-9]*\)\/.*/\1/p')
    [ "$got" = "$want" ] || { ok=0; detail="$detail $s:${got:-none}(want $want)"; }
done
[[ "$INVENTORY_DATABASE_URL" == *@127.0.0.1:5633/* ]] || { ok=0; detail="$detail INVENTORY_DATABASE_URL"; }
[[ "$BILLING_DATABASE_URL" == *@127.0.0.1:5632/* ]] || { ok=0; detail="$detail BILLING_DATABASE_URL"; }
check inventory_url_on_pg2 $ok "ports:$detail"

# ---------------------------------------------------------------- load_flow
ok=1
API_TOKEN=$API_DEMO_TOKEN AMQP_URL=$POS_AMQP_URL timeout 60 "$BIN/loadgen" -u "http://127.0.0.1:$HTTP_PORT" \
    -t pg2-load -c 2 -n 20 -r 20 --sales 10 --skus "$LOAD_SKUS" -o "$WORK/load.ids" >"$WORK/load.out" 2>&1 || ok=0
[ "$(grep -c '^O ' "$WORK/load.ids" 2>/dev/null)" = 20 ] || ok=0
[ "$(grep -c '^S ' "$WORK/load.ids" 2>/dev/null)" = 10 ] || ok=0
check load_flow $ok "$(tail -5 "$WORK/load.out")"
cat "$WORK/load.ids" >>"$WORK/run.ids" 2>/dev/null

# ------------------------------------------------------------- ledger_clean
ok=1
AMQP_URL=$TEST_AMQP_URL timeout 120 "$BIN/ledger" --ids "$WORK/run.ids" --wait 60 >"$WORK/ledger.out" 2>&1 || ok=0
grep -q '^RESULT lost=0 duplicated=0 stuck=0 inconsistent=0 ok=1$' "$WORK/ledger.out" || ok=0
grep -qE '^orders .* 23 accepted by the API, 23 of them found' "$WORK/ledger.out" || ok=0
grep -qE '^sales +10 confirmed by the broker: 10 complete' "$WORK/ledger.out" || ok=0
sed 's/^/    /' "$WORK/ledger.out"
check ledger_clean $ok "see the ledger's lines above"

# -------------------------------------------------------------------- mails
ok=1
curl -sf "http://127.0.0.1:$MAIL_WEB_PORT/api/messages" >"$WORK/mails.json" || ok=0
for rcpt in ada@example.com bob@example.com cyd@example.com walk-in@example.com; do
    python3 -c 'import json, sys; sys.exit(0 if any(sys.argv[2] in m["rcpt_tos"] for m in json.load(open(sys.argv[1]))) else 1)' \
        "$WORK/mails.json" "$rcpt" || { ok=0; echo "    no mail to $rcpt"; }
done
kinds=$(psql -X -qAt "$EMAIL_DATABASE_URL" -c "SELECT string_agg(DISTINCT kind, ',' ORDER BY kind) FROM email.messages WHERE status = 'sent'")
for k in order_confirmed order_rejected payment_failed receipt; do
    [[ ",$kinds," == *",$k,"* ]] || { ok=0; echo "    no $k mail sent (sent: $kinds)"; }
done
check mails $ok "the mail catcher or email.messages lacks a mail"

# -------------------------------------------------------------- rows_on_pg2
# Each cluster's own count of the run's inventory rows, read as its owner:
# the demo's confirmed order reserved, its rejected order rejected, the
# load's sales' stock lines.
ok=1
rows() { # URL: reservations rejections sale_lines of the whole run
    psql -X -qAt -F ' ' "$1" -c "SELECT (SELECT count(*) FROM inventory.reservations),
        (SELECT count(*) FROM inventory.rejections), (SELECT count(DISTINCT sale_id) FROM inventory.sale_lines)"
}
on1=$(rows "$PG1_OWNER")
on2=$(rows "$PG2_OWNER")
read -r res2 rej2 sales2 <<<"$on2"
[ "$on1" = "0 0 0" ] || ok=0
[ "${res2:-0}" -ge 2 ] && [ "${rej2:-0}" -ge 1 ] && [ "${sales2:-0}" -ge 31 ] || ok=0
echo "    inventory rows (reservations rejections sales): first cluster $on1, second $on2"
check rows_on_pg2 $ok "want none on the first and the run's on the second"
