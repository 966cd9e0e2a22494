"""Layer compressors pinned with lockbuild, never the host's zlib. Three encoders, each a PyPI wheel
bundling its C library: zstd from libzstd (``zstandard``; the default for new locks), gzip from
zlib-ng (``zlib-ng``; new gzip locks and the gzip layers of ``--docker-archive``/``--load``), and
gzip from ISA-L (``isal``; built when a lock names it, as locks written before zlib-ng did). zstd
and zlib-ng write the same bytes on every CPU tried (x86-64 without SSE4.2 up to AVX-512, arm64);
ISA-L's bytes depend on its CPU code path (see ``CANARY_SHA256``).

Which encoder a lock pins and selects (``COMPRESSIONS``, ``DEFAULT_CODEC``, ``codec_for``,
``compressor_version``) is lock-time policy in lockbuild/lockfile/codec.py, imported here. This
module holds the OCI media types, what made a layer's bytes (``compressor_name``, recorded per
layer), the canary that refuses a CPU on
which an encoder would write other bytes than the reference hosts, and the writers: a chunked
compressor that feeds the library fixed-size calls (so the bytes depend on the tar alone),
``gzip_writer`` (fixed gzip header) and ``zstd_writer`` (fixed frame settings).
"""

from __future__ import annotations

import functools
import hashlib
import platform
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, Protocol

from lockbuild.errors import BuildError
from lockbuild.lockfile.codec import (  # noqa: F401  (re-exported: which compressor a lock pins is lock-time policy)
    COMPRESSIONS,
    DEFAULT_CODEC,
    DEFAULT_COMPRESSION,
    DEFAULT_ENCODER,
    ENCODERS,
    codec_for,
    compressor_version,
    encoder_module,
    pinned_encoder,
)

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"


def compressor_name(level: int, compression: str = "gzip", encoder: str | None = None) -> str:
    """What made the compressed bytes, recorded per layer: the pinned library, never the host's zlib."""
    return f"{compression} level {level} ({compressor_version(compression, encoder)})"


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

    def __init__(self, sink: Sink, compressobj, *, header: bytes = b"", gzip_trailer: bool = False,  # type: ignore[no-untyped-def]
                 crc32=None) -> None:
        self._sink, self._z, self._gzip = sink, compressobj, gzip_trailer
        self._crc32 = crc32 or zlib.crc32
        self._buf = bytearray()
        self._crc, self._size = 0, 0
        self._closed = False
        if header:
            sink.write(header)

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._gzip:
            self._crc = self._crc32(data, self._crc)
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


# ISA-L picks its deflate code at run time by CPU (igzip_multibinary.asm, plain CPUID: no knob forces
# one path). Its SSE4.2, AVX, AVX2 and AVX-512 paths give identical bytes (tests/test_compression.py
# runs them under qemu-x86_64), but the portable C path, taken on x86-64 CPUs without SSE4.2 (Core 2,
# QEMU's default "qemu64" VM model), hashes 3-byte prefixes by multiplication instead of CRC32C
# (igzip/huffman.h compute_hash), finds other matches and so writes other, equally valid deflate
# streams; its arm64 code (igzip/aarch64) writes yet others. zlib-ng and libzstd gave one output on
# every CPU tried. A known input's output, checked before the first layer an encoder compresses,
# catches a CPU on which an encoder writes other bytes than the reference hosts (ISA-L off x86-64-v2,
# and anything we have not seen, e.g. another architecture), so such a host refuses instead of
# building silently different layers.
# (encoder, version) -> sha256 of the raw level-1 deflate (zstd: level-1 and level-3 frames) of canary_input()
CANARY_SHA256 = {
    ("isal", "1.9.1"): "be2ec4707eca709dd9b834f639865cea1481e686330b208b276db9d33e3470d3",
    ("zlib-ng", "1.1.0"): "b2eb15717303eb75b5475f611c4ac8dabceff02455541f298f0a0a397cb46304",
    ("zstandard", "0.25.0"): "5cb2b9f91bae06aabfb5cbb628dff2216766df89e4d9dbe957ef67d14dd9cb40",
}


def canary_input() -> bytes:
    """100 KB of text with many repeats of varying length: enough matches to tell hash functions apart."""
    return b"".join(b"%d:%s\n" % (i, hashlib.sha256(b"%d" % (i // 3)).hexdigest()[:i % 40].encode())
                    for i in range(4000))


def _canary_output(encoder: str) -> bytes:
    z = encoder_module(encoder)
    if encoder == "zstandard":  # the levels lockbuild uses: 1 (new locks) and 3 (older zstd locks)
        return _zstd_params(z, 1).compress(canary_input()) + _zstd_params(z, 3).compress(canary_input())
    c = z.compressobj(1, z.DEFLATED, -15, z.DEF_MEM_LEVEL, z.Z_DEFAULT_STRATEGY)
    return c.compress(canary_input()) + c.flush()


def _version(encoder: str) -> str:
    return compressor_version(ENCODERS[encoder], encoder).split(" ")[1]


@functools.cache
def check_code_path(encoder: str) -> str:
    """The canary output's sha256 when it is the reference one; a BuildError when on this CPU the
    encoder writes other bytes than the reference hosts (failures are not cached: every build refuses)."""
    version = _version(encoder)
    got = hashlib.sha256(_canary_output(encoder)).hexdigest()
    want = CANARY_SHA256.get((encoder, version))
    if want is None:
        raise BuildError(f"no reference output for {encoder} {version} (lockbuild pins "
                         f"{', '.join(f'{e} {v}' for e, v in CANARY_SHA256 if e == encoder)})",
                         hint="reinstall lockbuild with its pinned dependencies")
    if got != want:
        if encoder == "isal":
            raise BuildError(
                f"on this CPU isal {version} compresses differently from the reference hosts (canary sha256 "
                f"{got[:12]}, expected {want[:12]}): the gzip layer digests this lock pins (compressor "
                f"isal {version}) can only be reproduced on an x86-64 CPU with SSE4.2",
                hint="build this lock on an x86-64-v2 CPU (in a VM, pass the host CPU model through), or re-run "
                     "`lockbuild lock` with this lockbuild: new locks pin zstd (or zlib-ng for gzip), whose bytes "
                     "are the same on every CPU (a new image digest)")
        raise BuildError(f"on this CPU {encoder} {version} compresses differently from the reference hosts "
                         f"(canary sha256 {got[:12]}, expected {want[:12]}): layer digests would not be reproducible",
                         hint=f"please report this CPU ({platform.machine()}) to lockbuild; meanwhile build on "
                              "an x86-64 or arm64 host")
    return got


def gzip_writer(sink: Sink, level: int, encoder: str = "zlib-ng") -> ChunkedCompressor:
    """Raw deflate from ``encoder`` (zlib-ng or ISA-L) in a gzip member with a fixed header (no name,
    mtime 0, OS 255), after checking that this CPU makes the encoder write the reference bytes."""
    pinned_encoder("gzip", encoder)
    check_code_path(encoder)
    z = encoder_module(encoder)
    return ChunkedCompressor(sink, z.compressobj(level, z.DEFLATED, -15, z.DEF_MEM_LEVEL, z.Z_DEFAULT_STRATEGY),
                             header=GZIP_HEADER, gzip_trailer=True, crc32=z.crc32)


def _zstd_params(z, level: int):  # type: ignore[no-untyped-def]
    return z.ZstdCompressor(level=level, write_checksum=False, write_content_size=False,
                            write_dict_id=False, threads=0)


def zstd_writer(sink: Sink, level: int) -> ChunkedCompressor:
    """libzstd at a fixed level, one thread, no content size or checksum in the frame header, so
    the bytes depend only on the tar and the pinned library version."""
    check_code_path("zstandard")
    return ChunkedCompressor(sink, _zstd_params(encoder_module("zstandard"), level).compressobj())


@contextmanager
def compress_writer(sink: Sink, compression: str = "gzip", level: int = 1,
                    encoder: str | None = None) -> Iterator[BinaryIO]:
    """The compressing writer for ``compression`` into ``sink`` (``encoder``: the library, default the
    one new locks pin); flushed and finished on exit."""
    enc = pinned_encoder(compression, encoder)
    w = zstd_writer(sink, level) if compression == "zstd" else gzip_writer(sink, level, enc)
    with w:
        yield w  # type: ignore[misc]
