"""Deterministic bytecode: PEP 552 unchecked-hash .pyc compiled by the image's own interpreter.

The locked Debian python3.X is run straight from a staged rootfs, without root, chroot or
containers: ``<root>/usr/lib/<triplet>/ld-linux-*.so --library-path <root>/usr/lib/<triplet>
<root>/usr/bin/python3.X -S -s -B`` with ``PYTHONHOME=<root>/usr`` (so the interpreter, its
stdlib and its compiler are exactly the image's, whatever Python the host runs), an empty
working directory, and ``PYTHONHASHSEED=0`` (frozenset constants are marshalled in hash order).

Each .pyc is made by py_compile's own steps with ``UNCHECKED_HASH``: the header holds the
source's SipHash instead of an mtime and is never re-validated, so the bytes depend only on the
source, the in-image file name (``dfile``) and the interpreter build. Sources go to the compiler
as bytes (one spool file; wheel layers never stage their sources on disk) and the .pyc bytes come
back in another spool file. Files are compiled one after the other in sorted order in one
process per layer, so marshal's reference flags (which depend on
object reference counts) see the same interpreter state on every host; a test compiles the same
tree in separate processes, and in a different grouping, and compares the bytes. Sources that
do not compile (Python 2 test data, templates) get no .pyc, as with compileall.

Cost: the image grows by roughly the size of its .py files; every container start stops
compiling TensorFlow's and MLflow's modules on import (nothing was written at run time either:
the image sets PYTHONDONTWRITEBYTECODE=1, and the tree is read-only for uid 65532).
"""

from __future__ import annotations

import atexit
import errno
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lockbuild.errors import BuildError
from lockbuild.lockfile.model import Deb, Lock
from lockbuild.platforms import executes

UNCHECKED_HASH = "unchecked-hash"

_TRIPLETS = {"amd64": ("x86_64-linux-gnu", "ld-linux-x86-64.so.2", ("x86_64", "amd64")),
             "arm64": ("aarch64-linux-gnu", "ld-linux-aarch64.so.1", ("aarch64", "arm64"))}

# The child: the index (in-image file name, offset, length) on stdin; sources read from one spool
# file, .pyc bytes appended to another; py_compile's own steps (source_to_code, source_hash,
# _code_to_hash_pyc), so the bytes are what ``py_compile.compile(..., UNCHECKED_HASH)`` writes.
_COMPILE = r"""
import importlib.machinery, importlib.util, importlib._bootstrap_external as bx, json, sys
index, src_path, out_path = json.load(sys.stdin)
done = []
with open(src_path, "rb") as src, open(out_path, "wb") as out:
    for dfile, offset, length in index:
        src.seek(offset)
        data = src.read(length)
        try:
            loader = importlib.machinery.SourceFileLoader("<py_compile>", dfile)
            code = loader.source_to_code(data, dfile)
            pyc = bx._code_to_hash_pyc(code, importlib.util.source_hash(data), False)
        except Exception:
            done.append(None)
            continue
        done.append([importlib.util.cache_from_source(dfile), out.tell(), len(pyc)])
        out.write(pyc)
json.dump(done, sys.stdout)
"""


class Spool:
    """The file one compile run appends its .pyc to, read back by any thread: one descriptor, pread.
    ``close()`` closes and deletes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._mu = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        with self._mu:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            fd = self._fd
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise BuildError(f"bytecode spool {self.path} was truncated while the layer was written")
        return data

    def close(self) -> None:
        with self._mu:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Compiled:
    """One .pyc (or one source sent to the compiler): its in-image path (no leading /) and where its
    bytes are in a spool."""

    rel: str
    spool: Spool
    offset: int
    size: int

    def open(self) -> BinaryIO:
        return io.BytesIO(self.spool.read(self.offset, self.size))


def minor(lock: Lock) -> str:
    return ".".join(lock.target.python.split(".")[:2])


def interpreter_debs(lock: Lock) -> list[Deb]:
    """The packages whose bytes decide the compiled .pyc: the interpreter and its stdlib."""
    return sorted((d for d in lock.debian.packages if d.name.startswith(("python3", "libpython3"))),
                  key=lambda d: d.name)


class TargetPython:
    """The locked interpreter inside a staged rootfs, runnable from the host."""

    def __init__(self, root: Path, lock: Lock) -> None:
        arch = lock.target.platform.split("/")[1]
        if arch not in _TRIPLETS:
            raise BuildError(f"no bytecode compiler for platform {lock.target.platform}")
        triplet, loader, machines = _TRIPLETS[arch]
        ld = root / "usr/lib" / triplet / loader
        if platform.machine().lower() not in machines and not (ld.is_file() and executes(ld, "--version")):
            raise BuildError(
                f"byte-compiling for {lock.target.platform} runs the image's own python{minor(lock)}, "
                f"which this {platform.machine()} host cannot execute",
                hint="build on a host of the target architecture, register an emulator for it (binfmt_misc: "
                     "qemu-user-binfmt, Rosetta), or set [build] bytecode = false in lockbuild.toml and re-lock")
        self.root = root
        self.libdir = root / "usr/lib" / triplet
        self.loader = self.libdir / loader
        self.python = root / "usr/bin" / f"python{minor(lock)}"
        for p in (self.loader, self.python):
            if not p.is_file():
                raise BuildError(f"the staged Debian rootfs has no {p.relative_to(root)}; cannot byte-compile",
                                 hint="the lock's Debian closure must contain the interpreter package")

    def compile(self, sources: Sequence[tuple[str, Callable[[], bytes]]], spool: Spool) -> list[Compiled | None]:
        """Compile (in-image path without leading /, source bytes) pairs in the given order, in one
        process; .pyc bytes land in ``spool`` (a new file). None for a source that does not compile."""
        src = Spool(spool.path.with_name(spool.path.name + ".src"))
        try:
            return self.compile_spooled(spool_sources(src, sources), spool)
        finally:
            src.close()

    def compile_spooled(self, sources: Sequence[Compiled], spool: Spool) -> list[Compiled | None]:
        """``compile`` for sources already in one spool (``spool_sources``)."""
        if not sources:
            return []
        index = [["/" + c.rel, c.offset, c.size] for c in sources]
        env = {"PYTHONHOME": str(self.root / "usr"), "PYTHONHASHSEED": "0", "PYTHONUTF8": "1",
               "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}
        argv = [str(self.loader), "--library-path", str(self.libdir), str(self.python), "-S", "-s", "-B",
                "-c", _COMPILE]
        payload = json.dumps([index, str(sources[0].spool.path), str(spool.path)])
        with tempfile.TemporaryDirectory(prefix="pyc-cwd-") as cwd:  # sys.path[0] is the (empty) cwd
            proc = subprocess.run(argv, input=payload.encode(), capture_output=True, env=env, cwd=cwd, check=False)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise BuildError(f"byte-compiling with the image's python{self.python.name[6:]} failed: {tail[0]}")
        return [Compiled(r[0].lstrip("/"), spool, r[1], r[2]) if r else None for r in json.loads(proc.stdout)]


def spool_sources(src: Spool, sources: Sequence[tuple[str, Callable[[], bytes]]]) -> list[Compiled]:
    """Write each (rel, read) source's bytes into the new spool ``src``, in order; where each landed."""
    out = []
    with open(src.path, "wb") as f:
        for rel, read in sources:
            data = read()
            out.append(Compiled(rel, src, f.tell(), len(data)))
            f.write(data)
    return out


def compile_tree(py: TargetPython, root: Path, rels: Sequence[str], spool: Spool) -> dict[str, Compiled]:
    """Compile files ``root/rel`` (in sorted order; in-image name ``/rel``) into ``spool``; source
    rel -> its .pyc, for those that compile."""
    ordered = sorted(rels)
    out = py.compile([(rel, (root / rel).read_bytes) for rel in ordered], spool)
    return {rel: c for rel, c in zip(ordered, out, strict=True) if c is not None}


def debian_sources(root: Path, lock: Lock) -> list[str]:
    """The Debian interpreter's stdlib and Debian's dist-packages .py files in a staged rootfs."""
    rels = []
    for top in (f"usr/lib/python{minor(lock)}", "usr/lib/python3/dist-packages"):
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and not os.path.islink(os.path.join(dirpath, d))]
            for f in filenames:
                p = os.path.join(dirpath, f)
                if f.endswith(".py") and not os.path.islink(p):
                    rels.append(Path(p).relative_to(root).as_posix())
    return rels


# -- one staged Debian rootfs per set of .debs, shared by a process's builds -----------------------
# The Debian layer tars it (its .pyc come from a spool, never written into it) and every wheel
# layer compiles with the interpreter in it, so it is read-only once staged: a compiler never
# sees a half-written .pyc, and never a .pyc at all (the same interpreter state on every host).


@dataclass(frozen=True)
class StagedRoot:
    path: Path
    warnings: tuple[str, ...]


_ROOTS: dict[tuple[str, ...], StagedRoot] = {}
_ROOTS_LOCK = threading.Lock()


def _cleanup() -> None:
    for r in _ROOTS.values():
        shutil.rmtree(r.path.parent, ignore_errors=True)


atexit.register(_cleanup)


def staged_rootfs(lock: Lock, blobs: dict[str, Path], tmp_parent: Path) -> StagedRoot:
    """The lock's Debian rootfs, staged once per process (from the lock's own verified .debs) into a
    scratch directory (``fsutil.scratch_dir``: /dev/shm when it has room, else beside the layer
    stages). Never write into it."""
    from lockbuild.assemble.rootfs import assemble_rootfs_apart
    from lockbuild.fsutil import scratch_dir

    missing = [d.filename for d in lock.debian.packages if d.sha256 not in blobs]
    if missing:
        raise BuildError(f"staging the Debian rootfs needs the lock's Debian packages; not fetched: {missing[0]}")
    key = (str(lock.runtime.user), *sorted(d.sha256 for d in lock.debian.packages))
    with _ROOTS_LOCK:
        staged = _ROOTS.get(key)
        if staged is None or not staged.path.is_dir():
            tmp = scratch_dir(tmp_parent)
            try:
                warnings = assemble_rootfs_apart([(d, blobs[d.sha256]) for d in lock.debian.packages], tmp / "r",
                                                 uid=lock.runtime.user)
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if e.errno != errno.ENOSPC:
                    raise
                raise BuildError(f"no space left staging the Debian rootfs in {tmp.parent}",
                                 hint="free space there, or set LOCKBUILD_SCRATCH to a directory with a few "
                                      "hundred MB free") from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            staged = _ROOTS[key] = StagedRoot(tmp / "r", tuple(warnings))
    return staged


def target_python(lock: Lock, blobs: dict[str, Path], tmp_parent: Path) -> TargetPython:
    """The lock's interpreter, in the process's staged rootfs (``staged_rootfs``)."""
    return TargetPython(staged_rootfs(lock, blobs, tmp_parent).path, lock)
