"""Deterministic layer tar: a staging directory in, one gzip blob in the cache out.

The recipe (docs/image-layout.md): byte-sorted POSIX paths (parents first, no duplicates), a
fresh TarInfo per entry (never ``gettarinfo``), uid/gid 0 with empty names, normalised modes,
one fixed mtime, PAX format, no xattrs. Hard links become independent regular files, so the
bytes depend on paths, modes and contents only, never on inode sharing in the staging tree.

One streaming pass computes both digests: the tar bytes are hashed (diff_id) on their way into
the compressor, whose output is hashed (digest) by the cache writer as it lands on disk. Memory
stays at a few MiB whatever the layer size.

The compressor is pinned with lockbuild, never the host's zlib: gzip from ISA-L (PyPI ``isal``,
whose wheel bundles the library) or zstd from libzstd (PyPI ``zstandard``, bundled likewise).
Compression runs strictly after ``write_tar``: the diff_id never depends on it.
"""

from __future__ import annotations

import os
import stat
import struct
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache, HashingWriter

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
COMPRESSIONS = ("gzip", "zstd")
ZSTD_LEVEL = 3
READ_SIZE = 1 << 20
META_NAMESPACE = "layers"

Exclude = Callable[[str], bool]  # relative posix path -> skip it (and, for a dir, its subtree)
Owners = Mapping[str, tuple[int, int]]  # relative posix path -> (uid, gid); default (0, 0)


def _module(compression: str):  # type: ignore[no-untyped-def]
    """The pinned compressor module: isal (gzip) or zstandard (zstd); a clear error if absent."""
    try:
        if compression == "gzip":
            from isal import isal_zlib

            return isal_zlib
        if compression == "zstd":
            import zstandard

            return zstandard
    except ImportError as e:
        raise BuildError(f"the pinned {compression} compressor is not installed ({e.name})",
                         hint="reinstall lockbuild with its dependencies (pip install lockbuild)") from None
    raise BuildError(f"unknown layer compression {compression!r}", hint=f"use one of {', '.join(COMPRESSIONS)}")


def compressor_version(compression: str = "gzip") -> str:
    """Name and version of the pinned library that makes the compressed bytes, e.g. ``isal 1.9.1``."""
    if compression == "zstd":
        z = _module("zstd")
        return f"zstandard {z.__version__} (libzstd {'.'.join(map(str, z.ZSTD_VERSION))})"
    _module("gzip")
    import isal

    return f"isal {isal.__version__}"


def compressor_name(level: int, compression: str = "gzip") -> str:
    """What made the compressed bytes, recorded per layer: the pinned library, never the host's zlib."""
    if compression == "zstd":
        return f"zstd level {ZSTD_LEVEL} ({compressor_version('zstd')})"
    return f"gzip level {level} ({compressor_version('gzip')})"


def media_type(compression: str) -> str:
    return ZSTD_LAYER_MEDIA_TYPE if compression == "zstd" else LAYER_MEDIA_TYPE


@dataclass(frozen=True)
class Layer:
    """One layer blob in the cache. ``digest`` names the gzip bytes, ``diff_id`` the tar."""

    digest: str  # sha256:<hex> of the compressed blob
    diff_id: str  # sha256:<hex> of the uncompressed tar: the reproducibility guarantee
    size: int  # compressed bytes
    media_type: str = LAYER_MEDIA_TYPE
    compressor: str = ""

    def path(self, cache: Cache) -> Path:
        return cache.path(self.digest)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Layer:
        return cls(
            digest=str(data["digest"]),
            diff_id=str(data["diff_id"]),
            size=int(str(data["size"])),
            media_type=str(data.get("media_type", LAYER_MEDIA_TYPE)),
            compressor=str(data.get("compressor", "")),
        )


# -- walking the staging tree ------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    rel: str  # posix path relative to the root, no leading "./", no trailing "/"
    path: Path
    st: os.stat_result


def _walk(root: Path, exclude: Exclude | None) -> list[_Entry]:
    """Every entry below root (not root itself), sorted by the bytes of the full path.

    Byte order of full paths puts a parent before its children ("a" < "a/..."), but may put a
    sibling such as "a-b" between "a" and "a/b"; that is fine for extraction and still a
    single total order.
    """
    entries: list[_Entry] = []
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            for de in it:
                rel = f"{prefix}{de.name}"
                if exclude is not None and exclude(rel):
                    continue
                st = de.stat(follow_symlinks=False)
                entries.append(_Entry(rel, Path(de.path), st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((Path(de.path), rel + "/"))
    entries.sort(key=lambda e: os.fsencode(e.rel))
    return entries


# -- one tar header per entry --------------------------------------------------------------------


def _dir_mode(st_mode: int) -> int:
    sticky_world_writable = st_mode & stat.S_ISVTX and st_mode & stat.S_IWOTH
    return 0o1777 if sticky_world_writable else 0o755


def _file_mode(st_mode: int) -> int:
    return 0o755 if st_mode & 0o111 else 0o644


def new_tarinfo(name: str, kind: bytes, *, mode: int, mtime: int, size: int = 0, linkname: str = "",
                owner: tuple[int, int] = (0, 0)) -> tarfile.TarInfo:
    """A fresh header carrying only what the recipe allows (no names, no xattrs, one mtime)."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, mtime, size, linkname
    info.uid, info.gid = owner
    info.uname = info.gname = ""
    return info


def _tarinfo(entry: _Entry, *, mtime: int, owners: Owners | None) -> tarfile.TarInfo:
    """The header for one staged entry; raises for special files."""
    owner = owners.get(entry.rel, (0, 0)) if owners else (0, 0)
    mode = entry.st.st_mode
    if stat.S_ISDIR(mode):
        return new_tarinfo(entry.rel, tarfile.DIRTYPE, mode=_dir_mode(mode), mtime=mtime, owner=owner)
    if stat.S_ISREG(mode):
        return new_tarinfo(entry.rel, tarfile.REGTYPE, mode=_file_mode(mode), mtime=mtime,
                           size=entry.st.st_size, owner=owner)
    if stat.S_ISLNK(mode):
        return new_tarinfo(entry.rel, tarfile.SYMTYPE, mode=0o777, mtime=mtime,
                           linkname=os.readlink(entry.path), owner=owner)
    raise BuildError(
        f"cannot put special file {entry.rel!r} into a layer ({_kind(mode)})",
        hint="image trees may hold only files, directories and symlinks; "
        "remove it from the staging tree (devices come from the container runtime)",
        where=str(entry.path),
    )


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return f"mode {oct(mode)}"


# -- streaming: tar -> sha256 (diff_id) -> gzip -> sha256 (digest) -> cache ---------------------


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


def _add(tar: tarfile.TarFile, entry: _Entry, info: tarfile.TarInfo) -> None:
    if info.type != tarfile.REGTYPE:
        tar.addfile(info)
        return
    try:
        f = open(entry.path, "rb")
    except PermissionError:
        raise BuildError(f"cannot read {entry.rel!r} from the staging tree",
                         hint="build as root, or make the staged files readable") from None
    with f:
        if os.fstat(f.fileno()).st_size != info.size:
            raise BuildError(f"{entry.rel!r} changed size while the layer was written",
                             hint="nothing may write into the staging tree during a build")
        tar.addfile(info, f)


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS 255
CHUNK = 1 << 20  # the compressor always sees exactly this many bytes per call (the last call: the rest)


class ChunkedCompressor:
    """Feeds a streaming compressor fixed-size chunks, whatever sizes the tar writer uses.

    ISA-L's deflate output depends on how the input is split into calls, and the split the tar
    writer produces differs between Python versions (3.12's GzipFile added a write buffer), so the
    compressed bytes would differ between hosts with the same library. Chunking here, not in
    gzip.GzipFile, makes the call sequence a function of the tar bytes alone. Single-threaded
    (layers run in parallel instead), so thread scheduling never matters either.
    """

    def __init__(self, sink: Sink, compressobj, *, header: bytes = b"", gzip_trailer: bool = False) -> None:  # type: ignore[no-untyped-def]
        self._sink, self._z, self._gzip = sink, compressobj, gzip_trailer
        self._buf = bytearray()
        self._crc, self._size = 0, 0
        self._closed = False
        if header:
            sink.write(header)

    def _feed(self, data: bytes | bytearray) -> None:
        if self._gzip:
            self._crc = _module("gzip").crc32(data, self._crc)
            self._size += len(data)
        out = self._z.compress(data)
        if out:
            self._sink.write(out)

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= CHUNK:
            view = memoryview(self._buf)
            full = len(self._buf) - len(self._buf) % CHUNK
            for i in range(0, full, CHUNK):
                self._feed(view[i:i + CHUNK].tobytes())
            view.release()
            del self._buf[:full]
        return len(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._buf:
            self._feed(bytes(self._buf))
        self._sink.write(self._z.flush())
        if self._gzip:
            self._sink.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))

    def __enter__(self) -> ChunkedCompressor:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()


def gzip_writer(sink: Sink, level: int) -> ChunkedCompressor:
    """ISA-L raw deflate in a gzip member with a fixed header (no name, mtime 0, OS 255)."""
    z = _module("gzip")
    return ChunkedCompressor(sink, z.compressobj(level, z.DEFLATED, -15, z.DEF_MEM_LEVEL, z.Z_DEFAULT_STRATEGY),
                             header=GZIP_HEADER, gzip_trailer=True)


def zstd_writer(sink: Sink) -> ChunkedCompressor:
    """libzstd at a fixed level, one thread, no content size or checksum in the frame header, so
    the bytes depend only on the tar and the pinned library version."""
    z = _module("zstd")
    params = z.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=False,
                              write_dict_id=False, threads=0)
    return ChunkedCompressor(sink, params.compressobj())


@contextmanager
def compress_writer(sink: Sink, compression: str = "gzip", level: int = 1) -> Iterator[BinaryIO]:
    """The compressing writer for ``compression`` into ``sink``; flushed and finished on exit."""
    w = zstd_writer(sink) if compression == "zstd" else gzip_writer(sink, level)
    with w:
        yield w  # type: ignore[misc]


def open_tar(out: BinaryIO) -> tarfile.TarFile:
    """A tar writer with the recipe's fixed settings (PAX, UTF-8 names, 1 MiB copies)."""
    return tarfile.TarFile(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                           errors="surrogateescape", copybufsize=READ_SIZE)


def write_tar(out: BinaryIO, root: Path, *, mtime: int, exclude: Exclude | None,
              owners: Owners | None) -> None:
    """The uncompressed layer tar of the tree below ``root``: its sha256 is the diff_id."""
    with open_tar(out) as tar:
        for entry in _walk(root, exclude):
            _add(tar, entry, _tarinfo(entry, mtime=mtime, owners=owners))


def write_layer(cache: Cache, root: Path, *, mtime: int, level: int = 1,
                exclude: Exclude | None = None, owners: Owners | None = None,
                compression: str = "gzip") -> Layer:
    """Tar + compress (gzip or zstd) the tree below ``root`` into the cache; return its descriptor.

    ``mtime`` is the one timestamp of every entry (the lock's SOURCE_DATE_EPOCH; not 0, which
    breaks tools that treat epoch 0 as "unset"). ``owners`` overrides uid/gid for a few paths
    (e.g. a writable home for the runtime user); everything else is 0:0.
    """
    if not root.is_dir():
        raise BuildError(f"layer staging directory {root} does not exist",
                         hint="this is a lockbuild bug: the builder must stage the tree first")
    name = compressor_name(level, compression)
    with cache.writer() as blob, compress_writer(blob, compression, level) as z:
        tee = HashingWriter(z)
        write_tar(tee, root, mtime=mtime, exclude=exclude, owners=owners)  # type: ignore[arg-type]
    return Layer(digest=f"sha256:{blob.hexdigest()}", diff_id=f"sha256:{tee.h.hexdigest()}",
                 size=blob.size, media_type=media_type(compression), compressor=name)


# -- layer cache: skip re-tarring when the builder's input key is unchanged ---------------------


def _meta_key(key: str) -> str:
    safe = key.replace("sha256:", "")
    if not safe or "/" in safe or safe.startswith("."):
        raise BuildError(f"bad layer cache key {key!r}", hint="use a digest of the layer's inputs")
    return safe


# A layer record says "this key's layer is blob <digest>, whose tar is <diff_id>". Whoever can
# write the cache dir could point it at another well-formed blob (digests recomputed), so every
# record carries an HMAC-SHA256 made with a key that lives OUTSIDE the cache dir
# ($LOCKBUILD_KEY_FILE, default $XDG_CONFIG_HOME/lockbuild/cache.key, created 0600 on first use).
# A record without a valid MAC is never reused (the layer is rebuilt) and never trusted by verify.
MAC_VERSION = "lockbuild-layer-record-1"


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


def record_mac(key: str, layer: Layer) -> str | None:
    import hashlib
    import hmac
    import json

    secret = mac_key()
    if secret is None:
        return None
    msg = json.dumps([MAC_VERSION, key, layer.to_dict()], sort_keys=True).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def layer_record(cache: Cache, key: str) -> tuple[Layer | None, str | None]:
    """(layer, None) for a record whose MAC checks out; (None, why) for a record present but not
    trustworthy (forged, edited, or made without a key); (None, None) when there is none."""
    import hmac

    record = cache.meta_get(META_NAMESPACE, _meta_key(key))
    if record is None:
        return None, None
    try:
        layer = Layer.from_dict(record)
    except (KeyError, ValueError, TypeError):
        return None, "the record is malformed"
    want = record_mac(key, layer)
    got = record.get("mac")
    if want is None:
        return None, f"no record key at {key_file()} (cannot check the record)"
    if not isinstance(got, str) or not hmac.compare_digest(want, got):
        return None, "its MAC does not match (edited or forged record)"
    return layer, None


def cached_layer(cache: Cache, key: str) -> Layer | None:
    """The layer remembered for ``key``: only a record with a valid MAC whose blob is still in the
    cache (the blob is re-hashed by the caller)."""
    layer, _why = layer_record(cache, key)
    return layer if layer is not None and cache.has(layer.digest) else None


def remember_layer(cache: Cache, key: str, layer: Layer) -> None:
    record = layer.to_dict()
    mac = record_mac(key, layer)
    if mac is not None:
        record["mac"] = mac
    cache.meta_put(META_NAMESPACE, _meta_key(key), record)
