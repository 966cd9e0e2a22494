"""Wheel members as byte streams for the layer tar: deflated members inflated by ISA-L.

zipfile inflates with the host's zlib and CRC-checks every byte: 3.1 s for TensorFlow's
1.27 GB of members here, against 1.2 s for ISA-L (PyPI ``isal``, already pinned for the
layer compressor) on the same raw deflate streams. Only the inflating is ours: zipfile still
reads the central directory and names (``ZipInfo``), and stored, encrypted or otherwise
compressed members still go through ``ZipFile.open``.

A member's local header is checked as zipfile checks it (signature, the same name as in the
central directory). The CRC is not computed: every member's bytes are hashed on their way into
the tar and must equal the wheel's RECORD sha256 (oci/tar.py), and a short or long stream is
refused there by size.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from lockbuild.errors import BuildError

READ = 1 << 20
_ZIP: Any = zipfile  # the local-header layout constants zipfile itself uses (not in its type stubs)
_HEADER = struct.Struct(_ZIP.structFileHeader)


class _Inflating:
    """read(n) returns exactly n bytes until the member ends (tarfile's copy loop relies on it)."""

    def __init__(self, fd: int, info: zipfile.ZipInfo, where: str) -> None:
        from isal import isal_zlib

        head = os.pread(fd, _HEADER.size, info.header_offset)
        fields = _HEADER.unpack(head) if len(head) == _HEADER.size else None
        if fields is None or fields[_ZIP._FH_SIGNATURE] != _ZIP.stringFileHeader:
            raise BuildError(f"{where}: bad local file header", hint="the wheel is corrupt")
        n, extra = fields[_ZIP._FH_FILENAME_LENGTH], fields[_ZIP._FH_EXTRA_FIELD_LENGTH]
        name = os.pread(fd, n, info.header_offset + _HEADER.size)
        encoding = "utf-8" if fields[_ZIP._FH_GENERAL_PURPOSE_FLAG_BITS] & 0x800 else "cp437"
        if name.decode(encoding, errors="replace") != info.orig_filename:
            raise BuildError(f"{where}: the local header names another file than the zip directory",
                             hint="the wheel is corrupt or crafted; remove it from the lock")
        self.fd, self.pos, self.left = fd, info.header_offset + _HEADER.size + n + extra, info.compress_size
        self.d, self.where = isal_zlib.decompressobj(-15), where
        self.error = cast(type[Exception], isal_zlib.error)  # its stubs call it an instance
        self.tail = b""

    def read(self, n: int = -1) -> bytes:
        want = n if n >= 0 else 1 << 62
        out = []
        while want > 0 and not self.d.eof:
            if not self.tail:
                if not self.left:
                    break  # truncated stream: a short read, refused by size in the tar writer
                self.tail = os.pread(self.fd, min(self.left, READ), self.pos)
                if not self.tail:
                    break
                self.pos += len(self.tail)
                self.left -= len(self.tail)
            try:
                chunk = self.d.decompress(self.tail, want)
            except self.error as e:
                raise BuildError(f"{self.where}: corrupt compressed data ({e})",
                                 hint="the wheel is corrupt; its sha256 in the lock can no longer match") from None
            self.tail = self.d.unconsumed_tail
            out.append(chunk)
            want -= len(chunk)
        return b"".join(out)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Inflating:
        return self

    def __exit__(self, *_: object) -> None:
        pass


class WheelReader:
    """A verified wheel open once (``zf`` for its directory, one descriptor for pread by any thread),
    handing out each member's bytes when the layer is written. ``close()`` when the layer is done."""

    def __init__(self, zf: zipfile.ZipFile, path: Path) -> None:
        self.zf = zf
        self.fd = os.open(path, os.O_RDONLY)

    def opener(self, info: zipfile.ZipInfo, where: str) -> Callable[[], BinaryIO]:
        if info.compress_type == zipfile.ZIP_DEFLATED and not info.flag_bits & 0x1:
            return lambda: cast(BinaryIO, _Inflating(self.fd, info, where))
        return lambda: cast(BinaryIO, self.zf.open(info))

    def close(self) -> None:
        os.close(self.fd)
