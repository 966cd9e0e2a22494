#!/usr/bin/env bash
# A throwaway OCI registry for tests and the demo: start|stop|status [PORT] (default 5000).
#
# Debian's docker-registry, listening on 127.0.0.1:PORT only (plain http), storing blobs in a
# temp dir that `stop` removes. `start` waits until /v2/ answers and prints the address; it is
# idempotent per port.
set -euo pipefail

PORT=${2:-5000}
STATE=${LOCKBUILD_REGISTRY_STATE:-/var/tmp/lockbuild-registry}/$PORT
PIDFILE="$STATE/registry.pid"
WAIT=${LOCKBUILD_REGISTRY_WAIT:-30}

# GET /v2/ over bash's /dev/tcp: no curl needed. Succeeds on "HTTP/1.x 200".
answers() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
        printf 'GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        IFS= read -r -t 5 line <&3 || exit 1
        [[ "$line" == "HTTP/1."?" 200"* ]]
    ) 2>/dev/null
}

pid_alive() {
    local pid
    [ -s "$PIDFILE" ] && pid=$(cat "$PIDFILE") && kill -0 "$pid" 2>/dev/null
}

write_config() {
    cat >"$STATE/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
EOF
}

start() {
    if pid_alive && answers; then
        echo "127.0.0.1:$PORT"
        return 0
    fi
    command -v docker-registry >/dev/null || {
        echo "registry.sh: docker-registry not found; run scripts/install-deps.sh" >&2
        return 1
    }
    rm -rf "$STATE"
    mkdir -p "$STATE/data"
    write_config
    setsid docker-registry serve "$STATE/config.yml" >"$STATE/registry.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local i
    for ((i = 0; i < WAIT * 10; i++)); do
        if answers; then
            echo "127.0.0.1:$PORT"
            return 0
        fi
        pid_alive || break
        sleep 0.1
    done
    echo "registry.sh: no answer on 127.0.0.1:$PORT; log:" >&2
    tail -n 20 "$STATE/registry.log" >&2 || true
    return 1
}

stop() {
    if pid_alive; then
        local pid i
        pid=$(cat "$PIDFILE")
        kill -TERM "$pid"
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$STATE"
}

status() {
    if pid_alive && answers; then
        echo "running 127.0.0.1:$PORT"
    else
        echo "stopped"
        return 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status [PORT]" >&2; exit 2 ;;
esac
