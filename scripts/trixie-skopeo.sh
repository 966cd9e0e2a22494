#!/usr/bin/env bash
# An independent sigstore verifier for the signing tests: skopeo from Debian trixie (1.18,
# containers/image with sigstore), run from a debootstrapped trixie root. Debian 12's own skopeo
# has sigstore verification patched out ("Debian-local change: sigstore disabled").
#
#   scripts/trixie-skopeo.sh install          build the cached root once (per month); prints its path
#   scripts/trixie-skopeo.sh path             print the root's path if it is ready (exit 1 if not)
#   scripts/trixie-skopeo.sh run DIR ARGS...  run `skopeo ARGS...` in the root with DIR bind-mounted
#                                             at /mnt (read-write), in a private mount namespace
#
# Root only (debootstrap, chroot). The root is cached under /var/tmp/lockbuild-repro (shared with
# `make repro`'s root directory, not its tree), keyed by the month; LOCKBUILD_REPRO_DIR overrides.
set -euo pipefail
BASE=${LOCKBUILD_REPRO_DIR:-/var/tmp/lockbuild-repro}
ROOT=$BASE/skopeo-trixie-$(date -u +%Y%m)
MIRROR=${LOCKBUILD_DEBIAN_MIRROR:-http://deb.debian.org/debian}

need_root() { [ "$(id -u)" -eq 0 ] || { echo "trixie-skopeo: run as root" >&2; exit 1; }; }

install_root() {
    need_root
    if [ -x "$ROOT/usr/bin/skopeo" ]; then echo "$ROOT"; return; fi
    mkdir -p "$BASE"
    exec 9>"$BASE/.skopeo-trixie.lock"
    flock 9  # two test sessions must not debootstrap into the same directory
    if [ -x "$ROOT/usr/bin/skopeo" ]; then echo "$ROOT"; return; fi
    echo "trixie-skopeo: debootstrap trixie + skopeo into $ROOT (once per month, ~2 min)" >&2
    rm -rf "$ROOT.tmp"
    # netavark: skopeo needs the virtual container-network-stack, which debootstrap cannot pick itself
    debootstrap --variant=minbase --include=skopeo,netavark,ca-certificates trixie "$ROOT.tmp" "$MIRROR" \
        >"$ROOT.debootstrap.log" 2>&1 || { tail -20 "$ROOT.debootstrap.log" >&2; exit 1; }
    mkdir -p "$ROOT.tmp/mnt"
    mv "$ROOT.tmp" "$ROOT"
    echo "$ROOT"
}

case "${1:-}" in
    install) install_root ;;
    path) [ -x "$ROOT/usr/bin/skopeo" ] && echo "$ROOT" || exit 1 ;;
    run)
        need_root
        [ -x "$ROOT/usr/bin/skopeo" ] || { echo "trixie-skopeo: no root yet; run: $0 install" >&2; exit 1; }
        dir=$(realpath "$2"); shift 2
        exec unshare --mount --fork /bin/sh -euc '
            root=$1 dir=$2; shift 2
            mount --make-rprivate /
            mount --bind "$dir" "$root/mnt"
            mount -t proc proc "$root/proc"
            mount --rbind /dev "$root/dev"
            exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /usr/bin/skopeo "$@"
        ' sh "$ROOT" "$dir" "$@" ;;
    *) sed -n '2,13p' "$0" >&2; exit 2 ;;
esac
