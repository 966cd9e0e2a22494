"""Push/pull against a real docker-registry on 127.0.0.1, checked with skopeo.

Auth is exercised through a small auth-checking proxy in front of the same real registry
(Basic, and Bearer tokens from a realm), with credentials from a DOCKER_CONFIG config.json.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from lockbuild.errors import IntegrityError, PublishError
from lockbuild.fetch.cache import Cache
from lockbuild.oci import registry as reg
from lockbuild.oci.image import Image
from lockbuild.oci.layout import read_oci_layout
from tests.conftest_services import skopeo

pytest_plugins = ["tests.conftest_services"]

TinyImage = Callable[..., Image]



def test_second_push_uploads_nothing_and_skopeo_sees_our_digest(
    registry: str, cache: Cache, tmp_path: Path, tiny_image: TinyImage
) -> None:
    image = tiny_image(cache, tmp_path / "staging")
    ref = f"{registry}/lockbuild/tiny:v1"
    done: list[int] = []
    first = reg.push(image, ref, cache, progress=done.append)
    assert first.digest == image.manifest_digest
    assert sorted(first.uploaded) == sorted([image.layers[0].digest, image.config_digest])
    assert sum(done) == first.bytes_uploaded == image.layers[0].size + len(image.config)
    second = reg.push(image, ref, cache)
    assert (second.uploaded, second.bytes_uploaded, len(second.skipped)) == ([], 0, 2)
    assert second.reference == f"{registry}/lockbuild/tiny@{image.manifest_digest}"

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert inspected["Digest"] == image.manifest_digest
    back = tmp_path / "back"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{back}:v1")
    assert read_oci_layout(back, "v1").manifest_digest == image.manifest_digest


def test_a_manifest_naming_a_blob_another_client_is_still_committing_is_pushed_again(
    registry: str, cache: Cache, tmp_path: Path, tiny_image: TinyImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pushes of one image at once: one may find the config blob "there" (the other's upload) before
    the registry has linked it, and the registry refuses its manifest with MANIFEST_BLOB_UNKNOWN. Here the
    first push of the config is skipped, as if another client had it under way: the real registry
    refuses the manifest (BlobNotLinkedYet), the blobs and the manifest go again, and each counts once."""
    image = tiny_image(cache, tmp_path / "staging", text="racing\n")
    real, skipped = reg.push_blob, []

    def racing(s, digest, *rest):  # type: ignore[no-untyped-def]
        if digest == image.config_digest and not skipped:
            skipped.append(digest)
            return None
        return real(s, digest, *rest)

    monkeypatch.setattr(reg, "push_blob", racing)
    monkeypatch.setattr("lockbuild.net.BACKOFF", 0.1)
    probe = reg.open_session(reg.parse_reference(f"{registry}/race/probe:v1"), push=True)
    with probe.client, pytest.raises(reg.BlobNotLinkedYet):  # the answer to a manifest whose blobs are not there
        reg.put_manifest(probe, "v1", image.manifest)
    result = reg.push(image, f"{registry}/race/tiny:v1", cache)
    assert skipped and result.digest == image.manifest_digest
    assert sorted(result.uploaded) == sorted([image.layers[0].digest, image.config_digest]) and not result.skipped


def test_blobs_are_mounted_from_another_repository(
    registry: str, cache: Cache, tmp_path: Path, tiny_image: TinyImage
) -> None:
    image = tiny_image(cache, tmp_path / "staging", text="mount me\n")
    reg.push(image, f"{registry}/team/source:v1", cache)
    result = reg.push(image, f"{registry}/team/copy:v1", cache, mount_from="team/source")
    assert sorted(result.mounted) == sorted([image.layers[0].digest, image.config_digest])
    assert result.uploaded == []


def test_pull_manifest_and_fetch_blob_return_checked_bytes(
    registry: str, cache: Cache, tmp_path: Path, tiny_image: TinyImage
) -> None:
    image = tiny_image(cache, tmp_path / "staging", text="pull me\n")
    reg.push(image, f"{registry}/lockbuild/pull:v1", cache)
    assert reg.pull_manifest(f"{registry}/lockbuild/pull:v1") == (image.manifest, image.config)
    by_digest = f"{registry}/lockbuild/pull@{image.manifest_digest}"
    assert reg.pull_manifest(by_digest) == (image.manifest, image.config)
    layer = image.layers[0]
    with cache.writer(layer.digest) as w:
        assert reg.fetch_blob(by_digest, layer.digest, w) == layer.size
    sink = io.BytesIO()
    with pytest.raises((IntegrityError, PublishError)):
        reg.fetch_blob(by_digest, image.config_digest.replace("a", "b").replace("c", "d"), sink)


def test_unknown_tag_and_unreachable_registry_are_publish_errors(registry: str) -> None:
    with pytest.raises(PublishError) as unknown:
        reg.pull_manifest(f"{registry}/lockbuild/none:v1")
    assert "404" in unknown.value.message and unknown.value.hint
    closed = registry.rsplit(":", 1)[0] + ":1"
    with pytest.raises(PublishError) as down:
        reg.pull_manifest(f"{closed}/x:v1")
    assert "registry.sh start" in (down.value.hint or "")


def test_only_transient_failures_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reg.net.time, "sleep", lambda _s: None)
    calls: list[str] = []

    def flaky() -> str:
        calls.append("try")
        if len(calls) < 3:
            raise reg.Transient("HTTP 503")
        return "done"

    assert reg.with_retries(flaky, attempts=4) == "done" and len(calls) == 3

    def refused() -> None:
        calls.append("refused")
        raise PublishError("HTTP 400")

    calls.clear()
    with pytest.raises(PublishError):
        reg.with_retries(refused, attempts=4)
    assert calls == ["refused"]


DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("ref", "expected"), [
    ("127.0.0.1:5000/model:v1", reg.Reference("127.0.0.1:5000", "model", "v1", None)),
    ("localhost:5000/team/model", reg.Reference("localhost:5000", "team/model", None, None)),
    (f"ghcr.io/org/model:1.0@{DIGEST}", reg.Reference("ghcr.io", "org/model", "1.0", DIGEST)),
    ("python:3.11", reg.Reference("docker.io", "library/python", "3.11", None)),
])
def test_parse_reference(ref: str, expected: reg.Reference) -> None:
    assert reg.parse_reference(ref) == expected


def test_plain_http_only_for_loopback() -> None:
    assert reg.parse_reference("127.0.0.1:5000/m").base_url == "http://127.0.0.1:5000"
    assert reg.parse_reference("localhost/m:v1").base_url == "http://localhost"
    assert reg.parse_reference("registry.example:5000/m").base_url == "https://registry.example:5000"
    assert reg.parse_reference("m").base_url == "https://registry-1.docker.io"


# -- auth: a proxy in front of the real registry that demands Basic or Bearer credentials ------------

USER, PASSWORD = "builder", "s3cret"


class AuthProxy(ThreadingHTTPServer):
    def __init__(self, upstream: str, scheme: str) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream, self.scheme = upstream, scheme
        self.token_requests: list[list[tuple[str, str]]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class ProxyHandler(BaseHTTPRequestHandler):
    server: AuthProxy

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _basic_ok(self) -> bool:
        good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return self.headers.get("Authorization") == good

    def _token(self) -> None:
        url = httpx.URL(self.path)
        self.server.token_requests.append(list(url.params.multi_items()))
        if not self._basic_ok():
            self._reply(401, {})
            return
        self._reply(200, {"Content-Type": "application/json"}, json.dumps({"token": "tok-123"}).encode())

    def _challenge(self) -> str:
        if self.server.scheme == "basic":
            return 'Basic realm="fake"'
        realm = f"http://{self.server.address}/token"
        return f'Bearer realm="{realm}",service="fake-registry"'

    def _authorized(self) -> bool:
        if self.server.scheme == "basic":
            return self._basic_ok()
        return self.headers.get("Authorization") == "Bearer tok-123"

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "connection")}
        r = httpx.request(self.command, f"http://{self.server.upstream}{self.path}", content=body,
                          headers=headers)
        out = {k: v for k, v in r.headers.items() if k.lower() not in ("content-length", "connection",
                                                                       "transfer-encoding")}
        self._reply(r.status_code, out, r.content)

    def _handle(self) -> None:
        if self.path.startswith("/token"):
            self._token()
        elif not self._authorized():
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._reply(401, {"WWW-Authenticate": self._challenge()})
        else:
            self._forward()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _handle  # noqa: N815


class ManifestRewriter(ProxyHandler):
    """A registry (or proxy) that says it stored another manifest than the one PUT: its
    Docker-Content-Digest answer names other bytes. No auth."""
    OTHER = "sha256:" + "0" * 64

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        if self.command == "PUT" and "/manifests/" in self.path:
            headers = {k: v for k, v in headers.items() if k.lower() != "docker-content-digest"}
            headers["Docker-Content-Digest"] = self.OTHER
        super()._reply(status, headers, body)

    def _authorized(self) -> bool:
        return True


@pytest.fixture()
def rewriting_proxy(registry: str) -> Iterator[AuthProxy]:
    """A ManifestRewriter in front of the real registry."""
    proxy = AuthProxy(registry, "none")
    proxy.RequestHandlerClass = ManifestRewriter
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_a_registry_that_stores_another_manifest_fails_the_push(
        rewriting_proxy: AuthProxy, cache: Cache, tmp_path: Path, tiny_image: TinyImage) -> None:
    image = tiny_image(cache, tmp_path / "staging", text="rewritten\n")
    with pytest.raises(IntegrityError, match="registry stored the manifest as sha256:0+, expected"):
        reg.push(image, f"{rewriting_proxy.address}/rewrite/tiny:v1", cache)


@pytest.fixture(params=["basic", "bearer"])
def auth_proxy(request: pytest.FixtureRequest, registry: str) -> Iterator[AuthProxy]:
    proxy = AuthProxy(registry, request.param)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def docker_config(tmp_path: Path, registry: str, password: str, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def test_push_and_pull_with_credentials_from_docker_config(
    auth_proxy: AuthProxy, cache: Cache, tmp_path: Path, tiny_image: TinyImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docker_config(tmp_path, auth_proxy.address, PASSWORD, monkeypatch)
    image = tiny_image(cache, tmp_path / "staging", text=f"auth {auth_proxy.scheme}\n")
    ref = f"{auth_proxy.address}/auth/tiny:v1"
    assert reg.push(image, ref, cache).digest == image.manifest_digest
    assert reg.pull_manifest(ref) == (image.manifest, image.config)
    if auth_proxy.scheme == "bearer":
        first = auth_proxy.token_requests[0]
        assert ("service", "fake-registry") in first
        assert ("scope", "repository:auth/tiny:pull,push") in first
        assert len(auth_proxy.token_requests) == 2, "one token per session, reused for every request"


def test_wrong_credentials_are_a_publish_error_with_a_login_hint(
    auth_proxy: AuthProxy, cache: Cache, tmp_path: Path, tiny_image: TinyImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docker_config(tmp_path, auth_proxy.address, "wrong", monkeypatch)
    image = tiny_image(cache, tmp_path / "staging")
    with pytest.raises(PublishError) as err:
        reg.push(image, f"{auth_proxy.address}/auth/tiny:v1", cache)
    assert "docker login" in (err.value.hint or "")
