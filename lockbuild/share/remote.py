"""The registry as a shared build cache: look a layer up by its layer key, use it only when a trusted
key signed it and its bytes match what was signed, and push what this runner built.

Reading an entry (``SharedCache.fetch``), for each trusted key's tag in turn:
  1. GET the manifest (at most 64 KB) and the entry blob it names (digest re-checked);
  2. ``entry.check_entry``: a trusted signature over the statement for exactly this key, and the
     manifest's layer descriptor equal to the signed one;
  3. stream the layer blob into the local cache's temp file, hashing it (sha256, size) and its
     decompressed tar (diff_id) as it arrives; only when all three equal the signed values is it
     renamed into the local cache and recorded in the local layer cache (HMAC record).
Anything else is a note, and the layer is built as if the registry had nothing.

Writing (``SharedCache.publish``, only with a signing key): for each layer whose entry under this
runner's key is missing or not valid, push the blob (HEAD first, cross-repository mount when asked),
then the entry blob, then the manifest under the entry's tag, in that order: a manifest is never
visible before what it points at.

Auth, retries and the http client are oci/registry.py's (anonymous, Basic, Bearer tokens).
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from lockbuild.errors import IntegrityError, PublishError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import CHUNK
from lockbuild.oci import registry as reg
from lockbuild.oci.compress import ZSTD_LAYER_MEDIA_TYPE
from lockbuild.oci.layercache import Layer
from lockbuild.progress import Report, silent
from lockbuild.share import entry as E

MAX_OUT = 4 << 20  # decompressed bytes per step: a gzip bomb never sits in memory
LOOKUP_ATTEMPTS = 2  # a cache is optional: a registry that does not answer a lookup twice is skipped


class _PlainHash:
    """sha256 with the close() the hasher's owners call (the tar's hash is cheap next to inflating it)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def close(self) -> None:
        pass


class _TarHasher:
    """sha256 of a layer's tar, fed the compressed bytes as they arrive. Only a single gzip member or
    zstd frames: bytes after the gzip member are refused (another reader might unpack them)."""

    def __init__(self, media_type: str) -> None:
        self.h = _PlainHash()
        self.zstd = media_type == ZSTD_LAYER_MEDIA_TYPE
        if self.zstd:
            import zstandard

            self._w = zstandard.ZstdDecompressor().stream_writer(self, write_size=MAX_OUT,  # type: ignore[arg-type]
                                                                   closefd=False)
        else:
            from isal import igzip_lib  # ISA-L's inflate: ~1.6x faster here than isal_zlib's decompressobj

            self._d = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        self.trailing = False

    def write(self, data: bytes) -> int:  # the zstd writer's sink
        self.h.update(data)
        return len(data)

    def update(self, data: bytes) -> None:
        if self.zstd:
            self._w.write(data)
            return
        if self._d.eof:
            self.trailing = self.trailing or bool(data)
            return
        self.h.update(self._d.decompress(data, MAX_OUT))
        while not self._d.eof and not self._d.needs_input:  # more output from what it was given
            self.h.update(self._d.decompress(b"", MAX_OUT))
        if self._d.eof and self._d.unused_data:
            self.trailing = True

    def diff_id(self) -> str:
        if self.zstd:
            self._w.flush()
        elif not self._d.eof:
            raise E.Untrusted("its layer blob ends inside the gzip stream")
        if self.trailing:
            raise E.Untrusted("its layer blob has bytes after the gzip member")
        return "sha256:" + self.h.hexdigest()

    def close(self) -> None:
        self.h.close()


@dataclass
class ShareStats:
    fetched: list[str] = field(default_factory=list)  # layer names used from the registry
    fetched_bytes: int = 0  # layer blob bytes downloaded (not those only referenced, see ``lazy``)
    referenced: list[str] = field(default_factory=list)  # used by their signed descriptor, never downloaded
    pushed: list[str] = field(default_factory=list)  # entries written
    uploaded_bytes: int = 0  # layer blob bytes sent (HEAD-skipped and mounted blobs are not)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"fetched": sorted(self.fetched), "fetched_bytes": self.fetched_bytes,
                "referenced": sorted(self.referenced), "pushed": sorted(self.pushed),
                "uploaded_bytes": self.uploaded_bytes, "notes": list(self.notes)}


class SharedCache:
    """One registry repository (``HOST/REPO``) used as the shared layer cache."""

    def __init__(self, repo: str, *, signer=None, trusted: Sequence = (),  # type: ignore[no-untyped-def]
                 mount_from: str | None = None, lazy: bool = False, report: Report = silent) -> None:
        ref = reg.parse_reference(repo)
        if ref.tag or ref.digest:
            raise PublishError(f"--cache-registry {repo!r} names a tag or digest",
                               hint="give only HOST/REPO, e.g. 127.0.0.1:5000/lockbuild-cache")
        self.ref = ref
        self.signer = signer
        self._own = _own_verifier(signer) if signer is not None else None
        self.key_id = self._own.key_id if self._own is not None else None
        self.trusted = {v.key_id: v for v in trusted}
        self.mount_from = mount_from
        # lazy: the only output is a push to this registry, so a trusted entry's blob is not downloaded;
        # the push mounts it from here (the node's runtime checks the diff_id when it unpacks the layer)
        self.lazy = lazy
        self.report = report
        self.stats = ShareStats()
        self._lock = threading.Lock()
        self._session: reg.Session | None = None
        self._down: str | None = None  # set when the registry stayed unreachable: stop asking it

    @property
    def name(self) -> str:
        return f"{self.ref.registry}/{self.ref.repository}"

    def _s(self) -> reg.Session:
        with self._lock:
            if self._session is None:
                self._session = reg.open_session(self.ref, push=self.signer is not None, mount_from=self.mount_from)
            return self._session

    def mount_source(self, image_ref: str) -> str | None:
        """The cache repository, when an image pushed to ``image_ref`` can mount blobs from it."""
        r = reg.parse_reference(image_ref)
        return self.ref.repository if r.registry == self.ref.registry and r.repository != self.ref.repository else None

    def close(self) -> None:
        if self._session is not None:
            self._session.client.close()

    def note(self, message: str) -> None:
        with self._lock:
            self.stats.notes.append(message)
        self.report("warning", {"message": message})

    # -- reading -------------------------------------------------------------------------------------

    def fetch_layers(self, cache: Cache, wanted: dict[str, str], *, jobs: int = 4) -> dict[str, Layer]:
        """name -> Layer for each wanted layer (name -> layer key) found, trusted and verified."""
        if not wanted:
            return {}
        if not self.trusted:
            self.note(f"shared cache {self.name}: no trusted key (--cache-trust / LOCKBUILD_CACHE_TRUST): "
                      "its entries are not used, every missing layer is built here")
            return {}
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(wanted)))) as pool:
            found = dict(zip(wanted, pool.map(lambda n: self.fetch(cache, n, wanted[n]), wanted), strict=True))
        return {n: layer for n, layer in found.items() if layer is not None}

    def _unreachable(self, e: PublishError, what: str) -> None:
        """Note the failure; after a transient one that outlived its retries, stop using the registry."""
        with self._lock:
            first = self._down is None
            if isinstance(e, reg.Transient):
                self._down = e.message
        if first or not isinstance(e, reg.Transient):
            self.note(f"shared cache {self.name}: {what} ({e.message})"
                      + ("; not asking it again in this build" if isinstance(e, reg.Transient) else ""))

    def fetch(self, cache: Cache, name: str, key: str) -> Layer | None:
        if self._down:
            return None
        for key_id in sorted(self.trusted):
            tag = E.tag_for(key, key_id)
            try:
                manifest = reg.with_retries(functools.partial(self._get_manifest, tag), LOOKUP_ATTEMPTS)
                if manifest is None:
                    continue
                layer = self._use(cache, key, manifest)
            except (E.Untrusted, IntegrityError) as e:
                self.note(f"shared cache entry {tag} for layer {name} ignored: {e.message}; building it here")
                continue
            except PublishError as e:
                self._unreachable(e, f"cannot look up layer {name}, building it here")
                return None
            with self._lock:
                self.stats.fetched.append(name)
                if cache.has(layer.digest):
                    self.stats.fetched_bytes += layer.size
                else:
                    self.stats.referenced.append(name)
            return layer
        return None

    def _get_manifest(self, reference: str) -> bytes | None:
        s = self._s()
        r = s.send("GET", s.url(f"manifests/{reference}"), ok=(200, 404),
                   headers={"Accept": reg.MANIFEST_MEDIA_TYPE})
        if r.status_code == 404:
            return None
        if len(r.content) > E.MAX_ENTRY_BYTES:
            raise E.Untrusted(f"its manifest is {len(r.content)} bytes")
        return r.content

    def _get_small_blob(self, digest: str, size: int) -> bytes:
        s = self._s()
        r = s.send("GET", s.url(f"blobs/{digest}"), ok=(200,), follow_redirects=True)
        data = r.content
        if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise E.Untrusted(f"the registry served other bytes for its entry blob {digest[:19]}")
        return data

    def _use(self, cache: Cache, key: str, manifest: bytes) -> Layer:
        digest, size = E.config_digest_of(manifest)
        config = reg.with_retries(functools.partial(self._get_small_blob, digest, size), LOOKUP_ATTEMPTS)
        layer, _signer = E.check_entry(key, manifest, config, self.trusted)
        if self.lazy and not cache.has(layer.digest):
            return layer
        local = cache.get(layer.digest, layer.size)
        if local is not None:  # same bytes already here: still check the signed diff_id against them
            hasher = _TarHasher(layer.media_type)
            try:
                with open(local, "rb") as f:
                    while chunk := f.read(CHUNK):
                        hasher.update(chunk)
                diff_id = hasher.diff_id()
            finally:
                hasher.close()
            if diff_id != layer.diff_id:
                raise E.Untrusted(f"its signed diff_id {layer.diff_id[:19]} is not the tar of {layer.digest[:19]}")
            return layer
        reg.with_retries(functools.partial(self._download, cache, layer))
        return layer

    def _download(self, cache: Cache, layer: Layer) -> None:
        """Stream the blob into the local cache, hashing blob and tar on the way; installed only when
        sha256, size and diff_id are the signed ones (else nothing is left behind). The tar is inflated
        and hashed on a second thread (both sides release the GIL), so a big layer costs about the
        longer of the two passes, not their sum."""
        import queue

        s = self._s()
        pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        hasher = _TarHasher(layer.media_type)
        failed: list[BaseException] = []

        def inflate() -> None:
            try:
                while (piece := pieces.get()) is not None:
                    if not failed:
                        hasher.update(piece)
            except BaseException as e:  # noqa: BLE001 (reported by the downloading side)
                failed.append(e)
                while pieces.get() is not None:
                    pass

        worker = threading.Thread(target=inflate, name=f"inflate-{layer.digest[7:19]}", daemon=True)
        worker.start()
        try:
            with cache.writer(layer.digest) as w:
                try:
                    with s.client.stream("GET", s.url(f"blobs/{layer.digest}"), follow_redirects=True,
                                         headers={"Accept-Encoding": "identity"}) as resp:
                        if resp.status_code != 200:
                            transient = resp.status_code == 429 or resp.status_code >= 500
                            raise (reg.Transient if transient else PublishError)(
                                f"GET blob {layer.digest} -> HTTP {resp.status_code}")
                        batch: list[bytes] = []
                        batched = 0
                        for chunk in resp.iter_raw():
                            if w.size + len(chunk) > layer.size:
                                raise E.Untrusted(f"its layer blob is longer than the signed {layer.size} bytes")
                            w.write(chunk)
                            batch.append(chunk)
                            batched += len(chunk)
                            if batched >= CHUNK:  # the inflater gets ~1 MiB pieces: fewer, bigger calls
                                pieces.put(b"".join(batch))
                                batch, batched = [], 0
                            if failed:
                                break
                        if batch:
                            pieces.put(b"".join(batch))
                except httpx.HTTPError as e:
                    raise reg.Transient(f"GET blob {layer.digest} failed: {e}") from e
                finally:
                    pieces.put(None)
                    worker.join()
                if w.size != layer.size or w.digest() != layer.digest:
                    raise E.Untrusted(f"the registry served other bytes for {layer.digest[:19]} "
                                      f"({w.size} bytes, sha256 {w.hexdigest()[:12]})")
                if failed:
                    if isinstance(failed[0], E.Untrusted):
                        raise failed[0]
                    raise E.Untrusted(f"its layer blob does not decompress ({failed[0]})")
                got = hasher.diff_id()
                if got != layer.diff_id:
                    raise E.Untrusted(f"its blob's tar is {got[:19]}, not the signed diff_id {layer.diff_id[:19]}")
        finally:
            if worker.is_alive():
                pieces.put(None)
                worker.join()
            hasher.close()

    # -- writing -------------------------------------------------------------------------------------

    def publish_layers(self, cache: Cache, entries: dict[str, tuple[str, Layer]], *, jobs: int = 4) -> None:
        """Push an entry for each name -> (layer key, Layer) the registry lacks under this runner's key."""
        if not entries:
            return
        if self.signer is None:
            self.note(f"shared cache {self.name}: no --cache-key (LOCKBUILD_CACHE_KEY): nothing pushed")
            return
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(entries)))) as pool:
            list(pool.map(lambda n: self._publish_one(cache, n, *entries[n]), entries))

    def _current(self, tag: str, key: str, layer: Layer) -> bool:
        """Whether this runner's entry for ``key`` is already there, valid and for the same blob."""
        manifest = reg.with_retries(functools.partial(self._get_manifest, tag), LOOKUP_ATTEMPTS)
        if manifest is None or self.key_id is None:
            return False
        try:
            digest, size = E.config_digest_of(manifest)
            config = reg.with_retries(functools.partial(self._get_small_blob, digest, size), LOOKUP_ATTEMPTS)
            got, _ = E.check_entry(key, manifest, config, {self.key_id: self._own})
        except (E.Untrusted, IntegrityError):
            return False
        return got == layer

    def _publish_one(self, cache: Cache, name: str, key: str, layer: Layer) -> None:
        assert self.key_id is not None
        if self._down:
            return
        tag = E.tag_for(key, self.key_id)
        try:
            if self._current(tag, key, layer):
                return
            entry = E.make_entry(key, layer, self.signer.sign(E.statement(key, layer)), self.key_id)
            s = self._s()
            result = reg.PushResult(digest="", reference="")
            reg.with_retries(functools.partial(reg._push_blob, s, layer.digest, layer.path(cache), result,
                                               self.mount_from, None))
            reg.with_retries(functools.partial(reg._push_blob, s, entry.config_digest, entry.config, result,
                                               None, None))
            reg.with_retries(functools.partial(self._put_manifest, tag, entry.manifest))
        except PublishError as e:
            self._unreachable(e, f"could not push layer {name}")
            return
        with self._lock:
            self.stats.pushed.append(name)
            self.stats.uploaded_bytes += layer.size if layer.digest in result.uploaded else 0

    def _put_manifest(self, tag: str, manifest: bytes) -> None:
        s = self._s()
        s.send("PUT", s.url(f"manifests/{tag}"), ok=(200, 201), content=manifest,
               headers={"Content-Type": reg.MANIFEST_MEDIA_TYPE})



def _own_verifier(signer):  # type: ignore[no-untyped-def]
    """This runner's own public key as a Verifier: to recognise its own entries when publishing."""
    import tempfile
    from pathlib import Path

    from lockbuild.sign.keys import load_public_key

    with tempfile.TemporaryDirectory(prefix="lockbuild-key-") as d:
        pub = Path(d) / "own.pub.pem"
        pub.write_bytes(signer.public_pem())
        return load_public_key(pub)
