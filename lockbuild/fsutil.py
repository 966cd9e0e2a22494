"""Small filesystem helpers shared by every stage: atomic writes, hashing, path checks, a fast staging place.

Defined once here: the digest of a file tree (`tree_digest`), the stream that hashes what passes
through it (`HashingStream`), a wheel RECORD's hash field (`record_hash`) and whether a relative
path leaves its root (`escapes`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from lockbuild.digest import PREFIX, to_hex

CHUNK = 1 << 20


class HashingStream:
    """A file wrapper that sha256-hashes every byte read from or written to ``f`` (a cache entry
    streaming in, a layer's tar on its way to the compressor, a wheel member on its way into the
    tar). ``resume`` hashes an existing file's bytes first (a download continued with Range)."""

    def __init__(self, f: Any, *, resume: Path | None = None) -> None:
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0
        if resume is not None:
            with open(resume, "rb") as r:
                self.h = hashlib.file_digest(r, "sha256")
                self.size = r.tell()

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.h.update(data)
        self.size += len(data)
        return len(data)

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.size += len(data)
        return data

    def drain(self) -> HashingStream:
        """Read ``f`` to its end (hashing it); returns self."""
        while self.read(CHUNK):
            pass
        return self

    def tell(self) -> int:
        return self.size

    def hexdigest(self) -> str:
        return self.h.hexdigest()

    def digest(self) -> str:
        """``sha256:<hex>`` of what passed through."""
        return PREFIX + self.h.hexdigest()

    def record_hash(self) -> str:
        """What passed through as a wheel RECORD's hash field (``record_hash``)."""
        return record_hash(self.h.digest())


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def record_hash(sha256: bytes) -> str:
    """A wheel RECORD's hash field for a raw sha256 digest: ``sha256=<urlsafe base64, unpadded>``
    (the binary distribution format; installer's ``Hash``, as installer writes RECORD)."""
    from installer.records import Hash  # here: installer loads email.*, every command's start-up would pay

    return str(Hash("sha256", base64.urlsafe_b64encode(sha256).decode("ascii").rstrip("=")))


def sha256_stream(f: IO[bytes]) -> HashingStream:
    """``f`` read to its end through a ``HashingStream`` (``.digest()``, ``.size``, ``.record_hash()``)."""
    return HashingStream(f).drain()


def sha256_file(path: Path) -> tuple[str, int]:
    """Return (``sha256:<hex>`` digest, size) of a file, streaming."""
    with open(path, "rb") as f:
        s = sha256_stream(f)
    return s.digest(), s.size


def null_sink() -> Any:
    """A write-only sink that keeps nothing (to hash what a writer produces)."""
    return _Null()


def escapes(name: str) -> bool:
    """Whether the relative POSIX path ``name`` (an archive member, a listed path) would leave the
    directory it is resolved in: absolute, containing a backslash (a separator elsewhere), or going
    above it with ``..`` once normalised. Every such check of lockbuild is this one."""
    norm = posixpath.normpath(name) if name else name
    return name.startswith("/") or "\\" in name or norm == ".." or norm.startswith("../")


def sha256_bytes(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of `data`."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def check_bytes(data: bytes, digest: str, what: str, hint: str) -> bytes:
    """``data`` when its sha256 is ``digest``; else IntegrityError "<what> does not match its digest"
    (a blob or manifest read back from a layout, a registry or a store)."""
    if sha256_bytes(data) != digest:
        from lockbuild.errors import IntegrityError

        raise IntegrityError(f"{what} does not match its digest {digest}", hint=hint)
    return data


def iter_tree_files(root: Path) -> Iterator[Path]:
    """Files below root, relative, byte-sorted by POSIX path. Directory symlinks are not descended
    into and file symlinks are read as their target: callers reading untrusted trees check links
    first (model/metadata.py check_symlinks refuses any that leave the tree)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath, name)
            found.append(p.relative_to(root).as_posix())
    for rel in sorted(found, key=lambda s: s.encode()):
        yield Path(rel)


def tree_files(root: Path) -> list[tuple[str, int, str]]:
    """[(posix relative path, size, sha256)] for every regular file below root."""
    out = []
    for rel in iter_tree_files(root):
        digest, size = sha256_file(root / rel)
        out.append((rel.as_posix(), size, digest))
    return out


def tree_digest(files: list[tuple[str, int, str]]) -> str:
    """One digest over a file listing: sha256 of '<hex>  size  path\\n' lines (bare hex, as the
    model's tree digest in every lock was computed), sorted by path."""
    h = hashlib.sha256()
    for path, size, digest in sorted(files, key=lambda t: t[0].encode()):
        h.update(f"{to_hex(digest)}  {size}  {path}\n".encode())
    return PREFIX + h.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write to a temp file beside `path`, fsync, rename into place. Nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_writer(path, mode) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


# -- a staging place where creating files is cheap ---------------------------------------------------
SHM = Path("/dev/shm")
SHM_FREE = 2 << 30  # use it only with this much room: a container's default /dev/shm is 64 MiB
SCRATCH_PREFIX = "lockbuild-scratch-"


def _sweep(base: Path) -> None:
    """Remove scratch directories of this user's processes that died without cleaning up."""
    with contextlib.suppress(OSError), os.scandir(base) as it:
        for de in it:
            if not de.name.startswith(SCRATCH_PREFIX):
                continue
            pid = de.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
            try:
                if not pid.isdigit() or de.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                os.kill(int(pid), 0)
            except ProcessLookupError:
                import shutil

                shutil.rmtree(de.path, ignore_errors=True)
            except OSError:
                continue


def scratch_dir(fallback: Path) -> Path:
    """A new private directory for a tree of many small files: in ``$LOCKBUILD_SCRATCH`` when set, else
    in /dev/shm when it is a writable tmpfs with room (creating a file there costs microseconds; on
    some disks, as on this project's build machines, ~0.7 ms of CPU), else in ``fallback``. The name
    carries the pid so a later run removes what a killed one left behind. The caller removes it."""
    env = os.environ.get("LOCKBUILD_SCRATCH")
    base = Path(env) if env else fallback
    if not env:
        try:
            st = os.statvfs(SHM)
            if st.f_bavail * st.f_frsize >= SHM_FREE and os.access(SHM, os.W_OK | os.X_OK):
                base = SHM
        except OSError:
            pass
    base.mkdir(parents=True, exist_ok=True)
    _sweep(base)
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=base))
