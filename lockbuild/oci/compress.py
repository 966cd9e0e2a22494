"""Layer compressors pinned with lockbuild, never the host's zlib: gzip from ISA-L (PyPI ``isal``,
whose wheel bundles the library) or zstd from libzstd (PyPI ``zstandard``, bundled likewise).

Holds the compression names (``COMPRESSIONS``) and their OCI media types, what made the bytes
(``compressor_name``/``compressor_version``, recorded per layer and in the lock), and the
writers: a chunked compressor that feeds the library fixed-size calls (so the bytes depend on
the tar alone), ``gzip_writer`` (fixed gzip header) and ``zstd_writer`` (fixed frame settings).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, Protocol

from lockbuild.errors import BuildError

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
COMPRESSIONS = ("gzip", "zstd")
ZSTD_LEVEL = 3


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


class Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, mtime 0, OS 255
CHUNK = 1 << 20  # the compressor always sees exactly this many bytes per call (the last call: the rest)


class ChunkedCompressor:
    """Feeds a streaming compressor fixed-size chunks, whatever sizes the tar writer uses.

    ISA-L's deflate output depends on how the input is split into calls, and the split the tar
    writer produces differs between Python versions (3.12's GzipFile added a write buffer), so the
    compressed bytes would differ between hosts with the same library. Chunking here, not in
    gzip.GzipFile, makes the call sequence a function of the tar bytes alone. One thread feeds it
    (oci/tar.py hands it the tar bytes in order), so thread scheduling never matters either.
    """

    def __init__(self, sink: Sink, compressobj, *, header: bytes = b"", gzip_trailer: bool = False) -> None:  # type: ignore[no-untyped-def]
        self._sink, self._z, self._gzip = sink, compressobj, gzip_trailer
        self._buf = bytearray()
        self._crc, self._size = 0, 0
        self._closed = False
        if header:
            sink.write(header)

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._gzip:
            self._crc = _module("gzip").crc32(data, self._crc)
            self._size += len(data)
        out = self._z.compress(data)
        if out:
            self._sink.write(out)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        if self._buf:  # complete the pending chunk first
            take = CHUNK - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) < CHUNK:
                return len(data)
            self._feed(self._buf)
            self._buf = bytearray()
        while len(view) >= CHUNK:  # whole chunks straight from the caller's buffer, no copy
            self._feed(view[:CHUNK])
            view = view[CHUNK:]
        if view:
            self._buf += view
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


# ISA-L picks its deflate code at run time by CPU (igzip_multibinary.asm). Its SSE4.2, AVX, AVX2 and
# AVX-512 paths give identical bytes (tests/test_compression.py runs them under qemu-x86_64), but the
# portable C path, taken on x86-64 CPUs without SSE4.2 (Core 2, QEMU's default "qemu64" VM model),
# hashes 3-byte prefixes by multiplication instead of CRC32C (igzip/huffman.h compute_hash), finds
# other matches and so writes other, equally valid deflate streams. A known input's output, checked
# before the first layer is compressed, catches that path (and any other we have not seen, e.g. on
# another architecture) so such a host refuses instead of building silently different layers.
CANARY_SHA256 = {  # isal version -> sha256 of the raw level-1 deflate of canary_input()
    "1.9.1": "be2ec4707eca709dd9b834f639865cea1481e686330b208b276db9d33e3470d3",
}


def canary_input() -> bytes:
    """100 KB of text with many repeats of varying length: enough matches to tell hash functions apart."""
    return b"".join(b"%d:%s\n" % (i, hashlib.sha256(b"%d" % (i // 3)).hexdigest()[:i % 40].encode())
                    for i in range(4000))


@functools.lru_cache(maxsize=1)
def check_gzip_code_path() -> str:
    """The canary output's sha256 when it is the reference one; a BuildError when this CPU makes ISA-L
    write other bytes than the reference hosts (failures are not cached: every build refuses)."""
    z = _module("gzip")
    import isal

    c = z.compressobj(1, z.DEFLATED, -15, z.DEF_MEM_LEVEL, z.Z_DEFAULT_STRATEGY)
    got = hashlib.sha256(c.compress(canary_input()) + c.flush()).hexdigest()
    want = CANARY_SHA256.get(isal.__version__)
    if want is None:
        raise BuildError(f"no reference gzip output for isal {isal.__version__} (lockbuild pins isal "
                         f"{', '.join(CANARY_SHA256)})", hint="reinstall lockbuild with its pinned dependencies")
    if got != want:
        raise BuildError(f"on this CPU isal {isal.__version__} compresses differently from the reference hosts "
                         f"(canary sha256 {got[:12]}, expected {want[:12]}): gzip layer digests would not be "
                         "reproducible", hint="build on an x86-64 CPU with SSE4.2 (x86-64-v2; in a VM, pass the "
                         'host CPU model through), or set [image] compression = "zstd" for --oci/--push')
    return got


def gzip_writer(sink: Sink, level: int) -> ChunkedCompressor:
    """ISA-L raw deflate in a gzip member with a fixed header (no name, mtime 0, OS 255), after checking
    that this CPU's ISA-L code path writes the reference bytes (``check_gzip_code_path``)."""
    check_gzip_code_path()
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
