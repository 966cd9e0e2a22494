"""Deterministic layer tar: a tree in, one compressed blob in the cache out.

A tree is either a staging directory or a list of ``Node`` (path, kind, mode, size, and how to
open its bytes): wheel layers are streamed from the wheels' zip members and in-memory metadata
straight into the tar, with no staging files (assemble/wheels.py), while the Debian layer is
staged on disk and walked here. Both become the same sorted ``Node`` list before one writer
tars them.

The recipe (docs/image-layout.md): byte-sorted POSIX paths (parents first, no duplicates), a
fresh TarInfo per entry (never ``gettarinfo``), uid/gid 0 with empty names, normalised modes,
one fixed mtime, PAX format, no xattrs. Hard links become independent regular files, so the
bytes depend on paths, modes and contents only, never on inode sharing in the staging tree.

One streaming pass computes both digests: the tar bytes are hashed (diff_id) on their way into
the compressor, whose output is hashed (digest) by the cache writer as it lands on disk. The
tar side (inflating wheel members, their RECORD hashes) and the compressing side run on two
threads joined by a short queue of 1 MiB pieces, so one big layer uses two cores; the
compressor still sees one ordered byte stream. Memory stays at a few MiB whatever the layer size.

The compressor is pinned with lockbuild, never the host's zlib (oci/compress.py); compression
runs strictly after ``write_tar``: the diff_id never depends on it. The Layer descriptor and the
layer cache's records live in oci/layercache.py.
"""

from __future__ import annotations

import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import HashingStream
from lockbuild.oci.compress import compress_writer, compressor_name, media_type
from lockbuild.oci.layercache import Layer

# COMPRESSIONS, Layer, gzip_writer and layer_record are re-exported: lockbuild/cli.py, lockbuild/verify and
# benchmarks import them from here.
__all__ = ["Exclude", "Node", "Owners", "Tree", "new_tarinfo", "open_tar", "tree_nodes", "write_layer", "write_tar"]

READ_SIZE = 1 << 20

Exclude = Callable[[str], bool]  # relative posix path -> skip it (and, for a dir, its subtree)
Owners = Mapping[str, tuple[int, int]]  # relative posix path -> (uid, gid); default (0, 0)


# -- the tree: nodes, from a staging directory or built in memory --------------------------------


@dataclass(frozen=True)
class Node:
    """One layer entry. ``rel``: posix path below the layer root (no "./", no trailing "/");
    ``kind``: tarfile REGTYPE/DIRTYPE/SYMTYPE; ``mode``: the permission bits as written.
    A regular file's bytes come from ``open()``; when ``record_hash`` (``sha256=<urlsafe b64>``,
    RECORD style) is set, the bytes are hashed on their way into the tar and must match it."""

    rel: str
    kind: bytes
    mode: int
    size: int = 0
    linkname: str = ""
    open: Callable[[], BinaryIO] | None = None
    record_hash: str | None = None
    where: str = ""  # what to name in an error: the staging path, or "wheel X member Y"


Tree = Path | Sequence[Node]  # a staging directory, or nodes (sorted by write_tar)


def _dir_mode(st_mode: int) -> int:
    sticky_world_writable = st_mode & stat.S_ISVTX and st_mode & stat.S_IWOTH
    return 0o1777 if sticky_world_writable else 0o755


def _file_mode(st_mode: int) -> int:
    return 0o755 if st_mode & 0o111 else 0o644


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return f"mode {oct(mode)}"


def _opener(path: str, rel: str, size: int) -> Callable[[], BinaryIO]:
    def open_staged() -> BinaryIO:
        try:
            f = open(path, "rb")
        except PermissionError:
            raise BuildError(f"cannot read {rel!r} from the staging tree",
                             hint="build as root, or make the staged files readable") from None
        if os.fstat(f.fileno()).st_size != size:
            f.close()
            raise BuildError(f"{rel!r} changed size while the layer was written",
                             hint="nothing may write into the staging tree during a build")
        return f
    return open_staged


def _node(rel: str, path: str, st: os.stat_result) -> Node:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return Node(rel, tarfile.DIRTYPE, _dir_mode(mode), where=path)
    if stat.S_ISREG(mode):
        return Node(rel, tarfile.REGTYPE, _file_mode(mode), st.st_size, open=_opener(path, rel, st.st_size),
                    where=path)
    if stat.S_ISLNK(mode):
        return Node(rel, tarfile.SYMTYPE, 0o777, linkname=os.readlink(path), where=path)
    raise BuildError(
        f"cannot put special file {rel!r} into a layer ({_kind(mode)})",
        hint="image trees may hold only files, directories and symlinks; "
        "remove it from the staging tree (devices come from the container runtime)",
        where=path,
    )


def tree_nodes(root: Path, exclude: Exclude | None = None) -> list[Node]:
    """Every entry below a staging directory ``root`` (not root itself), as nodes."""
    nodes: list[Node] = []
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            for de in it:
                rel = f"{prefix}{de.name}"
                if exclude is not None and exclude(rel):
                    continue
                st = de.stat(follow_symlinks=False)
                nodes.append(_node(rel, de.path, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((Path(de.path), rel + "/"))
    return nodes


def _sorted(nodes: Sequence[Node]) -> list[Node]:
    """Byte order of full paths: a parent before its children ("a" < "a/..."), though a sibling
    such as "a-b" may fall between "a" and "a/b"; fine for extraction, and one total order.
    Two nodes with one path are a bug of the tree's maker."""
    out = sorted(nodes, key=lambda n: os.fsencode(n.rel))
    for a, b in zip(out, out[1:], strict=False):
        if a.rel == b.rel:
            raise BuildError(f"two entries for {a.rel!r} in one layer ({a.where or '?'}; {b.where or '?'})")
    return out


# -- one tar header per entry --------------------------------------------------------------------


def new_tarinfo(name: str, kind: bytes, *, mode: int, mtime: int, size: int = 0, linkname: str = "",
                owner: tuple[int, int] = (0, 0)) -> tarfile.TarInfo:
    """A fresh header carrying only what the recipe allows (no names, no xattrs, one mtime)."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, mtime, size, linkname
    info.uid, info.gid = owner
    info.uname = info.gname = ""
    return info


# -- streaming: tar -> sha256 (diff_id) -> compressor -> sha256 (digest) -> cache -----------------


def _add(tar: tarfile.TarFile, node: Node, mtime: int, owners: Owners | None) -> None:
    owner = owners.get(node.rel, (0, 0)) if owners else (0, 0)
    info = new_tarinfo(node.rel, node.kind, mode=node.mode, mtime=mtime, size=node.size, linkname=node.linkname,
                       owner=owner)
    if node.kind != tarfile.REGTYPE:
        tar.addfile(info)
        return
    assert node.open is not None, node.rel
    with node.open() as f:
        src: BinaryIO | HashingStream = HashingStream(f) if node.record_hash else f
        try:
            tar.addfile(info, src)  # type: ignore[arg-type]
        except OSError as e:
            if e.errno is not None:
                raise
            raise BuildError(f"{node.rel!r} is shorter than its recorded size {node.size} ({node.where})",
                             hint="the input is corrupt; its sha256 in the lock can no longer match") from None
        if f.read(1):
            raise BuildError(f"{node.rel!r} is longer than its recorded size {node.size} ({node.where})",
                             hint="the input is corrupt; its sha256 in the lock can no longer match")
        if isinstance(src, HashingStream) and src.record_hash() != node.record_hash:
            raise BuildError(f"{node.rel!r} does not match its hash in the wheel's RECORD ({node.where})",
                             hint="installers must verify every RECORD hash (binary distribution format "
                                  "spec); the wheel is corrupt or tampered with: re-lock from a good index")


def open_tar(out: BinaryIO) -> tarfile.TarFile:
    """A tar writer with the recipe's fixed settings (PAX, UTF-8 names, 1 MiB copies)."""
    return tarfile.TarFile(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                           errors="surrogateescape", copybufsize=READ_SIZE)


def write_tar(out: BinaryIO, root: Tree, *, mtime: int, exclude: Exclude | None,
              owners: Owners | None) -> None:
    """The uncompressed layer tar of a tree (a staging directory, or nodes): its sha256 is the diff_id."""
    nodes = tree_nodes(root, exclude) if isinstance(root, Path) else [n for n in root
                                                                       if exclude is None or not exclude(n.rel)]
    with open_tar(out) as tar:
        for node in _sorted(nodes):
            _add(tar, node, mtime, owners)


class _Handoff:
    """A write-only sink that hands the bytes, in order, in pieces of at least ``READ_SIZE``, to
    ``sink.write`` on a thread of its own. ``close()`` waits for it and raises what it raised."""

    def __init__(self, sink: HashingStream) -> None:
        self.sink, self.size, self.buf = sink, 0, bytearray()
        self.q: queue.Queue[bytes | bytearray | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lockbuild-compress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (piece := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.sink.write(piece)  # type: ignore[arg-type]
                except BaseException as e:  # noqa: BLE001 - re-raised by the writing thread
                    self.error = e

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        self.size += len(data)
        if not self.buf and len(data) >= READ_SIZE and isinstance(data, bytes):
            self.q.put(data)  # a whole copy buffer of tarfile's: immutable, handed over as it is
            return len(data)
        self.buf += data
        if len(self.buf) >= READ_SIZE:
            self.q.put(self.buf)
            self.buf = bytearray()
        return len(data)

    def tell(self) -> int:
        return self.size

    def close(self, *, ok: bool = True) -> None:
        if ok and self.buf:
            self.q.put(self.buf)
        self.buf = bytearray()
        self.q.put(None)
        self.thread.join()
        if ok and self.error is not None:
            raise self.error


def write_layer(cache: Cache, root: Tree, *, mtime: int, level: int = 1,
                exclude: Exclude | None = None, owners: Owners | None = None,
                compression: str = "gzip", encoder: str | None = None) -> Layer:
    """Tar + compress (gzip or zstd) a tree (staging directory or nodes) into the cache; return its descriptor.
    ``encoder`` picks the library (oci/compress.py: ``codec_for``; default: the one new locks pin).

    ``mtime`` is the one timestamp of every entry (the lock's SOURCE_DATE_EPOCH; not 0, which
    breaks tools that treat epoch 0 as "unset"). ``owners`` overrides uid/gid for a few paths
    (e.g. a writable home for the runtime user); everything else is 0:0.
    """
    if isinstance(root, Path) and not root.is_dir():
        raise BuildError(f"layer staging directory {root} does not exist",
                         hint="this is a lockbuild bug: the builder must stage the tree first")
    name = compressor_name(level, compression, encoder)
    with cache.writer() as blob, compress_writer(blob, compression, level, encoder) as z:
        tee = HashingStream(z)
        pipe = _Handoff(tee)
        try:
            write_tar(pipe, root, mtime=mtime, exclude=exclude, owners=owners)  # type: ignore[arg-type]
        except BaseException:
            pipe.close(ok=False)
            raise
        pipe.close()
    return Layer(digest=blob.digest(), diff_id=tee.digest(),
                 size=blob.size, media_type=media_type(compression), compressor=name, tar_size=tee.size)
