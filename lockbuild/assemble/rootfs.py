"""Root filesystem staging directory from verified .debs, without running maintainer scripts.

What dpkg and the maintainer scripts would do, done here deterministically instead:

- data.tar members are extracted with path checks (no absolute paths, no '..', never through
  a symlink already in the tree) into a merged-/usr layout (bin -> usr/bin, ...);
- docs, man/info pages, lintian overrides and translations are dropped (copyright files stay);
- /var/lib/dpkg/status.d/<pkg> and <pkg>.md5sums record the packages (distroless layout, so
  Trivy and Syft see them);
- /etc/passwd and /etc/group (root, nobody, nonroot), /tmp and the non-root home;
- /etc/ssl/certs/ca-certificates.crt (what update-ca-certificates would build);
- /usr/bin/python3 when the python3 package is not in the closure;
- /etc/ld.so.cache from the rootfs's own static ldconfig (ctypes.util.find_library needs it).

The result is a directory; the OCI layer writer tars it (ownership and times normalised there).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from debian import deb822

from lockbuild.errors import BuildError
from lockbuild.fsutil import CHUNK
from lockbuild.lock.model import Deb

# Top-level directories that are symlinks into /usr (merged-/usr); members below them move there.
MERGED_USR = ("bin", "sbin", "lib", "lib64")
MERGED_USR_ARCH_ONLY = {"lib64": ("amd64",)}

# Trees no serving image needs. /usr/share/doc keeps <pkg>/copyright (licences, SBOM scanners).
DROPPED_TREES = ("usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/locale")
DOC_TREE = "usr/share/doc"

STATUS_DIR = "var/lib/dpkg/status.d"
CA_SOURCE = "usr/share/ca-certificates"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
OPENSSL_CAFILE = "usr/lib/ssl/cert.pem"  # OpenSSL's default CA file (OPENSSLDIR/cert.pem)
WORLD_WRITABLE = 0o1777

# Debian architecture -> (ELF e_machine, host machine names)
ELF_MACHINES = {"amd64": (62, ("x86_64", "amd64")), "arm64": (183, ("aarch64", "arm64"))}


@dataclass
class _State:
    """What has been written so far: path -> owning package, and per-package file lists."""

    dest: Path
    owners: dict[str, str] = field(default_factory=dict)
    files: dict[str, set[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# -- reading .debs ---------------------------------------------------------------------------
def ar_members(f: BinaryIO, label: str) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each member of a Unix ar archive (the .deb container)."""
    if f.read(8) != b"!<arch>\n":
        raise BuildError(f"{label}: not a Debian package (no ar header)", hint="the cached .deb is corrupt")
    while True:
        hdr = f.read(60)
        if not hdr:
            return
        if len(hdr) != 60 or hdr[58:60] != b"`\n":
            raise BuildError(f"{label}: truncated or malformed ar member header")
        name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(hdr[48:58].decode("ascii").strip())
        offset = f.tell()
        yield name, offset, size
        f.seek(offset + size + (size & 1))


def _decompress_stream(name: str, src: BinaryIO, out: BinaryIO, label: str) -> None:
    """Decompress an ar member (by its file-name suffix) into `out`."""
    if name.endswith(".zst"):
        proc = subprocess.run(["zstd", "-dc"], input=src.read(), capture_output=True)
        if proc.returncode != 0:
            raise BuildError(f"{label}: cannot decompress {name}",
                             hint="install zstd (`apt-get install zstd`)")
        out.write(proc.stdout)
        return
    stream: IO[bytes] | gzip.GzipFile
    if name.endswith(".xz"):
        stream = lzma.open(src)
    elif name.endswith(".gz"):
        stream = gzip.open(src)
    elif name.endswith(".bz2"):
        stream = bz2.open(src)
    else:
        stream = src
    while chunk := stream.read(CHUNK):
        out.write(chunk)


class _Slice(io.RawIOBase):
    """A read-only file view of one ar member."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        self.f, self.end = f, offset + size
        f.seek(offset)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.end - self.f.tell()
        data = self.f.read(min(len(buf), left)) if left > 0 else b""
        buf[: len(data)] = data
        return len(data)


def open_deb_tars(deb_path: Path, label: str) -> tuple[tarfile.TarFile, tarfile.TarFile]:
    """(control tar, data tar), each decompressed to a temporary file for random access."""
    tars: dict[str, tarfile.TarFile] = {}
    with open(deb_path, "rb") as f:
        for name, offset, size in ar_members(f, label):
            kind = name.split(".", 1)[0]
            if kind in ("control", "data") and name.startswith(f"{kind}.tar"):
                tmp = tempfile.TemporaryFile()
                try:
                    _decompress_stream(name, io.BufferedReader(_Slice(f, offset, size)), tmp, label)
                    tmp.seek(0)
                    tars[kind] = tarfile.open(fileobj=tmp, mode="r:")
                except (OSError, EOFError, lzma.LZMAError, tarfile.TarError) as e:
                    tmp.close()
                    raise BuildError(f"{label}: cannot read {name}: {e}",
                                     hint="the .deb is corrupt; delete it from the cache") from None
    if set(tars) != {"control", "data"}:
        raise BuildError(f"{label}: a .deb needs control.tar.* and data.tar.* (found {sorted(tars)})")
    return tars["control"], tars["data"]


def _tar_text(tar: tarfile.TarFile, name: str) -> bytes | None:
    for candidate in (f"./{name}", name):
        try:
            member = tar.getmember(candidate)
        except KeyError:
            continue
        f = tar.extractfile(member)
        return f.read() if f else None
    return None


# -- paths -----------------------------------------------------------------------------------
def member_path(name: str, pkg: str) -> str | None:
    """Normalised, merged-/usr relative path of a data.tar member; None for the root entry.

    Raises BuildError for absolute paths and '..' components.
    """
    path = name
    while path.startswith("./"):
        path = path[2:]
    if path.startswith("/"):
        raise BuildError(f"{pkg}: unsafe absolute path in data.tar: {name!r}",
                         hint="the package is malformed or malicious; do not use it")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BuildError(f"{pkg}: unsafe '..' path in data.tar: {name!r}",
                         hint="the package is malformed or malicious; do not use it")
    if not parts:
        return None
    if parts[0] in MERGED_USR:
        parts = ["usr", *parts]
    return "/".join(parts)


def is_dropped(path: str) -> bool:
    """Paths a serving image does not ship (docs except copyright, man, info, locale, lintian)."""
    if any(path == t or path.startswith(t + "/") for t in DROPPED_TREES):
        return True
    if path.startswith(DOC_TREE + "/"):
        rest = path[len(DOC_TREE) + 1:].split("/")
        return not (len(rest) == 1 or (len(rest) == 2 and rest[1] == "copyright"))
    return False


def _ensure_parents(st: _State, rel: str, pkg: str, member: str) -> Path:
    """Create missing parent directories of `rel`; refuse symlinks and non-directories on the way."""
    cur = st.dest
    for part in rel.split("/")[:-1]:
        cur = cur / part
        try:
            mode = os.lstat(cur).st_mode
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            os.chmod(cur, 0o755)
            continue
        if stat.S_ISLNK(mode):
            link = cur.relative_to(st.dest).as_posix()
            raise BuildError(
                f"{pkg}: member {member!r} would be written through the symlink /{link} "
                f"({st.owners.get(link, '?')})",
                hint="packages that write below another package's symlink are not supported; "
                "remove one of them from the roots",
            )
        if not stat.S_ISDIR(mode):
            raise BuildError(f"{pkg}: member {member!r} needs a directory where a file is")
    return st.dest / rel


# -- writing members -------------------------------------------------------------------------
def _conflict(st: _State, rel: str, pkg: str, what: str) -> BuildError:
    return BuildError(
        f"{pkg}: /{rel} {what} (already written by {st.owners.get(rel, '?')})",
        hint="two packages in the closure ship different content at the same path; remove one of the roots",
    )


def _same_content(path: Path, data: IO[bytes]) -> bool:
    a, b = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            a.update(chunk)
    while chunk := data.read(CHUNK):
        b.update(chunk)
    return a.digest() == b.digest()


def _write_file(st: _State, tar: tarfile.TarFile, m: tarfile.TarInfo, rel: str, pkg: str) -> None:
    target = _ensure_parents(st, rel, pkg, m.name)
    src = tar.extractfile(m)
    if src is None:
        raise BuildError(f"{pkg}: cannot read member {m.name!r}")
    mode = 0o755 if m.mode & 0o111 else 0o644
    if os.path.lexists(target):
        if target.is_symlink() or not target.is_file() or not _same_content(target, src):
            raise _conflict(st, rel, pkg, "differs from a file")
        return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
        os.fchmod(out.fileno(), mode)
    st.owners[rel] = pkg
    st.files.setdefault(pkg, set()).add(rel)


def _write_symlink(st: _State, m: tarfile.TarInfo, rel: str, pkg: str) -> None:
    target = _ensure_parents(st, rel, pkg, m.name)
    if os.path.lexists(target):
        if not (target.is_symlink() and os.readlink(target) == m.linkname):
            raise _conflict(st, rel, pkg, f"-> {m.linkname} differs from an existing entry")
        return
    os.symlink(m.linkname, target)
    st.owners[rel] = pkg


def _write_dir(st: _State, m: tarfile.TarInfo, rel: str, pkg: str) -> None:
    target = st.dest / rel
    if target.is_symlink():  # dpkg keeps a symlink to a directory; files below it still fail
        return
    target = _ensure_parents(st, rel, pkg, m.name)
    if not os.path.lexists(target):
        os.mkdir(target, 0o755)
        os.chmod(target, 0o755)
    elif not target.is_dir():
        raise _conflict(st, rel, pkg, "is a directory in this package but not in the tree")


def _merged_usr_link(st: _State, m: tarfile.TarInfo, rel: str) -> bool:
    """Is this member the merged-/usr link itself (trixie's base-files ships ./bin -> usr/bin)?

    Such a link is made (or was made) by make_skeleton; a missing one (lib64 off amd64) is added.
    """
    top = rel.removeprefix("usr/")
    if not (m.issym() and rel == f"usr/{top}" and top in MERGED_USR):
        return False
    if m.linkname.rstrip("/") not in (f"usr/{top}", f"/usr/{top}"):
        return False
    if not os.path.lexists(st.dest / top):
        _mkdir(st.dest, f"usr/{top}")
        os.symlink(f"usr/{top}", st.dest / top)
    return True


def extract_data(st: _State, tar: tarfile.TarFile, pkg: str) -> None:
    """Extract one package's data.tar into the staging tree (no maintainer scripts)."""
    for m in tar.getmembers():
        rel = member_path(m.name, pkg)
        if rel is None or is_dropped(rel) or _merged_usr_link(st, m, rel):
            continue
        if m.isdir():
            _write_dir(st, m, rel, pkg)
        elif m.issym():
            _write_symlink(st, m, rel, pkg)
        elif m.isfile() or m.islnk():  # hard links become copies
            if m.islnk() and member_path(m.linkname, pkg) is None:
                raise BuildError(f"{pkg}: hard link {m.name!r} to the root directory")
            _write_file(st, tar, m, rel, pkg)
        else:
            st.warnings.append(f"{pkg}: skipped special file /{rel} (device or fifo)")


# -- dpkg metadata ---------------------------------------------------------------------------
def status_paragraph(control: bytes, pkg: str) -> str:
    """The control paragraph with 'Status: install ok installed' after Package (dpkg's order)."""
    para = deb822.Deb822(control)
    if para.get("Package") != pkg:
        raise BuildError(f"{pkg}: control file names package {para.get('Package')!r}",
                         hint="the .deb does not match the lock entry")
    out = deb822.Deb822()
    out["Package"] = para["Package"]
    out["Status"] = "install ok installed"
    for key, value in para.items():
        if key not in ("Package", "Status"):
            out[key] = value
    return out.dump()


def rewrite_md5sums(md5sums: bytes, pkg: str, present: set[str]) -> bytes:
    """md5sums with merged-/usr paths, limited to the files actually in the tree."""
    lines = []
    for line in md5sums.decode("utf-8", "surrogateescape").splitlines():
        digest, sep, path = line.partition("  ")
        if not sep:
            continue
        rel = member_path(path, pkg)
        if rel is not None and rel in present:
            lines.append(f"{digest}  {rel}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def write_status(st: _State, deb: Deb, control_tar: tarfile.TarFile) -> None:
    control = _tar_text(control_tar, "control")
    if control is None:
        raise BuildError(f"{deb.name}: control.tar has no control file", hint="the .deb is corrupt")
    status_dir = st.dest / STATUS_DIR
    (status_dir / deb.name).write_text(status_paragraph(control, deb.name))
    md5sums = _tar_text(control_tar, "md5sums")
    if md5sums is not None:
        (status_dir / f"{deb.name}.md5sums").write_bytes(
            rewrite_md5sums(md5sums, deb.name, st.files.get(deb.name, set())))


# -- skeleton and post-install steps ---------------------------------------------------------
def _mkdir(dest: Path, rel: str, mode: int = 0o755) -> None:
    p = dest / rel
    p.mkdir(parents=True, exist_ok=True)
    os.chmod(p, mode)


def make_skeleton(dest: Path, arch: str) -> None:
    """Merged-/usr symlinks (bin -> usr/bin, ...) and the directories the steps below fill."""
    for top in MERGED_USR:
        if arch in MERGED_USR_ARCH_ONLY.get(top, (arch,)):
            _mkdir(dest, f"usr/{top}")
            os.symlink(f"usr/{top}", dest / top)
    for rel in ("etc/ld.so.conf.d", STATUS_DIR):
        _mkdir(dest, rel)


def write_users(dest: Path, uid: int, user: str) -> None:
    """/etc/passwd, /etc/group, the non-root home and /tmp (both 1777: ownership is normalised to 0)."""
    passwd = (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        f"{user}:x:{uid}:{uid}:{user}:/home/{user}:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\nnogroup:x:65534:\n{user}:x:{uid}:\n"
    _mkdir(dest, "etc")
    for name, text in (("passwd", passwd), ("group", group)):
        p = dest / "etc" / name
        if p.is_symlink():
            p.unlink()
        p.write_text(text)
        os.chmod(p, 0o644)
    _mkdir(dest, "root", 0o700)
    _mkdir(dest, "home", 0o755)
    _mkdir(dest, f"home/{user}", WORLD_WRITABLE)
    _mkdir(dest, "tmp", WORLD_WRITABLE)


def make_ca_bundle(dest: Path) -> bool:
    """Concatenate /usr/share/ca-certificates/**/*.crt (byte-sorted) like update-ca-certificates."""
    src = dest / CA_SOURCE
    if not src.is_dir():
        return False
    found = (p for p in src.rglob("*.crt") if p.is_file() and not p.is_symlink())
    certs = sorted((p.relative_to(src).as_posix() for p in found), key=lambda s: s.encode())
    bundle = bytearray()
    for rel in certs:
        data = (src / rel).read_bytes()
        bundle += data if data.endswith(b"\n") else data + b"\n"
    out = dest / CA_BUNDLE
    _ensure_dir_nofollow(dest, out.parent)
    out.write_bytes(bytes(bundle))
    os.chmod(out, 0o644)
    link_openssl_cafile(dest)
    return bool(certs)


def link_openssl_cafile(dest: Path) -> None:
    """OPENSSLDIR/cert.pem -> the bundle, as bookworm's openssl ships it (bullseye's does not, and
    without update-ca-certificates' hash links OpenSSL would find no CA at all)."""
    ssl_dir, cafile = dest / "usr/lib/ssl", dest / OPENSSL_CAFILE
    if ssl_dir.is_dir() and not ssl_dir.is_symlink() and not os.path.lexists(cafile):
        os.symlink(f"/{CA_BUNDLE}", cafile)


def _ensure_dir_nofollow(dest: Path, d: Path) -> None:
    cur = dest
    for part in d.relative_to(dest).parts:
        cur = cur / part
        if cur.is_symlink():
            raise BuildError(f"/{cur.relative_to(dest).as_posix()} is a symlink; refusing to write below it")
        if not cur.exists():
            os.mkdir(cur, 0o755)


def interpreter_names(debs: Sequence[Deb]) -> list[str]:
    return sorted(d.name for d in debs if re.fullmatch(r"python3\.\d+", d.name))


def link_python3(dest: Path, debs: Sequence[Deb]) -> str | None:
    """/usr/bin/python3 -> python3.X when no python3 package provides it."""
    names = interpreter_names(debs)
    link = dest / "usr/bin/python3"
    if not names or any(d.name == "python3" for d in debs) or os.path.lexists(link):
        return None
    interp = max(names, key=lambda n: int(n.split(".")[1]))
    if not (dest / "usr/bin" / interp).is_file():
        return None
    os.symlink(interp, link)
    return interp


# -- ld.so.cache -----------------------------------------------------------------------------
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
    machine, hosts = ELF_MACHINES.get(arch, (None, ()))
    info = elf_info(ldconfig)
    if info is None or info[0] != machine or not info[1]:
        return f"/usr/sbin/ldconfig is not a static {arch} ELF binary: no /etc/ld.so.cache"
    if platform.machine().lower() not in hosts:
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


# -- entry point -----------------------------------------------------------------------------
def _rootfs_arch(debs: Sequence[tuple[Deb, Path]]) -> str:
    arches = sorted({d.architecture for d, _ in debs} - {"all"})
    if len(arches) != 1:
        raise BuildError(f"the .debs must share one architecture, found {arches or ['all only']}",
                         hint="the lock's Debian packages are inconsistent; re-run `lockbuild lock`")
    return arches[0]


def _check_empty(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise BuildError(f"staging directory {dest} is not empty",
                         hint="remove it first; the rootfs is always assembled from scratch")
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)


def assemble_rootfs(debs: Sequence[tuple[Deb, Path]], dest: Path, *, uid: int = 65532,
                    user: str = "nonroot") -> list[str]:
    """Build the rootfs staging directory at `dest` from (locked Deb, verified .deb path) pairs.

    Returns warnings (steps skipped, e.g. ld.so.cache for a foreign architecture).
    """
    arch = _rootfs_arch(debs)
    _check_empty(dest)
    make_skeleton(dest, arch)
    st = _State(dest)
    ordered = sorted(debs, key=lambda t: t[0].name)
    for deb, path in ordered:
        label = f"{deb.name}_{deb.version}"
        control_tar, data_tar = open_deb_tars(path, label)
        with control_tar, data_tar:
            extract_data(st, data_tar, deb.name)
            write_status(st, deb, control_tar)
    write_users(dest, uid, user)
    if not make_ca_bundle(dest):
        st.warnings.append("no certificates under /usr/share/ca-certificates: no CA bundle written")
    link_python3(dest, [d for d, _ in ordered])
    if (warning := run_ldconfig(dest, arch)) is not None:
        st.warnings.append(warning)
    return st.warnings
