"""The builder: Lock -> Image. Reads only the lock and the cache; never resolves.

For each planned layer (assemble/plan.py): reuse it when its key is in the layer cache (blob
re-verified) or a trusted shared cache has it, else take its inputs as they are verified
(assemble/inputs.py), stage its tree through its kind (assemble/recipe.py: ``stage_layer``, the
recipe verify derives the expected image with) and write the deterministic layer. Then config +
manifest. Python layers are streamed from the wheels (assemble/wheels.py: no files staged); the
Debian layer is the build's one read-only rootfs (bytecode.staged_rootfs); the model and config
layers are staged under the cache's tmp/, always removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lockbuild.assemble import inputs
from lockbuild.assemble import wheels as wheel_install
from lockbuild.assemble.plan import LayerPlan, plan_layers
from lockbuild.assemble.recipe import (
    LEVEL,
    check_compressor,
    compressed_key,
    image_spec,
    labels_for,
    layer_codec,
    layer_nodes,
    manifest_annotations,
    source_date_epoch,
    stage_layer,
    tree_stats,
)
from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import sha256_bytes
from lockbuild.lockfile.model import Lock
from lockbuild.oci.image import Image, build_image
from lockbuild.oci.layercache import Layer, layer_record, remember_layer
from lockbuild.oci.tar import write_layer
from lockbuild.progress import Report, silent

__all__ = ["LEVEL", "Built", "BuildResult", "SharedLayers", "build", "build_outputs", "check_compressor",
           "checked_compression", "compressed_key", "layer_codec", "source_date_epoch"]



class _SharedStats(Protocol):
    @property
    def fetched(self) -> Collection[str]: ...


class SharedLayers(Protocol):
    """A shared layer cache the builder may use (share/remote.py: ``SharedCache`` implements it; the
    CLI injects it): layers by ``compressed_key``, taken only when trusted and verified."""

    @property
    def stats(self) -> _SharedStats: ...

    def fetch_layers(self, cache: Cache, wanted: dict[str, str], *, jobs: int = 4) -> dict[str, Layer]:
        """{layer name: layer} for the wanted {name: key} it holds, verified (or only referenced)."""
        ...

    def publish_layers(self, cache: Cache, entries: dict[str, tuple[str, Layer]], *, jobs: int = 4) -> None:
        """Offer the built layers {name: (key, layer)} to the shared cache."""
        ...


@dataclass
class BuildResult:
    image: Image
    layers: list[tuple[LayerPlan, Layer, bool]]  # plan, layer, reused from the layer cache
    labels: dict[str, str]
    # per layer name: unpacked bytes before/after the [build] rules, files pruned, .pyc added
    stats: dict[str, dict[str, int]] | None = None



@dataclass(frozen=True)
class _Build:
    """One build's settings, shared by its steps."""

    lock: Lock
    lock_bytes: bytes
    cache: Cache
    lock_dir: Path
    compression: str
    codec: tuple[str, int]
    jobs: int
    report: Report
    tracking_uri: str | None

    def cache_key(self, p: LayerPlan) -> str:
        return compressed_key(p.key, self.compression, self.codec)


def build(lock: Lock, lock_bytes: bytes, cache: Cache, *, lock_dir: Path, jobs: int = 4,
          report: Report = silent, compression: str | None = None,
          shared: SharedLayers | None = None, tracking_uri: str | None = None) -> BuildResult:
    """Build the image. ``compression`` overrides the lock's ``[image] compression`` (docker-archive
    and ``--load`` need gzip); the diff_ids and the config are the same either way. ``shared`` is a
    registry used as a shared layer cache (share/remote.py): layers missing here are taken from it
    when trusted, and what it lacks is pushed to it after the build. ``tracking_uri``: the MLflow
    server to refill model files from when the cache lacks them (else $MLFLOW_TRACKING_URI)."""
    compression = compression or lock.compression
    check_compressor(lock, compression)
    b = _Build(lock, lock_bytes, cache, lock_dir, compression, layer_codec(lock, compression), jobs, report,
               tracking_uri)
    lock_digest = sha256_bytes(lock_bytes)
    mtime = source_date_epoch(lock)
    plans = plan_layers(lock, mtime=mtime, lock_digest=lock_digest, level=LEVEL)
    done = _reused_layers(b, plans, shared)
    todo = [p for p in plans if p.name not in done]
    report("plan", {"layers": len(plans), "cached": len(done), "todo": [p.name for p in todo]})
    done.update(_build_layers(b, todo, mtime=mtime))
    labels = labels_for(lock, lock_digest)
    image = build_image([(p.name, done[p.name]) for p in plans], config=image_spec(lock, labels),
                        annotations=manifest_annotations(lock, lock_digest), created=lock.created)
    stats = {p.name: cache.meta_get("layer-stats", p.key.replace(":", "-")) or {} for p in plans}
    if shared is not None:
        shared.publish_layers(cache, {p.name: (compressed_key(p.key, compression), done[p.name]) for p in plans
                                      if p.name not in shared.stats.fetched}, jobs=jobs)
    return BuildResult(image=image, layers=[(p, done[p.name], p not in todo) for p in plans], labels=labels,
                       stats=stats)


@dataclass
class Built:
    """What `image` built: ``result`` for the OCI layout and registry outputs (in the asked
    compression; gzip when only gzip outputs were asked), ``gzip`` the image docker-archive and
    --load take (Docker 20.10 cannot load zstd): the same layers' gzip twins, same diff_ids and config."""

    result: BuildResult
    compression: str
    gzip: Image | None = None


def checked_compression(lock: Lock, asked: str | None) -> str:
    """``--compression``, checked; else the lock's ``[image] compression``. The lock pins the compressor
    of its own compression only: the other one gets the encoder and level oci/compress.py's codec_for
    gives it (an older lock: what it always used; else the CPU-independent one)."""
    from lockbuild.oci.compress import COMPRESSIONS

    if asked is not None and asked not in COMPRESSIONS:
        raise BuildError(f"--compression {asked!r} is not one of {', '.join(COMPRESSIONS)}",
                         hint="use --compression gzip or --compression zstd")
    return asked or lock.compression


def build_outputs(lock: Lock, lock_bytes: bytes, cache: Cache, *, compression: str | None, oci_or_push: bool,
                  archive_or_load: bool, lock_dir: Path, **kw: Any) -> Built:
    """The builds the asked outputs need: docker-archive and --load alone need only the gzip layers (a
    zstd lock compresses once, not twice); with an OCI layout or a push too, a zstd lock is built
    twice (zstd, then gzip). ``kw``: ``build``'s jobs, report, shared, tracking_uri."""
    compression = checked_compression(lock, compression)
    result = build(lock, lock_bytes, cache, lock_dir=lock_dir, compression=compression if oci_or_push else "gzip",
                   **kw)
    built = Built(result, compression)
    if archive_or_load:
        built.gzip = result.image if compression == "gzip" or not oci_or_push else build(
            lock, lock_bytes, cache, lock_dir=lock_dir, compression="gzip", **kw).image
    return built


def _reused_layers(b: _Build, plans: list[LayerPlan], shared: SharedLayers | None) -> dict[str, Layer]:
    """The layers already made: in the local layer cache (blob re-verified), else in the shared cache."""
    done: dict[str, Layer] = {}
    for p in plans:
        layer = _verified_layer(b.cache, b.cache_key(p), p.name, b.report)
        if layer is not None:
            done[p.name] = layer
    if shared is not None:
        keys = {p.name: compressed_key(p.key, b.compression) for p in plans if p.name not in done}
        done.update(shared.fetch_layers(b.cache, keys, jobs=b.jobs))  # not layer-cache records: signed entries
    return done


def _verified_layer(cache: Cache, key: str, name: str = "", report: Report = silent) -> Layer | None:
    layer, why = layer_record(cache, key)
    if why is not None:
        report("warning", {"message": f"layer cache record for {name} is not trusted ({why}); rebuilding it"})
    if layer is not None and not cache.has(layer.digest):
        return None
    if layer is not None and cache.get(layer.digest, layer.size) is None:
        return None  # the blob was corrupt: it has been dropped; rebuild
    return layer


def _build_layers(b: _Build, todo: list[LayerPlan], *, mtime: int) -> dict[str, Layer]:
    """Build layers in parallel: deflate and sha256 release the GIL, so threads use every core.
    Each layer's bytes depend only on its own inputs, never on the order they finish in.

    Downloads overlap the build: every download starts at once in the background, and each layer
    starts as soon as its own inputs are verified in the cache; each input is verified once."""
    from concurrent.futures import ThreadPoolExecutor

    downloads = inputs.start_downloads(b.lock, todo, b.cache, jobs=b.jobs, report=b.report)
    inputs.prestage_rootfs(b.lock, todo, b.cache, downloads)
    blobs: dict[str, Path] = {}

    def one(p: LayerPlan) -> tuple[str, Layer]:
        got = inputs.fetch_inputs(b.lock, [p], b.cache, jobs=b.jobs, report=b.report, lock_dir=b.lock_dir,
                                  downloads=downloads, tracking_uri=b.tracking_uri)
        blobs.update(got)
        b.report("layer-start", {"name": p.name})
        layer = _build_layer(b, p, got, mtime=mtime)
        remember_layer(b.cache, b.cache_key(p), layer)
        b.report("layer-done", {"name": p.name, "size": layer.size, "diff_id": layer.diff_id})
        return p.name, layer

    workers = max(1, min(len(todo), int(os.environ.get("LOCKBUILD_BUILD_JOBS", os.cpu_count() or 2))))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        built = dict(pool.map(one, sorted(todo, key=lambda p: p.recipe.weight(p.wheels), reverse=True)))
    if any(p.kind == "python" for p in todo):
        _check_conflicts(b, blobs)  # within a layer, wheel_tree refuses it already
    return built


def _wheel_listing(lock: Lock, cache: Cache, w, path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    meta = cache.meta_get("wheel-paths", f"{w.sha256}-{lock.target.python}")
    if meta is not None:
        return list(meta["paths"])
    paths = wheel_install.install_paths(w, path, lock.target)
    cache.meta_put("wheel-paths", f"{w.sha256}-{lock.target.python}", {"paths": paths})
    return paths


def _check_conflicts(b: _Build, blobs: dict[str, Path]) -> None:
    listings = []
    for w in b.lock.python.packages:
        path = blobs.get(w.sha256) or inputs.wheel_blob(b.lock, w, b.cache, lock_dir=b.lock_dir,
                                                        tracking_uri=b.tracking_uri)
        listings.append((w, _wheel_listing(b.lock, b.cache, w, path)))
    conflicts = wheel_install.find_conflicts(listings)
    if conflicts:
        raise wheel_install.conflict_error(conflicts)


def _build_layer(b: _Build, p: LayerPlan, blobs: dict[str, Path], *, mtime: int) -> Layer:
    stage = Path(tempfile.mkdtemp(prefix=f"stage-{p.name}-", dir=b.cache.tmpdir()))
    staged = None
    try:
        staged = stage_layer(p, b.lock, b.lock_bytes, blobs, stage, mtime=mtime, report=b.report)
        nodes = layer_nodes(staged)  # one walk of a staging directory, for the stats and the tar
        b.cache.meta_put("layer-stats", p.key.replace(":", "-"), tree_stats(staged, nodes))
        encoder, level = b.codec
        return write_layer(b.cache, nodes, mtime=staged.mtime, level=level, owners=staged.owners,
                           compression=b.compression, encoder=encoder)
    except OSError as e:
        if e.errno == 28:
            raise BuildError(f"disk full while building layer {p.name} in {b.cache.root}",
                             hint="free space or point LOCKBUILD_CACHE at a larger disk") from None
        raise
    finally:
        if staged is not None:
            staged.close()
        shutil.rmtree(stage, ignore_errors=True)
