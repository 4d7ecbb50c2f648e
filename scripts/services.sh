#!/usr/bin/env bash
# scripts/services.sh start|stop|kill|status [NAME...] — the suite's
# long-running services in the background, pid files in var/run/, logs in
# var/log/ (or, after use_test_env in lib.sh, the tests' own folders, ports,
# database and vhost). No names: all of them. kill is kill -9 (for the chaos
# runs).
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
    SERVICES=("$@")
    for s in "${SERVICES[@]}"; do
        [[ " $(suite_names | tr '\n' ' ') " == *" $s "* ]] || die "no service named $s"
    done
else
    mapfile -t SERVICES < <(suite_names)
fi

svc_env() { # NAME: the environment of one service
    local role pw
    role=$(suite_field "$1" 2)
    pw="PG_$(up_name "$role")_PASSWORD"
    echo "DATABASE_URL=$(db_url "$role" "${!pw}")"
    echo "$(suite_field "$1" 4)=$(svc_port "$1")"
    [ -z "$(svc_ops_port "$1")" ] || echo "$(suite_field "$1" 6)=$(svc_ops_port "$1")"
    echo "AMQP_URL=$(amqp_url "$1")"
    [ "$1" != order-api ] || echo "API_TOKENS_FILE=$(api_tokens_file)"
}

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

case "$cmd" in
start)
    mkdir -p "$RUN" "$LOG"
    for s in "${SERVICES[@]}"; do
        bin="$ROOT/$BUILD/bin/$s"
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
        if running "$s"; then echo "$(printf '%-11s' "$s") up    pid $(cat "$RUN/$s.pid")"; fi
    done
    ;;
*) die "usage: services.sh start|stop|kill|status [NAME...]" ;;
esac
