"""SBOM/provenance attached as OCI 1.1 referrers: into an OCI layout, and to a real registry (checked with skopeo).

Debian's docker-registry (distribution 2.8) has no referrers API, so the push falls back to the referrers
tag schema (tag sha256-<hex> holding an index); the API path is exercised against a fake registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from lockbuild.audit import attach
from lockbuild.errors import PublishError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import sha256_bytes
from lockbuild.oci import registry as reg
from lockbuild.oci.image import MANIFEST_MEDIA_TYPE, Image
from lockbuild.oci.layout import blob_name, write_oci_layout
from tests.conftest_services import skopeo

TinyImage = Callable[..., Image]
SBOM = b'{"bomFormat":"CycloneDX","specVersion":"1.6"}\n'
PROVENANCE = b'{"_type":"https://in-toto.io/Statement/v1"}\n'
NOTES = {attach.CREATED: "2026-11-25T00:00:00Z", attach.TITLE: "sbom.cdx.json"}



@pytest.fixture()
def layout(tmp_path: Path, cache: Cache, tiny_image: TinyImage) -> tuple[Path, Image]:
    image = tiny_image(cache, tmp_path / "stage")
    return write_oci_layout(image, tmp_path / "oci", cache, ref_name="v1"), image


def test_artifact_manifest_shape() -> None:
    subject = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": "sha256:" + "a" * 64, "size": 9, "platform": {}}
    m = json.loads(attach.artifact_manifest(subject, SBOM, attach.SBOM_TYPE, NOTES))
    assert m["mediaType"] == MANIFEST_MEDIA_TYPE and m["artifactType"] == attach.SBOM_TYPE
    assert m["config"] == {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                           "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
    assert m["layers"] == [{"mediaType": attach.SBOM_TYPE, "digest": sha256_bytes(SBOM), "size": len(SBOM),
                            "annotations": {attach.TITLE: "sbom.cdx.json"}}]
    assert m["subject"] == {k: subject[k] for k in ("mediaType", "digest", "size")}
    assert attach.artifact_manifest(subject, SBOM, attach.SBOM_TYPE, NOTES) == \
        attach.artifact_manifest(subject, SBOM, attach.SBOM_TYPE, NOTES)  # canonical: same bytes, same digest


# -- OCI layout -----------------------------------------------------------------------------------------


def test_attach_to_layout_writes_blobs_and_index(layout: tuple[Path, Image]) -> None:
    root, image = layout
    entry = attach.attach_to_layout(root, image.manifest_digest, SBOM, attach.SBOM_TYPE, NOTES)
    assert entry["artifactType"] == attach.SBOM_TYPE and entry["annotations"] == NOTES
    index = json.loads((root / "index.json").read_bytes())
    assert [m["digest"] for m in index["manifests"]] == [image.manifest_digest, entry["digest"]]
    manifest = (root / blob_name(entry["digest"])).read_bytes()
    assert sha256_bytes(manifest) == entry["digest"] and len(manifest) == entry["size"]
    m = json.loads(manifest)
    assert m["subject"]["digest"] == image.manifest_digest and m["subject"]["size"] == len(image.manifest)
    assert (root / blob_name(m["layers"][0]["digest"])).read_bytes() == SBOM
    assert (root / blob_name(m["config"]["digest"])).read_bytes() == b"{}"
    assert attach.layout_image_descriptor(root)["digest"] == image.manifest_digest
    assert sorted(p.name for p in root.iterdir()) == ["blobs", "index.json", "oci-layout"]  # no lock files left
    # tools that pick by ref name still find the image, not the artifact
    raw = skopeo("inspect", "--raw", f"oci:{root}:v1")
    assert sha256_bytes(raw.encode()) == image.manifest_digest


def test_attach_is_idempotent_and_replaces_the_same_kind(layout: tuple[Path, Image]) -> None:
    root, image = layout
    first = attach.attach_to_layout(root, image.manifest_digest, SBOM, attach.SBOM_TYPE, NOTES)
    assert attach.attach_to_layout(root, image.manifest_digest, SBOM, attach.SBOM_TYPE, NOTES) == first
    prov = attach.attach_to_layout(root, image.manifest_digest, PROVENANCE, attach.PROVENANCE_TYPE)
    newer = attach.attach_to_layout(root, image.manifest_digest, SBOM + b" ", attach.SBOM_TYPE, NOTES)
    referrers = attach.layout_referrers(root, image.manifest_digest)
    assert {r["digest"] for r in referrers} == {prov["digest"], newer["digest"]}
    assert len(json.loads((root / "index.json").read_bytes())["manifests"]) == 3


def test_attach_refuses_unknown_subject_and_non_layouts(layout: tuple[Path, Image], tmp_path: Path) -> None:
    root, _ = layout
    before = (root / "index.json").read_bytes()
    with pytest.raises(PublishError, match="holds no image"):
        attach.attach_to_layout(root, "sha256:" + "0" * 64, SBOM, attach.SBOM_TYPE)
    assert (root / "index.json").read_bytes() == before
    (tmp_path / "empty").mkdir()
    with pytest.raises(PublishError, match="not an OCI image layout"):
        attach.attach_to_layout(tmp_path / "empty", "sha256:" + "0" * 64, SBOM, attach.SBOM_TYPE)


# -- a real registry (distribution 2.8: referrers tag schema) ---------------------------------------------


def test_push_referrers_to_a_real_registry(registry: str, cache: Cache, tmp_path: Path,
                                           tiny_image: TinyImage) -> None:
    image = tiny_image(cache, tmp_path / "stage", text="referrers\n")
    ref = f"{registry}/audit/tiny:v1"
    reg.push(image, ref, cache)
    subject = attach.subject_descriptor(image.manifest)
    sbom = attach.push_referrer(ref, subject, SBOM, attach.SBOM_TYPE, NOTES)
    prov = attach.push_referrer(ref, subject, PROVENANCE, attach.PROVENANCE_TYPE)
    assert attach.push_referrer(ref, subject, SBOM, attach.SBOM_TYPE, NOTES) == sbom  # idempotent
    assert sbom.mechanism in ("referrers-api", "tag-schema")

    listed = attach.list_referrers(ref, image.manifest_digest)
    assert {m["digest"] for m in listed} == {sbom.digest, prov.digest}
    only = attach.list_referrers(ref, image.manifest_digest, attach.SBOM_TYPE)
    assert [m["digest"] for m in only] == [sbom.digest] and only[0]["annotations"] == NOTES

    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry}/audit/tiny@{sbom.digest}"))
    assert raw["artifactType"] == attach.SBOM_TYPE and raw["subject"]["digest"] == image.manifest_digest
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{registry}/audit/tiny"))["Tags"]
    if sbom.mechanism == "tag-schema":
        fallback = attach.fallback_tag(image.manifest_digest)
        assert fallback in tags
        index = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                                  f"docker://{registry}/audit/tiny:{fallback}"))
        assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        assert sorted(m["digest"] for m in index["manifests"]) == sorted([sbom.digest, prov.digest])
    # the image itself is untouched
    assert reg.pull_manifest(ref)[0] == image.manifest


# -- a registry with the referrers API (fake) -------------------------------------------------------------


class FakeReferrersRegistry:
    """Enough of an OCI 1.1 registry: blob uploads, manifest PUT answering OCI-Subject, GET referrers."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append(f"{method} {path}")
        if method == "HEAD" and "/blobs/" in path:
            return httpx.Response(404)
        if method == "POST" and path.endswith("/blobs/uploads/"):
            return httpx.Response(202, headers={"Location": "/v2/repo/blobs/uploads/1"})
        if method == "PUT" and "/blobs/uploads/" in path:
            return httpx.Response(201)
        if method == "PUT" and "/manifests/" in path:
            body = request.read()
            self.manifests[path.rsplit("/", 1)[1]] = body
            subject = json.loads(body).get("subject", {}).get("digest")
            return httpx.Response(201, headers={"OCI-Subject": subject} if subject else {})
        if method == "GET" and "/referrers/" in path:
            found = [{"mediaType": MANIFEST_MEDIA_TYPE, "digest": d, "size": len(b),
                      "artifactType": json.loads(b)["artifactType"]} for d, b in self.manifests.items()]
            return httpx.Response(200, json={"schemaVersion": 2, "manifests": found})
        return httpx.Response(404)


def test_referrers_api_is_used_when_the_registry_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeReferrersRegistry()

    def session(ref: reg.Reference, *, push: bool, mount_from: str | None = None) -> reg.Session:
        return reg.Session(ref, httpx.Client(base_url=ref.base_url, transport=httpx.MockTransport(fake)))

    monkeypatch.setattr(attach, "open_session", session)
    subject = attach.subject_descriptor(b'{"schemaVersion":2}')
    pushed = attach.push_referrer("127.0.0.1:1/repo:v1", subject, SBOM, attach.SBOM_TYPE)
    assert pushed.mechanism == "referrers-api"
    assert not any("sha256-" in r for r in fake.requests)  # no fallback tag written
    listed = attach.list_referrers("127.0.0.1:1/repo:v1", subject["digest"], attach.SBOM_TYPE)
    assert [m["digest"] for m in listed] == [pushed.digest]
