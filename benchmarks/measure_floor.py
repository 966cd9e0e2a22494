"""The honest floor (issue 22): the work any builder of this image WITH bytecode must do, measured on
this machine with all its cores, none of it lockbuild's own pipeline:

- download every input (``download_floor`` in measure.py, once per cold round, lockbuild's fetch);
- inflate: every member of every wheel (zip deflate) and every .deb's data archive (xz / zstd);
- byte-compile every ``.py`` the image ships a ``.pyc`` for (``compile`` + ``marshal``, in memory);
- compress the image's own layer tars with the lock's encoder and level (lockbuild's writer).

Each CPU phase runs on ``nproc`` worker processes (started before timing), wall-clock timed; the
unit of work is one input file, one chunk of sources, one layer (a layer's compression is one
stream and cannot be split). Not counted: staging files, writing tars, hashing them twice, layer
bookkeeping. The layer tars (decompressed from the built layers) and the sources are prepared
untimed in a scratch directory. ``cpu_floor`` = inflate + compile + compress; the report's floor is
max(download, cpu_floor) (downloads can overlap the CPU work; nothing can beat either), with the
serial sum beside it."""

from __future__ import annotations

import gzip
import lzma
import marshal
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import EXAMPLE, timed

NULL_CHUNK = 1 << 20


def _drain(f: Any) -> int:
    n = 0
    while chunk := f.read(NULL_CHUNK):
        n += len(chunk)
    return n


def inflate_one(kind_path: tuple[str, str]) -> int:
    """Every member of a wheel, or a .deb's data archive, decompressed into nothing; bytes out."""
    kind, path = kind_path
    if kind == "wheel":
        n = 0
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    n += _drain(f)
        return n
    from debian.arfile import ArFile

    ar = ArFile(path)
    name = next(m for m in ar.getnames() if m.startswith("data.tar"))
    member = ar.getmember(name)
    if name.endswith(".xz"):
        with lzma.open(member) as f:
            return _drain(f)
    if name.endswith(".zst"):
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(member, read_across_frames=True) as f:
            return _drain(f)
    if name.endswith(".gz"):
        with gzip.open(member) as f:
            return _drain(f)
    return _drain(member)


def compile_chunk(paths: list[str]) -> int:
    """Byte-compile each source in memory (what a .pyc holds: the marshalled code object)."""
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            source = f.read()
        try:
            n += len(marshal.dumps(compile(source, p, "exec", dont_inherit=True)))
        except (SyntaxError, ValueError):
            pass  # the image ships no .pyc for a source that does not compile
    return n


def compress_one(args: tuple[str, str, int, str | None]) -> int:
    """One layer tar through lockbuild's compressing writer (the lock's encoder and level) into nothing."""
    from lockbuild.oci.compress import compress_writer

    path, compression, level, encoder = args

    class Null:
        def write(self, data: bytes) -> int:
            return len(data)

    with open(path, "rb") as f, compress_writer(Null(), compression, level, encoder) as z:
        while chunk := f.read(NULL_CHUNK):
            z.write(chunk)
    return os.path.getsize(path)


def _layer_tar(blob: Path, dest: Path) -> None:
    import zstandard

    with open(blob, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        src = gzip.open(raw) if gz else zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        with src as s, open(dest, "wb") as out:
            shutil.copyfileobj(s, out, NULL_CHUNK)


def _sources_with_pyc(tar_path: Path, dest: Path) -> list[str]:
    """Extract (untimed) each .py of the layer that has a .pyc in it; their paths."""
    with tarfile.open(tar_path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        wanted = set()
        for name in members:
            if "/__pycache__/" in name and name.endswith(".pyc"):
                parent, base = name.rsplit("/__pycache__/", 1)
                src = f"{parent}/{base.split('.', 1)[0]}.py"
                if src in members and members[src].isfile():
                    wanted.add(src)
        out = []
        for name in sorted(wanted):
            f = tar.extractfile(members[name])
            assert f is not None
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read())
            out.append(str(target))
    return out


def _chunks(items: list[str], n: int) -> list[list[str]]:
    return [items[i::n] for i in range(n)] if items else []


def cpu_floor(layers: list[dict[str, Any]], cache: Path, scratch: Path, repeats: int) -> dict[str, Any]:
    """Median-ready per-round seconds of the three CPU phases, on ``nproc`` processes, and what they
    processed. ``layers``: the built image's layers (name, digest) in ``cache``, which also holds
    every downloaded input."""
    from lockbuild.assemble.build import layer_codec
    from lockbuild.fetch.cache import Cache
    from lockbuild.lockfile.io import read_lock

    lock = read_lock(EXAMPLE / "lockbuild.lock")
    encoder, level = layer_codec(lock, lock.compression)
    c = Cache(cache)
    work = scratch / "floor-cpu"
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    inputs = [("wheel", str(c.path(w.sha256))) for w in lock.python.packages]
    inputs += [("deb", str(c.path(d.sha256))) for d in lock.debian.packages]
    tars, sources, per_layer = [], [], {}
    for layer in layers:
        tar = work / f"{layer['name']}.tar"
        _layer_tar(c.path(layer["digest"]), tar)
        per_layer[layer["name"]] = tar.stat().st_size
        tars.append(tar)
        sources += _sources_with_pyc(tar, work / "src" / layer["name"])
    cores = os.cpu_count() or 1
    jobs = [(str(t), lock.compression, level, encoder) for t in sorted(tars, key=lambda t: -t.stat().st_size)]
    inputs.sort(key=lambda kp: -os.path.getsize(kp[1]))  # biggest first: the long pole starts at once
    phases: dict[str, list[float]] = {"inflate": [], "compile": [], "compress": []}
    with ProcessPoolExecutor(max_workers=cores) as pool:
        list(pool.map(abs, range(cores)))  # workers started (and forked) before any timing
        runs: dict[str, Callable[[], object]] = {
            "inflate": lambda: sum(pool.map(inflate_one, inputs)),
            "compile": lambda: sum(pool.map(compile_chunk, _chunks(sources, cores * 4))),
            "compress": lambda: sum(pool.map(compress_one, jobs)),
        }
        for _ in range(repeats):
            for name, fn in runs.items():
                phases[name].append(timed(fn)[0])
    shutil.rmtree(work, ignore_errors=True)
    return {"seconds": phases, "cores": cores, "inputs": len(inputs), "sources": len(sources),
            "uncompressed_bytes": sum(per_layer.values()), "per_layer": per_layer}
