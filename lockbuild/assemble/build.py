"""The builder: Lock -> Image. Reads only the lock and the cache; never resolves.

For each planned layer: reuse it when its key is in the layer cache (blob re-verified), else
take its inputs as they are verified (assemble/inputs.py), make its tree, and write the
deterministic layer. Then config + manifest. Python layers are streamed from the wheels
(assemble/wheels.py: no files staged); the Debian layer is the build's one read-only rootfs
(bytecode.staged_rootfs); the model and config layers are staged under the cache's tmp/,
always removed.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lockbuild import __version__
from lockbuild.assemble import bytecode, inputs
from lockbuild.assemble import config as config_layer
from lockbuild.assemble import wheels as wheel_install
from lockbuild.assemble.model import stage_model
from lockbuild.assemble.plan import WHEEL_MTIME, LayerPlan, plan_layers
from lockbuild.errors import BuildError, IntegrityError
from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import Lock
from lockbuild.lockfile.prune import Rules, listed_pruning
from lockbuild.oci.compress import ENCODERS, codec_for, compressor_name, compressor_version
from lockbuild.oci.image import Image, ImageSpec, build_image
from lockbuild.oci.layercache import Layer, layer_record, remember_layer
from lockbuild.oci.tar import Node, Tree, tree_nodes, write_layer
from lockbuild.platforms import debian_arch
from lockbuild.progress import Report, silent

if TYPE_CHECKING:
    from lockbuild.share.remote import SharedCache

LEVEL = 1  # gzip level: compression dominates a cold build (field notes: -6 is 2.7x slower)


@dataclass
class BuildResult:
    image: Image
    layers: list[tuple[LayerPlan, Layer, bool]]  # plan, layer, reused from the layer cache
    labels: dict[str, str]
    # per layer name: unpacked bytes before/after the [build] rules, files pruned, .pyc added
    stats: dict[str, dict[str, int]] | None = None


def source_date_epoch(lock: Lock) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    return int(env) if env and env.isdigit() else lock.epoch()


def labels_for(lock: Lock, lock_digest: str) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.created": lock.created,
        "org.opencontainers.image.title": lock.image_name,
        "org.opencontainers.image.base.name": lock.target.base,
        "io.lockbuild.version": __version__,
        "io.lockbuild.lock.digest": lock_digest,
        "io.lockbuild.inputs.digest": lock.inputs_digest,
        "io.lockbuild.model.uri": lock.model.resolved_uri,
        "io.lockbuild.model.tree-digest": lock.model.tree_digest,
        "io.lockbuild.mlflow.version": lock.runtime.mlflow_version,
        "io.lockbuild.python.version": lock.target.python,
    }
    if lock.model.version:
        labels["io.lockbuild.model.version"] = lock.model.version
    labels.update(dict(lock.labels))
    return labels


def manifest_annotations(lock: Lock, lock_digest: str) -> dict[str, str]:
    """The image manifest's annotations (verify requires exactly these)."""
    return {
        "org.opencontainers.image.created": lock.created,
        "org.opencontainers.image.title": lock.image_name,
        "io.lockbuild.lock.digest": lock_digest,
        "io.lockbuild.model.uri": lock.model.resolved_uri,
    }


def image_spec(lock: Lock, labels: dict[str, str]) -> ImageSpec:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **dict(lock.runtime.env)}
    arch = debian_arch(lock.target.platform)
    return ImageSpec(
        entrypoint=tuple(config_layer.entrypoint(lock)),
        env=env,
        user=f"{lock.runtime.user}:{lock.runtime.user}",
        workdir="/home/nonroot",
        exposed_ports=(f"{lock.runtime.port}/tcp",),
        labels=labels,
        architecture=arch,
    )


def _verified_layer(cache: Cache, key: str, name: str = "", report: Report = silent) -> Layer | None:
    layer, why = layer_record(cache, key)
    if why is not None:
        report("warning", {"message": f"layer cache record for {name} is not trusted ({why}); rebuilding it"})
    if layer is not None and not cache.has(layer.digest):
        return None
    if layer is not None and cache.get(layer.digest, layer.size) is None:
        return None  # the blob was corrupt: it has been dropped; rebuild
    return layer


def layer_codec(lock: Lock, compression: str) -> tuple[str, int]:
    """The encoder and level that write this lock's ``compression`` layers (oci/compress.py: ``codec_for``)."""
    return codec_for(compression, lock.compression, lock.compressor, lock.compression_level)


def check_compressor(lock: Lock, compression: str) -> None:
    """The lock pins the compressor library; another version would give other layer digests."""
    installed = compressor_version(compression, layer_codec(lock, compression)[0])
    makes = ENCODERS.get(lock.compressor.split(" ")[0])
    if compression == lock.compression and makes not in (None, compression):
        raise BuildError(f"the lock's [image] compressor {lock.compressor!r} writes {makes} layers, but its "
                         f"compression is {compression!r}", hint="re-run `lockbuild lock`")
    if lock.compressor and compression == lock.compression and lock.compressor != installed:
        raise BuildError(
            f"the lock pins the {compression} compressor {lock.compressor!r}, this lockbuild has {installed!r}: "
            "the layer digests would differ",
            hint=f"install the pinned version (pip install '{lock.compressor.split(' (')[0].replace(' ', '==')}') "
            "or re-run `lockbuild lock`")


def compressed_key(key: str, compression: str, codec: tuple[str, int] | None = None) -> str:
    """The layer-cache key: the plan's input key plus the compressor that made the blob."""
    import hashlib

    encoder, level = codec or (None, LEVEL)
    name = compressor_name(level, compression, encoder)
    return "sha256:" + hashlib.sha256(f"{key}\n{name}".encode()).hexdigest()


def build(lock: Lock, lock_bytes: bytes, cache: Cache, *, lock_dir: Path, jobs: int = 4,
          report: Report = silent, compression: str | None = None,
          shared: SharedCache | None = None) -> BuildResult:
    """Build the image. ``compression`` overrides the lock's ``[image] compression`` (docker-archive
    and ``--load`` need gzip); the diff_ids and the config are the same either way. ``shared`` is a
    registry used as a shared layer cache (share/remote.py): layers missing here are taken from it
    when trusted, and what it lacks is pushed to it after the build."""
    from lockbuild.fsutil import sha256_bytes

    compression = compression or lock.compression
    check_compressor(lock, compression)
    codec = layer_codec(lock, compression)
    lock_digest = sha256_bytes(lock_bytes)
    mtime = source_date_epoch(lock)
    plans = plan_layers(lock, mtime=mtime, lock_digest=lock_digest, level=LEVEL)
    done: dict[str, Layer] = {}
    for p in plans:
        layer = _verified_layer(cache, compressed_key(p.key, compression, codec), p.name, report)
        if layer is not None:
            done[p.name] = layer
    if shared is not None:
        keys = {p.name: compressed_key(p.key, compression) for p in plans if p.name not in done}
        for name, layer in shared.fetch_layers(cache, keys, jobs=jobs).items():
            if cache.has(layer.digest):  # downloaded and verified (not only referenced: SharedCache.lazy)
                remember_layer(cache, keys[name], layer)
            done[name] = layer
    todo = [p for p in plans if p.name not in done]
    report("plan", {"layers": len(plans), "cached": len(done), "todo": [p.name for p in todo]})

    # Downloads overlap the build: every download starts at once in the background, and each
    # layer starts as soon as its own inputs are verified in the cache; each input is verified once.
    downloads = inputs.start_downloads(lock, todo, cache, jobs=jobs, report=report)
    inputs.prestage_rootfs(lock, todo, cache, downloads)
    blobs: dict[str, Path] = {}

    def layer_inputs(p: LayerPlan) -> dict[str, Path]:
        got = inputs.fetch_inputs(lock, [p], cache, jobs=jobs, report=report, lock_dir=lock_dir,
                                  downloads=downloads)
        blobs.update(got)
        return got

    done.update(_build_layers(todo, lock, lock_bytes, cache, layer_inputs, mtime=mtime, report=report,
                              compression=compression, codec=codec))
    if any(p.kind == "python" for p in todo):
        _check_conflicts(lock, cache, blobs, lock_dir=lock_dir)  # within a layer, wheel_tree refuses it already

    labels = labels_for(lock, lock_digest)
    annotations = manifest_annotations(lock, lock_digest)
    ordered = [(p.name, done[p.name]) for p in plans]
    image = build_image(ordered, config=image_spec(lock, labels), annotations=annotations, created=lock.created)
    stats = {p.name: cache.meta_get("layer-stats", p.key.replace(":", "-")) or {} for p in plans}
    if shared is not None:
        shared.publish_layers(cache, {p.name: (compressed_key(p.key, compression), done[p.name]) for p in plans
                                      if p.name not in shared.stats.fetched}, jobs=jobs)
    return BuildResult(image=image, layers=[(p, done[p.name], p not in todo) for p in plans], labels=labels,
                       stats=stats)


def _weight(p: LayerPlan) -> int:
    """Roughly how long a layer takes: biggest first, so the long pole starts at once."""
    return sum(w.size for w in p.wheels) if p.wheels else (20 << 20 if p.kind == "debian" else 0)


def _build_layers(todo: list[LayerPlan], lock: Lock, lock_bytes: bytes, cache: Cache,
                  get_inputs: Callable[[LayerPlan], dict[str, Path]], *,
                  mtime: int, report: Report, compression: str = "gzip",
                  codec: tuple[str, int] | None = None) -> dict[str, Layer]:
    """Build layers in parallel: deflate and sha256 release the GIL, so threads use every core.
    Each layer's bytes depend only on its own inputs, never on the order they finish in."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p: LayerPlan) -> tuple[str, Layer]:
        blobs = get_inputs(p)
        report("layer-start", {"name": p.name})
        layer = _build_layer(p, lock, lock_bytes, cache, blobs, mtime=mtime, report=report,
                             compression=compression, codec=codec)
        remember_layer(cache, compressed_key(p.key, compression, codec), layer)
        report("layer-done", {"name": p.name, "size": layer.size, "diff_id": layer.diff_id})
        return p.name, layer

    workers = max(1, min(len(todo), int(os.environ.get("LOCKBUILD_BUILD_JOBS", os.cpu_count() or 2))))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, sorted(todo, key=_weight, reverse=True)))


def _wheel_listing(lock: Lock, cache: Cache, w, path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    meta = cache.meta_get("wheel-paths", f"{w.sha256}-{lock.target.python}")
    if meta is not None:
        return list(meta["paths"])
    paths = wheel_install.install_paths(w, path, lock.target)
    cache.meta_put("wheel-paths", f"{w.sha256}-{lock.target.python}", {"paths": paths})
    return paths


def _check_conflicts(lock: Lock, cache: Cache, blobs: dict[str, Path], *, lock_dir: Path) -> None:
    listings = []
    for w in lock.python.packages:
        path = blobs.get(w.sha256) or inputs.wheel_blob(lock, w, cache, lock_dir=lock_dir)
        listings.append((w, _wheel_listing(lock, cache, w, path)))
    conflicts = wheel_install.find_conflicts(listings)
    if conflicts:
        raise wheel_install.conflict_error(conflicts)


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class StagedLayer:
    """A layer's tree: what write_layer (build) and verify's expected-image derivation both tar.
    ``root`` is a staging directory (model, config) or nodes: streamed from the wheels (python
    layers), or the shared Debian rootfs plus its .pyc (debian); ``close`` releases the open wheels
    and bytecode spools."""

    root: Tree
    mtime: int
    owners: dict[str, tuple[int, int]] | None = None
    # what the lock's [build] rules did: {"pruned_files", "pruned_bytes", "pyc_files", ...}
    stats: dict[str, int] | None = None
    close: Callable[[], None] = _nothing


def stage_layer(p: LayerPlan, lock: Lock, lock_bytes: bytes, blobs: dict[str, Path], stage: Path, *,
                mtime: int, report: Report = silent) -> StagedLayer:
    """Stage one planned layer's tree into the empty directory ``stage``. The one place that decides a
    layer's content, mtime and owners: the builder tars it into the cache, verify derives the expected
    image from it, so the two can never disagree about what the lock means."""
    owners = None
    stats: dict[str, int] = {}
    root: Tree = stage
    close: Callable[[], None] = _nothing
    compile_pyc = lock.build.bytecode == bytecode.UNCHECKED_HASH
    if p.kind == "debian":
        shared = bytecode.staged_rootfs(lock, blobs, stage.parent)  # also the bytecode compilers' interpreter
        for warning in shared.warnings:
            report("warning", {"message": f"debian layer: {warning}"})
        owners = {"home/nonroot": (lock.runtime.user, lock.runtime.user)}
        nodes = {n.rel: n for n in tree_nodes(shared.path)}
        if compile_pyc:
            py = bytecode.TargetPython(shared.path, lock)
            spool = bytecode.Spool(stage / "pyc")
            close = spool.close
            pycs = bytecode.compile_tree(py, shared.path, bytecode.debian_sources(shared.path, lock), spool)
            for c in pycs.values():  # into the layer from the spool: the shared rootfs stays as staged
                cache_dir = posixpath.dirname(c.rel)
                nodes.setdefault(cache_dir, Node(cache_dir, tarfile.DIRTYPE, 0o755, where=f"{shared.path}/{cache_dir}"))
                nodes[c.rel] = Node(c.rel, tarfile.REGTYPE, 0o644, c.size, open=c.open,
                                    where=f"bytecode in {spool.path}")
            stats["pyc_files"] = len(pycs)
        root = list(nodes.values())
    elif p.kind == "python":
        def target() -> bytecode.TargetPython:  # staged when first needed: after the install pass
            return bytecode.target_python(lock, blobs, stage.parent)

        tree = wheel_install.wheel_tree([(w, blobs[w.sha256]) for w in p.wheels], lock.target,
                                        Rules.of(lock.build.prune, lock.build.keep), target if compile_pyc else None,
                                        spool_dir=stage,
                                        pruned=listed_pruning(lock, blobs))
        root, close = tree.nodes, tree.close
        stats = {"installed_bytes": sum(c.installed_bytes for c in tree.contents),
                 "pruned_files": sum(c.pruned_files for c in tree.contents),
                 "pruned_bytes": sum(c.pruned_bytes for c in tree.contents)}
        mtime = WHEEL_MTIME  # shared across models: never the lock's created time (docs/image-layout.md)
    elif p.kind == "model":
        stage_model(lock.model, blobs, stage)
    elif p.kind == "config":
        config_layer.stage_config(lock, lock_bytes, stage)
    else:
        raise BuildError(f"unknown layer kind {p.kind}")
    return StagedLayer(root=root, mtime=mtime, owners=owners, stats=stats, close=close)


def layer_nodes(staged: StagedLayer) -> Sequence[Node]:
    """The layer's entries: a staging directory walked once, or the streamed nodes as they are."""
    return tree_nodes(staged.root) if isinstance(staged.root, Path) else staged.root


def tree_stats(staged: StagedLayer, nodes: Sequence[Node] | None = None) -> dict[str, int]:
    """Unpacked size of a staged layer after the lock's [build] rules, and before them (without the
    .pyc, with the pruned files)."""
    total = pyc = pyc_files = 0
    for n in layer_nodes(staged) if nodes is None else nodes:
        if n.kind == tarfile.REGTYPE:
            total += n.size
            if n.rel.endswith(".pyc"):
                pyc += n.size
                pyc_files += 1
    pruned = (staged.stats or {}).get("pruned_bytes", 0)
    return {"unpacked_bytes": total, "before_bytes": total - pyc + pruned, "pyc_bytes": pyc, "pyc_files": pyc_files,
            "pruned_files": (staged.stats or {}).get("pruned_files", 0), "pruned_bytes": pruned}


def _build_layer(p: LayerPlan, lock: Lock, lock_bytes: bytes, cache: Cache, blobs: dict[str, Path], *,
                 mtime: int, report: Report, compression: str = "gzip",
                 codec: tuple[str, int] | None = None) -> Layer:
    stage = Path(tempfile.mkdtemp(prefix=f"stage-{p.name}-", dir=cache.tmpdir()))
    staged: StagedLayer | None = None
    try:
        staged = stage_layer(p, lock, lock_bytes, blobs, stage, mtime=mtime, report=report)
        nodes = layer_nodes(staged)  # one walk of a staging directory, for the stats and the tar
        cache.meta_put("layer-stats", p.key.replace(":", "-"), tree_stats(staged, nodes))
        encoder, level = codec or (None, LEVEL)
        return write_layer(cache, nodes, mtime=staged.mtime, level=level, owners=staged.owners,
                           compression=compression, encoder=encoder)
    except OSError as e:
        if e.errno == 28:
            raise BuildError(f"disk full while building layer {p.name} in {cache.root}",
                             hint="free space or point LOCKBUILD_CACHE at a larger disk") from None
        raise
    except IntegrityError:
        raise
    finally:
        if staged is not None:
            staged.close()
        shutil.rmtree(stage, ignore_errors=True)
