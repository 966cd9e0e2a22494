#!/usr/bin/env bash
# Install the system tools lockbuild's tests, demo and benchmarks use: a Docker engine (started
# only by scripts/dockerd.sh, never as a system service), a local registry, skopeo and umoci (the
# independent checkers), gnupg (test signing keys), Debian's archive keyring, debootstrap (the
# other-host reproducibility test) and a static busybox for tiny runnable test images.
# Idempotent and quiet: does nothing when all are present.
#
#   install-deps.sh          everything above (make deps)
#   install-deps.sh venv     only what `python3 -m venv` needs (python3-venv where ensurepip is missing)
set -euo pipefail

PACKAGES=(docker.io docker-registry skopeo umoci busybox-static gnupg gpgv debian-archive-keyring debootstrap util-linux)
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

missing=()
for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

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
