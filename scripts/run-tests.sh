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
engine=""  # the engine-test pytest running beside the rest (below)
cleanup() {
    if [ -n "$engine" ]; then kill "$engine" 2>/dev/null || true; fi  # interrupted: stop it too
    # lockbuild's own engine only: what the tests loaded into it would fill the disk over many runs
    if [ "$DOCKER_HOST" = "unix:///run/lockbuild-docker.sock" ]; then bash scripts/dockerd.sh trim >&2 || true; fi
    if [ "$started" = 1 ]; then bash scripts/dockerd.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# Two pytest processes by default: the tests that use the Docker engine (`-m docker`: tests/conftest.py
# marks every test that takes the docker_engine fixture) in order in one, everything else (resolution
# against PyPI and Debian's archive, emulated builds, verify from files) beside it. No two engine tests
# overlap: they check the engine as a whole. Both share the content-addressed cache (built for
# concurrent runners) and the machine; each starts its own registry and MLflow server. The engine
# process's output is printed after the rest's. LOCKBUILD_TEST_JOBS=1, or any pytest arguments: one process.
if [ "$#" -gt 0 ] || [ "${LOCKBUILD_TEST_JOBS:-2}" = 1 ]; then
    .venv/bin/pytest -q -p no:cacheprovider --durations=15 "$@"
    exit 0
fi
log=$(mktemp "${TMPDIR:-/tmp}/lockbuild-engine-tests.XXXXXX.log")
.venv/bin/pytest -q -p no:cacheprovider --durations=10 -m docker >"$log" 2>&1 &
engine=$!
rest_rc=0
.venv/bin/pytest -q -p no:cacheprovider --durations=15 -m "not docker" || rest_rc=$?
engine_rc=0
wait "$engine" || engine_rc=$?
engine=""
echo "=== the engine's tests (-m docker), run beside the rest ==="
cat "$log"
rm -f "$log"
if [ "$rest_rc" != 0 ] || [ "$engine_rc" != 0 ]; then
    echo "run-tests: FAILED (rest: exit $rest_rc, engine tests: exit $engine_rc)" >&2
    exit 1
fi
