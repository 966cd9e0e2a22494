"""Content-addressed cache: every wheel, .deb, index and image blob, stored by sha256.

Layout (``default_cache_dir()``: ``$LOCKBUILD_CACHE``, ``$XDG_CACHE_HOME/lockbuild`` or ``~/.cache/lockbuild``)::

    blobs/sha256/<2 hex>/<64 hex>     verified content
    tmp/                              downloads and writers in progress (same filesystem)
    locks/<64 hex>.lock               per-entry file locks
    meta/<namespace>/<key>.json       small derived records (layer cache, ...)

Entries are addressed by ``sha256:<hex>`` digests (lockbuild.digest); only the file names here
are bare hex. Meta keys that are digests (``sha256:<hex>...``) are stored under the bare-hex
name too, so entries written before the prefixed form stay found.

Rules: an entry is only ever created by renaming a fully written, hash-checked temp file into
place; reading an entry re-hashes it (a flipped byte is detected, the entry dropped and
fetched again); concurrent writers of the same entry serialise on a file lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lockbuild.digest import PREFIX, check, to_hex
from lockbuild.errors import IntegrityError
from lockbuild.fsutil import CHUNK, HashingStream, atomic_write_bytes, sha256_file

if TYPE_CHECKING:
    from filelock import FileLock


def default_cache_dir() -> Path:
    """Where lockbuild caches, for every stage and for uv (``uv/`` below it): ``$LOCKBUILD_CACHE``,
    else ``$XDG_CACHE_HOME/lockbuild``, else ``~/.cache/lockbuild``. The only place that decides it."""
    env = os.environ.get("LOCKBUILD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lockbuild"


# The key that signs the cache's derived records (layer records, uv head starts): it lives OUTSIDE the
# cache dir, so whoever can write the cache cannot forge a record.
def key_file() -> Path:
    env = os.environ.get("LOCKBUILD_KEY_FILE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "lockbuild" / "cache.key"


def mac_key() -> bytes | None:
    """The record-signing key, created on first use; None when it can neither be read nor made."""
    path = key_file()
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    except FileExistsError:
        pass  # another process made it first
    except OSError:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if len(data) >= 32 else None


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_cache_dir()).resolve()
        for sub in ("blobs/sha256", "tmp", "locks", "meta"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- paths -------------------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        hx = to_hex(sha256, "cache key")
        return self.root / "blobs" / "sha256" / hx[:2] / hx

    def lock(self, sha256: str) -> FileLock:
        from filelock import FileLock  # here: filelock's import is ~30 ms of every command's start-up

        return FileLock(str(self.root / "locks" / f"{to_hex(sha256, 'cache key')}.lock"), is_singleton=True)

    def tmpdir(self) -> Path:
        return self.root / "tmp"

    # -- reading -----------------------------------------------------------------------
    def get(self, sha256: str, size: int | None = None, *, verify: bool = True) -> Path | None:
        """The verified path of an entry, or None. A corrupt entry is removed, never returned."""
        p = self.path(sha256)
        if not p.exists():
            return None
        if verify:
            digest, actual = sha256_file(p)
            if digest != sha256 or (size is not None and actual != size):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                return None
        return p

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    # -- writing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, expected_sha256: str | None = None) -> Iterator[HashingStream]:
        """Stream content in; on exit it is verified (if a hash was expected) and renamed in.

        After the block, ``w.digest()`` is the entry's key. A mismatch raises
        IntegrityError and leaves nothing behind.
        """
        if expected_sha256 is not None:
            check(expected_sha256, "expected content digest")
        fd, tmp = tempfile.mkstemp(dir=self.tmpdir(), suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                w = HashingStream(f)
                yield w
                f.flush()
                os.fsync(f.fileno())
            digest = w.digest()
            if expected_sha256 is not None and digest != expected_sha256:
                raise IntegrityError(
                    f"content hash mismatch: expected {expected_sha256}, got {digest}",
                    hint="the source served different bytes than the lock records; "
                    "if the lock is right, the source is tampered or corrupt",
                )
            self._install(Path(tmp), digest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_bytes(self, data: bytes, expected_sha256: str | None = None) -> str:
        with self.writer(expected_sha256) as w:
            w.write(data)
        return w.digest()

    def put_file(self, src: Path, expected_sha256: str | None = None) -> str:
        with self.writer(expected_sha256) as w, open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                w.write(chunk)
        return w.digest()

    def _install(self, tmp: Path, digest: str) -> None:
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.lock(digest):
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)

    # -- small derived records -------------------------------------------------------------
    def _meta_path(self, namespace: str, key: str) -> Path:
        return self.root / "meta" / namespace / f"{key.removeprefix(PREFIX)}.json"

    def meta_get(self, namespace: str, key: str) -> dict | None:
        p = self._meta_path(namespace, key)
        try:
            return json.loads(p.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def meta_put(self, namespace: str, key: str, value: dict) -> None:
        p = self._meta_path(namespace, key)
        atomic_write_bytes(p, json.dumps(value, sort_keys=True, indent=1).encode())
