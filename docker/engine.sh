#!/usr/bin/env bash
# docker/engine.sh start|stop|env — a Docker engine for `make compose-test`.
#
#   start  uses the engine that answers on $DOCKER_HOST (or the system's
#          socket); if none answers, starts Debian's dockerd as root with its
#          data under var/docker/data and its sockets under /run (a short
#          path: unix sockets are limited to 107 bytes), and records its pid.
#   env    prints `export DOCKER_HOST=...` for the engine start chose.
#   stop   stops the engine only if start started it (by its recorded pid).
#
# The engine started here leaves the host's firewall and routing alone:
# --iptables=false --ip-forward=false --ip-masq=false and --bridge=none (no
# docker0). Compose's own bridge network still joins the containers, and a
# port published on 127.0.0.1 is served by docker-proxy; image builds use
# the host's network (network: host in docker-compose.yml), so apt reaches
# the mirror without NAT.
#
# Images stay in var/docker/data between runs, so a second run is warm.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR="$ROOT/var"
[ -L "$VAR" ] && VAR=$(readlink -f "$VAR")
STATE="$VAR/docker"
RUN="/run/ordersuite-docker-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
OWN_HOST="unix://$RUN/docker.sock"
PIDFILE="$STATE/started.pid"   # present only when this script started dockerd
HOSTFILE="$STATE/docker-host"  # the DOCKER_HOST the last start chose
ENGINE_TIMEOUT=${ENGINE_TIMEOUT:-90}

say() { echo "==> engine: $*"; }
die() { echo "error: engine: $*" >&2; exit 1; }

answers() { DOCKER_HOST=$1 timeout 10 docker info >/dev/null 2>&1; }

start() {
    mkdir -p "$STATE"
    local sys=${DOCKER_HOST:-unix:///var/run/docker.sock}
    if answers "$sys"; then
        say "using the engine on $sys"
        echo "$sys" >"$HOSTFILE"
        return 0
    fi
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && answers "$OWN_HOST"; then
        say "using the engine this project started (pid $(cat "$PIDFILE"))"
        echo "$OWN_HOST" >"$HOSTFILE"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "no Docker engine answers and starting one needs root"
    command -v dockerd >/dev/null || die "dockerd not found: make deps installs docker.io"
    mkdir -p "$RUN" "$STATE/data" "$VAR/log"
    say "starting dockerd (data $STATE/data, socket $RUN/docker.sock, log var/log/dockerd.log)"
    # setsid: the engine outlives this script and is not in make's process group.
    setsid dockerd --data-root "$STATE/data" --exec-root "$RUN/exec" \
        --pidfile "$RUN/dockerd.pid" --host "$OWN_HOST" \
        --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
        >>"$VAR/log/dockerd.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local i
    for ((i = 0; i < ENGINE_TIMEOUT * 2; i++)); do
        if answers "$OWN_HOST"; then
            echo "$OWN_HOST" >"$HOSTFILE"
            say "dockerd ready (pid $(cat "$PIDFILE"))"
            return 0
        fi
        kill -0 "$(cat "$PIDFILE")" 2>/dev/null || {
            rm -f "$PIDFILE"
            tail -20 "$VAR/log/dockerd.log" >&2
            die "dockerd exited; see var/log/dockerd.log"
        }
        sleep 0.5
    done
    die "dockerd did not answer within ${ENGINE_TIMEOUT}s; see var/log/dockerd.log"
}

stop() {
    [ -f "$PIDFILE" ] || { say "not started by this project; left running"; return 0; }
    local pid i
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        for ((i = 0; i < 60; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -0 "$pid" 2>/dev/null && die "dockerd (pid $pid) still running after 30s"
    fi
    rm -f "$PIDFILE" "$HOSTFILE"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env)
    [ -f "$HOSTFILE" ] || die "no engine chosen: run $0 start"
    echo "export DOCKER_HOST=$(cat "$HOSTFILE")"
    ;;
*) die "usage: $0 start|stop|env" ;;
esac
