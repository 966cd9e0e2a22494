"""A build's inputs: what its layers need from the network, each verified once, handed to each
layer as soon as its own are in.

``start_downloads`` starts every .deb and index wheel the layers to build need, in the
background (fetch/download.py: Downloads); ``prestage_rootfs`` stages the build's one Debian rootfs
as soon as its .debs are in; ``fetch_inputs`` gives one layer (or verify's derivation of it) its
verified inputs: downloads, model files, and wheels built from locked sdists.
"""

from __future__ import annotations

from pathlib import Path

from lockbuild.assemble import bytecode
from lockbuild.assemble.recipe import LayerPlan
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.debs import deb_items
from lockbuild.fetch.download import Downloads, Item, fetch_all
from lockbuild.fetch.model import fetch_model_files
from lockbuild.fetch.sdist import ensure_built
from lockbuild.lockfile.model import Lock, Wheel
from lockbuild.progress import Report


def start_downloads(lock: Lock, todo: list[LayerPlan], cache: Cache, *, jobs: int, report: Report) -> Downloads:
    """Every input the layers need, downloaded (or verified in the cache) in the background, with
    progress. Errors are raised to the layer that needs the input, by ``Downloads.path``."""
    return Downloads(cache, download_items(lock, todo), jobs=jobs, report=report)


def prestage_rootfs(lock: Lock, todo: list[LayerPlan], cache: Cache, downloads: Downloads) -> None:
    """Stage the Debian rootfs (the debian layer's tree and the bytecode compilers' interpreter) as
    soon as its .debs are in, on a core the big downloads leave idle. Errors are not raised here:
    the layer that needs the rootfs stages it again and raises them."""
    import threading

    if not any(p.recipe.needs_debs(lock) for p in todo):
        return

    def run() -> None:
        try:
            blobs = {i.sha256: downloads.path(i) for i in deb_items(lock.debian)}
            bytecode.staged_rootfs(lock, blobs, cache.tmpdir())
        except Exception:  # noqa: BLE001, S110 - the layer needing it stages it again and reports it
            pass

    threading.Thread(target=run, name="lockbuild-rootfs", daemon=True).start()


def download_items(lock: Lock, todo: list[LayerPlan]) -> list[Item]:
    """What the layers need from the network: the .debs and the index wheels, biggest first."""
    items: list[Item] = []
    if any(p.recipe.needs_debs(lock) for p in todo):
        items += deb_items(lock.debian)
    for p in todo:
        items += p.recipe.downloads(p.wheels)
    return items


def fetch_inputs(lock: Lock, todo: list[LayerPlan], cache: Cache, *, jobs: int, report: Report,
                  lock_dir: Path, downloads: Downloads | None = None, tracking_uri: str | None = None
                  ) -> dict[str, Path]:
    """The verified inputs of the planned layers: from ``downloads`` when the build started them,
    else fetched (cache first) here. Model files missing from the cache are read again from the
    lock's model URI (``tracking_uri``: its MLflow server, given by the caller)."""
    items = download_items(lock, todo)
    blobs: dict[str, Path] = {}
    if items and downloads is not None:
        blobs.update({i.sha256: downloads.path(i) for i in items})
    elif items:
        blobs.update(fetch_all(cache, items, jobs=jobs, report=report))
    if any(p.recipe.needs_model(p.wheels) for p in todo):
        blobs.update(fetch_model_files(lock.model, cache, lock_dir=lock_dir, tracking_uri=tracking_uri))
    for w in (w for p in todo for w in p.recipe.sdists(p.wheels)):
        report("sdist-build", {"name": w.name, "version": w.version})
        blobs[w.sha256] = ensure_built(w, cache, python=lock.target.python, jobs=jobs)
    return blobs


def wheel_blob(lock: Lock, w: Wheel, cache: Cache, *, lock_dir: Path, tracking_uri: str | None = None) -> Path:
    """One locked wheel's verified bytes, wherever the lock says they come from."""
    if w.source == "sdist":
        return ensure_built(w, cache, python=lock.target.python)
    if w.source == "model":
        return fetch_model_files(lock.model, cache, lock_dir=lock_dir, tracking_uri=tracking_uri)[w.sha256]
    path = cache.get(w.sha256, w.size)
    if path is None:
        path = fetch_all(cache, [Item(urls=(w.url,), sha256=w.sha256, size=w.size, label=w.filename)])[w.sha256]
    return path
