"""cosign's documented image signature format (sigstore/cosign specs/SIGNATURE_SPEC.md), which
containers/image (skopeo, podman, CRI-O) and Ratify's cosign verifier also read.

* The payload is a "simple signing" JSON document naming the manifest digest and the repository
  (``critical.image.docker-manifest-digest``, ``critical.identity.docker-reference``,
  ``critical.type`` = ``cosign container image signature``). lockbuild writes it compactly with a
  fixed key order, so the same digest and repository always give the same payload bytes.
* The signature is ECDSA P-256 over SHA-256 of the payload bytes, DER, base64 in the layer
  annotation ``dev.cosignproject.cosign/signature``.
* The payload is a layer (media type ``application/vnd.dev.cosign.simplesigning.v1+json``) of an
  OCI image manifest stored under the tag ``sha256-<hex>.sig`` in the image's repository; several
  signatures (keys) are several layers of that manifest.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lockbuild.oci.image import MANIFEST_MEDIA_TYPE, canonical_json
from lockbuild.sign.keys import Signer, Verifier

PAYLOAD_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
SIG_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"  # cosign's OCI 1.1 referrer type
ZERO_TIME = "0001-01-01T00:00:00Z"


def sig_tag(manifest_digest: str, suffix: str = "sig") -> str:
    """sha256:<hex> -> sha256-<hex>.sig (cosign's tag scheme; ``att`` for attestations)."""
    return f"{manifest_digest.replace(':', '-')}.{suffix}"


def payload(docker_reference: str, manifest_digest: str) -> bytes:
    """The simple-signing payload: compact JSON, cosign's key order, no optional claims."""
    doc = {"critical": {"identity": {"docker-reference": docker_reference},
                        "image": {"docker-manifest-digest": manifest_digest},
                        "type": SIGNATURE_TYPE},
           "optional": None}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SignatureLayer:
    payload: bytes
    signature: bytes  # DER
    media_type: str = PAYLOAD_MEDIA_TYPE

    @property
    def descriptor(self) -> dict[str, Any]:
        from lockbuild.fsutil import sha256_bytes

        return {"mediaType": self.media_type, "digest": sha256_bytes(self.payload), "size": len(self.payload),
                "annotations": {SIGNATURE_ANNOTATION: base64.b64encode(self.signature).decode()}}


def sign(signer: Signer, docker_reference: str, manifest_digest: str) -> SignatureLayer:
    data = payload(docker_reference, manifest_digest)
    return SignatureLayer(data, signer.sign(data))


def signature_manifest(layers: Iterable[Mapping[str, Any]]) -> tuple[bytes, bytes]:
    """(manifest, config) of the ``.sig`` image for these layer descriptors, as cosign writes them:
    a config naming the payloads' digests as diff_ids, zero times."""
    layer_list = [dict(layer) for layer in layers]
    config = canonical_json({"architecture": "", "config": {}, "created": ZERO_TIME,
                             "history": [{"created": ZERO_TIME} for _ in layer_list], "os": "",
                             "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layer_list]}})
    from lockbuild.fsutil import sha256_bytes

    manifest = canonical_json({"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                               "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": sha256_bytes(config),
                                          "size": len(config)},
                               "layers": layer_list})
    return manifest, config


def merged_layers(existing: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The layers of an existing ``.sig`` manifest plus ``new`` (unless an identical layer is there)."""
    layers = [dict(x) for x in (existing or {}).get("layers", []) if isinstance(x, dict)]
    if any(x.get("digest") == new["digest"] and x.get("annotations") == new["annotations"] for x in layers):
        return layers
    return [*layers, dict(new)]


# -- verification -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    ok: bool
    reason: str  # why not, for the error message ("" when ok)
    docker_reference: str = ""


def decode_signature(layer: Mapping[str, Any]) -> bytes | None:
    value = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def check(verifier: Verifier, payload_bytes: bytes, signature: bytes | None, manifest_digest: str,
          repository: str | None) -> Checked:
    """Is this a valid signature by ``verifier`` for ``manifest_digest`` in ``repository``
    (``host/repo``; None: do not check the identity)? The payload is parsed only after the signature
    over its exact bytes verified, as containers/image does."""
    if signature is None:
        return Checked(False, "the layer has no signature annotation")
    if not verifier.verify(payload_bytes, signature):
        return Checked(False, f"the signature does not verify with key {verifier.key_id[:16]}…")
    try:
        doc = json.loads(payload_bytes)
        critical = doc["critical"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        reference = critical["identity"]["docker-reference"]
        kind = critical["type"]
    except (ValueError, KeyError, TypeError):
        return Checked(False, "the signed payload is not a simple-signing document")
    if kind != SIGNATURE_TYPE:
        return Checked(False, f"the signed payload has type {kind!r}, not {SIGNATURE_TYPE!r}")
    if signed_digest != manifest_digest:
        return Checked(False, f"the signature is for {signed_digest}, not {manifest_digest}")
    if repository is not None and _repository_of(str(reference)) != repository:
        return Checked(False, f"the signature names repository {reference!r}, not {repository!r}")
    return Checked(True, "", str(reference))


def _repository_of(reference: str) -> str:
    """host/repo of a docker reference that may carry :tag or @digest."""
    name = reference.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if len(last) == 2 and ":" in last[1]:
        name = last[0] + "/" + last[1].split(":", 1)[0]
    return name
