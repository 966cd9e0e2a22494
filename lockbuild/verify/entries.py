"""The found side of verify: what a layer tar says about each path, and a layer blob's real digests.

``Entry`` is the small record kept per path (kind, mode, owner, link target, content sha256);
``iter_entries`` reads them from any uncompressed tar stream (the found layer's and the expected
one's alike). A layer blob is decompressed by its magic bytes (gzip, zstd or plain tar) and
streamed, never held: ``hash_found_layer`` gives its blob digest and real diff_id,
``found_entries`` its entries.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from lockbuild.digest import PREFIX
from lockbuild.oci.layercache import Layer
from lockbuild.verify.source import ImageSource

CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    kind: str  # file | dir | symlink | hardlink | other
    mode: int
    uid: int
    gid: int
    target: str = ""  # link target
    sha256: str = ""  # sha256:<hex> of the content, regular files only
    size: int = 0

    def describe(self) -> str:
        base = f"{self.kind} {self.mode:04o} {self.uid}:{self.gid}"
        if self.kind in ("symlink", "hardlink"):
            return f"{base} -> {self.target}"
        if self.kind == "file":
            return f"{base} {self.sha256} ({self.size} bytes)"
        return base


def norm(name: str) -> str:
    name = name.removeprefix("./").lstrip("/").rstrip("/")
    return name or "."


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "file"
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    return "other"


def iter_entries(stream: BinaryIO) -> Iterator[tuple[str, Entry]]:
    """Every entry of an uncompressed tar stream, content hashed in 1 MiB chunks."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
        for m in tar:
            kind = _kind(m)
            sha, size = "", 0
            if kind == "file":
                h = hashlib.sha256()
                f = tar.extractfile(m)
                while chunk := f.read(CHUNK):  # type: ignore[union-attr]
                    h.update(chunk)
                    size += len(chunk)
                sha = PREFIX + h.hexdigest()
            yield norm(m.name), Entry(kind, m.mode & 0o7777, m.uid, m.gid,
                                       m.linkname if kind in ("symlink", "hardlink") else "", sha, size)


class _HashReader:
    """Read-through stream that hashes (and counts) what passes."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.h.update(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _Peeked:
    """A stream with its first bytes already read (to sniff the compression)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self.buf, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if not self.buf:
            return bytes(self.rest.read(n))
        if n < 0:
            data, self.buf = self.buf + self.rest.read(), b""
            return bytes(data)
        data, self.buf = self.buf[:n], self.buf[n:]
        if len(data) < n:
            data += self.rest.read(n - len(data))
        return bytes(data)


def _decompressed(raw: Any) -> Any:
    """The uncompressed tar stream of a layer blob (gzip, zstd or plain tar, by magic bytes)."""
    head = raw.read(4)
    peeked = _Peeked(head, raw)
    if head[:2] == b"\x1f\x8b":
        import gzip

        return gzip.GzipFile(fileobj=peeked, mode="rb")  # type: ignore[call-overload]
    if head == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:  # pragma: no cover - only with zstd layers and no zstandard module
            raise OSError("zstd-compressed layer and the zstandard module is not installed") from None
        return zstandard.ZstdDecompressor().stream_reader(peeked)  # type: ignore[arg-type]  # any .read()
    return peeked


@dataclass
class FoundLayer:
    blob_digest: str  # sha256 of the bytes as stored (compressed)
    diff_id: str  # sha256 of the uncompressed tar


def hash_found_layer(src: ImageSource, i: int, known: Layer | None = None) -> FoundLayer:
    """The layer's real digests. With ``known`` (a MAC-checked record: blob digest -> diff_id, made
    when lockbuild itself compressed that tar) a blob hashing to known.digest is not decompressed."""
    if known is not None:
        with src.open_layer(i) as raw:
            outer = _HashReader(raw)
            head = outer.read(4)
            plain = head[:2] != b"\x1f\x8b" and head != b"\x28\xb5\x2f\xfd"
            outer.drain()
        blob = PREFIX + outer.h.hexdigest()
        if blob == known.digest or plain:
            return FoundLayer(blob, known.diff_id if blob == known.digest else blob)
    with src.open_layer(i) as raw:
        outer = _HashReader(raw)
        inner = _HashReader(_decompressed(outer))
        inner.drain()
        outer.drain()
    return FoundLayer(PREFIX + outer.h.hexdigest(), PREFIX + inner.h.hexdigest())


def found_entries(src: ImageSource, i: int) -> Iterator[tuple[str, Entry]]:
    with src.open_layer(i) as raw:
        yield from iter_entries(_decompressed(raw))

