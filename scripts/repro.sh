#!/usr/bin/env bash
# `make repro`: the same lock built on really different hosts must give the same manifest digest.
#   1. root on this host (its Python, its zlib);
#   2. an unprivileged user (nobody) on this host;
#   3. an unprivileged user inside a debootstrapped Debian trixie root (Python 3.13, zlib 1.3.1),
#      with lockbuild installed there into its own venv from PyPI.
# Every build starts with an empty layer cache (downloads are shared, read-only hard links).
# The trixie root is cached under /var/tmp, keyed by the month; run as root (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
LOCK=examples/keras3/lockbuild.lock
KEY=$(date -u +%Y%m)
BASE=${LOCKBUILD_REPRO_DIR:-/var/tmp/lockbuild-repro}
ROOT=$BASE/trixie-$KEY
WORK=$(mktemp -d "$BASE.work.XXXXXX")
DOWNLOADS=${LOCKBUILD_CACHE:-$HOME/.cache/lockbuild}/blobs/sha256
NOBODY=65534
[ "$(id -u)" -eq 0 ] || { echo "repro: run as root (it switches to an unprivileged user itself)" >&2; exit 1; }
cleanup() { rm -rf "$WORK" "$ROOT/work"; }
trap cleanup EXIT
log() { echo "[repro $(date -u +%H:%M:%S)] $*" >&2; }

# A fresh cache: dirs owned by nobody, the downloaded blobs hard-linked (read-only, re-hashed on use).
fresh_cache() {
    mkdir -p "$1/blobs"
    if [ -d "$DOWNLOADS" ]; then cp -al "$DOWNLOADS" "$1/blobs/"; fi
    find "$1" -type d -exec chown "$NOBODY:$NOBODY" {} +
}
digest() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["digest"])' "$1"; }

if [ ! -x "$ROOT/opt/venv/bin/python" ]; then
    log "debootstrap trixie into $ROOT (once per month)"
    rm -rf "$ROOT.tmp"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,util-linux \
        trixie "$ROOT.tmp" http://deb.debian.org/debian >"$BASE.debootstrap.log" 2>&1 \
        || { tail -20 "$BASE.debootstrap.log" >&2; exit 1; }
    chroot "$ROOT.tmp" python3 -m venv /opt/venv
    mv "$ROOT.tmp" "$ROOT"
fi
log "install this lockbuild into the trixie root's venv (its dependencies from PyPI)"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Local trust anchors of this machine's network (e.g. an egress proxy's CA), so pip can reach PyPI.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin update-ca-certificates >/dev/null
fi
rm -rf "$ROOT/opt/src" && mkdir -p "$ROOT/opt/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$ROOT/opt/src"
chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    /opt/venv/bin/pip install -q --disable-pip-version-check /opt/src

log "build 1/3: root on this host"
fresh_cache "$WORK/c1"
LOCKBUILD_CACHE=$WORK/c1 .venv/bin/lockbuild image --lock "$LOCK" --oci "$WORK/o1" --json >"$WORK/1.json"

log "build 2/3: nobody on this host"
fresh_cache "$WORK/c2"
/usr/bin/python3 -m venv --without-pip "$WORK/venv"  # not a python under /root, which nobody cannot read
.venv/bin/uv pip install -q --python "$WORK/venv/bin/python" "$REPO"
chown "$NOBODY:$NOBODY" "$WORK"
setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$WORK" \
    LOCKBUILD_CACHE="$WORK/c2" PYTHONDONTWRITEBYTECODE=1 \
    "$WORK/venv/bin/lockbuild" image --lock "$LOCK" --oci "$WORK/o2" --json >"$WORK/2.json"

log "build 3/3: nobody in the trixie root"
mkdir -p "$ROOT/work" && chown "$NOBODY:$NOBODY" "$ROOT/work"
fresh_cache "$ROOT/work/c3"
# pivot_root (not chroot) into the trixie root, so an unprivileged user there may still create the
# user namespace lockbuild needs to run the image's own ldconfig (chrooted processes may not).
unshare --mount --fork /bin/sh -euc '
    mount --make-rprivate /
    mount --bind "$1" "$1"
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
    mkdir -p "$1/.oldroot"
    cd "$1"
    pivot_root . .oldroot
    cd /
    umount -l /.oldroot
    exec setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/work LOCKBUILD_CACHE=/work/c3 PYTHONDONTWRITEBYTECODE=1 \
        /opt/venv/bin/lockbuild image --lock /opt/src/examples/keras3/lockbuild.lock --oci /work/o3 --json
' sh "$ROOT" >"$WORK/3.json"
rmdir "$ROOT/.oldroot" 2>/dev/null || true

d1=$(digest "$WORK/1.json") d2=$(digest "$WORK/2.json") d3=$(digest "$WORK/3.json")
echo "root, this host ($(python3 --version)):           $d1"
echo "nobody, this host:                            $d2"
echo "nobody, trixie root ($(chroot "$ROOT" python3 --version)): $d3"
if [ "$d1" = "$d2" ] && [ "$d1" = "$d3" ]; then
    echo "repro: identical manifest digests"
else
    echo "repro: FAILED: the manifest digests differ" >&2
    exit 1
fi
