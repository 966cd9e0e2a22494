"""Reading .deb files: the ar container, its compressed control/data tars, and text members.

``open_deb_tars`` gives (control tar, data tar) of a .deb, each decompressed (xz, gz, bz2, zst)
to a temporary file for random access; ``tar_text`` reads one text member. The ar container is
python-debian's ``debian.arfile``; its ``DebFile`` is not used: it reads each tar straight off
its compressed stream (zstd into memory), where the rootfs and dpkg steps need random access. No policy here: what
a member becomes in the rootfs is assemble/paths.py's and assemble/rootfs.py's business.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import IO, BinaryIO

from debian.arfile import ArError, ArFile

from lockbuild.errors import BuildError
from lockbuild.fsutil import CHUNK


def _decompress_stream(name: str, src: BinaryIO, out: BinaryIO, label: str) -> None:
    """Decompress an ar member (by its file-name suffix) into `out`."""
    if name.endswith(".zst"):
        proc = subprocess.run(["zstd", "-dc"], input=src.read(), capture_output=True)
        if proc.returncode != 0:
            raise BuildError(f"{label}: cannot decompress {name}",
                             hint="install zstd (`apt-get install zstd`)")
        out.write(proc.stdout)
        return
    stream: IO[bytes] | gzip.GzipFile
    if name.endswith(".xz"):
        stream = lzma.open(src)
    elif name.endswith(".gz"):
        stream = gzip.open(src)
    elif name.endswith(".bz2"):
        stream = bz2.open(src)
    else:
        stream = src
    while chunk := stream.read(CHUNK):
        out.write(chunk)


def open_deb_tars(deb_path: Path, label: str) -> tuple[tarfile.TarFile, tarfile.TarFile]:
    """(control tar, data tar), each decompressed to a temporary file for random access."""
    tars: dict[str, tarfile.TarFile] = {}
    with open(deb_path, "rb") as f:
        try:
            members = ArFile(fileobj=f, encoding="ascii", errors="replace").getmembers()
        except (ArError, OSError, ValueError) as e:
            raise BuildError(f"{label}: not a readable Debian package ({e})",
                             hint="the cached .deb is corrupt; delete it from the cache") from None
        for member in members:
            name = member.name
            kind = name.split(".", 1)[0]
            if kind in ("control", "data") and name.startswith(f"{kind}.tar"):
                tmp = tempfile.TemporaryFile()
                try:
                    _decompress_stream(name, io.BytesIO(member.read()), tmp, label)  # one read of the member
                    tmp.seek(0)
                    tars[kind] = tarfile.open(fileobj=tmp, mode="r:")
                except (OSError, EOFError, lzma.LZMAError, tarfile.TarError) as e:
                    tmp.close()
                    raise BuildError(f"{label}: cannot read {name}: {e}",
                                     hint="the .deb is corrupt; delete it from the cache") from None
    if set(tars) != {"control", "data"}:
        raise BuildError(f"{label}: a .deb needs control.tar.* and data.tar.* (found {sorted(tars)})")
    return tars["control"], tars["data"]


def tar_text(tar: tarfile.TarFile, name: str) -> bytes | None:
    """The bytes of member ``./name`` (or ``name``) of a control tar; None if it has none."""
    for candidate in (f"./{name}", name):
        try:
            member = tar.getmember(candidate)
        except KeyError:
            continue
        f = tar.extractfile(member)
        return f.read() if f else None
    return None
