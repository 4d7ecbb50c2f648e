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
# The engine started here changes the host's routing and firewall as little
# as it can: --ip-forward=false (ip_forward and the FORWARD policy stay as
# they are), --ip-masq=false and --bridge=none (no docker0, no MASQUERADE
# for it). Its iptables rules stay on: on a host whose FORWARD policy is
# DROP (as any earlier default dockerd leaves it) the containers of
# compose's bridge network reach each other only through the ACCEPT rules
# dockerd adds for that network, and removes with it at `down`. What stays
# on a host that never ran Docker: dockerd's empty DOCKER* chains and their
# jumps. Image builds use the host's network (network: host in
# docker-compose.yml), so apt reaches the mirror without NAT.
#
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

# ours PID: PID is the dockerd this script starts for this checkout: its
# name is dockerd, dockerd's own pidfile names it, and it runs with this
# checkout's --pidfile. A pid reused by another process is never signalled.
ours() {
    local pid=$1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
    [ "$(cat "$RUN/dockerd.pid" 2>/dev/null)" = "$pid" ] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$RUN/dockerd.pid"
}
recorded() { cat "$PIDFILE" 2>/dev/null || true; }

start() {
    mkdir -p "$STATE"
    local sys=${DOCKER_HOST:-unix:///var/run/docker.sock}
    if answers "$sys"; then
        say "using the engine on $sys"
        echo "$sys" >"$HOSTFILE"
        return 0
    fi
    if [ -f "$PIDFILE" ]; then
        if ours "$(recorded)" && answers "$OWN_HOST"; then
            say "using the engine this project started (pid $(recorded))"
            echo "$OWN_HOST" >"$HOSTFILE"
            return 0
        fi
        ours "$(recorded)" && die "dockerd (pid $(recorded)) runs but does not answer; stop it first"
        say "dropping a stale pidfile (pid $(recorded) is not this project's dockerd)"
        rm -f "$PIDFILE"
    fi
    [ "$(id -u)" = 0 ] || die "no Docker engine answers and starting one needs root"
    command -v dockerd >/dev/null || die "dockerd not found: make deps installs docker.io"
    mkdir -p "$RUN" "$STATE/data" "$VAR/log"
    say "starting dockerd (data $STATE/data, socket $RUN/docker.sock, log var/log/dockerd.log)"
    # setsid: the engine outlives this script and is not in make's process group.
    setsid dockerd --data-root "$STATE/data" --exec-root "$RUN/exec" \
        --pidfile "$RUN/dockerd.pid" --host "$OWN_HOST" \
        --ip-forward=false --ip-masq=false --bridge=none \
        >>"$VAR/log/dockerd.log" 2>&1 </dev/null 9>&- &
    echo $! >"$PIDFILE"
    local i
    for ((i = 0; i < ENGINE_TIMEOUT * 2; i++)); do
        if answers "$OWN_HOST"; then
            echo "$OWN_HOST" >"$HOSTFILE"
            say "dockerd ready (pid $(cat "$PIDFILE"))"
            return 0
        fi
        kill -0 "$(recorded)" 2>/dev/null || {
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
    pid=$(recorded)
    if ! ours "$pid"; then
        say "pid $pid is not this project's dockerd (gone or reused): nothing to stop"
    else
        say "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        for ((i = 0; i < 60; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        ! kill -0 "$pid" 2>/dev/null || die "dockerd (pid $pid) still running after 30s"
    fi
    rm -f "$PIDFILE" "$HOSTFILE"
}

# start and stop of one checkout's engine never overlap (the lock is closed
# for dockerd itself: 9>&- above).
locked() {
    mkdir -p "$STATE"
    exec 9>"$STATE/engine.lock"
    flock -w "$((ENGINE_TIMEOUT + 40))" 9 || die "another start/stop holds $STATE/engine.lock"
    "$@"
}

case "${1:-}" in
start) locked start ;;
stop) locked stop ;;
env)
    [ -f "$HOSTFILE" ] || die "no engine chosen: run $0 start"
    echo "export DOCKER_HOST=$(cat "$HOSTFILE")"
    ;;
*) die "usage: $0 start|stop|env" ;;
esac
