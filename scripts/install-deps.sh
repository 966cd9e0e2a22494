#!/usr/bin/env bash
# Install the system tools lockbuild's tests, demo and benchmarks use: a Docker engine (started
# only by scripts/dockerd.sh, never as a system service), a local registry, skopeo and umoci (the
# independent checkers), gnupg (test signing keys), Debian's archive keyring, debootstrap (the
# other-host reproducibility test), a static busybox for tiny runnable test images, qemu-user (the
# compressors on older CPU models) and a umoci that unpacks zstd layers (see umoci_zstd below).
# openssl: the second implementation that checks signatures and DSSE envelopes in the signing tests.
# pigz: dockerd decompresses gzip layers with unpigz when it is on PATH (Docker's own packages recommend
# it), ~1.7x faster than its Go fallback: a TensorFlow image's `docker load` in smoke goes from ~34 s to ~20 s.
# Idempotent and quiet: does nothing when all are present.
#
#   install-deps.sh          everything above (make deps)
#   install-deps.sh venv     only what `python3 -m venv` needs (python3-venv where ensurepip is missing)
set -euo pipefail

PACKAGES=(docker.io docker-registry skopeo umoci busybox-static gnupg gpgv debian-archive-keyring debootstrap util-linux qemu-user openssl pigz)
if [ "${1:-}" = "venv" ]; then
    # Debian (and its cloud images) split ensurepip out of python3: `python3 -m venv` then stops with
    # "ensurepip is not available". Install the package of the python3 the Makefile uses.
    py=${PY:-python3}
    "$py" -c 'import ensurepip, venv' 2>/dev/null && exit 0
    minor=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    PACKAGES=("python$minor-venv")
fi

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# umoci >= 0.5 unpacks tar+zstd layers. Debian's umoci is 0.4.7 in bullseye, bookworm(-backports)
# and trixie, and 0.4.7 refuses them ("blob is not correct mediatype"); trixie-backports has 0.6.0,
# a Go binary needing only libc6 >= 2.34, so it runs on bookworm too. apt fetches it into a private
# state directory (the host's sources stay untouched; signature and hash checked against Debian's
# archive keyring) and it is unpacked to $UMOCI_ZSTD, beside, not over, the system umoci.
UMOCI_ZSTD=/usr/local/lib/lockbuild/umoci/umoci
umoci_new_enough() {  # umoci_new_enough CMD: CMD's version >= 0.5
    local v
    v=$("$1" --version 2>/dev/null | sed -n 's/^umoci version \([0-9]*\.[0-9]*\).*/\1/p')
    [ -n "$v" ] && [ "$(printf '%s\n0.5\n' "$v" | sort -V | head -1)" = 0.5 ]
}
umoci_zstd() {
    [ "$(uname -m)" = x86_64 ] || return 0
    if umoci_new_enough umoci || umoci_new_enough "$UMOCI_ZSTD"; then return 0; fi
    local sudo=() tmp apt
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    touch "$tmp/status"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main" \
        >"$tmp/sources.list"
    apt=(-o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=/nonexistent
         -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" -o Dir::State::status="$tmp/status"
         -o APT::Sandbox::User=root -o Debug::NoLocking=1)
    if ! (cd "$tmp" && apt-get -qq "${apt[@]}" update && apt-get -qq "${apt[@]}" download umoci/trixie-backports \
            && dpkg-deb -x umoci_*.deb x) >"$tmp/log" 2>&1; then
        cat "$tmp/log" >&2; rm -rf "$tmp"; echo "install-deps: umoci from trixie-backports failed" >&2; exit 1
    fi
    "${sudo[@]}" install -D -m 0755 "$tmp/x/usr/bin/umoci" "$UMOCI_ZSTD"
    rm -rf "$tmp"
    umoci_new_enough "$UMOCI_ZSTD" || { echo "install-deps: $UMOCI_ZSTD is not umoci >= 0.5" >&2; exit 1; }
    echo "install-deps: installed $("$UMOCI_ZSTD" --version | head -1) as $UMOCI_ZSTD"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    [ "${1:-}" = "venv" ] || umoci_zstd
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: run as root (missing: ${missing[*]})" >&2; exit 1; }
    SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
log=$(mktemp)
policy=/usr/sbin/policy-rc.d
own_policy=0
cleanup() { [ "$own_policy" = 1 ] && "${SUDO[@]}" rm -f "$policy"; rm -f "$log"; return 0; }
trap cleanup EXIT
# Quiet unless apt fails: then show what it said.
apt_quiet() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get -qq "$@" >"$log" 2>&1 \
        || { cat "$log" >&2; echo "install-deps: apt-get $1 failed" >&2; exit 1; }
}

# `apt-get update` only when some missing package has no install candidate yet.
needs_update() {
    local pkg
    for pkg in "$@"; do
        apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [^(]' || return 0
    done
    return 1
}
if needs_update "${missing[@]}"; then
    apt_quiet update
fi

# Keep Debian from starting the system dockerd (default bridge + iptables) during the install:
# lockbuild only ever runs its own dockerd with --bridge=none (scripts/dockerd.sh).
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 0755 "$policy"
    own_policy=1
fi
apt_quiet install -y --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"

# A freshly installed docker.io must not come up at boot (or by socket activation) with its
# default bridge network either.
if [[ " ${missing[*]} " == *" docker.io "* ]] && [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl disable --quiet docker.service docker.socket 2>/dev/null || true
fi
echo "install-deps: installed ${missing[*]}"
[ "${1:-}" = "venv" ] || umoci_zstd
