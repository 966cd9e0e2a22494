"""Signed attestations: in-toto Statement v1 inside DSSE envelopes (the format cosign attest, Ratify
and the SLSA verifiers read).

DSSE signs the pre-authentication encoding ``PAE(type, body) = "DSSEv1" SP len(type) SP type SP
len(body) SP body`` (lengths as ASCII decimal) with the same ECDSA P-256 key as the image
signature. Three statements per image, all with ``subject`` = the image's manifest digest:

* SLSA provenance v1 (``audit/provenance.py``): the lock's sha256 and the spec as build inputs,
  the builder's version;
* the CycloneDX SBOM (predicate type ``https://cyclonedx.org/bom``);
* lockbuild's verification predicate (``https://lockbuild.dev/attestations/verification/v1``):
  lock sha256, image digest, and what verify and smoke found.

Statement and envelope bytes are canonical JSON: the same inputs give the same payload bytes, and
with RFC 6979 signing (keys.py) the same envelope bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lockbuild.errors import AttestationError
from lockbuild.oci.image import canonical_json
from lockbuild.sign.keys import Signer, Verifier

ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
CYCLONEDX = "https://cyclonedx.org/bom"
VERIFICATION = "https://lockbuild.dev/attestations/verification/v1"
PREDICATE_ANNOTATION = "predicateType"  # cosign's layer annotation on .att layers


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def statement(subject_name: str, manifest_digest: str, predicate_type: str, predicate: Mapping[str, Any]) -> bytes:
    hexdigest = manifest_digest.removeprefix("sha256:")
    return canonical_json({"_type": STATEMENT_TYPE,
                           "subject": [{"name": subject_name, "digest": {"sha256": hexdigest}}],
                           "predicateType": predicate_type, "predicate": dict(predicate)})


def envelope(signer: Signer, payload: bytes, payload_type: str = IN_TOTO_PAYLOAD_TYPE) -> bytes:
    sig = signer.sign(pae(payload_type, payload))
    return canonical_json({"payload": base64.b64encode(payload).decode(), "payloadType": payload_type,
                           "signatures": [{"keyid": signer.key_id, "sig": base64.b64encode(sig).decode()}]})


@dataclass(frozen=True)
class Attestation:
    predicate_type: str
    statement: dict[str, Any]


def open_envelope(data: bytes, verifier: Verifier, manifest_digest: str, where: str) -> Attestation:
    """The statement inside a DSSE envelope, after its signature by ``verifier`` verified over the PAE,
    and its subject named ``manifest_digest``. Raises AttestationError saying what is wrong."""
    try:
        env = json.loads(data)
        payload_type = env["payloadType"]
        body = base64.b64decode(env["payload"], validate=True)
        sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise AttestationError(f"{where} is not a DSSE envelope",
                               hint="re-attest the image: `lockbuild sign REF --key KEY`") from None
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise AttestationError(f"{where} carries {payload_type!r}, not an in-toto statement",
                               hint="re-attest the image: `lockbuild sign REF --key KEY`")
    if not any(verifier.verify(pae(payload_type, body), sig) for sig in sigs):
        raise AttestationError(f"{where}: no signature on the envelope verifies with key "
                               f"{verifier.key_id[:16]}…", hint="the attestation was edited or signed by "
                               "another key; re-attest with the release key")
    try:
        st = json.loads(body)
        predicate_type = st["predicateType"]
        subjects = st["subject"]
        ok_type = st["_type"] in (STATEMENT_TYPE, "https://in-toto.io/Statement/v0.1")
    except (ValueError, KeyError, TypeError):
        raise AttestationError(f"{where}: the signed payload is not an in-toto statement",
                               hint="re-attest the image") from None
    if not ok_type or not isinstance(predicate_type, str):
        raise AttestationError(f"{where}: the signed payload is not an in-toto statement", hint="re-attest the image")
    hexdigest = manifest_digest.removeprefix("sha256:")
    if not any(isinstance(s, dict) and (s.get("digest") or {}).get("sha256") == hexdigest for s in subjects):
        raise AttestationError(f"{where}: the {predicate_type} statement is about another image, not {manifest_digest}",
                               hint="attestations were copied from another image; re-attest this digest")
    return Attestation(predicate_type, st)
