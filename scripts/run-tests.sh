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
e2e=""  # the end-to-end pytest running beside the rest (below)
cleanup() {
    if [ -n "$e2e" ]; then kill "$e2e" 2>/dev/null || true; fi  # interrupted: stop it too
    # lockbuild's own engine only: what the tests loaded into it would fill the disk over many runs
    if [ "$DOCKER_HOST" = "unix:///run/lockbuild-docker.sock" ]; then bash scripts/dockerd.sh trim >&2 || true; fi
    if [ "$started" = 1 ]; then bash scripts/dockerd.sh stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# A full run (no arguments) runs two pytest processes at once: the end-to-end model files, which
# spend much of their time waiting on dockerd (load, container start, model load) and on PyPI, beside
# everything else, which is mostly one single-threaded process. They share nothing but the engine
# (each removes only the images it tagged), the content-addressed cache (built for concurrent
# runners: file locks, atomic renames) and the machine; each session starts its own registry and
# MLflow server on free ports, and only the second group builds the tiny project. (In one process
# the suite took ~33 min on 2 cores.) LOCKBUILD_TEST_JOBS=1 runs it in one process, as any arguments do.
E2E=(tests/test_e2e_defaults.py tests/test_e2e_interpreters.py tests/test_e2e_tf.py tests/test_e2e_pyfunc.py)
if [ "$#" -gt 0 ] || [ "${LOCKBUILD_TEST_JOBS:-2}" = 1 ]; then
    .venv/bin/pytest -q -p no:cacheprovider --durations=15 "$@"
    exit 0
fi
log=$(mktemp "${TMPDIR:-/tmp}/lockbuild-e2e.XXXXXX.log")
.venv/bin/pytest -q -p no:cacheprovider --durations=10 "${E2E[@]}" >"$log" 2>&1 &
e2e=$!
rest_rc=0
.venv/bin/pytest -q -p no:cacheprovider --durations=15 "${E2E[@]/#/--ignore=}" || rest_rc=$?
e2e_rc=0
wait "$e2e" || e2e_rc=$?
e2e=""
echo "=== end-to-end model tests (${E2E[*]}), run beside the rest ==="
cat "$log"
rm -f "$log"
if [ "$rest_rc" != 0 ] || [ "$e2e_rc" != 0 ]; then
    echo "run-tests: FAILED (rest: exit $rest_rc, end-to-end: exit $e2e_rc)" >&2
    exit 1
fi
