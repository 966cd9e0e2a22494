"""Push and pull over the OCI distribution API (httpx), the way go-containerregistry does it.

Push: for each blob (four at once) HEAD first and skip it if the registry has it; else try a
cross-repository mount when a source repository is given (falling back to an upload when the
registry answers 202 instead of 201); else POST an upload session, PATCH the whole blob streamed
from the cache, and PUT ?digest= to commit. Then, all blobs there, PUT the manifest. Nothing is
held in memory but small JSON.

Auth: anonymous, Basic, or Bearer tokens (the WWW-Authenticate realm/service/scope dance), with
credentials from ``$DOCKER_CONFIG/config.json`` ``auths`` (base64 "user:pass"); credential
helpers are not consulted. Plain http is used only for loopback registries (127.0.0.1,
localhost, ::1); every other registry is https.

Why one module of ~450 lines: references, auth, retries, push and pull are one protocol client
sharing one Session type; split, each half would import the other's private helpers. The audit
referrers (audit/attach.py) reuse its Session rather than a second client.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import httpx

from lockbuild import net
from lockbuild.errors import IntegrityError, PublishError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import CHUNK, HashingStream, check_bytes, sha256_bytes
from lockbuild.net import RETRIES, USER_AGENT
from lockbuild.oci.compress import Sink
from lockbuild.oci.image import MANIFEST_MEDIA_TYPE, BlobSource, Image, blob_sources
from lockbuild.progress import Progress

T = TypeVar("T")

TIMEOUT = httpx.Timeout(300.0, connect=15.0)
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
INDEX_MEDIA_TYPES = ("application/vnd.oci.image.index.v1+json",
                     "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_ACCEPT = ", ".join((MANIFEST_MEDIA_TYPE, "application/vnd.docker.distribution.manifest.v2+json",
                             *INDEX_MEDIA_TYPES))
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
PUSH_JOBS = 4  # blobs pushed at once
_RESULT = threading.Lock()  # PushResult's counters, updated by the pushing threads
READ_BYTES = 1 << 20  # per socket read of a response body (httpcore's default is 64 KiB)

# httpcore reads an HTTP/1.1 body 64 KiB at a time and hands each piece through h11, httpcore and
# httpx: for a 240 MB layer blob that per-read overhead is ~1/4 of the CPU a download costs (measured
# here: 0.94 -> 0.75 s CPU per 240 MB). 1 MiB reads cut it; the setting is process-wide (httpcore has
# no per-client knob) and only changes how much one recv() may return.
try:
    import httpcore

    if getattr(httpcore._sync.http11.HTTP11Connection, "READ_NUM_BYTES", READ_BYTES) < READ_BYTES:
        httpcore._sync.http11.HTTP11Connection.READ_NUM_BYTES = READ_BYTES
except (ImportError, AttributeError):  # another httpcore layout: its default stays
    pass


# -- references ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """registry/repository[:tag][@digest], split."""

    registry: str  # host[:port] as written ("docker.io" for Docker Hub)
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def host(self) -> str:
        if self.registry.startswith("["):  # [::1]:5000
            return self.registry[: self.registry.index("]") + 1]
        return self.registry.split(":")[0]

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")

    @property
    def base_url(self) -> str:
        api = DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry
        return f"{'http' if self.is_loopback else 'https'}://{api}"

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest if given, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> str:
        return f"{self.registry}/{self.repository}@{digest}"


_REF = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def parse_reference(ref: str) -> Reference:
    m = _REF.match(ref.strip())
    if not m:
        raise PublishError(f"not an image reference: {ref!r}",
                           hint="use registry/repository:tag, e.g. 127.0.0.1:5000/model:v1")
    name = m["name"]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if repository != repository.lower():
        raise PublishError(f"repository names must be lowercase: {repository!r}", hint="rename the image")
    return Reference(registry, repository, m["tag"], m["digest"])


# -- credentials and auth --------------------------------------------------------------------------


def _docker_config() -> dict:
    path = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def credentials(registry: str) -> tuple[str, str] | None:
    """(user, password) for a registry from the docker config's ``auths``, if any."""
    auths = _docker_config().get("auths", {})
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for key in keys:
        entry = auths.get(key) or auths.get(key + "/")
        if entry and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise PublishError(f"the docker config entry for {key} has an unreadable auth",
                                   hint="run `docker login` again") from None
            return user, password
    return None


def _basic(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="x",service="y"' -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


class RegistryAuth(httpx.Auth):
    """Answers 401 challenges once per request: Basic, or a Bearer token fetched from the realm.

    The last good Authorization header is sent up front on later requests, so streamed bodies
    (PATCH of a layer) are normally never sent twice.
    """

    def __init__(self, creds: tuple[str, str] | None, scopes: tuple[str, ...]) -> None:
        self.creds = creds
        self.scopes = scopes
        self.header: str | None = None
        self._lock = threading.Lock()  # requests of one session run in parallel (blob pushes, lookups)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        sent = self.header
        if sent:
            request.headers["Authorization"] = sent
        response = yield request
        if response.status_code != 401:
            return
        with self._lock:  # one token per session, however many requests were refused at once
            if self.header is not None and self.header != sent:
                header: str | None = self.header  # another request answered the challenge meanwhile
            else:
                header = self._answer(response.headers.get("www-authenticate", ""))
                if header is None or header == sent:
                    return
                self.header = header
        request.headers["Authorization"] = str(header)
        yield request

    def _answer(self, challenge: str) -> str | None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            return _basic(self.creds) if self.creds else None
        if scheme == "bearer" and params.get("realm"):
            return "Bearer " + self._token(params)
        return None

    def _token(self, params: dict[str, str]) -> str:
        scopes = list(dict.fromkeys([*params.get("scope", "").split(), *self.scopes]))
        query: dict[str, str | list[str]] = {"scope": scopes}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"User-Agent": USER_AGENT}
        if self.creds:
            headers["Authorization"] = _basic(self.creds)
        try:
            r = httpx.get(params["realm"], params=query, headers=headers, timeout=TIMEOUT)
        except httpx.HTTPError as e:
            raise PublishError(f"cannot reach the token service {params['realm']}: {e}",
                               hint="check the network and the registry's auth setup") from e
        if r.status_code != 200:
            raise PublishError(f"token service {params['realm']} refused: HTTP {r.status_code}",
                               hint="log in with `docker login` (credentials in ~/.docker/config.json)")
        body = r.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise PublishError(f"token service {params['realm']} returned no token",
                               hint="check the registry's auth setup")
        return str(token)


# -- a session against one repository --------------------------------------------------------------


@dataclass
class Session:
    ref: Reference
    client: httpx.Client

    def url(self, path: str) -> str:
        return f"/v2/{self.ref.repository}/{path}"

    def send(self, method: str, url: str | httpx.URL, *, ok: tuple[int, ...], **kw: object) -> httpx.Response:
        """One request; a non-``ok`` status or a connection failure becomes a PublishError
        (``Transient`` for connection failures, 429 and 5xx: worth another try)."""
        try:
            r = self.client.request(method, url, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as e:
            raise Transient(f"{method} {self.ref.base_url}{_path(url)} failed: {e}",
                            hint=_unreachable_hint(self.ref)) from e
        if r.status_code not in ok:
            error = Transient if r.status_code == 429 or r.status_code >= 500 else PublishError
            raise error(f"{method} {_path(url)} -> HTTP {r.status_code}: {_errors(r)}",
                        hint=_status_hint(r.status_code, self.ref))
        return r


class Transient(PublishError):
    """A failure another attempt may not see (network, 429, 5xx)."""


class BlobNotLinkedYet(PublishError):
    """A manifest PUT answered MANIFEST_BLOB_UNKNOWN for a blob pushed (or found present) just before:
    another client is committing it that moment (Debian's docker-registry, runners racing on the same
    blob). Pushing the blobs and the manifest again, after a back-off, succeeds."""


def put_manifest(s: Session, reference: str, manifest: bytes) -> httpx.Response:
    """PUT a manifest under ``reference``: ``BlobNotLinkedYet`` for the racing-commit answer."""
    try:
        return s.send("PUT", s.url(f"manifests/{reference}"), ok=(200, 201), content=manifest,
                      headers={"Content-Type": MANIFEST_MEDIA_TYPE})
    except PublishError as e:
        if isinstance(e, Transient) or "MANIFEST_BLOB_UNKNOWN" not in e.message:
            raise
        raise BlobNotLinkedYet(e.message, hint=e.hint) from None


def with_retries(action: Callable[[], T], attempts: int = RETRIES) -> T:
    """Run ``action``, again after a back-off when it fails transiently (at most ``attempts``)."""
    return net.retry(action, transient=lambda e: isinstance(e, Transient), attempts=attempts)


def _path(url: str | httpx.URL) -> str:
    return httpx.URL(str(url)).path


def _errors(r: httpx.Response) -> str:
    try:
        errs = r.json().get("errors", [])
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs) or r.text[:200]
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return r.text[:200]


def _unreachable_hint(ref: Reference) -> str:
    if ref.is_loopback:
        return "is the local registry running? `scripts/registry.sh start PORT`"
    return f"check the network and that {ref.registry} is the right registry"


def _status_hint(status: int, ref: Reference) -> str:
    if status in (401, 403):
        return f"log in to {ref.registry} (`docker login`; lockbuild reads ~/.docker/config.json auths)"
    if status == 404:
        return f"check the repository name {ref.repository!r} and the tag or digest"
    return "the registry rejected the request; see its message"


def open_session(ref: Reference, *, push: bool, mount_from: str | None = None) -> Session:
    scopes: tuple[str, ...] = (f"repository:{ref.repository}:{'pull,push' if push else 'pull'}",)
    if mount_from:
        scopes += (f"repository:{mount_from}:pull",)
    client = httpx.Client(base_url=ref.base_url, auth=RegistryAuth(credentials(ref.registry), scopes),
                          timeout=TIMEOUT, headers={"User-Agent": USER_AGENT})
    return Session(ref, client)


# -- push --------------------------------------------------------------------------------------------


@dataclass
class PushResult:
    digest: str  # manifest digest, sha256:<hex>
    reference: str  # registry/repository@digest
    uploaded: list[str] = field(default_factory=list)  # blob digests sent
    skipped: list[str] = field(default_factory=list)  # already present (HEAD 200)
    mounted: list[str] = field(default_factory=list)  # cross-repository mounts
    bytes_uploaded: int = 0

    def to_dict(self) -> dict[str, object]:
        """For --json output: the digest and counts."""
        return {"digest": self.digest, "reference": self.reference, "uploaded": len(self.uploaded),
                "skipped": len(self.skipped), "mounted": len(self.mounted),
                "bytes_uploaded": self.bytes_uploaded}


def _has_blob(s: Session, digest: str) -> bool:
    return s.send("HEAD", s.url(f"blobs/{digest}"), ok=(200, 404)).status_code == 200


def _start_upload(s: Session, digest: str, mount_from: str | None) -> httpx.URL | None:
    """An upload URL, or None when the registry mounted the blob from ``mount_from``."""
    params = {"mount": digest, "from": mount_from} if mount_from else None
    r = s.send("POST", s.url("blobs/uploads/"), ok=(201, 202), params=params)
    if r.status_code == 201:
        return None
    location = r.headers.get("location")
    if not location:
        raise PublishError("registry started an upload without a Location",
                           hint="the registry is not OCI-conformant")
    return s.client.base_url.join(location)


def _chunks(content: BlobSource, progress: Progress | None) -> Iterator[bytes]:
    if isinstance(content, bytes):
        yield content
        if progress:
            progress(len(content))
        return
    with open(content, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
            if progress:
                progress(len(chunk))


def _upload(s: Session, location: httpx.URL, digest: str, size: int, content: BlobSource,
            progress: Progress | None) -> None:
    """PATCH the whole blob (streamed), then PUT ?digest= to commit it."""
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    r = s.send("PATCH", location, ok=(202, 204), content=_chunks(content, progress), headers=headers)
    commit = s.client.base_url.join(r.headers.get("location") or str(location))
    s.send("PUT", commit.copy_merge_params({"digest": digest}), ok=(201, 204),
           headers={"Content-Length": "0"})


def _locked(progress: Progress) -> Progress:
    lock = threading.Lock()

    def call(n: int) -> None:
        with lock:
            progress(n)
    return call


def push_blob(s: Session, digest: str, content: BlobSource, result: PushResult,
              mount_from: str | None, progress: Progress | None) -> None:
    """One blob: skipped when the repository has it, else mounted from ``mount_from``, else uploaded."""
    size = len(content) if isinstance(content, bytes) else content.stat().st_size
    if _has_blob(s, digest):
        result.skipped.append(digest)
    elif (location := _start_upload(s, digest, mount_from)) is None:
        result.mounted.append(digest)
    else:
        _upload(s, location, digest, size, content, progress)
        with _RESULT:
            result.uploaded.append(digest)
            result.bytes_uploaded += size
        return
    if progress:
        progress(size)


def _place_remote_blob(s: Session, digest: str, size: int, result: PushResult, mount_from: str | None,
                       progress: Progress | None) -> None:
    """A blob this host never had: present in the target repository already, or mounted from ``mount_from``."""
    if _has_blob(s, digest):
        result.skipped.append(digest)
    elif mount_from and _start_upload(s, digest, mount_from) is None:
        result.mounted.append(digest)
    else:
        raise PublishError(f"layer blob {digest} is missing from the local cache and from the registry",
                           hint="build with an output that downloads the shared layers (e.g. --oci), or push to "
                           "the registry the shared cache is on")
    if progress:
        progress(size)


def _put_manifest(s: Session, reference: str, manifest: bytes) -> str:
    digest = sha256_bytes(manifest)
    r = put_manifest(s, reference, manifest)
    echoed = r.headers.get("docker-content-digest")
    if echoed and echoed != digest:
        raise IntegrityError(f"registry stored the manifest as {echoed}, expected {digest}",
                             hint="the registry rewrote the manifest; push to an OCI-conformant registry")
    return digest


def push(image: Image, ref: str, cache: Cache, *, progress: Progress | None = None,
         mount_from: str | None = None) -> PushResult:
    """Push ``image`` to ``ref`` (registry/repo:tag); blobs the registry has are skipped.

    ``mount_from`` names another repository on the same registry to mount blobs from.
    ``progress`` gets byte counts as blobs stream out, and a skipped or mounted blob's whole
    size at once, so the sum reaches the image's total size.
    """
    r = parse_reference(ref)
    if r.digest and r.digest != image.manifest_digest:
        raise PublishError(f"{ref} names digest {r.digest} but the image is {image.manifest_digest}",
                           hint="push by tag, or by the image's own digest")
    s = open_session(r, push=True, mount_from=mount_from)
    with s.client:
        result = PushResult(digest="", reference="")
        remote = {layer.digest: layer.size for layer in image.layers if not cache.has(layer.digest)}
        local = image if not remote else replace(image, layers=tuple(x for x in image.layers if x.digest not in remote))
        shown = _locked(progress) if progress else None
        steps = [  # a shared-cache layer never downloaded: the registry has it (or mounts it)
            *(functools.partial(_place_remote_blob, s, digest, size, result, mount_from, shown)
              for digest, size in remote.items()),
            *(functools.partial(push_blob, s, digest, content, result, mount_from, shown)
              for digest, content in blob_sources(local, cache).items())]
        result.digest = push_blobs_then_manifest(s, steps, s.ref.reference, image.manifest, result)
    result.reference = r.with_digest(result.digest)
    return result


def push_blobs_then_manifest(s: Session, steps: Sequence[Callable[[], None]], reference: str, manifest: bytes,
                             result: PushResult) -> str:
    """Run ``steps`` (``push_blob`` and the like) at once, then PUT ``manifest`` under ``reference``; its
    digest. When the registry answers ``BlobNotLinkedYet`` (another client is committing one of these
    blobs that moment), all of it again after a back-off: the second HEADs find what was sent, so a blob
    counts once in ``result``. Used by ``push`` and by the shared cache's entries."""
    return net.retry(functools.partial(_blobs_then_manifest, s, steps, reference, manifest, result),
                     transient=lambda e: isinstance(e, BlobNotLinkedYet))


def _blobs_then_manifest(s: Session, steps: Sequence[Callable[[], None]], reference: str, manifest: bytes,
                         result: PushResult) -> str:
    with ThreadPoolExecutor(max_workers=max(1, min(PUSH_JOBS, len(steps)))) as pool:  # round trips, not CPU
        list(pool.map(with_retries, steps))
    done = {*result.uploaded, *result.mounted}
    result.skipped = [d for d in dict.fromkeys(result.skipped) if d not in done]
    return with_retries(functools.partial(_put_manifest, s, reference, manifest))


# -- pull (for verify) --------------------------------------------------------------------------------


def _check(data: bytes, digest: str, what: str) -> bytes:
    return check_bytes(data, digest, f"{what} from the registry",
                       "the registry or a proxy served different bytes; do not trust this image")


def _get_manifest(s: Session, reference: str) -> tuple[bytes, str]:
    r = s.send("GET", s.url(f"manifests/{reference}"), ok=(200,), headers={"Accept": MANIFEST_ACCEPT})
    data = r.content
    if reference.startswith("sha256:"):
        _check(data, reference, "manifest")
    echoed = r.headers.get("docker-content-digest")
    if echoed:
        _check(data, echoed, "manifest")
    return data, r.headers.get("content-type", "").split(";")[0]


def _pick_platform(index: bytes, architecture: str, os_name: str) -> str:
    for m in json.loads(index).get("manifests", []):
        p = m.get("platform", {})
        if p.get("architecture") == architecture and p.get("os") == os_name:
            return str(m["digest"])
    raise PublishError(f"the image index has no {os_name}/{architecture} manifest",
                       hint="pull a reference built for this platform")


def pull_manifest(ref: str, *, architecture: str = "amd64", os_name: str = "linux") -> tuple[bytes, bytes]:
    """(manifest bytes, config bytes) of ``ref``, both digest-checked. Indexes are resolved."""
    r = parse_reference(ref)
    s = open_session(r, push=False)
    with s.client:
        manifest, media_type = _get_manifest(s, r.reference)
        if media_type in INDEX_MEDIA_TYPES:
            manifest, _ = _get_manifest(s, _pick_platform(manifest, architecture, os_name))
        config_digest = json.loads(manifest)["config"]["digest"]
        config = s.send("GET", s.url(f"blobs/{config_digest}"), ok=(200,), follow_redirects=True).content
    return manifest, _check(config, config_digest, "config")


def fetch_blob(ref: str, digest: str, dest: Sink) -> int:
    """Stream one blob into ``dest`` (e.g. ``Cache.writer``), checking its digest; returns its size."""
    r = parse_reference(ref)
    s = open_session(r, push=False)
    sink = HashingStream(dest)
    with s.client:
        try:
            with s.client.stream("GET", s.url(f"blobs/{digest}"), follow_redirects=True) as resp:
                if resp.status_code != 200:
                    raise PublishError(f"GET blob {digest} -> HTTP {resp.status_code}",
                                       hint=_status_hint(resp.status_code, r))
                for chunk in resp.iter_bytes(CHUNK):
                    sink.write(chunk)
        except httpx.HTTPError as e:
            raise PublishError(f"GET blob {digest} from {r.registry} failed: {e}",
                               hint=_unreachable_hint(r)) from e
    if sink.digest() != digest:
        raise IntegrityError(f"blob from {r.registry} does not match {digest}",
                             hint="the registry or a proxy served different bytes; do not trust this image")
    return sink.size
