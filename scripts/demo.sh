#!/usr/bin/env bash
# `make demo`: lock the bundled Keras 3 example, build its image without a daemon, verify it
# file by file, and - when a Docker engine can be started here - smoke-test real predictions.
# Last, the release: push to a throwaway local registry, sign with a throwaway key (signature +
# signed provenance/SBOM/verification attestations), and `verify --key` what was pushed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LB="$ROOT/.venv/bin/lockbuild"
export LOCKBUILD_CACHE=${LOCKBUILD_CACHE:-$HOME/.cache/lockbuild}
EXAMPLE=${EXAMPLE:-keras3}
cd "examples/$EXAMPLE"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "lockbuild lock   (spec + model -> lockbuild.lock)"
"$LB" lock
"$LB" lock --check

step "lockbuild image  (lock -> OCI layout + docker archive, no daemon)"
"$LB" image --oci out/oci --docker-archive out/image.tar --json > out.image.json
python3 - <<'PY'
import json
d = json.load(open("out.image.json"))
print(f"digest: {d['digest']}")
print(f"layers: {len(d['layers'])}, compressed size {d['compressed_bytes'] / 1e6:.1f} MB")
for layer in d["layers"]:
    print(f"  {layer['name']:<28} {layer['size'] / 1e6:9.1f} MB  {'cached' if layer['reused'] else 'built'}")
PY
rm -f out.image.json

step "lockbuild verify (image == the image the lock determines)"
"$LB" verify out/oci

step "lockbuild smoke  (a real container serves real predictions)"
if DOCKER_LINE=$(bash "$ROOT/scripts/dockerd.sh" start 2>/dev/null); then
    export "${DOCKER_LINE?}"
    "$LB" smoke out/image.tar --expected predictions.json --json > out.smoke.json || {
        python3 -c "import json; print(json.dumps(json.load(open('out.smoke.json')), indent=1)[:3000])"; exit 1; }
    "$ROOT/.venv/bin/python" - <<'PY'
import json
import docker
d = json.load(open("out.smoke.json"))
size = docker.from_env().images.get(d["image"]).attrs["Size"]
print(f"image {d['image']}: {size / 1e6:.0f} MB unpacked in the engine")
print(f"ready in {d['seconds_to_ready']} s, MLflow /version {d['version']}")
print("prediction:", json.dumps(d["predictions"]))
PY
    rm -f out.smoke.json
else
    echo "skipped: no Docker engine could be started here (install docker.io: make deps)."
    echo "The image was built and verified; run 'lockbuild smoke out/image.tar' where an engine runs."
fi

step "lockbuild sign   (a throwaway key; push, sign, attest; verify --key)"
KEYDIR=$(mktemp -d)
REG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup_release() { bash "$ROOT/scripts/registry.sh" stop "$REG_PORT" >/dev/null 2>&1 || true; rm -rf "$KEYDIR"; }
trap cleanup_release EXIT
LOCKBUILD_KEY_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export LOCKBUILD_KEY_PASSWORD
"$LB" keygen "$KEYDIR/demo"
if REG=$(bash "$ROOT/scripts/registry.sh" start "$REG_PORT" 2>/dev/null | tail -1); then
    REF="$REG/lockbuild-demo/$EXAMPLE"
    "$LB" image --push "$REF:demo" --sign --key "$KEYDIR/demo.key" >/dev/null
    "$LB" verify "docker://$REF:demo" --key "$KEYDIR/demo.pub"
else
    echo "no local registry could be started (install docker-registry: make deps); signing the OCI layout instead"
    "$LB" sign out/oci --key "$KEYDIR/demo.key"
    "$LB" verify out/oci --key "$KEYDIR/demo.pub"
fi

step "where lockbuild is"
echo "this demo ran $LB (the repository's venv, dependencies pinned by constraints.txt)."
if command -v lockbuild >/dev/null 2>&1; then
    echo "on your PATH: $(command -v lockbuild)"
else
    echo "lockbuild is not on your PATH. Either:"
    echo "  export PATH=\"$ROOT/.venv/bin:\$PATH\"                       # this shell, this checkout"
    echo "  uv tool install --constraint constraints.txt .             # or: make install-tool (~/.local/bin)"
fi
echo "then, in any project: lockbuild init --model ./model && lockbuild lock && lockbuild image --oci out/oci"
