"""Target platforms: the one mapping between OCI platforms, Debian architectures and the machine
names in wheel tags. Pure data and pure functions; every stage (resolve, lock, build, audit) uses it."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from lockbuild.errors import ResolveError

# Debian architecture -> the machine name in manylinux tags.
WHEEL_MACHINES: dict[str, str] = {"amd64": "x86_64", "arm64": "aarch64"}

# OCI platform -> Debian architecture (which is also the OCI architecture for these two).
PLATFORM_ARCHES: dict[str, str] = {"linux/amd64": "amd64", "linux/arm64": "arm64", "linux/arm64/v8": "arm64"}

# Debian architecture -> the ELF e_machine of its binaries.
ELF_MACHINES: dict[str, int] = {"amd64": 62, "arm64": 183}


def runs_on_host(arch: str) -> bool:
    """Whether this host executes `arch` binaries natively (platform.machine() says x86_64 or amd64,
    aarch64 or arm64)."""
    return platform.machine().lower() in (WHEEL_MACHINES.get(arch), arch)


def executes(binary: Path, *args: str) -> bool:
    """Whether this host runs ``binary`` (one of the target's own programs, run with ``args``, e.g.
    ``--version``): natively or through a registered binfmt_misc emulator (qemu-user, Rosetta), as on
    an arm64 laptop or runner building an amd64 image. Tried, not guessed from the machine name."""
    try:
        return subprocess.run([str(binary), *args], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def debian_arch(platform_or_arch: str) -> str:
    """'linux/amd64' or 'amd64' -> 'amd64'. Unknown -> ResolveError listing the supported ones."""
    arch = PLATFORM_ARCHES.get(platform_or_arch, platform_or_arch)
    if arch not in WHEEL_MACHINES:
        raise ResolveError(
            f"unsupported target architecture {platform_or_arch!r}",
            hint=f"supported platforms: {', '.join(sorted(PLATFORM_ARCHES))} "
            f"(Debian architectures {', '.join(WHEEL_MACHINES)})",
        )
    return arch
