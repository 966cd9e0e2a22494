"""``lockbuild cache gc``: retention for the local cache and for the shared cache's registry tags.

What is kept is what the given locks need to build their images again without the network:
  - every input blob: wheels (and an sdist-built wheel's sdist and build env), .debs, model files;
  - the layer records of each lock's layers (for gzip and zstd) and the layer blobs they name, and
    the shared-cache entries used here for them (``meta/shared-entries/``) and their blobs.
Everything else in ``blobs/`` goes (indexes and metadata downloaded by ``lockbuild lock`` included:
the next lock fetches them again), layer records of other keys go, and ``tmp/`` entries older than an
hour (a live build's temp files are younger). Small derived records (wheel file lists, licenses)
stay. Run it between builds: a build running at the same time may lose a blob it was about to read
(it then fails verifying it, and a re-run fetches it again).

In the registry (``--registry HOST/REPO``) the cache tags (``lb-<key>-<signer>``) of keys the locks
do not use are deleted (their manifests); the registry's own garbage collection (docker-registry
``garbage-collect``, ACR's purge of untagged manifests) then frees the blobs nothing references.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import Lock, Wheel
from lockbuild.oci.layercache import META_NAMESPACE, layer_record
from lockbuild.share.remote import LOCAL_NAMESPACE

TMP_MIN_AGE = 3600.0


@dataclass
class Needed:
    blobs: set[str] = field(default_factory=set)
    layer_keys: set[str] = field(default_factory=set)


def _wheel_blobs(w: Wheel) -> Iterable[str]:
    yield w.sha256
    if w.sdist is not None:
        yield w.sdist.sha256
    for b in w.build_requires:
        yield from _wheel_blobs(b)


def layer_keys(lock: Lock, lock_bytes: bytes) -> set[str]:
    """The layer-cache keys of a lock's layers, for both compressions."""
    from lockbuild.assemble.build import LEVEL, compressed_key, source_date_epoch
    from lockbuild.assemble.plan import plan_layers
    from lockbuild.fsutil import sha256_bytes
    from lockbuild.oci.compress import COMPRESSIONS

    plans = plan_layers(lock, mtime=source_date_epoch(lock), lock_digest=sha256_bytes(lock_bytes), level=LEVEL)
    keys = set()
    for compression in COMPRESSIONS:
        try:
            keys |= {compressed_key(p.key, compression) for p in plans}
        except Exception:  # noqa: BLE001 (a compressor not installed here: its layers cannot be kept anyway)
            continue
    return keys


def needed(locks: Iterable[tuple[Lock, bytes]]) -> Needed:
    n = Needed()
    for lock, lock_bytes in locks:
        for w in lock.python.packages:
            n.blobs.update(_wheel_blobs(w))
        n.blobs.update(d.sha256 for d in lock.debian.packages)
        n.blobs.update(f.sha256 for f in lock.model.files)
        n.layer_keys |= layer_keys(lock, lock_bytes)
    return n


def _shared_entry_blob(cache: Cache, key: str) -> str | None:
    """The layer blob a shared-cache entry used here names (share/remote.py keeps them), if any."""
    import json

    record = cache.meta_get(LOCAL_NAMESPACE, key.removeprefix("sha256:"))
    try:
        return str(json.loads(record["manifest"])["layers"][0]["digest"]) if record else None
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def _size(path: os.PathLike[str] | str) -> int:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            return sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(path) for f in fs)
        return os.lstat(path).st_size
    except OSError:
        return 0


def gc_local(cache: Cache, locks: list[tuple[Lock, bytes]], *, dry_run: bool = False,
             tmp_min_age: float = TMP_MIN_AGE) -> dict[str, object]:
    """Free what the locks do not need; returns what was (or, dry, would be) freed and kept."""
    n = needed(locks)
    keep_blobs = set(n.blobs)
    kept_layers = 0
    for key in n.layer_keys:
        layer, _why = layer_record(cache, key)
        entry = _shared_entry_blob(cache, key)  # a layer taken from the shared cache (trust is checked on use)
        if layer is not None or entry is not None:
            keep_blobs.update(d for d in (layer.digest if layer else None, entry) if d)
            kept_layers += 1
    freed = {"blobs": 0, "blob_bytes": 0, "layer_records": 0, "tmp": 0, "tmp_bytes": 0}
    kept = {"blobs": 0, "blob_bytes": 0, "layer_records": kept_layers}
    blobs_dir = cache.root / "blobs" / "sha256"
    for sub in sorted(blobs_dir.iterdir()) if blobs_dir.is_dir() else []:
        for f in sorted(sub.iterdir()):
            size = _size(f)
            if "sha256:" + f.name in keep_blobs:
                kept["blobs"] += 1
                kept["blob_bytes"] += size
                continue
            freed["blobs"] += 1
            freed["blob_bytes"] += size
            if not dry_run:
                f.unlink(missing_ok=True)
    keep_records = {k.removeprefix("sha256:") for k in n.layer_keys}
    for namespace in (META_NAMESPACE, LOCAL_NAMESPACE):
        records = cache.root / "meta" / namespace
        for f in sorted(records.glob("*.json")) if records.is_dir() else []:
            if f.stem not in keep_records:
                freed["layer_records"] += 1
                if not dry_run:
                    f.unlink(missing_ok=True)
    now = time.time()
    for f in sorted(cache.tmpdir().iterdir()):
        try:
            age = now - f.lstat().st_mtime
        except FileNotFoundError:
            continue
        if age < tmp_min_age:
            continue
        freed["tmp"] += 1
        freed["tmp_bytes"] += _size(f)
        if not dry_run:
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f, ignore_errors=True)
            else:
                f.unlink(missing_ok=True)
    return {"cache": str(cache.root), "dry_run": dry_run, "freed": freed, "kept": kept}


def gc_registry(repo: str, locks: list[tuple[Lock, bytes]], *, dry_run: bool = False) -> dict[str, object]:
    """Delete the cache tags in ``repo`` whose layer key none of the locks uses."""
    import functools

    from lockbuild.oci import registry as reg
    from lockbuild.share.entry import parse_tag

    keys = needed(locks).layer_keys
    ref = reg.parse_reference(repo)
    s = reg.open_session(ref, push=True)
    deleted: list[str] = []
    kept = 0
    with s.client:
        tags: list[str] = []
        url: str | None = s.url("tags/list")
        while url:
            r = reg.with_retries(functools.partial(s.send, "GET", url, ok=(200, 404)))
            if r.status_code == 404:
                break
            tags += (r.json() or {}).get("tags") or []
            link = r.links.get("next", {}).get("url")
            url = link or None
        for tag in sorted(tags):
            parsed = parse_tag(tag)
            if parsed is None:
                continue  # not a cache tag: never ours to delete
            if parsed[0] in keys:
                kept += 1
                continue
            deleted.append(tag)
            if dry_run:
                continue
            head = s.send("HEAD", s.url(f"manifests/{tag}"), ok=(200, 404),
                          headers={"Accept": reg.MANIFEST_MEDIA_TYPE})
            digest = head.headers.get("docker-content-digest")
            if head.status_code == 200 and digest:
                s.send("DELETE", s.url(f"manifests/{digest}"), ok=(202, 404))
    return {"registry": f"{ref.registry}/{ref.repository}", "dry_run": dry_run, "deleted_tags": deleted,
            "kept_tags": kept}
