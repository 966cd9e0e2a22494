"""Where signatures and attestations live: a registry repository or an OCI layout directory, behind one
small interface (tags, blobs, referrers).

* Registry: cosign's tags (``sha256-<hex>.sig`` / ``.att``) in the image's repository; referrers
  through ``audit/attach.py`` (the referrers API where the registry has it, else the referrers tag
  schema).
* OCI layout: the ``.sig``/``.att`` manifests are entries of ``index.json`` named by
  ``org.opencontainers.image.ref.name`` = the tag, with an ``artifactType`` on the entry so
  lockbuild and other tools still see exactly one image in the layout.

Every blob and manifest read back is checked against its digest; reads are capped (signatures and
attestations are small), so a hostile registry cannot make the verifier buffer gigabytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from lockbuild.errors import IntegrityError, PublishError
from lockbuild.fsutil import atomic_write_bytes, check_bytes, sha256_bytes
from lockbuild.oci.image import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, canonical_json
from lockbuild.oci.layout import blob_name

MAX_SMALL = 32 << 20  # an SBOM envelope of a big image is a few MB; refuse anything far larger
REF_NAME = "org.opencontainers.image.ref.name"


class Store(Protocol):
    description: str
    repository: str  # host/repo for the simple-signing identity (a layout: the lock's image name)

    def image(self) -> dict[str, Any]:
        """The signed subject's descriptor: mediaType, digest, size."""
        ...

    def get_manifest(self, tag: str) -> bytes | None:
        """A manifest by tag or digest (digest-checked); None when there is no such tag."""
        ...

    def get_blob(self, digest: str) -> bytes: ...

    def put_blob(self, data: bytes) -> None: ...

    def put_manifest(self, tag: str | None, data: bytes, artifact_type: str) -> None: ...

    def referrers(self, artifact_type: str) -> list[dict[str, Any]]: ...


def parse_target(ref: str) -> tuple[str, str]:
    """("layout", dir) or ("registry", host/repo[:tag][@digest]) for a sign/verify REF."""
    if ref.startswith("oci:"):
        return "layout", ref.removeprefix("oci:")
    if Path(ref).is_dir():
        return "layout", ref
    name = ref.removeprefix("docker://")
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return "registry", name
    raise PublishError(f"{ref!r} is neither an OCI layout directory nor a registry reference",
                       hint="pass docker://HOST/REPO@sha256:…, HOST/REPO:TAG, or an OCI layout directory")


# -- registry --------------------------------------------------------------------------------------------


class RegistryStore:
    def __init__(self, ref: str, *, push: bool) -> None:
        from lockbuild.oci import registry as reg

        self.ref_text = ref
        self.ref = reg.parse_reference(ref)
        self.repository = f"{self.ref.registry}/{self.ref.repository}"
        self.description = f"registry {self.repository}"
        self._session = reg.open_session(self.ref, push=push)
        self._image: dict[str, Any] | None = None

    def close(self) -> None:
        self._session.client.close()

    def __enter__(self) -> RegistryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, reference: str) -> tuple[bytes, str] | None:
        from lockbuild.oci.registry import MANIFEST_ACCEPT

        s = self._session
        r = s.send("GET", s.url(f"manifests/{reference}"), ok=(200, 404), headers={"Accept": MANIFEST_ACCEPT})
        if r.status_code == 404:
            return None
        data = r.content
        if len(data) > MAX_SMALL:
            raise IntegrityError(f"{self.repository}: manifest {reference} is {len(data)} bytes",
                                 hint="not a manifest lockbuild wrote; do not trust it")
        echoed = r.headers.get("docker-content-digest")
        if reference.startswith("sha256:") and sha256_bytes(data) != reference or \
                echoed and echoed != sha256_bytes(data):
            raise IntegrityError(f"{self.repository}: manifest {reference} does not match its digest",
                                 hint="the registry or a proxy served different bytes; do not trust this image")
        return data, r.headers.get("content-type", MANIFEST_MEDIA_TYPE).split(";")[0]

    def image(self) -> dict[str, Any]:
        if self._image is None:
            got = self._get(self.ref.reference)
            if got is None:
                raise PublishError(f"{self.ref_text}: no such image in {self.repository}",
                                   hint="push it first (`lockbuild image --push REF`), or check the tag/digest")
            data, media_type = got
            self._image = {"mediaType": media_type, "digest": sha256_bytes(data), "size": len(data)}
        return self._image

    def get_manifest(self, tag: str) -> bytes | None:
        got = self._get(tag)
        return got[0] if got else None

    def get_blob(self, digest: str) -> bytes:
        import httpx

        s = self._session
        chunks, size = [], 0
        try:
            with s.client.stream("GET", s.url(f"blobs/{digest}"), follow_redirects=True) as r:
                if r.status_code == 404:
                    raise IntegrityError(f"{self.repository}: blob {digest} is missing", hint="the signature or "
                                         "attestation manifest points at a blob that is not there")
                if r.status_code != 200:
                    raise PublishError(f"GET blob {digest} -> HTTP {r.status_code}", hint="check the registry")
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > MAX_SMALL:  # never buffer an unbounded body from a hostile registry
                        raise IntegrityError(f"{self.repository}: blob {digest} is over {MAX_SMALL >> 20} MiB",
                                             hint="not a signature or attestation lockbuild wrote; do not trust it")
                    chunks.append(chunk)
        except httpx.HTTPError as e:
            raise PublishError(f"GET blob {digest} from {self.ref.registry} failed: {e}",
                               hint="check the network and the registry") from e
        return check_bytes(b"".join(chunks), digest, f"{self.repository}: blob",
                           "the registry or a proxy served different bytes; do not trust it")

    def put_blob(self, data: bytes) -> None:
        from lockbuild.audit.attach import upload_blob

        upload_blob(self._session, data)

    def put_manifest(self, tag: str | None, data: bytes, artifact_type: str) -> None:
        from lockbuild.audit.attach import put_manifest

        put_manifest(self._session, tag or sha256_bytes(data), data, MANIFEST_MEDIA_TYPE)

    def has_referrers_api(self) -> bool:
        s = self._session
        r = s.send("GET", s.url(f"referrers/{self.image()['digest']}"), ok=(200, 404, 400, 405),
                   headers={"Accept": INDEX_MEDIA_TYPE})
        return r.status_code == 200 and r.headers.get("content-type", "").startswith(INDEX_MEDIA_TYPE)

    def push_referrers(self, subject: Mapping[str, Any],
                       items: list[tuple[bytes, str, Mapping[str, str]]]) -> list[dict[str, str]]:
        """Each (blob, artifact type, annotations) as an OCI 1.1 referrer of ``subject`` (audit/attach.py's
        manifest format; the blobs are already uploaded): the referrers API when the registry echoes
        OCI-Subject, else the referrers tag schema, updated once for all of them. A manifest the registry
        refuses (4xx) is reported as ``refused``; a transient failure raises."""
        from lockbuild.audit import attach
        from lockbuild.errors import PublishError
        from lockbuild.oci.registry import Transient

        attach.upload_blob(self._session, attach.EMPTY_BLOB)
        out: list[dict[str, str]] = []
        fallback: list[dict[str, Any]] = []
        for blob, artifact_type, notes in items:
            manifest = attach.artifact_manifest(subject, blob, artifact_type, notes)
            digest = sha256_bytes(manifest)
            try:
                echoed = attach.put_manifest(self._session, digest, manifest, MANIFEST_MEDIA_TYPE)
            except Transient:
                raise
            except PublishError as e:
                out.append({"artifactType": artifact_type, "digest": digest, "mechanism": "refused",
                            "error": e.message})
                continue
            mechanism = "referrers-api" if echoed == subject["digest"] else "tag-schema"
            if mechanism == "tag-schema":
                fallback.append({**attach.descriptor(MANIFEST_MEDIA_TYPE, manifest), "artifactType": artifact_type,
                                 "annotations": dict(notes)})
            out.append({"artifactType": artifact_type, "digest": digest, "mechanism": mechanism})
        if fallback:
            index = attach._tag_index(self._session, subject["digest"])
            ours = {e["digest"] for e in fallback}
            index["manifests"] = [*(m for m in index.get("manifests", []) if m.get("digest") not in ours), *fallback]
            attach.put_manifest(self._session, attach.fallback_tag(subject["digest"]), canonical_json(index),
                                INDEX_MEDIA_TYPE)
        return out

    def referrers(self, artifact_type: str) -> list[dict[str, Any]]:
        from lockbuild.audit.attach import list_referrers

        return list_referrers(self.ref_text, self.image()["digest"], artifact_type)


# -- OCI layout ----------------------------------------------------------------------------------------


class LayoutStore:
    def __init__(self, path: str, repository: str) -> None:
        self.path = Path(path)
        self.repository = repository
        self.description = f"OCI layout {self.path}"

    def __enter__(self) -> LayoutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def image(self) -> dict[str, Any]:
        from lockbuild.audit.attach import layout_image_descriptor

        d = layout_image_descriptor(self.path)
        return {"mediaType": d["mediaType"], "digest": d["digest"], "size": d["size"]}

    def _entries(self) -> list[dict[str, Any]]:
        from lockbuild.audit.attach import _read_index

        return list(_read_index(self.path)["manifests"])

    def get_manifest(self, tag: str) -> bytes | None:
        if tag.startswith("sha256:"):
            return self.get_blob(tag)
        for e in self._entries():
            if (e.get("annotations") or {}).get(REF_NAME) == tag:
                return self.get_blob(e["digest"])
        return None

    def get_blob(self, digest: str) -> bytes:
        from lockbuild.audit.attach import _read_layout_blob

        path = self.path / blob_name(digest)
        if path.exists() and path.stat().st_size > MAX_SMALL:
            raise IntegrityError(f"{path} is too large for a signature or attestation", hint="rebuild the layout")
        return _read_layout_blob(self.path, digest)

    def put_blob(self, data: bytes) -> None:
        from lockbuild.audit.attach import _put_layout_blob

        _put_layout_blob(self.path, data)

    def put_manifest(self, tag: str | None, data: bytes, artifact_type: str) -> None:
        from lockbuild.audit.attach import _exclusive, _read_index

        self.put_blob(data)
        entry: dict[str, Any] = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": sha256_bytes(data), "size": len(data),
                                 "artifactType": artifact_type}
        if tag:
            entry["annotations"] = {REF_NAME: tag}
        with _exclusive(self.path):
            index = _read_index(self.path)
            kept = [m for m in index["manifests"]
                    if not (tag and (m.get("annotations") or {}).get(REF_NAME) == tag)
                    and m.get("digest") != entry["digest"]]
            index["manifests"] = [*kept, entry]
            atomic_write_bytes(self.path / "index.json", canonical_json(index))

    def has_referrers_api(self) -> bool:
        return False

    def referrers(self, artifact_type: str) -> list[dict[str, Any]]:
        from lockbuild.audit.attach import layout_referrers

        return [m for m in layout_referrers(self.path, self.image()["digest"])
                if m.get("artifactType") == artifact_type]


def manifest_json(data: bytes, where: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{where} is not JSON", hint="re-sign the image") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("layers", []), list):
        raise IntegrityError(f"{where} is not an image manifest", hint="re-sign the image")
    return doc
