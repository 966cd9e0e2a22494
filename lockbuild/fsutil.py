"""Small filesystem helpers shared by every stage: atomic writes, hashing, a fast staging place.

One function computes a digest of a file tree (`tree_digest`); everything else calls it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lockbuild.digest import PREFIX, to_hex

CHUNK = 1 << 20


def sha256_file(path: Path) -> tuple[str, int]:
    """Return (``sha256:<hex>`` digest, size) of a file, streaming."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return PREFIX + h.hexdigest(), size


def sha256_bytes(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of `data`."""
    return PREFIX + hashlib.sha256(data).hexdigest()


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
