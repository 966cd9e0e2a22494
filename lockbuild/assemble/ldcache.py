"""/etc/ld.so.cache for the rootfs (ctypes.util.find_library needs it), made by the rootfs's own
static ldconfig: ELF header checks (machine, static), then ``ldconfig -r`` as root or, as another
user, inside a user namespace that maps them to root. The inode/mtime-keyed aux-cache is removed.
"""

from __future__ import annotations

import os
import platform
import struct
import subprocess
from pathlib import Path

from lockbuild.errors import BuildError
from lockbuild.platforms import ELF_MACHINES, executes, runs_on_host


def elf_info(path: Path) -> tuple[int, bool] | None:
    """(e_machine, is static) of a 64-bit little-endian ELF file, or None if it is not one."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            return None
        machine = struct.unpack_from("<H", ident, 18)[0]
        phoff, = struct.unpack_from("<Q", ident, 32)
        phentsize, phnum = struct.unpack_from("<HH", ident, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = [struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)]
    return machine, 3 not in types  # PT_INTERP = 3: dynamically linked


def _as_root(dest: Path) -> list[str]:
    """The command prefix that lets ``ldconfig -r`` chroot: nothing as root; as another user a user
    namespace mapping them to root (util-linux ``unshare``; the cache bytes still come from the
    rootfs's own ldconfig). Refuses when neither works: an image without /etc/ld.so.cache would be a
    silently different image."""
    if os.geteuid() == 0:
        return []
    try:
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True, text=True)
    except FileNotFoundError:
        probe = subprocess.CompletedProcess([], 127, "", "util-linux unshare is not installed")
    if probe.returncode != 0:
        raise BuildError(
            "cannot build /etc/ld.so.cache as a non-root user: ldconfig -r needs chroot, and no user "
            f"namespace is available ({(probe.stderr.strip() or 'unshare failed').splitlines()[-1]})",
            hint="build as root, or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; "
            "not possible inside a chroot); an image without it would differ from a root build",
            where=str(dest))
    return ["unshare", "--user", "--map-root-user"]


def run_ldconfig(dest: Path, arch: str) -> str | None:
    """Build /etc/ld.so.cache with the rootfs's own static ldconfig. Returns a warning if skipped."""
    ldconfig = dest / "usr/sbin/ldconfig"
    if not ldconfig.is_file():
        return "no /usr/sbin/ldconfig in the rootfs (libc-bin missing): no /etc/ld.so.cache"
    info = elf_info(ldconfig)
    if info is None or info[0] != ELF_MACHINES.get(arch) or not info[1]:
        return f"/usr/sbin/ldconfig is not a static {arch} ELF binary: no /etc/ld.so.cache"
    if not runs_on_host(arch) and not executes(ldconfig, "--version"):  # binfmt_misc emulation counts
        return f"target {arch} differs from this host ({platform.machine()}): /etc/ld.so.cache not built"
    conf = dest / "etc/ld.so.conf"
    if not os.path.lexists(conf):
        conf.write_text("include /etc/ld.so.conf.d/*.conf\n")
    proc = subprocess.run([*_as_root(dest), str(ldconfig), "-r", str(dest)], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin", "LC_ALL": "C"})
    if proc.returncode != 0:
        raise BuildError(f"ldconfig failed in the rootfs: {proc.stderr.strip()}",
                         hint="the rootfs's libraries are inconsistent; check the Debian closure")
    aux = dest / "var/cache/ldconfig/aux-cache"  # inode/mtime-keyed: not reproducible
    if aux.exists():
        aux.unlink()
    return None
