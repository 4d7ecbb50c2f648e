#!/usr/bin/env bash
# scripts/services.sh start|stop|kill|status [NAME[@K]...] — the suite's
# long-running services in the background, pid files in var/run/, logs in
# var/log/ (or, after use_test_env in lib.sh, the tests' own folders, ports,
# database and vhost). No names: all of them. kill is kill -9 (for the chaos
# runs).
# Several instances of a service (lib.sh, "several instances"):
# INSTANCES_billing=3 services.sh start runs billing, billing@2 and
# billing@3 (INSTANCES_<name>, '-' as '_': INSTANCES_order_api=2). A NAME
# means every instance of it (start: INSTANCES_<name> of them, default 1;
# stop, kill, status: every one running); NAME@K means instance K alone
# (services.sh kill billing@2; NAME@1 is NAME's first, NAME.pid).
# services.sh mailcatcher SMTP_PORT WEB_PORT starts the mail catcher
# (tools/mailcatcher) the same way; stop without names stops it too.
# BUILD (environment, default build) picks the binaries; the caller's
# environment reaches the services (e.g. HTTP_THREADS=16).
source "$(dirname "$0")/lib.sh"
load_env
cmd=${1:-status}
shift || true
all=0
[ $# -gt 0 ] || all=1 # no names: the mail catcher stops with the rest
BUILD=${BUILD:-build}
RUN=$(run_dir)
LOG=$(svc_log_dir)
if [ "$cmd" = mailcatcher ]; then
    [ $# = 2 ] || die "usage: services.sh mailcatcher SMTP_PORT WEB_PORT"
    mkdir -p "$RUN" "$LOG"
    pidf="$RUN/mailcatcher.pid"
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
        echo "    mailcatcher: already running (pid $(cat "$pidf"))"
        exit 0
    fi
    rm -f "$RUN/mailcatcher.ready"
    setsid "$ROOT/tools/mailcatcher/mailcatcher.py" --smtp-port "$1" --http-port "$2" \
        --store "$VAR/mailcatcher.jsonl" --ready-file "$RUN/mailcatcher.ready" \
        >>"$LOG/mailcatcher.log" 2>&1 </dev/null &
    echo $! >"$pidf"
    for _ in $(seq 1 100); do [ -f "$RUN/mailcatcher.ready" ] && break; sleep 0.1; done
    [ -f "$RUN/mailcatcher.ready" ] || die "mailcatcher did not start; see $LOG/mailcatcher.log"
    echo "    mailcatcher: started (pid $!, web http://127.0.0.1:$2/, log $LOG/mailcatcher.log)"
    exit 0
fi
if [ $# -gt 0 ]; then
    NAMES=("$@")
    for s in "${NAMES[@]}"; do
        [[ " $(suite_names | tr '\n' ' ') " == *" $(inst_svc "$s") "* ]] || die "no service named $(inst_svc "$s")"
        [[ "$s" != *@* ]] || [[ "$(inst_num "$s")" =~ ^[1-9]$ ]] ||
            die "$s: an instance is NAME@K, K from 1 to $INSTANCES_MAX"
    done
else
    mapfile -t NAMES < <(suite_names)
fi

# The instances each command acts on, in start order: NAME@K as named
# (NAME@1 is NAME); a NAME's INSTANCES_<name> for start, and for the others
# every instance with a pid file (whatever INSTANCES_ says now).
SERVICES=()
for s in "${NAMES[@]}"; do
    if [[ "$s" == *@* ]]; then
        SERVICES+=("$(inst_name "$(inst_svc "$s")" "$(inst_num "$s")")")
    elif [ "$cmd" = start ]; then
        n=$(svc_instances "$s") || exit 1
        for k in $(seq 1 "$n"); do SERVICES+=("$(inst_name "$s" "$k")"); done
    else
        SERVICES+=("$s")
        for k in $(seq 2 "$INSTANCES_MAX"); do
            [ ! -f "$RUN/$s@$k.pid" ] || SERVICES+=("$s@$k")
        done
    fi
done

svc_env() { # NAME[@K]: the environment of one instance
    local name role pw
    name=$(inst_svc "$1")
    role=$(suite_field "$name" 2)
    pw="PG_$(up_name "$role")_PASSWORD"
    # On the cluster that holds its schema (make up PG2=...).
    echo "DATABASE_URL=$(db_url "$role" "${!pw}" "$(svc_pg_port "$name")")"
    echo "$(suite_field "$name" 4)=$(svc_port "$1")"
    [ -z "$(svc_ops_port "$1")" ] || echo "$(suite_field "$name" 6)=$(svc_ops_port "$1")"
    echo "AMQP_URL=$(inst_amqp_url "$1")"
    [ "$name" != order-api ] || echo "API_TOKENS_FILE=$(api_tokens_file)"
    # The demo client (make up's token) is the board's operator: it may read
    # the queue depths (GET /board/queues; README).
    [ "$name" != order-api ] || echo "BOARD_CLIENTS=demo"
}

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

case "$cmd" in
start)
    mkdir -p "$RUN" "$LOG"
    for s in "${SERVICES[@]}"; do
        bin="$ROOT/$BUILD/bin/$(inst_svc "$s")"
        [ -x "$bin" ] || { echo "    $s: not built yet (no $bin), skipped"; continue; }
        if running "$s"; then
            echo "    $s: already running (pid $(cat "$RUN/$s.pid"))"
            continue
        fi
        # Secrets go through the environment, never a command line (not even
        # env's: every user can read every process's argv).
        (
            while IFS= read -r kv; do export "${kv?}"; done < <(svc_env "$s")
            exec setsid "$bin" >>"$LOG/$s.log" 2>&1 </dev/null
        ) &
        echo $! >"$RUN/$s.pid"
        echo "    $s: started (pid $!, log $LOG/$s.log)"
    done
    ;;
stop)
    for s in "${SERVICES[@]}"; do
        running "$s" || { rm -f "$RUN/$s.pid"; continue; }
        pid=$(cat "$RUN/$s.pid")
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "    $s: did not stop in 20 s; killing it" >&2
            kill -KILL "$pid"
        fi
        rm -f "$RUN/$s.pid"
        echo "    $s: stopped"
    done
    if [ "$all" = 1 ] && [ -f "$RUN/mailcatcher.pid" ]; then
        kill -TERM "$(cat "$RUN/mailcatcher.pid")" 2>/dev/null && echo "    mailcatcher: stopped"
        rm -f "$RUN/mailcatcher.pid"
    fi
    ;;
kill)
    for s in "${SERVICES[@]}"; do
        running "$s" || continue
        pid=$(cat "$RUN/$s.pid")
        kill -KILL "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$RUN/$s.pid"
        echo "    $s: killed (-9)"
    done
    ;;
status)
    for s in "${SERVICES[@]}"; do
        running "$s" || continue
        ops=$(svc_ops_port "$s")
        printf '%-11s up    pid %-7s port %s%s\n' "$s" "$(cat "$RUN/$s.pid")" "$(svc_port "$s")" \
            "${ops:+, operations $ops}"
    done
    ;;
*) die "usage: services.sh start|stop|kill|status [NAME[@K]...]" ;;
esac
