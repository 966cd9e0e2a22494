"""Model files into the cache: from the cache, the local model directory, or MLflow.

The lock names each file by sha256; whatever source serves it, the bytes are checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lockbuild.errors import IntegrityError, ModelError
from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import ModelLock


def cache_model_tree(model_dir: Path, model: ModelLock, cache: Cache) -> None:
    """Put every locked model file into the cache (done at lock time, so builds need no source)."""
    cache_model_files(model_dir, [(f.path, f.sha256) for f in model.files], cache,
                      rewritten={p for p, _ in model.rewritten})


def _put(model_dir: Path, path: str, sha256: str, cache: Cache, rewritten: set[str] | frozenset[str]) -> None:
    from lockbuild.model.metadata import inside_model, read_text, scrub_credentials

    src = inside_model(model_dir, path)
    if path in rewritten:  # the lock pins the file without its URL credentials: only those bytes are cached
        cache.put_bytes(scrub_credentials(read_text(src, path)).encode("utf-8"), expected_sha256=sha256)
    else:
        cache.put_file(src, expected_sha256=sha256)


def cache_model_files(model_dir: Path, files: Iterable[tuple[str, str]], cache: Cache, *,
                      rewritten: set[str] | frozenset[str] = frozenset()) -> None:
    """Put these (path in the model, sha256) files into the cache, checked against their hashes on
    the way in; an entry already there is kept (every reader verifies it with ``cache.get``).
    ``rewritten`` paths go in as the lock records them (model/metadata.py scrub_credentials)."""
    for path, sha256 in files:
        if not cache.has(sha256):
            _put(model_dir, path, sha256, cache, rewritten)


def fetch_model_files(model: ModelLock, cache: Cache, *, lock_dir: Path,
                      tracking_uri: str | None = None) -> dict[str, Path]:
    """{sha256: verified cache path} for every model file. Files the cache lacks are read again from
    the lock's model URI: a local path relative to ``lock_dir``, or an MLflow URI on ``tracking_uri``
    (the caller's; default $MLFLOW_TRACKING_URI). The builder reads only the lock: never the spec."""
    missing = [f for f in model.files if cache.get(f.sha256, f.size) is None]
    if missing:
        _refill(model, cache, lock_dir, tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    out = {}
    for f in model.files:
        p = cache.get(f.sha256, f.size)
        if p is None:
            raise IntegrityError(
                f"model file {f.path} ({f.sha256}) is not available with the locked content",
                hint="the model changed since it was locked: run `lockbuild lock --check` to see what changed",
            )
        out[f.sha256] = p
    return out


def _refill(model: ModelLock, cache: Cache, lock_dir: Path, tracking_uri: str | None) -> None:
    from lockbuild.model.intake import fetch_model

    uri = model.resolved_uri
    try:
        source = fetch_model(uri, tracking_uri=tracking_uri, base_dir=lock_dir)
    except ModelError as e:
        raise ModelError(f"model files are not in the cache and the source is unavailable: {e.message}",
                         hint=e.hint) from None
    try:
        for f in model.files:
            p = source.path / f.path
            if not p.resolve().is_relative_to(source.path.resolve()):
                continue  # a symlink out of the model directory is never read (reported below as missing)
            if p.is_file() and not cache.has(f.sha256):
                try:
                    _put(source.path, f.path, f.sha256, cache, {q for q, _ in model.rewritten})
                except (IntegrityError, ModelError):
                    pass  # reported below as unavailable with the locked content
    finally:
        source.cleanup()
