#!/usr/bin/env bash
# A builder image for running `lockbuild image` as an unprivileged Job: print its image reference.
#
#   scripts/builder-image.sh [TAG]     (run as root; default TAG lockbuild-builder:<source hash>)
#
# No base image is pulled from anywhere: a Debian bookworm root is debootstrapped (minbase, python3,
# python3-venv, ca-certificates; cached under /var/tmp by month), this lockbuild is installed into its
# venv /opt/lockbuild (dependencies from PyPI), and the tree is `docker import`ed with the config a Job
# needs: USER 65532, ENTRYPOINT python -m lockbuild, HOME and LOCKBUILD_CACHE under /scratch (mount a
# tmpfs or an emptyDir there; the root filesystem can be read-only). Idempotent: an image with the
# same source hash is reused. Uses $DOCKER_HOST (scripts/dockerd.sh's socket by default).
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_HOST=${DOCKER_HOST:-unix:///run/lockbuild-docker.sock}
BASE=${LOCKBUILD_BUILDER_DIR:-/var/tmp/lockbuild-builder}
ROOT=$BASE/bookworm-$(date -u +%Y%m)
SRC_HASH=$(git ls-files -z -- pyproject.toml lockbuild | xargs -0 cat | sha256sum | cut -c1-12)
TAG=${1:-lockbuild-builder:$SRC_HASH}
log() { echo "[builder-image $(date -u +%H:%M:%S)] $*" >&2; }
[ "$(id -u)" -eq 0 ] || { echo "builder-image: run as root (debootstrap, chroot)" >&2; exit 1; }

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi
mkdir -p "$BASE"
exec 9>"$BASE/.lock"
flock 9  # one builder of the root at a time
if [ ! -x "$ROOT/opt/lockbuild/bin/python" ]; then
    log "debootstrap bookworm into $ROOT (once per month)"
    rm -rf "$ROOT.tmp"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$ROOT.tmp" http://deb.debian.org/debian >"$ROOT.debootstrap.log" 2>&1 \
        || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
    chroot "$ROOT.tmp" python3 -m venv /opt/lockbuild
    mv "$ROOT.tmp" "$ROOT"
fi
log "install this lockbuild into $ROOT/opt/lockbuild"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then  # this network's egress CA, for pip
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin update-ca-certificates >/dev/null
fi
rm -rf "$ROOT/opt/src" && mkdir -p "$ROOT/opt/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$ROOT/opt/src"
chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    /opt/lockbuild/bin/pip install -q --disable-pip-version-check /opt/src
rm -rf "$ROOT/opt/src"
mkdir -p "$ROOT/scratch" "$ROOT/work"
chmod 1777 "$ROOT/scratch" "$ROOT/work"
log "docker import -> $TAG"
tar -C "$ROOT" --exclude=./proc --exclude=./sys --exclude=./dev --exclude=./root/.cache -cf - . \
    | docker import \
        -c 'USER 65532:65532' \
        -c 'WORKDIR /work' \
        -c 'ENV HOME=/scratch LOCKBUILD_CACHE=/scratch/cache LOCKBUILD_KEY_FILE=/scratch/record.key PATH=/opt/lockbuild/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONDONTWRITEBYTECODE=1' \
        -c 'ENTRYPOINT ["/opt/lockbuild/bin/python", "-m", "lockbuild"]' \
        - "$TAG" >/dev/null
if [ -z "${1:-}" ]; then  # older builder images of this script (other source hashes): ~0.5 GB each
    docker images --format '{{.Repository}}:{{.Tag}}' lockbuild-builder | grep -vxF "$TAG" \
        | xargs -r docker rmi >/dev/null 2>&1 || true
fi
echo "$TAG"
