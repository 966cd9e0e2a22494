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

Here: member extraction, the skeleton and post-install steps, and ``assemble_rootfs``. Elsewhere:
reading .debs (assemble/deb.py), the path policy (assemble/paths.py), the dpkg database
(assemble/dpkg.py) and ld.so.cache (assemble/ldcache.py).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from lockbuild.assemble.deb import open_deb_tars
from lockbuild.assemble.dpkg import STATUS_DIR, write_status
from lockbuild.assemble.ldcache import run_ldconfig
from lockbuild.assemble.paths import MERGED_USR, MERGED_USR_ARCH_ONLY, is_dropped, member_path
from lockbuild.errors import BuildError
from lockbuild.fsutil import CHUNK, sha256_file, sha256_stream
from lockbuild.lockfile.model import Deb

CA_SOURCE = "usr/share/ca-certificates"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
OPENSSL_CAFILE = "usr/lib/ssl/cert.pem"  # OpenSSL's default CA file (OPENSSLDIR/cert.pem)
WORLD_WRITABLE = 0o1777


@dataclass
class _State:
    """What has been written so far: path -> owning package, and per-package file lists."""

    dest: Path
    owners: dict[str, str] = field(default_factory=dict)
    files: dict[str, set[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


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
    return sha256_file(path)[0] == sha256_stream(data).digest()


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
            write_status(dest, deb, control_tar, st.files.get(deb.name, set()))
    write_users(dest, uid, user)
    if not make_ca_bundle(dest):
        st.warnings.append("no certificates under /usr/share/ca-certificates: no CA bundle written")
    link_python3(dest, [d for d, _ in ordered])
    if (warning := run_ldconfig(dest, arch)) is not None:
        st.warnings.append(warning)
    return st.warnings


# The child of ``assemble_rootfs_apart``: the same function, its result or error as JSON on stdout.
_CHILD = r"""
import json, sys
from pathlib import Path
from lockbuild.assemble.rootfs import assemble_rootfs
from lockbuild.errors import BuildError
from lockbuild.lockfile.model import Deb
args = json.load(sys.stdin)
try:
    out = {"warnings": assemble_rootfs([(Deb(**d), Path(p)) for d, p in args["debs"]], Path(args["dest"]),
                                       uid=args["uid"])}
except BuildError as e:
    out = {"error": e.message, "hint": e.hint}
except OSError as e:
    out = {"error": e.strerror or str(e), "errno": e.errno, "filename": e.filename}
json.dump(out, sys.stdout)
"""


def assemble_rootfs_apart(debs: Sequence[tuple[Deb, Path]], dest: Path, *, uid: int = 65532) -> list[str]:
    """``assemble_rootfs`` in a child process of this interpreter: the same code and bytes, but its
    tar parsing and path checks (pure Python) no longer wait for the GIL the builder's other
    threads hold, so it runs on a core of its own while the wheel layers are installed."""
    import dataclasses
    import json
    import subprocess
    import sys

    import lockbuild

    env = dict(os.environ)
    here = str(Path(lockbuild.__file__).resolve().parents[1])
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    payload = {"debs": [[dataclasses.asdict(d), str(p)] for d, p in debs], "dest": str(dest), "uid": uid}
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(payload).encode(), capture_output=True,
                          env=env, check=False)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise BuildError(f"staging the Debian rootfs failed: {tail[0]}") from None
    if "errno" in out:
        raise OSError(out["errno"], out["error"], out["filename"])
    if "error" in out:
        raise BuildError(out["error"], hint=out["hint"])
    return list(out["warnings"])
