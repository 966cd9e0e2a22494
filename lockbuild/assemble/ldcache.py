"""/etc/ld.so.cache for the rootfs (ctypes.util.find_library needs it).

Written in Python (``ld_so_cache``, below): the same bytes glibc 2.36's ldconfig writes, with no
chroot, no root and no user namespace, so a build as uid 65532 in a read-only, capability-less
container makes the same image as a root build (tests/test_ldcache.py checks byte-identity against
the rootfs's own ldconfig). What that writer does not model (glibc-hwcaps subdirectories, 32-bit
libraries, ...) falls back to the rootfs's own static ldconfig: ELF header checks (machine, static),
then ``ldconfig -r`` as root or, as another user, inside a user namespace that maps them to root.
The inode/mtime-keyed aux-cache is removed.
"""

from __future__ import annotations

import functools
import os
import platform
import posixpath
import struct
import subprocess
from dataclasses import dataclass
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
    if os.environ.get("LOCKBUILD_LDCONFIG") != "real":  # the real one: only to compare against
        try:
            write_ld_so_cache(dest, arch)
            return None
        except LdCacheUnsupported:
            pass
    run_real_ldconfig(dest)
    return None


def run_real_ldconfig(dest: Path) -> None:
    """The rootfs's own ``ldconfig -r`` (root, or a user namespace)."""
    ldconfig = dest / "usr/sbin/ldconfig"
    proc = subprocess.run([*_as_root(dest), str(ldconfig), "-r", str(dest)], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin", "LC_ALL": "C"})
    if proc.returncode != 0:
        raise BuildError(f"ldconfig failed in the rootfs: {proc.stderr.strip()}",
                         hint="the rootfs's libraries are inconsistent; check the Debian closure")
    aux = dest / "var/cache/ldconfig/aux-cache"  # inode/mtime-keyed: not reproducible
    if aux.exists():
        aux.unlink()


def write_ld_so_cache(dest: Path, arch: str) -> None:
    """/etc/ld.so.cache (0644) and what else ``ldconfig -r`` leaves behind (soname links, the aux-cache
    directory), from ``ld_so_cache``; LdCacheUnsupported (nothing written) when it does not apply."""
    data = ld_so_cache(dest, arch)
    from lockbuild.fsutil import atomic_write_bytes

    target = resolve_in_root(dest, "/etc", follow_last=True) or dest / "etc"
    atomic_write_bytes(target / "ld.so.cache", data)
    os.chmod(target / "ld.so.cache", 0o644)
    var_cache = resolve_in_root(dest, "/var/cache")
    if var_cache is not None and var_cache.is_dir() and not os.path.lexists(var_cache / "ldconfig"):
        os.mkdir(var_cache / "ldconfig", 0o700)
        os.chmod(var_cache / "ldconfig", 0o700)


# -- /etc/ld.so.cache without ldconfig: the same bytes, no chroot, no user namespace ---------------------
#
# glibc 2.36's ldconfig (the default "new" format, 1.1), written from its documented file layout:
#   header (48 bytes): "glibc-ld.so.cache" "1.1", nlibs, len_strings, flags (2 = little endian),
#     3 pad bytes, extension_offset, 12 unused bytes
#   nlibs entries (24 bytes): flags (0x303: x86-64 libc6), key (soname), value (path), 0, hwcap 0;
#     string offsets count from the start of the header
#   the string table: every distinct string once, sorted by its reversed bytes (descending) so that a
#     string that is a suffix of the one before it shares its bytes (tail merging)
#   at the next 4-byte boundary the extension directory: magic 0xEAA42174, 1 section (tag 0: the
#     generator string "ldconfig (...) release version X", read from the rootfs's own ldconfig)
# Which libraries: the directories of /etc/ld.so.conf (includes globbed, sorted) then the system
# directories, each once (by inode); in each, lib*.so* / ld-*.so* files and links that are 64-bit
# x86-64 shared objects with a dynamic string table, keyed by DT_SONAME (or the file name), preferring
# a file to a link and the newer version name; the cache names dir/soname, and a missing soname link is
# made as ldconfig would. Entries sort by soname, newest first (digits compare as numbers), ties in
# directory order. Anything this does not model (glibc-hwcaps or legacy hwcap subdirectories, other
# ELF classes or machines, a.out) raises LdCacheUnsupported, and the caller uses the real ldconfig.

SYSTEM_DIRS = {"amd64": ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")}
GLIBC_VERSIONS = ("2.36",)  # the ldconfig versions this writer is checked against (Debian bookworm)
FLAG_X8664_LIBC6 = 0x0303
EXTENSION_MAGIC = 0xEAA42174
HWCAP_NAMES = frozenset({"tls", "sse2", "x86_64", "avx512_1", "i586", "i686", "haswell", "xeon_phi"})
EM_X86_64 = 62
MAX_LINKS = 40


class LdCacheUnsupported(Exception):
    """The rootfs uses something the pure writer does not model: build the cache with ldconfig."""


def libcmp(a: bytes, b: bytes) -> int:
    """glibc's _dl_cache_libcmp: byte order, except that runs of digits compare as numbers."""
    i = j = 0
    while i < len(a):
        ca = a[i]
        cb = b[j] if j < len(b) else 0
        if 48 <= ca <= 57:
            if not 48 <= cb <= 57:
                return 1
            va = vb = 0
            while i < len(a) and 48 <= a[i] <= 57:
                va, i = va * 10 + a[i] - 48, i + 1
            while j < len(b) and 48 <= b[j] <= 57:
                vb, j = vb * 10 + b[j] - 48, j + 1
            if va != vb:
                return va - vb
        elif 48 <= cb <= 57:
            return -1
        elif ca != cb:
            return _schar(ca) - _schar(cb)
        else:
            i, j = i + 1, j + 1
    return 0 - _schar(b[j]) if j < len(b) else 0


def _schar(c: int) -> int:
    return c - 256 if c > 127 else c


def is_dso_name(name: str) -> bool:
    return ((name.startswith(("lib", "ld-")) and ".so" in name) or name.startswith(("ld.so.", "ld64.so.")))


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path | None:
    """``path`` (absolute, as seen inside the rootfs) with its symlinks resolved inside ``root``, as a
    chroot would; None when it does not exist or loops."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if (parts or follow_last) and here.is_symlink():
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    out = root.joinpath(*done)
    return out if os.path.lexists(out) else None


def _conf_dirs(root: Path, conf: str, seen: set[str]) -> list[str]:
    """The directories /etc/ld.so.conf names, includes expanded (glob results sorted), in order."""
    import glob

    real = resolve_in_root(root, conf)
    if real is None or real in seen:
        return []
    seen.add(str(real))
    try:
        lines = real.read_bytes().decode("latin-1").split("\n")
    except OSError:
        return []
    dirs: list[str] = []
    for line in lines:
        line = line.split("#", 1)[0].lstrip(" \t\n\v\f\r")
        if not line:
            continue
        if line.startswith("include") and line[7:8] in (" ", "\t"):
            for pattern in line[8:].replace("\t", " ").split(" "):
                if not pattern:
                    continue
                if not pattern.startswith("/"):
                    raise LdCacheUnsupported(f"relative include {pattern!r} in {conf}")
                base = resolve_in_root(root, posixpath.dirname(pattern))
                if base is None:
                    continue
                for match in sorted(glob.glob(glob.escape(str(base)) + "/" + posixpath.basename(pattern))):
                    dirs += _conf_dirs(root, "/" + os.path.relpath(match, root), seen)
        elif line[:5].lower() == "hwcap" and line[5:6] in (" ", "\t"):
            continue
        else:
            if "=" in line:
                raise LdCacheUnsupported(f"library type in {conf}: {line!r}")
            dirs.append(line.rstrip(" \t\n\v\f\r").rstrip("/"))
    return [d for d in dirs if d]


def _elf_soname(data: bytes) -> tuple[bool, str | None]:
    """(is a 64-bit x86-64 shared object ldconfig accepts, its DT_SONAME) of a file's bytes."""
    if len(data) < 64:
        return False, None
    if struct.unpack_from("<H", data, 0)[0] in (0o413, 0o314):  # a.out ZMAGIC / QMAGIC
        raise LdCacheUnsupported("an a.out library")
    if data[:4] != b"\x7fELF":
        return False, None
    if struct.unpack_from("<H", data, 16)[0] != 3:  # ET_DYN
        return False, None
    machine = struct.unpack_from("<H", data, 18)[0]
    if data[4] != 2 or data[5] != 1 or machine != EM_X86_64:
        if machine in (3, EM_X86_64):  # i386 or x32: ldconfig would list them with other flags
            raise LdCacheUnsupported("a 32-bit x86 shared object")
        return False, None
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    segments = []
    for k in range(phnum):
        off = phoff + k * phentsize
        if off + 56 > len(data):
            return False, None
        segments.append(struct.unpack_from("<IIQQQQQQ", data, off))  # type, flags, offset, vaddr, paddr, filesz, ...
    dynamic = [s for s in segments if s[0] == 2]  # PT_DYNAMIC
    if not dynamic or dynamic[0][5] == 0:
        return False, None
    dyn_off = dynamic[0][2]

    def entries():  # type: ignore[no-untyped-def]
        pos = dyn_off
        while pos + 16 <= len(data):
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                return
            yield tag, val
            pos += 16

    strtab = None
    for tag, val in entries():
        if tag == 5:  # DT_STRTAB
            loadoff = 0
            for s in segments:
                if s[0] == 1 and s[3] <= val < s[3] + s[5]:
                    loadoff = s[3] - s[2]
                    break
            strtab = val - loadoff
            break
    if strtab is None or strtab >= len(data):
        return False, None
    soname = None
    for tag, val in entries():
        if tag == 14:  # DT_SONAME
            start = strtab + val
            end = data.find(b"\0", start)
            if start >= len(data) or end < 0:
                return False, None
            soname = data[start:end].decode("latin-1")
    return True, soname


def _generator(root: Path) -> bytes:
    """The rootfs's ldconfig's own identification, e.g. b"ldconfig (Debian GLIBC 2.36-9+deb12u9) stable
    release version 2.36" (what it writes into every cache)."""
    import re

    data = (root / "usr/sbin/ldconfig").read_bytes()
    m = re.search(rb"ldconfig \([^\0]{1,200}\) [^\0]{0,40}release version ([0-9.]+)", data)
    if m is None:
        raise LdCacheUnsupported("no generator string in the rootfs's ldconfig")
    if m.group(1).decode() not in GLIBC_VERSIONS:  # another ldconfig may write another format (2.31: compat)
        raise LdCacheUnsupported(f"glibc {m.group(1).decode()} (modelled: {', '.join(GLIBC_VERSIONS)})")
    return m.group(0)


@dataclass
class _Lib:
    name: str
    soname: str
    is_link: bool


def _scan_dir(root: Path, path: str, stale: list[Path]) -> list[_Lib]:
    real = resolve_in_root(root, path)
    if real is None or not real.is_dir():
        return []
    libs: dict[str, _Lib] = {}
    for name in sorted(os.listdir(real)):
        full = real / name
        is_link = full.is_symlink()
        target = resolve_in_root(root, f"{path}/{name}") if is_link else full
        if is_link and target is None:  # a dangling link: ldconfig removes stale *.so.* links
            if is_dso_name(name) and ".so." in name:
                stale.append(full)
            continue
        assert target is not None
        if target.is_dir():
            if name in HWCAP_NAMES:
                raise LdCacheUnsupported(f"hwcap subdirectory {path}/{name}")
            continue
        if not is_dso_name(name):
            continue
        if not (target.is_file() or is_link):
            continue
        with open(target, "rb") as f:
            data = f.read()
        ok, soname = _elf_soname(data)
        if not ok:
            continue
        soname = soname or name
        if is_link and name != soname and not (name.endswith(".so") and soname.startswith(name)):
            is_link = False
        if is_link:
            soname = name
        have = libs.get(soname)
        if have is None:
            libs[soname] = _Lib(name, soname, is_link)
        elif (not is_link and have.is_link) or (is_link == have.is_link and libcmp(have.name.encode(),
                                                                                   name.encode()) < 0):
            libs[soname] = _Lib(name, soname, is_link)
    if (real / "glibc-hwcaps").is_dir():
        raise LdCacheUnsupported(f"glibc-hwcaps subdirectories in {path}")
    return list(libs.values())


def _make_link(root: Path, path: str, lib: _Lib) -> None:
    """ldconfig's create_links: soname -> file when soname is missing or a link to something else."""
    real = resolve_in_root(root, path)
    assert real is not None
    so = real / lib.soname
    so_target = resolve_in_root(root, f"{path}/{lib.soname}")
    lib_target = resolve_in_root(root, f"{path}/{lib.name}")
    if so_target is not None:
        if lib_target is None:
            return
        a, b = os.stat(so_target), os.stat(lib_target)
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) or not so.is_symlink():
            return
    if so.is_symlink():
        so.unlink()
    os.symlink(lib.name, so)


def _string_table(strings: set[bytes]) -> tuple[bytes, dict[bytes, int]]:
    order = sorted(strings, key=lambda s: s[::-1], reverse=True)
    offsets: dict[bytes, int] = {}
    prev = None
    for s in order:
        if prev is None:
            offsets[s] = 0
        elif len(prev) >= len(s) and prev.endswith(s):
            offsets[s] = offsets[prev] + len(prev) - len(s)
        else:
            offsets[s] = offsets[prev] + len(prev) + 1
        prev = s
    size = offsets[order[-1]] + len(order[-1]) + 1 if order else 0
    table = bytearray(size)
    for s, off in offsets.items():
        table[off:off + len(s)] = s
    return bytes(table), offsets


def ld_so_cache(root: Path, arch: str = "amd64", *, links: bool = True) -> bytes:
    """The bytes glibc 2.36's ``ldconfig -r root`` writes to /etc/ld.so.cache, without running it; with
    ``links``, the soname links it would make are made (and stale ones removed), only once the whole
    cache could be computed. LdCacheUnsupported (nothing changed) for what this does not model."""
    if arch not in SYSTEM_DIRS:
        raise LdCacheUnsupported(f"target {arch}")
    generator = _generator(root)
    dirs = _conf_dirs(root, "/etc/ld.so.conf", set()) + list(SYSTEM_DIRS[arch])
    seen: set[tuple[int, int]] = set()
    entries: list[tuple[bytes, bytes]] = []  # (soname, path), in the order ldconfig adds them
    stale: list[Path] = []
    to_link: list[tuple[str, _Lib]] = []
    for d in dirs:
        real = resolve_in_root(root, d)
        if real is None:
            continue
        st = os.stat(real)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        if not real.is_dir():
            continue
        for lib in _scan_dir(root, d, stale):
            if not lib.is_link:
                to_link.append((d, lib))
            entries.append((lib.soname.encode("latin-1"), f"{d}/{lib.soname}".encode("latin-1")))
    if links:
        for p in stale:
            p.unlink()
        for d, lib in to_link:
            _make_link(root, d, lib)
    # newest soname first (libcmp descending); equal sonames keep the order they were found in
    def newest_first(x: tuple[bytes, bytes], y: tuple[bytes, bytes]) -> int:
        return libcmp(y[0], x[0])

    entries.sort(key=functools.cmp_to_key(newest_first))
    table, offsets = _string_table({s for e in entries for s in e})
    head = 48 + 24 * len(entries)
    ext_offset = (head + len(table) + 3) & ~3
    out = bytearray()
    out += b"glibc-ld.so.cache" + b"1.1"
    out += struct.pack("<IIB3xI12x", len(entries), len(table), 2, ext_offset)
    for soname, path in entries:
        out += struct.pack("<iIIIQ", FLAG_X8664_LIBC6, head + offsets[soname], head + offsets[path], 0, 0)
    out += table
    out += bytes(ext_offset - len(out))
    out += struct.pack("<IIIIII", EXTENSION_MAGIC, 1, 0, 0, ext_offset + 24, len(generator))
    out += generator
    return bytes(out)
