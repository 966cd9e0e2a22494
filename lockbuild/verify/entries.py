"""The found side of verify: what a layer tar says about each path, and a layer blob's real digests.

``Entry`` is the small record kept per path (kind, mode, owner, link target, content sha256);
``iter_entries`` reads them from any uncompressed tar stream (the found layer's and the expected
one's alike). A layer blob is decompressed by its magic bytes (gzip, zstd or plain tar) and
streamed, never held: ``hash_found_layer`` gives its blob digest and real diff_id,
``found_entries`` its entries.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from lockbuild.digest import PREFIX
from lockbuild.fsutil import HashingStream, sha256_stream
from lockbuild.oci.layercache import Layer
from lockbuild.verify.source import MAX_EXTENDED_HEADER, ImageSource

CHUNK = 1 << 20
MAX_NAME = 4096  # PATH_MAX


class TooLarge(OSError):
    """A layer (or an entry's header) is larger than anything the expected image holds: reading stops."""


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header reader that refuses extended headers (PAX, GNU long names) over a small size
    before reading them, and names over PATH_MAX: a hostile layer of huge PAX names costs nothing."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                         tarfile.GNUTYPE_LONGLINK) and self.size > MAX_EXTENDED_HEADER:
            raise TooLarge(f"a tar extended header of {self.size} bytes (the limit is {MAX_EXTENDED_HEADER})")
        info = super()._proc_member(tf)  # type: ignore[misc]
        if len(info.name) > MAX_NAME or len(info.linkname) > MAX_NAME:
            raise TooLarge(f"a tar entry name of {max(len(info.name), len(info.linkname))} characters")
        return info  # type: ignore[no-any-return]



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


def iter_entries(stream: BinaryIO, max_entries: int | None = None) -> Iterator[tuple[str, Entry]]:
    """Every entry of an uncompressed tar stream, content hashed in 1 MiB chunks. Headers are read
    with ``BoundedTarInfo``; more than ``max_entries`` entries stop the reading (``TooLarge``)."""
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar:  # type: ignore[call-overload]
        for n, m in enumerate(tar):
            if max_entries is not None and n >= max_entries:
                raise TooLarge(f"more than {max_entries} entries (the expected layer has fewer)")
            kind = _kind(m)
            sha, size = "", 0
            if kind == "file":
                hashed = sha256_stream(tar.extractfile(m))  # type: ignore[arg-type]
                sha, size = hashed.digest(), hashed.size
            yield norm(m.name), Entry(kind, m.mode & 0o7777, m.uid, m.gid,
                                       m.linkname if kind in ("symlink", "hardlink") else "", sha, size)


class _HashReader(HashingStream):
    """fsutil's hashing stream, read through; past ``limit`` bytes it stops with ``TooLarge`` (a
    blob larger than its descriptor, a tar larger than the expected one)."""

    def __init__(self, raw: Any, limit: int | None = None, what: str = "layer") -> None:
        super().__init__(raw)
        self.limit, self.what = limit, what

    def read(self, n: int = -1) -> bytes:
        if self.limit is not None:
            room = self.limit + 1 - self.size
            n = room if n is None or n < 0 else min(n, room)
            if n <= 0:
                raise TooLarge(f"the {self.what} is larger than the {self.limit} bytes expected")
        data = super().read(n)
        if self.limit is not None and self.size > self.limit:
            raise TooLarge(f"the {self.what} is larger than the {self.limit} bytes expected")
        return data

    def readable(self) -> bool:
        return True


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


def compression_of(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "tar"


class _Zstd:
    """zstd frames, decompressed with a bounded window; trailing bytes after the frame are an error
    (an engine might read them as another frame): the stream must end where the frame ends."""

    def __init__(self, raw: Any) -> None:
        import zstandard

        self.raw = raw
        self.r = zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(raw, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        import zstandard

        try:
            return bytes(self.r.read(n))
        except zstandard.ZstdError as e:
            raise OSError(f"zstd: {e}") from None


def _decompressed(raw: Any) -> Any:
    """The uncompressed tar stream of a layer blob (gzip, zstd or plain tar, by magic bytes)."""
    head = raw.read(4)
    peeked = _Peeked(head, raw)
    kind = compression_of(head)
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=peeked, mode="rb")  # type: ignore[call-overload]
    if kind == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError:  # pragma: no cover - only with zstd layers and no zstandard module
            raise OSError("zstd-compressed layer and the zstandard module is not installed") from None
        return _Zstd(peeked)
    return peeked


@dataclass
class FoundLayer:
    blob_digest: str  # sha256 of the bytes as stored (compressed)
    diff_id: str | None  # sha256 of the uncompressed tar; None: not decompressed (see hash_found_layer)
    blob_size: int = 0
    compression: str = "gzip"  # by magic bytes: gzip | zstd | tar
    tar_size: int | None = None


def hash_found_layer(src: ImageSource, i: int, known: Sequence[Layer] = (), *, tar_limit: int | None = None,
                     blob_limit: int | None = None) -> FoundLayer:
    """The layer's real digests. With ``known`` (MAC-checked records: blob digest -> diff_id, made
    when lockbuild itself compressed that tar, one per compressor, e.g. the zstd layout's and the
    gzip docker-archive's) the blob is only hashed: a blob hashing to a record's digest gets that
    record's diff_id, any other ``diff_id=None`` (the caller derives the expected layer, then calls
    again with its size as ``tar_limit``). Reading stops (``TooLarge``) past ``blob_limit``
    compressed or ``tar_limit`` uncompressed bytes."""
    if known:
        with src.open_layer(i) as raw:
            outer = _HashReader(raw, blob_limit, "layer blob")
            kind = compression_of(outer.read(4))
            outer.drain()
        blob = PREFIX + outer.h.hexdigest()
        for record in known:
            if blob == record.digest:
                return FoundLayer(blob, record.diff_id, outer.size, kind)
        if kind == "tar" and (tar_limit is None or outer.size <= tar_limit):
            return FoundLayer(blob, blob, outer.size, kind, outer.size)
        if tar_limit is None:
            return FoundLayer(blob, None, outer.size, kind)
    with src.open_layer(i) as raw:
        outer = _HashReader(raw, blob_limit, "layer blob")
        head = outer.read(4)
        inner = _HashReader(_decompressed(_Peeked(head, outer)), tar_limit, "uncompressed layer")
        inner.drain()
        outer.drain()
    return FoundLayer(PREFIX + outer.h.hexdigest(), PREFIX + inner.h.hexdigest(), outer.size, compression_of(head),
                      inner.size)


def blob_digest(src: ImageSource, i: int, *, blob_limit: int | None = None) -> str:
    """The digest of layer ``i``'s blob as stored (compressed bytes only, read at most ``blob_limit``)."""
    with src.open_layer(i) as raw:
        outer = _HashReader(raw, blob_limit, "layer blob")
        outer.drain()
    return PREFIX + outer.h.hexdigest()


def found_entries(src: ImageSource, i: int, *, tar_limit: int | None = None,
                  max_entries: int | None = None) -> Iterator[tuple[str, Entry]]:
    with src.open_layer(i) as raw:
        yield from iter_entries(_HashReader(_decompressed(raw), tar_limit, "uncompressed layer"),  # type: ignore[arg-type]
                                max_entries)

