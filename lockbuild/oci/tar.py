"""Deterministic layer tar: a staging directory in, one gzip blob in the cache out.

The recipe (docs/image-layout.md): byte-sorted POSIX paths (parents first, no duplicates), a
fresh TarInfo per entry (never ``gettarinfo``), uid/gid 0 with empty names, normalised modes,
one fixed mtime, PAX format, no xattrs. Hard links become independent regular files, so the
bytes depend on paths, modes and contents only, never on inode sharing in the staging tree.

One streaming pass computes both digests: the tar bytes are hashed (diff_id) on their way into
the compressor, whose output is hashed (digest) by the cache writer as it lands on disk. Memory
stays at a few MiB whatever the layer size.

The compressor is pinned with lockbuild, never the host's zlib (oci/compress.py); compression
runs strictly after ``write_tar``: the diff_id never depends on it. The Layer descriptor and the
layer cache's records live in oci/layercache.py.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache, HashingWriter
from lockbuild.oci.compress import compress_writer, compressor_name, media_type
from lockbuild.oci.layercache import Layer

# COMPRESSIONS, Layer, gzip_writer and layer_record are re-exported: lockbuild/cli.py, lockbuild/verify and
# benchmarks import them from here.
__all__ = ["Exclude", "Owners", "new_tarinfo", "open_tar", "write_layer", "write_tar"]

READ_SIZE = 1 << 20

Exclude = Callable[[str], bool]  # relative posix path -> skip it (and, for a dir, its subtree)
Owners = Mapping[str, tuple[int, int]]  # relative posix path -> (uid, gid); default (0, 0)


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
