#!/usr/bin/env bash
# The whole suite, as `make test` and CI run it: starts lockbuild's own dockerd (no bridge, no
# iptables) so the engine tests run for real, keeps downloads in the content-addressed cache so
# a second run is fast, and stops the engine again if it started it.
set -euo pipefail
cd "$(dirname "$0")/.."

export LOCKBUILD_CACHE=${LOCKBUILD_CACHE:-$HOME/.cache/lockbuild}
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/lockbuild-docker.sock}
export MLFLOW_ALLOW_FILE_STORE=true
# In CI a missing tool, privilege or engine is a failure, not a skip (tests/conftest_services.py).
if [ "${CI:-}" = "true" ]; then export LOCKBUILD_STRICT_TESTS=1; fi

started=0
if ! docker -H "$DOCKER_HOST" info >/dev/null 2>&1; then
    bash scripts/dockerd.sh start >/dev/null && started=1 || echo "run-tests: no Docker engine; engine tests will skip" >&2
fi
export LOCKBUILD_KEEP_DOCKER=1  # the session fixture must not stop an engine this script manages
cleanup() {
    # lockbuild's own engine only: what the tests loaded into it would fill the disk over many runs
    if [ "$DOCKER_HOST" = "unix:///run/lockbuild-docker.sock" ]; then bash scripts/dockerd.sh trim >&2 || true; fi
    if [ "$started" = 1 ]; then bash scripts/dockerd.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

.venv/bin/pytest -q -p no:cacheprovider --durations=15 "$@"
