#!/usr/bin/env bash
# lockbuild's private Docker engine: start|stop|status|trim.
#
# Runs Debian's dockerd in the background with no bridge, no iptables rules and no IP
# forwarding changes, its own data/exec roots, pidfile and socket, so it never touches a system
# Docker. Containers must use host networking (`--network host`). Idempotent: `start` reuses an
# engine already answering on the socket. On success prints the line to export:
#     DOCKER_HOST=unix:///run/lockbuild-docker.sock
set -euo pipefail

ROOT=${LOCKBUILD_DOCKER_ROOT:-/var/tmp/lockbuild-docker}
SOCK=${LOCKBUILD_DOCKER_SOCK:-/run/lockbuild-docker.sock}
HOST="unix://$SOCK"
PIDFILE="$ROOT/dockerd.pid"
LOG="$ROOT/dockerd.log"
WAIT=${LOCKBUILD_DOCKER_WAIT:-60}

answers() { docker -H "$HOST" info >/dev/null 2>&1; }

pid_alive() {
    local pid
    [ -s "$PIDFILE" ] && pid=$(cat "$PIDFILE") && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

start() {
    if answers; then
        echo "DOCKER_HOST=$HOST"
        return 0
    fi
    command -v dockerd >/dev/null || {
        echo "dockerd.sh: dockerd not found; run scripts/install-deps.sh" >&2
        return 1
    }
    [ "$(id -u)" -eq 0 ] || { echo "dockerd.sh: must run as root" >&2; return 1; }
    mkdir -p "$ROOT/data" "$ROOT/exec"
    if ! pid_alive; then
        rm -f "$PIDFILE"
        setsid dockerd \
            --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
            --data-root "$ROOT/data" --exec-root "$ROOT/exec" --pidfile "$PIDFILE" \
            --host "$HOST" >>"$LOG" 2>&1 </dev/null &
    fi
    local i
    for ((i = 0; i < WAIT * 4; i++)); do
        if answers; then
            echo "DOCKER_HOST=$HOST"
            return 0
        fi
        sleep 0.25
    done
    echo "dockerd.sh: no answer on $HOST after ${WAIT}s; last lines of $LOG:" >&2
    tail -n 20 "$LOG" >&2 || true
    return 1
}

stop() {
    if ! pid_alive; then
        rm -f "$PIDFILE"
        echo "dockerd.sh: not running"
        return 0
    fi
    local pid i
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid"
    for ((i = 0; i < 120; i++)); do
        kill -0 "$pid" 2>/dev/null || { echo "dockerd.sh: stopped"; return 0; }
        sleep 0.25
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "dockerd.sh: killed (did not stop within 30s)"
}

# What the test suite and the benchmarks leave in this engine (loaded images, stopped containers,
# build cache) grows the data root by gigabytes per run on a long-lived machine; `trim` removes
# all of it, and caps the engine log. It never touches another engine: only this socket.
trim() {
    answers || { echo "dockerd.sh: not running; nothing to trim"; return 0; }
    docker -H "$HOST" container prune -f >/dev/null
    docker -H "$HOST" image prune -af >/dev/null
    docker -H "$HOST" builder prune -af >/dev/null 2>&1 || true
    if [ -f "$LOG" ] && [ "$(stat -c %s "$LOG")" -gt $((64 << 20)) ]; then
        tail -c $((8 << 20)) "$LOG" >"$LOG.tail" && cat "$LOG.tail" >"$LOG" && rm -f "$LOG.tail"
    fi
    echo "dockerd.sh: trimmed $(du -sh "$ROOT/data" 2>/dev/null | cut -f1) left in $ROOT/data"
}

status() {
    if answers; then
        echo "running DOCKER_HOST=$HOST"
    else
        echo "stopped"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    trim) trim ;;
    *) echo "usage: $0 start|stop|status|trim" >&2; exit 2 ;;
esac
