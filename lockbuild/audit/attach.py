"""Attach an SBOM or provenance to an image as an OCI 1.1 artifact (a referrer of the image).

The artifact is an image manifest with ``artifactType``, the empty config
(``application/vnd.oci.empty.v1+json``, content ``{}``), one layer holding the JSON document, and
``subject`` = the image manifest's descriptor. Its bytes are canonical JSON, so the same document
attached to the same image always has the same digest.

* OCI layout: the blobs go into ``blobs/sha256`` and the artifact's descriptor (with
  ``artifactType``) is added to ``index.json`` (rewritten atomically, under a flock of the layout directory). An older
  artifact of the same type for the same subject is replaced in the index.
* Registry: blobs and manifest are pushed with the registry module's session; when the registry
  does not answer the manifest PUT with ``OCI-Subject`` (no referrers API, e.g. distribution 2.8),
  the referrers tag schema of the distribution spec 1.1 is maintained: tag ``sha256-<hex>`` holds
  an image index listing the subject's referrers. ``list_referrers`` reads the API, falling back
  to that tag when the API answers 404.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockbuild.errors import IntegrityError, PublishError
from lockbuild.fsutil import atomic_write_bytes, check_bytes, sha256_bytes
from lockbuild.oci.image import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, canonical_json
from lockbuild.oci.layout import blob_name
from lockbuild.oci.registry import Session, open_session, parse_reference

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
SBOM_TYPE = "application/vnd.cyclonedx+json"
PROVENANCE_TYPE = "application/vnd.in-toto+json"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"


# -- the artifact manifest ------------------------------------------------------------------------------


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_bytes(data), "size": len(data)}


def subject_descriptor(manifest: bytes) -> dict[str, Any]:
    """The ``subject`` for an image manifest: media type, digest, size (nothing else)."""
    return descriptor(MANIFEST_MEDIA_TYPE, manifest)


def artifact_manifest(subject: Mapping[str, Any], artifact: bytes, artifact_type: str,
                      annotations: Mapping[str, str] | None = None) -> bytes:
    """Canonical bytes of the OCI artifact manifest for ``artifact`` referring to ``subject``."""
    layer = descriptor(artifact_type, artifact)
    title = (annotations or {}).get(TITLE)
    if title:
        layer["annotations"] = {TITLE: title}
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": artifact_type,
        "config": descriptor(EMPTY_MEDIA_TYPE, EMPTY_BLOB),
        "layers": [layer],
        "subject": {k: subject[k] for k in ("mediaType", "digest", "size")},
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return canonical_json(manifest)


def _index_entry(manifest: bytes, artifact_type: str, annotations: Mapping[str, str] | None) -> dict[str, Any]:
    entry = {**descriptor(MANIFEST_MEDIA_TYPE, manifest), "artifactType": artifact_type}
    if annotations:
        entry["annotations"] = dict(annotations)
    return entry


# -- OCI layout -----------------------------------------------------------------------------------------


def _read_index(layout: Path) -> dict[str, Any]:
    try:
        index = json.loads((layout / "index.json").read_bytes())
    except FileNotFoundError:
        raise PublishError(f"{layout} is not an OCI image layout (no index.json)",
                           hint="point at a directory written by `lockbuild image --oci DIR`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{layout}/index.json is not valid JSON: {e}", hint="rebuild the layout") from None
    if not isinstance(index.get("manifests"), list):
        raise IntegrityError(f"{layout}/index.json has no manifests list", hint="rebuild the layout")
    return index


def _read_layout_blob(layout: Path, digest: str) -> bytes:
    try:
        data = (layout / blob_name(digest)).read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"blob {digest} is missing from {layout}", hint="rebuild the layout") from None
    return check_bytes(data, digest, f"blob in {layout}", "rebuild the layout")


def image_entries(index: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The index entries that are images (image manifests without an artifactType)."""
    return [m for m in index.get("manifests", [])
            if m.get("mediaType") == MANIFEST_MEDIA_TYPE and not m.get("artifactType")]


def layout_image_descriptor(layout: Path) -> dict[str, Any]:
    """The one image's entry in a layout's index.json (artifacts attached to it are ignored)."""
    images = image_entries(_read_index(layout))
    if len(images) != 1:
        raise PublishError(f"{layout} holds {len(images)} images, expected one",
                           hint="pass the image digest with --image-digest instead")
    _read_layout_blob(layout, images[0]["digest"])  # present and intact
    return images[0]


@contextlib.contextmanager
def _exclusive(layout: Path) -> Iterator[None]:
    """Serialise index.json updates: flock on the layout directory itself (leaves no lock file)."""
    try:
        fd = os.open(layout, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise PublishError(f"{layout} does not exist", hint="write the image first: `lockbuild image --oci DIR`") \
            from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _put_layout_blob(layout: Path, data: bytes) -> None:
    path = layout / blob_name(sha256_bytes(data))
    if path.exists() and sha256_bytes(path.read_bytes()) == sha256_bytes(data):
        return
    atomic_write_bytes(path, data, mode=0o444)


def _is_same_kind(layout: Path, entry: Mapping[str, Any], artifact_type: str, subject_digest: str) -> bool:
    if entry.get("artifactType") != artifact_type:
        return False
    try:
        manifest = json.loads(_read_layout_blob(layout, entry["digest"]))
    except IntegrityError:
        return True  # a broken entry of this type: replace it too
    return bool(manifest.get("subject", {}).get("digest") == subject_digest)


def attach_to_layout(layout_dir: Path, subject_manifest_digest: str, artifact_bytes: bytes, artifact_type: str,
                     annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write ``artifact_bytes`` as a referrer of the layout's image; returns its index.json entry."""
    layout = Path(layout_dir)
    with _exclusive(layout):
        index = _read_index(layout)
        subject = next((m for m in image_entries(index) if m["digest"] == subject_manifest_digest), None)
        if subject is None:
            raise PublishError(f"{layout} holds no image {subject_manifest_digest}",
                               hint="attach to the digest `lockbuild image` printed for this layout")
        _read_layout_blob(layout, subject_manifest_digest)
        manifest = artifact_manifest(subject, artifact_bytes, artifact_type, annotations)
        for blob in (EMPTY_BLOB, artifact_bytes, manifest):
            _put_layout_blob(layout, blob)
        entry = _index_entry(manifest, artifact_type, annotations)
        kept = [m for m in index["manifests"]
                if not _is_same_kind(layout, m, artifact_type, subject_manifest_digest)]
        index["manifests"] = [*kept, entry]
        atomic_write_bytes(layout / "index.json", canonical_json(index))
    return entry


def layout_referrers(layout_dir: Path, subject_manifest_digest: str) -> list[dict[str, Any]]:
    """Index entries of the artifacts in a layout whose subject is the given image."""
    layout = Path(layout_dir)
    out = []
    for entry in _read_index(layout)["manifests"]:
        if entry.get("artifactType"):
            manifest = json.loads(_read_layout_blob(layout, entry["digest"]))
            if manifest.get("subject", {}).get("digest") == subject_manifest_digest:
                out.append(entry)
    return out


# -- registry ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushedReferrer:
    digest: str  # the artifact manifest's digest
    reference: str  # registry/repository@digest
    mechanism: str  # "referrers-api" (registry set OCI-Subject) or "tag-schema" (sha256-<hex> index)

    def to_dict(self) -> dict[str, str]:
        return {"digest": self.digest, "reference": self.reference, "mechanism": self.mechanism}


def fallback_tag(subject_digest: str) -> str:
    """The referrers tag schema: sha256:<hex> -> sha256-<hex>."""
    return subject_digest.replace(":", "-")


def upload_blob(s: Session, data: bytes) -> str:
    """A small in-memory blob: skip when present, else a monolithic upload (POST, then PUT ?digest=)."""
    digest = sha256_bytes(data)
    if s.send("HEAD", s.url(f"blobs/{digest}"), ok=(200, 404)).status_code == 200:
        return digest
    r = s.send("POST", s.url("blobs/uploads/"), ok=(202,))
    location = r.headers.get("location")
    if not location:
        raise PublishError("registry started an upload without a Location", hint="the registry is not OCI-conformant")
    url = s.client.base_url.join(location).copy_merge_params({"digest": digest})
    s.send("PUT", url, ok=(201, 204), content=data,
           headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    return digest


def put_manifest(s: Session, reference: str, data: bytes, media_type: str) -> str | None:
    """PUT a manifest or index; returns the OCI-Subject header (None when the registry did not set it)."""
    r = s.send("PUT", s.url(f"manifests/{reference}"), ok=(200, 201), content=data,
               headers={"Content-Type": media_type})
    echoed = r.headers.get("docker-content-digest")
    if echoed and echoed != sha256_bytes(data):
        raise IntegrityError(f"registry stored the manifest as {echoed}, expected {sha256_bytes(data)}",
                             hint="the registry rewrote the manifest; use an OCI-conformant registry")
    return r.headers.get("oci-subject")


def _tag_index(s: Session, subject_digest: str) -> dict[str, Any]:
    r = s.send("GET", s.url(f"manifests/{fallback_tag(subject_digest)}"), ok=(200, 404),
               headers={"Accept": INDEX_MEDIA_TYPE})
    if r.status_code == 404:
        return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    return dict(json.loads(r.content))


def _update_tag_index(s: Session, subject_digest: str, entry: Mapping[str, Any]) -> None:
    index = _tag_index(s, subject_digest)
    others = [m for m in index.get("manifests", []) if m.get("digest") != entry["digest"]]
    index["manifests"] = [*others, dict(entry)]
    put_manifest(s, fallback_tag(subject_digest), canonical_json(index), INDEX_MEDIA_TYPE)


def push_referrer(ref: str, subject_descriptor: Mapping[str, Any], artifact_bytes: bytes, artifact_type: str,
                  annotations: Mapping[str, str] | None = None) -> PushedReferrer:
    """Push the artifact manifest for ``artifact_bytes`` to ``ref``'s repository, referring to the subject."""
    r = parse_reference(ref)
    manifest = artifact_manifest(subject_descriptor, artifact_bytes, artifact_type, annotations)
    digest = sha256_bytes(manifest)
    s = open_session(r, push=True)
    with s.client:
        upload_blob(s, EMPTY_BLOB)
        upload_blob(s, artifact_bytes)
        echoed = put_manifest(s, digest, manifest, MANIFEST_MEDIA_TYPE)
        mechanism = "referrers-api"
        if echoed != subject_descriptor["digest"]:
            _update_tag_index(s, subject_descriptor["digest"], _index_entry(manifest, artifact_type, annotations))
            mechanism = "tag-schema"
    return PushedReferrer(digest=digest, reference=r.with_digest(digest), mechanism=mechanism)


def list_referrers(ref: str, subject_digest: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
    """Descriptors of the subject's referrers: the referrers API, else the sha256-<hex> tag index."""
    r = parse_reference(ref)
    s = open_session(r, push=False)
    with s.client:
        params = {"artifactType": artifact_type} if artifact_type else None
        resp = s.send("GET", s.url(f"referrers/{subject_digest}"), ok=(200, 404), params=params,
                      headers={"Accept": INDEX_MEDIA_TYPE})
        found = json.loads(resp.content) if resp.status_code == 200 else _tag_index(s, subject_digest)
    manifests = list(found.get("manifests", []))
    return [m for m in manifests if artifact_type is None or m.get("artifactType") == artifact_type]
