"""The registry as a shared build cache: look a layer up by its layer key, use it only when a trusted
key signed it and its bytes match what was signed, and push what this runner built.

Reading an entry (``SharedCache.fetch``), for each trusted key's tag in turn:
  1. GET the manifest (at most 64 KB) and the entry blob it names (digest re-checked);
  2. ``entry.check_entry``: a trusted signature over the statement for exactly this key, and the
     manifest's layer descriptor equal to the signed one;
  3. stream the layer blob into the local cache's temp file, hashing it (sha256, size) as it
     arrives; only when both equal the signed values is it renamed into the local cache. The entry
     is kept beside it (``meta/shared-entries/``) and checked again whenever it is used later.
Lookups run all at once, then downloads biggest first; a big blob comes as two ranges at once.
Anything else is a note, and the layer is built as if the registry had nothing.

The signed diff_id is believed without inflating the blob, as Nix believes a trusted narinfo: the
bytes are the ones the trusted key signed, and what their tar hashes to is part of what it signed.
A lie there cannot slip through unseen: the image config would carry a diff_id its layer does not
have, which ``verify`` (it inflates every layer) and the runtime unpacking the layer refuse, and
``verify --rederive`` builds every layer again from the lock. ``LOCKBUILD_CACHE_CHECK_TAR=1``
inflates and hashes each blob's tar while reading it anyway (about 4x the bytes to hash).

Writing (``SharedCache.publish``, only with a signing key): for each layer whose entry under this
runner's key is missing or not valid, push the blob (HEAD first, cross-repository mount when asked),
then the entry blob, then the manifest under the entry's tag, in that order: a manifest is never
visible before what it points at.

Auth, retries and the http client are oci/registry.py's (anonymous, Basic, Bearer tokens).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lockbuild.digest import to_hex
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
SPLIT_BYTES = 64 << 20  # a blob this big downloads as two ranges at once (TensorFlow's layer is ~240 MB)
PIPE_DEPTH = 16  # pieces (up to 1 MiB each) queued between the receiving and the consuming thread
LOOKUP_JOBS = 8  # entry lookups at once (two small GETs each)
LOCAL_NAMESPACE = "shared-entries"  # meta/<this>/<layer key hex>.json: entries used here before


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


class _Pipe:
    """Hands a download's pieces to ``consume`` on a thread of its own, so receiving (the http client)
    and what is done with the bytes (sha256 and the file write; inflating) overlap: sha256, zlib,
    zstd and file writes release the GIL. The first error stops the consuming; ``feed`` then says so."""

    def __init__(self, consume: Callable[[bytes], object], name: str) -> None:
        import queue

        self.consume = consume
        self.pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=PIPE_DEPTH)
        self.failed: list[BaseException] = []
        self.worker = threading.Thread(target=self._run, name=name, daemon=True)
        self.worker.start()

    def _run(self) -> None:
        try:
            while (piece := self.pieces.get()) is not None:
                self.consume(piece)
        except BaseException as e:  # noqa: BLE001 (raised again by the downloading side)
            self.failed.append(e)
            while self.pieces.get() is not None:
                pass

    def feed(self, piece: bytes) -> bool:
        """Queue a piece; False once consuming failed (stop downloading)."""
        if not self.failed:
            self.pieces.put(piece)
        return not self.failed

    def finish(self) -> None:
        if self.worker.is_alive():
            self.pieces.put(None)
            self.worker.join()


class _RangeTail:
    """The second half of a big blob (``Range: bytes=half-``), downloaded on a thread of its own into a
    temp file while the first half streams; then fed, in order, through the same hashing pipes. Only
    bytes the registry says are exactly that range (206, its Content-Range, its length) are used; else
    the caller reads the whole blob from its own stream, as without a tail."""

    def __init__(self, s: reg.Session, layer: Layer, half: int, tmpdir: Path) -> None:
        import tempfile

        self.s, self.layer, self.half = s, layer, half
        fd, name = tempfile.mkstemp(dir=tmpdir, suffix=".tail")
        os.close(fd)
        self.path = Path(name)
        self.ok = False
        self.worker = threading.Thread(target=self._run, name=f"tail-{layer.digest[7:19]}", daemon=True)
        self.worker.start()

    def _run(self) -> None:
        want = self.layer.size - self.half
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={self.half}-{self.layer.size - 1}"}
        try:
            with self.s.client.stream("GET", self.s.url(f"blobs/{self.layer.digest}"), follow_redirects=True,
                                      headers=headers) as resp:
                rng = resp.headers.get("content-range", "")
                if resp.status_code != 206 or rng != f"bytes {self.half}-{self.layer.size - 1}/{self.layer.size}":
                    return
                n = 0
                with open(self.path, "wb") as f:
                    for chunk in resp.iter_raw():
                        n += len(chunk)
                        if n > want:
                            return
                        f.write(chunk)
                self.ok = n == want
        except (httpx.HTTPError, OSError):
            return

    def wait(self) -> bool:
        self.worker.join()
        return self.ok

    def feed(self, pipes: list[_Pipe]) -> int:
        n = 0
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK):
                n += len(chunk)
                if not all([p.feed(chunk) for p in pipes]):
                    break
        return n

    def close(self) -> None:
        self.worker.join()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Found:
    """A trusted entry looked up, its blob not yet placed."""
    name: str
    key: str
    tag: str
    key_id: str
    layer: Layer
    manifest: bytes
    config: bytes


@dataclass
class ShareStats:
    fetched: list[str] = field(default_factory=list)  # layer names used from the registry
    fetched_bytes: int = 0  # layer blob bytes downloaded (not those only referenced, see ``lazy``)
    referenced: list[str] = field(default_factory=list)  # used by their signed descriptor, never downloaded
    local: list[str] = field(default_factory=list)  # entries used in an earlier build, checked again, blob here
    pushed: list[str] = field(default_factory=list)  # entries written
    uploaded_bytes: int = 0  # layer blob bytes sent (HEAD-skipped and mounted blobs are not)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"fetched": sorted(self.fetched), "fetched_bytes": self.fetched_bytes,
                "referenced": sorted(self.referenced), "local": sorted(self.local), "pushed": sorted(self.pushed),
                "uploaded_bytes": self.uploaded_bytes, "notes": list(self.notes)}


class SharedCache:
    """One registry repository (``HOST/REPO``) used as the shared layer cache."""

    def __init__(self, repo: str, *, signer=None, trusted: Sequence = (),  # type: ignore[no-untyped-def]
                 mount_from: str | None = None, lazy: bool = False, check_tar: bool | None = None,
                 report: Report = silent) -> None:
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
        # check_tar: also inflate each blob and require the signed diff_id (default: the signed one is
        # believed; LOCKBUILD_CACHE_CHECK_TAR=1 turns the check on)
        self.check_tar = os.environ.get("LOCKBUILD_CACHE_CHECK_TAR", "") not in ("", "0") if check_tar is None \
            else check_tar
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
        """name -> Layer for each wanted layer (name -> layer key) found, trusted and verified.

        Two steps: every entry is looked up at once (small requests: manifest and statement), then the
        blobs download ``jobs`` at a time, biggest first, so the long pole (TensorFlow's layer) starts
        at once instead of behind the small ones."""
        if not wanted:
            return {}
        if not self.trusted:
            self.note(f"shared cache {self.name}: no trusted key (--cache-trust / LOCKBUILD_CACHE_TRUST): "
                      "its entries are not used, every missing layer is built here")
            return {}
        with ThreadPoolExecutor(max_workers=max(1, min(LOOKUP_JOBS, len(wanted)))) as pool:
            found = list(pool.map(lambda n: self._find(cache, n, wanted[n]), wanted))
        out = {n: f for n, f in zip(wanted, found, strict=True) if isinstance(f, Layer)}
        remote = sorted((f for f in found if isinstance(f, _Found)), key=lambda f: -f.layer.size)
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(remote)))) as pool:
            for f, layer in zip(remote, pool.map(lambda f: self._obtain(cache, f), remote), strict=True):
                if layer is not None:
                    out[f.name] = layer
        return out

    def fetch(self, cache: Cache, name: str, key: str) -> Layer | None:
        return self.fetch_layers(cache, {name: key}).get(name)

    def _unreachable(self, e: PublishError | IntegrityError, what: str) -> None:
        """Note the failure; after a transient one that outlived its retries, stop using the registry."""
        with self._lock:
            first = self._down is None
            if isinstance(e, reg.Transient):
                self._down = e.message
        if first or not isinstance(e, reg.Transient):
            self.note(f"shared cache {self.name}: {what} ({e.message})"
                      + ("; not asking it again in this build" if isinstance(e, reg.Transient) else ""))

    def _find(self, cache: Cache, name: str, key: str, after: str | None = None) -> Layer | _Found | None:
        """The layer itself when an entry used before is still good here; else the first entry of a
        trusted key (after ``after``) whose statement checks out; else None (notes say why)."""
        if after is None:
            layer = self._remembered(cache, key)
            if layer is not None:
                with self._lock:
                    self.stats.local.append(name)
                return layer
        if self._down:
            return None
        for key_id in sorted(self.trusted):
            if after is not None and key_id <= after:
                continue
            tag = E.tag_for(key, key_id)
            try:
                manifest = reg.with_retries(functools.partial(self._get_manifest, tag), LOOKUP_ATTEMPTS)
                if manifest is None:
                    continue
                digest, size = E.config_digest_of(manifest)
                config = reg.with_retries(functools.partial(self._get_small_blob, digest, size), LOOKUP_ATTEMPTS)
                layer, _signer = E.check_entry(key, manifest, config, self.trusted)
            except (E.Untrusted, IntegrityError) as e:
                self.note(f"shared cache entry {tag} for layer {name} ignored: {e.message}; building it here")
                continue
            except PublishError as e:
                self._unreachable(e, f"cannot look up layer {name}, building it here")
                return None
            return _Found(name, key, tag, key_id, layer, manifest, config)
        return None

    def _obtain(self, cache: Cache, found: _Found) -> Layer | None:
        """The entry's blob in the local cache (downloaded and checked, or already here and re-hashed),
        or only referenced (``lazy``); on bad bytes the next trusted key's entry is tried."""
        f: _Found | Layer | None = found
        while isinstance(f, _Found):
            try:
                downloaded = self._place(cache, f.layer)
            except (E.Untrusted, IntegrityError) as e:
                self.note(f"shared cache entry {f.tag} for layer {f.name} ignored: {e.message}; building it here")
                f = self._find(cache, f.name, f.key, after=f.key_id)
                continue
            except PublishError as e:
                self._unreachable(e, f"cannot fetch layer {f.name}, building it here")
                return None
            self._remember(cache, f.key, f.manifest, f.config, tar_checked=self.check_tar and cache.has(f.layer.digest))
            with self._lock:
                self.stats.fetched.append(f.name)
                self.stats.fetched_bytes += f.layer.size if downloaded else 0
                if not cache.has(f.layer.digest):
                    self.stats.referenced.append(f.name)
            return f.layer
        return f

    # A used entry is kept beside the local cache (its manifest and statement, signature included) and
    # checked again on every later use: only while its signer is still trusted, and only with the blob
    # re-hashed. Not a record of the local layer cache: those say "lockbuild made this tar here", which
    # verify believes; an entry's diff_id is the signer's word.

    def _remember(self, cache: Cache, key: str, manifest: bytes, config: bytes, *, tar_checked: bool) -> None:
        cache.meta_put(LOCAL_NAMESPACE, to_hex(key, "layer key"),
                       {"manifest": manifest.decode(), "config": config.decode(), "tar_checked": tar_checked})

    def _remembered(self, cache: Cache, key: str) -> Layer | None:
        if not self.trusted:
            return None
        record = cache.meta_get(LOCAL_NAMESPACE, to_hex(key, "layer key"))
        try:
            if record is None:
                return None
            layer, _signer = E.check_entry(key, str(record["manifest"]).encode(), str(record["config"]).encode(),
                                           self.trusted)
        except (E.Untrusted, IntegrityError, KeyError, TypeError):
            return None  # not trusted (any more): looked up again
        if self.check_tar and record.get("tar_checked") is not True:
            return None  # its tar was not checked when it was taken: taken (and checked) again
        if self.lazy and not cache.has(layer.digest):
            return layer
        return layer if cache.get(layer.digest, layer.size) is not None else None

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

    def _place(self, cache: Cache, layer: Layer) -> bool:
        """Make a trusted entry's blob usable here; whether it was downloaded now."""
        if self.lazy and not cache.has(layer.digest):
            return False
        local = cache.get(layer.digest, layer.size)  # re-hashed: the signed sha256 and size
        if local is not None:
            if self.check_tar:
                self._check_tar_of(local, layer)
            return False
        reg.with_retries(functools.partial(self._download, cache, layer))
        return True

    @staticmethod
    def _check_tar_of(path: Path, layer: Layer) -> None:
        hasher = _TarHasher(layer.media_type)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
            diff_id = hasher.diff_id()
        finally:
            hasher.close()
        if diff_id != layer.diff_id:
            raise E.Untrusted(f"its signed diff_id {layer.diff_id[:19]} is not the tar of {layer.digest[:19]}")

    def _download(self, cache: Cache, layer: Layer) -> None:
        """Stream the blob into the local cache, hashing it on the way (the cache writer's one sha256);
        installed only when its sha256 and size are the signed ones, else nothing is left behind.

        The signed diff_id is believed, as a Nix substituter believes a trusted narinfo: the blob is
        the one the trusted key vouched for, so its tar is what that key said (re-derive with
        ``verify --rederive``; a runtime checks the diff_id when it unpacks the layer). With
        ``check_tar`` (LOCKBUILD_CACHE_CHECK_TAR=1) the tar is inflated and hashed too, on a third
        thread, and must be the signed diff_id. Receiving and writing+hashing run on two threads."""
        hasher = _TarHasher(layer.media_type) if self.check_tar else None
        try:
            with cache.writer(layer.digest) as w:
                pipes = [_Pipe(w.write, f"write-{layer.digest[7:19]}")]
                if hasher is not None:
                    pipes.append(_Pipe(hasher.update, f"inflate-{layer.digest[7:19]}"))
                self._receive(cache, layer, pipes)
                if pipes[0].failed:  # writing failed (a full disk): that error, as it is
                    raise pipes[0].failed[0]
                if w.size != layer.size or w.digest() != layer.digest:
                    raise E.Untrusted(f"the registry served other bytes for {layer.digest[:19]} "
                                      f"({w.size} bytes, sha256 {w.hexdigest()[:12]})")
                if hasher is not None:
                    self._check_inflated(layer, hasher, pipes[1])
        finally:
            if hasher is not None:
                hasher.close()

    def _receive(self, cache: Cache, layer: Layer, pipes: list[_Pipe]) -> None:
        """GET the blob into ``pipes``; one of ``SPLIT_BYTES`` or more has its second half fetched at the
        same time as a range (into a file of its own), fed through the same pipes after the first."""
        s = self._s()
        started: _RangeTail | None = None
        try:
            with s.client.stream("GET", s.url(f"blobs/{layer.digest}"), follow_redirects=True,
                                 headers={"Accept-Encoding": "identity"}) as resp:
                if resp.status_code != 200:
                    transient = resp.status_code == 429 or resp.status_code >= 500
                    raise (reg.Transient if transient else PublishError)(
                        f"GET blob {layer.digest} -> HTTP {resp.status_code}")
                half = layer.size // 2
                if layer.size >= SPLIT_BYTES:
                    started = _RangeTail(s, layer, half, cache.tmpdir())
                tail = started
                got = 0
                for chunk in resp.iter_raw():
                    if tail is not None and got + len(chunk) >= half:
                        keep = half - got
                        if not all([p.feed(chunk[:keep]) for p in pipes]):
                            break
                        got += keep
                        chunk = chunk[keep:]
                        if tail.wait():  # the rest is here: from the file, through the same pipes
                            got += tail.feed(pipes)
                            break
                        tail = None  # no range (or it failed): this stream goes on
                    got += len(chunk)
                    if got > layer.size:
                        raise E.Untrusted(f"its layer blob is longer than the signed {layer.size} bytes")
                    if chunk and not all([p.feed(chunk) for p in pipes]):
                        break
        except httpx.HTTPError as e:
            raise reg.Transient(f"GET blob {layer.digest} failed: {e}") from e
        finally:
            if started is not None:
                started.close()
            for p in pipes:
                p.finish()

    @staticmethod
    def _check_inflated(layer: Layer, hasher: _TarHasher, pipe: _Pipe) -> None:
        """With ``check_tar``: the blob decompressed, and its tar is the signed diff_id."""
        if pipe.failed:
            if isinstance(pipe.failed[0], E.Untrusted):
                raise pipe.failed[0]
            raise E.Untrusted(f"its layer blob does not decompress ({pipe.failed[0]})")
        tar = hasher.diff_id()
        if tar != layer.diff_id:
            raise E.Untrusted(f"its blob's tar is {tar[:19]}, not the signed diff_id {layer.diff_id[:19]}")

    # -- writing -------------------------------------------------------------------------------------

    def publish_layers(self, cache: Cache, entries: dict[str, tuple[str, Layer]], *, jobs: int = 4) -> None:
        """Push an entry for each name -> (layer key, Layer) the registry lacks under this runner's key."""
        # a layer taken from the shared cache is never signed again here: its diff_id is another key's word
        entries = {n: e for n, e in entries.items() if n not in self.stats.fetched and n not in self.stats.local}
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
            result = reg.PushResult(digest="", reference="")
            self._push_entry(cache, layer, entry, tag, result)
        except (PublishError, IntegrityError) as e:  # IntegrityError: the registry stored another manifest
            self._unreachable(e, f"could not push layer {name}")
            return
        with self._lock:
            self.stats.pushed.append(name)
            self.stats.uploaded_bytes += layer.size if layer.digest in result.uploaded else 0

    def _push_entry(self, cache: Cache, layer: Layer, entry: E.Entry, tag: str, result: reg.PushResult) -> None:
        """The layer's blob and the entry's config blob (each skipped when the registry has it), then the
        entry's manifest under ``tag``. Runners that push the same entry at once race inside the registry
        (Debian's docker-registry may refuse the manifest for a blob another runner is committing that
        moment, seen with four runners): ``reg.push_blobs_then_manifest`` pushes it all again then."""
        s = self._s()
        steps = [functools.partial(reg.push_blob, s, layer.digest, layer.path(cache), result, self.mount_from, None),
                 functools.partial(reg.push_blob, s, entry.config_digest, entry.config, result, None, None)]
        reg.push_blobs_then_manifest(s, steps, tag, entry.manifest, result)


def _own_verifier(signer):  # type: ignore[no-untyped-def]
    """This runner's own public key as a Verifier: to recognise its own entries when publishing."""
    import tempfile
    from pathlib import Path

    from lockbuild.sign.keys import load_public_key

    with tempfile.TemporaryDirectory(prefix="lockbuild-key-") as d:
        pub = Path(d) / "own.pub.pem"
        pub.write_bytes(signer.public_pem())
        return load_public_key(pub)
