"""Python packages into a layer tree: pypa/installer with a Debian-python scheme, streamed.

Debian's python3.X searches /usr/local/lib/python3.X/dist-packages, so wheels go there and
console scripts go to /usr/local/bin with the image's interpreter in their shebang.

installer does the installing (scheme mapping, entry-point scripts, ``#!python`` shebangs,
INSTALLER, RECORD) into ``TreeDestination``, an installer destination whose only change is where
bytes go: a wheel member becomes a tar ``Node`` that reads the member straight from the wheel
when the layer is written, with the wheel's own RECORD hash checked on the way (the binary
distribution format requires installers to verify it); generated files (scripts, INSTALLER)
are kept in memory. Nothing is staged on disk, so a 1.3 GB TensorFlow wheel costs one
decompression instead of a write, a read and a delete of 13,000 files.

Then the lock's [build] rules: pruned paths (lockfile/prune.py) never become nodes, the kept
.py sources are byte-compiled by the image's own interpreter (assemble/bytecode.py), and each
distribution's RECORD is written once, by installer's own writer, listing exactly the files in
the layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import os
import posixpath
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.records import Hash, RecordEntry, parse_record_file
from installer.scripts import Script
from installer.sources import WheelFile
from installer.utils import Scheme, construct_record_file

from lockbuild.assemble.bytecode import Spool, TargetPython, spool_sources
from lockbuild.assemble.members import WheelReader
from lockbuild.errors import BuildError
from lockbuild.fsutil import escapes, record_hash, sha256_stream
from lockbuild.lockfile.model import Target, Wheel
from lockbuild.lockfile.prune import Rules, WheelContent, parent_dirs
from lockbuild.lockfile.scheme import install_paths as scheme_install_paths
from lockbuild.lockfile.scheme import install_scheme
from lockbuild.oci.tar import Node


def scheme(target: Target) -> dict[str, str]:
    return install_scheme(target.python)


def interpreter(target: Target) -> str:
    return "/usr/bin/python" + ".".join(target.python.split(".")[:2])


def install_paths(wheel: Wheel, path: Path, target: Target) -> list[str]:
    """Image paths (no leading /) the wheel will write, from its zip listing (lockfile/scheme.py, the
    mapping the lock stage checked). Refuses members that would escape the install root."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return scheme_install_paths(names, wheel.filename, scheme(target), refuse=functools.partial(refused, wheel))


def refused(wheel: Wheel, why: str) -> BuildError:
    """The builder's error for a wheel member installer would refuse or write outside the install root."""
    return BuildError(f"{wheel.filename}: {why}", hint="the wheel is malicious or corrupt; remove it from the lock")


def find_conflicts(listings: Iterable[tuple[Wheel, list[str]]]) -> list[tuple[str, str, str]]:
    """[(path, first distribution, second distribution)] for files two wheels both write."""
    owner: dict[str, str] = {}
    conflicts = []
    for wheel, paths in listings:
        for p in paths:
            if p in owner and owner[p] != wheel.name:
                conflicts.append((p, owner[p], wheel.name))
            else:
                owner[p] = wheel.name
    return conflicts


def conflict_error(conflicts: list[tuple[str, str, str]]) -> BuildError:
    pairs = sorted({(a, b) for _, a, b in conflicts})
    sample = "; ".join(f"{p} ({a} and {b})" for p, a, b in conflicts[:3])
    names = ", ".join(f"{a} and {b}" for a, b in pairs)
    return BuildError(
        f"two distributions write the same files: {names}; e.g. {sample}",
        hint="keep exactly one of them: [python] variants = { unwanted = \"wanted\" } in lockbuild.toml (every "
        "requirement on the unwanted name then resolves to the wanted one), then run `lockbuild lock`",
    )


@dataclass
class _Dist:
    """One installed distribution, waiting for its RECORD: installer's records and where they go."""

    wheel: Wheel
    scheme: Scheme
    record_path: str
    records: list[tuple[Scheme, RecordEntry]]
    pruned: Callable[[str], bool]


class TreeDestination(SchemeDictionaryDestination):
    """installer's scheme-dictionary destination, writing ``Node``s into ``files`` instead of the disk."""

    def __init__(self, target: Target, wheel: Wheel, reader: WheelReader, files: dict[str, Node]) -> None:
        super().__init__(scheme(target), interpreter=interpreter(target), script_kind="posix",
                         bytecode_optimization_levels=())
        self.wheel, self.reader, self.zf, self.files = wheel, reader, reader.zf, files
        self.record: dict[str, tuple[str, str]] = {}
        with contextlib.suppress(KeyError, UnicodeDecodeError, ValueError):
            tops = (n.split("/", 1)[0] for n in self.zf.namelist())
            dist_info = next(top for top in tops if top.endswith(".dist-info"))
            lines = self.zf.read(f"{dist_info}/RECORD").decode("utf-8").splitlines()
            self.record = {path: (h, size) for path, h, size in parse_record_file(lines)}
        self.finished: tuple[Scheme, str, list[tuple[Scheme, RecordEntry]]] | None = None

    def image_path(self, scheme_name: Scheme, path: str) -> str:
        if escapes(path):
            raise BuildError(f"{self.wheel.filename}: {path!r} would be written outside the install root",
                             hint="the wheel is malicious or corrupt; remove it from the lock")
        return posixpath.normpath(posixpath.join(self.scheme_dict[scheme_name], path)).lstrip("/")

    def write_to_fs(self, scheme: Scheme, path: str, stream: BinaryIO, is_executable: bool) -> RecordEntry:
        rel = self.image_path(scheme, path)
        if rel in self.files:
            raise BuildError(f"{self.wheel.filename}: /{rel} is written twice ({self.files[rel].where})",
                             hint="two distributions write the same file")
        mode = 0o755 if is_executable else 0o644
        member = stream.name if isinstance(stream, zipfile.ZipExtFile) else None
        info = self.zf.getinfo(member) if member is not None else None
        where = f"wheel {self.wheel.filename}" + (f", member {member}" if member else "")
        claimed = self.record.get(member or "", ("", ""))
        if info is not None and claimed[0].startswith("sha256=") and claimed[1] == str(info.file_size):
            # the member's bytes are read once, into the tar, and checked against this hash there
            node = Node(rel, tarfile.REGTYPE, mode, info.file_size, open=self.reader.opener(info, where),
                        record_hash=claimed[0], where=where)
        elif info is not None:  # no usable hash in the wheel's RECORD: hash it now, read it again later
            hashed = sha256_stream(stream)
            node = Node(rel, tarfile.REGTYPE, mode, hashed.size, open=self.reader.opener(info, where),
                        record_hash=hashed.record_hash(), where=where)
        else:  # generated: a script, a rewritten shebang, INSTALLER
            data = stream.read()
            node = Node(rel, tarfile.REGTYPE, mode, len(data), open=functools.partial(io.BytesIO, data), where=where)
            self.files[rel] = node
            return RecordEntry(path, Hash.parse(record_hash(hashlib.sha256(data).digest())), node.size)
        self.files[rel] = node
        assert node.record_hash is not None and node.record_hash.startswith("sha256=")
        return RecordEntry(path, Hash.parse(node.record_hash), node.size)

    def write_script(self, name: str, module: str, attr: str, section: str) -> RecordEntry:  # type: ignore[override]
        script_name, data = Script(name, module, attr, section).generate(self.interpreter,  # type: ignore[arg-type]
                                                                         self.script_kind)
        with io.BytesIO(data) as stream:
            return self.write_to_fs(Scheme("scripts"), script_name, stream, is_executable=True)

    def finalize_installation(self, scheme: Scheme, record_file_path: str,
                              records: Iterable[tuple[Scheme, RecordEntry]]) -> None:
        self.finished = (scheme, record_file_path, list(records))


def _open_wheel(wheel: Wheel, path: Path, stack: contextlib.ExitStack) -> WheelReader:
    """The verified wheel as a zip named by its file name (installer reads name, version and tags
    from it), open for as long as the layer's nodes read from it."""
    with tempfile.TemporaryDirectory(prefix="wheel-") as d:
        named = Path(d) / wheel.filename
        os.symlink(path, named)
        zf = stack.enter_context(zipfile.ZipFile(named))
    reader = WheelReader(zf, path)
    stack.callback(reader.close)
    return reader


def _install(wheel: Wheel, path: Path, target: Target, reader: WheelReader,
             files: dict[str, Node]) -> TreeDestination:
    install_paths(wheel, path, target)  # safety check of every member name first
    dest = TreeDestination(target, wheel, reader, files)
    try:
        source = WheelFile(reader.zf)
        source.validate_record(validate_contents=False)  # names only: contents are checked as they are read
        install(source, dest, additional_metadata={"INSTALLER": b"lockbuild\n"})
    except Exception as e:  # installer raises several types for broken wheels
        if isinstance(e, BuildError):
            raise
        raise BuildError(f"cannot install {wheel.filename}: {e}") from None
    return dest


@dataclass
class WheelTree:
    """A python layer's tree: its nodes (parents included), what the [build] rules did per
    distribution, and the open wheels and spool files the nodes read from (``close()`` them)."""

    nodes: list[Node]
    contents: list[WheelContent]
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        self.stack.close()


def _parents(files: dict[str, Node]) -> list[Node]:
    return [Node(d, tarfile.DIRTYPE, 0o755) for d in parent_dirs(files)]


def wheel_tree(wheels: Iterable[tuple[Wheel, Path]], target: Target, rules: Rules,
               py: TargetPython | Callable[[], TargetPython] | None, *, spool_dir: Path,
               pruned: Callable[[Wheel], Callable[[str], bool]] | None = None) -> WheelTree:
    """The layer tree of these verified wheels: installed by installer into nodes, pruned by the
    rules (or by ``pruned(wheel)``, a site-relative path predicate), byte-compiled by ``py`` (or
    the interpreter ``py()`` returns, asked for after the install pass) when given, with each
    distribution's RECORD listing exactly what is in the tree."""
    tree = WheelTree([], [])
    try:
        files: dict[str, Node] = {}
        dists: list[_Dist] = []
        for wheel, path in wheels:
            reader = _open_wheel(wheel, path, tree.stack)
            dest = _install(wheel, path, target, reader, files)
            assert dest.finished is not None
            root_scheme, record_path, records = dest.finished
            dists.append(_Dist(wheel, root_scheme, record_path, records,
                               pruned(wheel) if pruned is not None else rules.pruned))
        site = scheme(target)["purelib"].strip("/")
        sources = _apply_rules(dists, files, tree, site)
        if callable(py):  # the interpreter is staged only now, so other layers' install passes overlap it
            py = py()
        pycs = _compile(py, sources, files, tree, spool_dir) if py is not None else {}
        for d in dists:
            _write_record(d, files, pycs, target)
        tree.nodes = list(files.values()) + _parents(files)
        return tree
    except BaseException:
        tree.close()
        raise


def _apply_rules(dists: list[_Dist], files: dict[str, Node], tree: WheelTree, site: str) -> list[str]:
    """Drop pruned files (and their RECORD rows); return the kept .py sources (image paths)."""
    sources: list[str] = []
    for d in dists:
        content = WheelContent(d.record_path.split("/", 1)[0])
        kept: list[tuple[Scheme, RecordEntry]] = []
        gone: list[str] = []
        for sch, rec in d.records:
            in_site = sch in ("purelib", "platlib")
            rel = f"{site}/{posixpath.normpath(rec.path)}" if in_site else None
            node = files.get(rel) if rel else None
            if node is not None:
                content.installed_bytes += node.size
            if (rel is not None and node is not None and not rec.path.startswith(content.dist_info + "/")
                    and d.pruned(posixpath.normpath(rec.path))):
                del files[rel]
                gone.append(rec.path)
                content.pruned_bytes += node.size
                continue
            kept.append((sch, rec))
            if node is not None and rel is not None and rel.endswith(".py"):
                content.sources.append(posixpath.normpath(rec.path))
                sources.append(rel)
        content.pruned_files = len(gone)
        d.records = kept
        tree.contents.append(content)
    return sorted(sources)


def _compile(py: TargetPython, sources: list[str], files: dict[str, Node], tree: WheelTree,
             spool_dir: Path) -> dict[str, Node]:
    """Byte-compile the sources (sorted, one process); the .pyc become nodes. Returns source -> .pyc node.
    Each source is inflated once: its node then reads the bytes the compiler saw back from the
    sources' spool (its RECORD hash is still checked in the tar)."""
    fd, name = tempfile.mkstemp(prefix="pyc-", dir=spool_dir)
    os.close(fd)
    spool, src = Spool(Path(name)), Spool(Path(name + ".src"))
    tree.stack.callback(spool.close)
    tree.stack.callback(src.close)

    def read(node: Node) -> bytes:
        assert node.open is not None
        with node.open() as f:
            return f.read()

    spooled = spool_sources(src, [(rel, functools.partial(read, files[rel])) for rel in sources])
    for s in spooled:
        files[s.rel] = dataclasses.replace(files[s.rel], open=s.open)
    out = py.compile_spooled(spooled, spool)
    done: dict[str, Node] = {}
    with open(spool.path, "rb") as f:  # one pass over the spool: each .pyc's RECORD hash, checked again in the tar
        for rel, c in zip(sources, out, strict=True):
            if c is None:
                continue
            f.seek(c.offset)
            digest = record_hash(hashlib.sha256(f.read(c.size)).digest())
            if c.rel not in files:
                files[c.rel] = done[rel] = Node(c.rel, tarfile.REGTYPE, 0o644, c.size, open=c.open,
                                                record_hash=digest, where=f"bytecode of /{rel}")
    return done


def _write_record(d: _Dist, files: dict[str, Node], pycs: dict[str, Node], target: Target) -> None:
    """The distribution's RECORD, by installer's writer: kept rows plus a row per .pyc (hash, size)."""
    sch = scheme(target)
    base = sch["purelib"].strip("/")
    rows = list(d.records)
    for s, rec in d.records:
        pyc = pycs.get(f"{base}/{posixpath.normpath(rec.path)}") if s in ("purelib", "platlib") else None
        if pyc is None or pyc.record_hash is None:
            continue
        rows.append((s, RecordEntry(pyc.rel[len(base) + 1:], Hash.parse(pyc.record_hash), pyc.size)))

    def prefix(file_scheme: Scheme) -> str | None:
        if file_scheme == d.scheme:
            return None
        return os.path.relpath(sch[file_scheme], start=sch[d.scheme]) + "/"

    with construct_record_file(rows, prefix) as stream:
        data = stream.read()
    rel = f"{base}/{d.record_path}"
    files[rel] = Node(rel, tarfile.REGTYPE, 0o644, len(data), open=functools.partial(io.BytesIO, data),
                      where=f"RECORD of {d.wheel.filename}")
