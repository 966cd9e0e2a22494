"""Sign an image and attach signed attestations; verify both.

``sign_image`` computes everything first (the simple-signing payload, its signature, the three DSSE
envelopes), so a bad key or passphrase fails before anything is written. Then it writes in an order
that never leaves a half-signed image: blobs, the attestations (``.att`` tag, referrers), and the
signature (``.sig`` tag) last. An interrupted run leaves at most unreferenced blobs or attestations
without a signature, which ``verify --key`` refuses.

``verify_release`` is what ``lockbuild verify --key`` runs before its lock-derived comparison: a
valid signature by the key for this digest in this repository (exit 32 none, 33 none valid), the
three attestations signed by the key about this digest (exit 34), naming this lock (exit 35).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lockbuild import __version__
from lockbuild.errors import AttestationError, AttestedLockMismatch, BadSignature, IntegrityError, NoSignature
from lockbuild.fsutil import sha256_bytes
from lockbuild.oci.image import MANIFEST_MEDIA_TYPE, canonical_json
from lockbuild.sign import cosign, dsse
from lockbuild.sign.keys import Signer, Verifier
from lockbuild.sign.store import Store, manifest_json

KEYID_ANNOTATION = "dev.lockbuild.keyid"
REQUIRED = (dsse.SLSA_PROVENANCE, dsse.CYCLONEDX, dsse.VERIFICATION)
MAX_LAYERS = 64  # signatures or attestations read per image: a hostile registry cannot make verify fetch thousands


# -- the statements ---------------------------------------------------------------------------------------


def verification_predicate(lock: Any, lock_digest: str, image_digest: str, *, verify: Mapping[str, Any] | None,
                           smoke: Mapping[str, Any] | None, built: bool) -> dict[str, Any]:
    """What lockbuild claims about the digest: the lock it is the image of, and what checked that.

    ``verify``/``smoke`` are the ``--json`` reports of those commands (None: not run for this
    signature); only their outcome and counts go in, plus the sha256 of the report's canonical form."""
    def summary(report: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
        if report is None:
            return None
        return {"result": "passed" if report.get("ok") else "failed",
                **{k: report[k] for k in keys if k in report},
                "reportDigest": {"sha256": sha256_bytes(canonical_json(dict(report))).removeprefix("sha256:")}}

    return {
        "lock": {"digest": {"sha256": lock_digest.removeprefix("sha256:")}, "inputsDigest": lock.inputs_digest,
                 "created": lock.created},
        "image": {"name": lock.image_name, "digest": image_digest, "platform": lock.target.platform},
        "builder": {"id": f"https://lockbuild.dev/builder@{__version__}", "version": __version__},
        "builtFromLock": built,
        "verify": summary(verify, ("checked",)),
        "smoke": summary(smoke, ("predictions", "version")),
    }


def statements(lock: Any, lock_bytes: bytes, image_digest: str, *, sbom: bytes, verify: Mapping[str, Any] | None,
               smoke: Mapping[str, Any] | None, built: bool,
               spec: tuple[str, bytes] | None = None) -> list[tuple[str, bytes]]:
    """(predicate type, canonical statement bytes) for SLSA provenance, the SBOM, the verification.
    ``spec``: (name, bytes) of lockbuild.toml, recorded in the provenance beside the lock."""
    from lockbuild.audit.provenance import statement as provenance

    lock_digest = sha256_bytes(lock_bytes)
    spec_kw = {"spec_name": spec[0], "spec_digest": sha256_bytes(spec[1])} if spec else {}
    return [
        (dsse.SLSA_PROVENANCE, canonical_json(provenance(lock, lock_digest, image_digest, **spec_kw))),
        (dsse.CYCLONEDX, dsse.statement(lock.image_name, image_digest, dsse.CYCLONEDX, json.loads(sbom))),
        (dsse.VERIFICATION, dsse.statement(lock.image_name, image_digest, dsse.VERIFICATION,
                                           verification_predicate(lock, lock_digest, image_digest, verify=verify,
                                                                  smoke=smoke, built=built))),
    ]


# -- signing ----------------------------------------------------------------------------------------------


@dataclass
class SignResult:
    digest: str
    repository: str
    key_id: str
    deterministic: bool
    signature_tag: str | None = None
    attestation_tag: str | None = None
    attestations: list[str] = field(default_factory=list)  # predicate types
    referrers: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "repository": self.repository, "key_id": self.key_id,
                "deterministic_signatures": self.deterministic, "signature_tag": self.signature_tag,
                "attestation_tag": self.attestation_tag, "attestations": self.attestations,
                "referrers": self.referrers,
                "warnings": [f"the registry refused the {r['artifactType']} referrer ({r['error']}); the "
                             f"attestation is still under the {self.attestation_tag} tag"
                             for r in self.referrers if r.get("mechanism") == "refused"]}


def _existing(store: Store, tag: str) -> Mapping[str, Any] | None:
    data = store.get_manifest(tag)
    if data is None:
        return None
    try:
        return manifest_json(data, f"{store.description} {tag}")
    except IntegrityError:
        return None  # an unreadable old .sig/.att is replaced, not merged


def sign_image(store: Store, signer: Signer, *, statements_: list[tuple[str, bytes]] | None,
               signature: bool = True) -> SignResult:
    image = store.image()
    digest = image["digest"]
    result = SignResult(digest, store.repository, signer.key_id, signer.deterministic)
    # 1. everything signed in memory first
    sig_layer = cosign.sign(signer, store.repository, digest) if signature else None
    envelopes = [(t, dsse.envelope(signer, st)) for t, st in statements_ or []]
    # 2. blobs
    for _, env in envelopes:
        store.put_blob(env)
    if sig_layer is not None:
        store.put_blob(sig_layer.payload)
    # 3. attestations: cosign's .att tag (one layer per predicate type and key), then referrers
    if envelopes:
        att_tag = cosign.sig_tag(digest, "att")
        old = _existing(store, att_tag)
        ours = {t for t, _ in envelopes}
        kept = [dict(x) for x in (old or {}).get("layers", []) if isinstance(x, dict) and not (
            (x.get("annotations") or {}).get(dsse.PREDICATE_ANNOTATION) in ours
            and (x.get("annotations") or {}).get(KEYID_ANNOTATION) == signer.key_id)]
        layers = kept + [{"mediaType": dsse.ENVELOPE_MEDIA_TYPE, "digest": sha256_bytes(env), "size": len(env),
                          "annotations": {cosign.SIGNATURE_ANNOTATION: "", dsse.PREDICATE_ANNOTATION: t,
                                          KEYID_ANNOTATION: signer.key_id}} for t, env in envelopes]
        manifest, config = cosign.signature_manifest(layers)
        store.put_blob(config)
        store.put_manifest(att_tag, manifest, dsse.ENVELOPE_MEDIA_TYPE)
        result.attestation_tag = att_tag
        result.attestations = [t for t, _ in envelopes]
        result.referrers += _referrers(store, image, [(env, dsse.ENVELOPE_MEDIA_TYPE, {"in-toto.io/predicate-type": t})
                                                      for t, env in envelopes])
    # 4. the signature last: .sig tag (appending to other keys' signatures), referrer where the API exists
    if sig_layer is not None:
        tag = cosign.sig_tag(digest)
        layers = cosign.merged_layers(_existing(store, tag), sig_layer.descriptor)
        manifest, config = cosign.signature_manifest(layers)
        store.put_blob(config)
        api = any(r.get("mechanism") == "referrers-api" for r in result.referrers) if result.referrers else \
            getattr(store, "has_referrers_api", lambda: False)()
        if api:
            result.referrers.append(_sig_referrer(store, image, sig_layer))
        store.put_manifest(tag, manifest, cosign.SIG_ARTIFACT_TYPE)
        result.signature_tag = tag
    return result


def _referrers(store: Store, image: Mapping[str, Any],
               items: list[tuple[bytes, str, Mapping[str, str]]]) -> list[dict[str, str]]:
    """OCI 1.1 referrers: a registry (API or tag schema); a layout keeps the .att entry only."""
    from lockbuild.sign.store import RegistryStore

    if not isinstance(store, RegistryStore):
        return [{"artifactType": t, "mechanism": "layout-tag"} for _, t, _ in items]
    return store.push_referrers(image, items)


def _sig_referrer(store: Store, image: Mapping[str, Any], layer: cosign.SignatureLayer) -> dict[str, str]:
    """cosign's OCI 1.1 signature referrer (only pushed where the registry answers the referrers API)."""
    from lockbuild.audit.attach import EMPTY_BLOB, EMPTY_MEDIA_TYPE, descriptor

    store.put_blob(EMPTY_BLOB)
    manifest = canonical_json({"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                               "artifactType": cosign.SIG_ARTIFACT_TYPE,
                               "config": descriptor(EMPTY_MEDIA_TYPE, EMPTY_BLOB), "layers": [layer.descriptor],
                               "subject": {k: image[k] for k in ("mediaType", "digest", "size")}})
    store.put_manifest(None, manifest, cosign.SIG_ARTIFACT_TYPE)
    return {"artifactType": cosign.SIG_ARTIFACT_TYPE, "digest": sha256_bytes(manifest), "mechanism": "referrers-api"}


# -- verifying --------------------------------------------------------------------------------------------


@dataclass
class VerifiedRelease:
    digest: str
    repository: str
    key_id: str
    signed_reference: str
    attestations: dict[str, dict[str, Any]]  # predicate type -> statement

    def to_dict(self) -> dict[str, Any]:
        ver = self.attestations.get(dsse.VERIFICATION, {}).get("predicate", {})
        return {"digest": self.digest, "repository": self.repository, "key_id": self.key_id,
                "signed_reference": self.signed_reference, "attestations": sorted(self.attestations),
                "attested_verify": (ver.get("verify") or {}).get("result"),
                "attested_smoke": (ver.get("smoke") or {}).get("result")}


def _signature_layers(store: Store, digest: str) -> list[Mapping[str, Any]]:
    layers: list[Mapping[str, Any]] = []
    data = store.get_manifest(cosign.sig_tag(digest))
    if data is not None:
        layers += [x for x in manifest_json(data, f"{store.description} {cosign.sig_tag(digest)}").get("layers", [])
                   if isinstance(x, dict)]
    for ref in _safe_referrers(store, cosign.SIG_ARTIFACT_TYPE):
        data = store.get_manifest(ref["digest"])
        if data is not None:
            m = manifest_json(data, f"{store.description} referrer {ref['digest']}")
            layers += [x for x in m.get("layers", []) if isinstance(x, dict)]
    return layers


def _safe_referrers(store: Store, artifact_type: str) -> list[dict[str, Any]]:
    try:
        return [r for r in store.referrers(artifact_type) if isinstance(r.get("digest"), str)][:MAX_LAYERS]
    except IntegrityError:
        return []


def check_signature(store: Store, verifier: Verifier) -> str:
    """The docker reference of a valid signature by ``verifier`` for the store's image, or raise."""
    digest = store.image()["digest"]
    try:
        layers = _signature_layers(store, digest)
    except IntegrityError as e:
        raise BadSignature(f"{store.description}: the signature of {digest} is unreadable: {e.message}",
                           hint="the signature was edited or the registry serves other bytes; do not deploy it") \
            from None
    if not layers:
        raise NoSignature(f"{store.description}: {digest} carries no signature (no {cosign.sig_tag(digest)} tag, "
                          "no signature referrer)",
                          hint="sign it: `lockbuild sign REF --key KEY` (or pull the digest that was signed)")
    reasons = []
    if len(layers) > MAX_LAYERS:
        reasons.append(f"only the first {MAX_LAYERS} of {len(layers)} signatures were read")
    for i, layer in enumerate(layers[:MAX_LAYERS]):
        if layer.get("mediaType") != cosign.PAYLOAD_MEDIA_TYPE or not isinstance(layer.get("digest"), str):
            reasons.append(f"signature {i + 1}: not a simple-signing payload")
            continue
        try:
            payload = store.get_blob(layer["digest"])
        except IntegrityError as e:
            reasons.append(f"signature {i + 1}: {e.message}")
            continue
        got = cosign.check(verifier, payload, cosign.decode_signature(layer), digest, store.repository)
        if got.ok:
            return got.docker_reference
        reasons.append(f"signature {i + 1}: {got.reason}")
    raise BadSignature(f"{store.description}: none of the {len(layers)} signature(s) on {digest} is valid for key "
                       f"{verifier.key_id[:16]}…: " + "; ".join(reasons),
                       hint="the image was signed by another key, for another digest or repository, or edited; "
                       "do not deploy it")


def _attestation_layers(store: Store, digest: str) -> list[Mapping[str, Any]]:
    layers: list[Mapping[str, Any]] = []
    data = store.get_manifest(cosign.sig_tag(digest, "att"))
    if data is not None:
        layers += [x for x in manifest_json(data, f"{store.description} .att").get("layers", [])
                   if isinstance(x, dict)]
    seen = {x.get("digest") for x in layers}
    for ref in _safe_referrers(store, dsse.ENVELOPE_MEDIA_TYPE):
        data = store.get_manifest(ref["digest"])
        if data is not None:
            m = manifest_json(data, f"{store.description} referrer {ref['digest']}")
            layers += [x for x in m.get("layers", []) if isinstance(x, dict) and x.get("digest") not in seen]
    return layers


def check_attestations(store: Store, verifier: Verifier, lock_digest: str | None) -> dict[str, dict[str, Any]]:
    """The required statements, each from an envelope signed by ``verifier`` about this digest; and
    (``lock_digest`` given) naming that lock."""
    digest = store.image()["digest"]
    found: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    try:
        att_layers = _attestation_layers(store, digest)
    except IntegrityError as e:
        raise AttestationError(f"{store.description}: the attestations of {digest} are unreadable: {e.message}",
                               hint="they were edited or the registry serves other bytes; re-attest the image") \
            from None
    if len(att_layers) > MAX_LAYERS:
        problems.append(f"only the first {MAX_LAYERS} of {len(att_layers)} attestations were read")
    for layer in att_layers[:MAX_LAYERS]:
        if layer.get("mediaType") != dsse.ENVELOPE_MEDIA_TYPE or not isinstance(layer.get("digest"), str):
            continue
        try:
            att = dsse.open_envelope(store.get_blob(layer["digest"]), verifier, digest,
                                     f"attestation {layer['digest'][:19]}")
        except (AttestationError, IntegrityError) as e:
            problems.append(e.message)
            continue
        found.setdefault(att.predicate_type, att.statement)
    missing = [t for t in REQUIRED if t not in found]
    if missing:
        raise AttestationError(f"{store.description}: {digest} lacks valid signed attestation(s) "
                               f"{', '.join(missing)}" + (f" ({'; '.join(problems)})" if problems else ""),
                               hint="attest it: `lockbuild sign REF --key KEY` (signs and attaches provenance, "
                               "SBOM and the verification statement)")
    if lock_digest is not None:
        want = lock_digest.removeprefix("sha256:")
        try:
            prov = found[dsse.SLSA_PROVENANCE]["predicate"]["buildDefinition"]["externalParameters"]["lockDigest"]
            ver = found[dsse.VERIFICATION]["predicate"]["lock"]["digest"]["sha256"]
        except (KeyError, TypeError):
            raise AttestationError(f"{store.description}: the signed provenance or verification statement of {digest} "
                                   "names no lock", hint="re-attest the image with `lockbuild sign`") from None
        named = {str(prov).removeprefix("sha256:"), str(ver)}
        if named != {want}:
            raise AttestedLockMismatch(
                f"{store.description}: the signed attestations of {digest} name lock "
                f"sha256:{sorted(named - {want})[0] if named - {want} else '?'}, not this lock sha256:{want}",
                hint="the image was released from another lock: check out the lockbuild.lock of that release, "
                "or rebuild and re-sign from this one")
    return found


def verify_release(store: Store, verifier: Verifier, lock_digest: str | None) -> VerifiedRelease:
    reference = check_signature(store, verifier)
    found = check_attestations(store, verifier, lock_digest)
    return VerifiedRelease(store.image()["digest"], store.repository, verifier.key_id, reference, found)
