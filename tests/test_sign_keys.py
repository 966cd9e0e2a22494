"""Signing keys, DSSE envelopes and simple-signing payloads, checked by a second implementation (the
openssl CLI over the exact signed bytes), and signing into an OCI layout. No network."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockbuild.errors import AttestationError, BadSignature, NoSignature, SigningKeyError
from lockbuild.fetch.cache import Cache
from lockbuild.oci.image import Image
from lockbuild.oci.layout import write_oci_layout
from lockbuild.sign import cosign, dsse, keys, policy, release
from lockbuild.sign.store import LayoutStore
from tests.conftest_services import need_tool

PW = "LOCKBUILD_TEST_KEY_PASSWORD"


@pytest.fixture()
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> keys.KeyPair:
    monkeypatch.setenv(PW, "correct horse")
    return keys.generate(tmp_path / "release", passphrase_env=PW)


def openssl(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    need_tool("openssl")
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def openssl_verifies(tmp_path: Path, public: Path, data: bytes, der_sig: bytes) -> bool:
    (tmp_path / "data.bin").write_bytes(data)
    (tmp_path / "sig.der").write_bytes(der_sig)
    proc = openssl("dgst", "-sha256", "-verify", str(public), "-signature", str(tmp_path / "sig.der"),
                   str(tmp_path / "data.bin"), ok=False)
    return proc.returncode == 0 and "Verified OK" in proc.stdout


# -- keys -----------------------------------------------------------------------------------------------


def test_keygen_writes_an_encrypted_0600_key_and_refuses_to_overwrite(pair: keys.KeyPair, tmp_path: Path) -> None:
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert stat.S_IMODE(pair.public.stat().st_mode) == 0o644
    assert pair.private.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert "correct horse" not in pair.private.read_text()
    with pytest.raises(SigningKeyError, match="already exists"):
        keys.generate(tmp_path / "release", passphrase_env=PW)
    signer = keys.load_private_key(pair.private, PW)
    assert signer.key_id == pair.key_id == keys.load_public_key(pair.public).key_id
    assert "PRIVATE" not in repr(signer) and pair.key_id[:16] in repr(signer)


def test_key_errors_are_clear(pair: keys.KeyPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW, "wrong")
    with pytest.raises(SigningKeyError, match="wrong passphrase") as e:
        keys.load_private_key(pair.private, PW)
    assert e.value.exit_code == 31 and "wrong" not in e.value.message.replace("wrong passphrase", "")
    monkeypatch.delenv(PW)
    with pytest.raises(SigningKeyError, match="encrypted and no passphrase") as e:
        keys.load_private_key(pair.private, PW)
    assert PW in (e.value.hint or "")
    with pytest.raises(SigningKeyError, match="no private key at"):
        keys.load_private_key(tmp_path / "missing.key", PW)
    with pytest.raises(SigningKeyError, match="is a public key"):
        keys.load_private_key(pair.public, PW)
    with pytest.raises(SigningKeyError, match="is a private key"):
        keys.load_public_key(pair.private)
    (tmp_path / "junk.key").write_bytes(os.urandom(300))
    with pytest.raises(SigningKeyError, match="not a PEM private key"):
        keys.load_private_key(tmp_path / "junk.key", PW)
    with pytest.raises(SigningKeyError, match="no passphrase to encrypt"):
        keys.generate(tmp_path / "other", passphrase_env=PW)


def test_openssl_made_keys_load_and_other_curves_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PW, "pw")
    pk8, sec1, enc = tmp_path / "pk8.key", tmp_path / "sec1.key", tmp_path / "enc.key"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(pk8))
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(sec1))
    openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", str(pk8), "-out", str(enc), "-passout", "env:" + PW)
    openssl("pkey", "-in", str(pk8), "-pubout", "-out", str(tmp_path / "pk8.pub"))
    a, b, c = (keys.load_private_key(p, PW) for p in (pk8, sec1, enc))
    assert a.key_id == c.key_id == keys.load_public_key(tmp_path / "pk8.pub").key_id != b.key_id
    assert openssl_verifies(tmp_path, tmp_path / "pk8.pub", b"data", c.sign(b"data"))
    openssl("ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", str(tmp_path / "p384.key"))
    with pytest.raises(SigningKeyError, match="secp384r1 key, not an ECDSA P-256"):
        keys.load_private_key(tmp_path / "p384.key", PW)


def test_sigstore_format_round_trip_and_wrong_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our writer against our reader; the cross-check against skopeo's own keys is in test_sign_skopeo."""
    monkeypatch.setenv(PW, "pw")
    pair = keys.generate(tmp_path / "c", passphrase_env=PW, sigstore_format=True)
    assert pair.private.read_text().startswith("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    assert keys.load_private_key(pair.private, PW).key_id == pair.key_id
    monkeypatch.setenv(PW, "nope")
    with pytest.raises(SigningKeyError, match="wrong passphrase"):
        keys.load_private_key(pair.private, PW)


def test_signatures_are_deterministic_and_verified_by_openssl(pair: keys.KeyPair, tmp_path: Path) -> None:
    signer = keys.load_private_key(pair.private, PW)
    assert signer.deterministic, "cryptography >= 43 offers RFC 6979 signing"
    payload = cosign.payload("127.0.0.1:5000/models/churn", "sha256:" + "a" * 64)
    assert payload == cosign.payload("127.0.0.1:5000/models/churn", "sha256:" + "a" * 64)
    sig = signer.sign(payload)
    assert sig == signer.sign(payload)
    assert openssl_verifies(tmp_path, pair.public, payload, sig)
    assert not openssl_verifies(tmp_path, pair.public, payload.replace(b"churn", b"churm"), sig)


def test_dsse_envelope_verified_by_openssl_over_the_pae_bytes(pair: keys.KeyPair, tmp_path: Path) -> None:
    signer = keys.load_private_key(pair.private, PW)
    digest = "sha256:" + "b" * 64
    st = dsse.statement("models/churn", digest, dsse.VERIFICATION, {"lock": {"digest": {"sha256": "c" * 64}}})
    env = json.loads(dsse.envelope(signer, st))
    body = base64.b64decode(env["payload"])
    assert body == st and env["payloadType"] == "application/vnd.in-toto+json"
    assert env["signatures"][0]["keyid"] == signer.key_id
    # The PAE written out by hand, as the DSSE spec defines it, for openssl to check.
    pae = b"DSSEv1 28 application/vnd.in-toto+json " + str(len(body)).encode() + b" " + body
    assert pae == dsse.pae(env["payloadType"], body)
    assert openssl_verifies(tmp_path, pair.public, pae, base64.b64decode(env["signatures"][0]["sig"]))
    assert dsse.envelope(signer, st) == dsse.envelope(signer, st)  # same inputs, same envelope bytes
    verifier = keys.load_public_key(pair.public)
    assert dsse.open_envelope(json.dumps(env).encode(), verifier, digest, "t").predicate_type == dsse.VERIFICATION
    edited = dict(env, payload=base64.b64encode(body.replace(b"cccc", b"cccd")).decode())
    with pytest.raises(AttestationError, match="no signature on the envelope verifies"):
        dsse.open_envelope(json.dumps(edited).encode(), verifier, digest, "t")
    with pytest.raises(AttestationError, match="about another image"):
        dsse.open_envelope(json.dumps(env).encode(), verifier, "sha256:" + "d" * 64, "t")


# -- an OCI layout ----------------------------------------------------------------------------------------


def test_sign_and_verify_in_an_oci_layout(pair: keys.KeyPair, tmp_path: Path, cache: Cache,
                                          tiny_image: Callable[..., Image]) -> None:
    image = tiny_image(cache, tmp_path / "stage")
    root = write_oci_layout(image, tmp_path / "oci", cache, ref_name="v1")
    signer, verifier = keys.load_private_key(pair.private, PW), keys.load_public_key(pair.public)
    store = LayoutStore(str(root), "lockbuild-test/tiny")
    with pytest.raises(NoSignature):
        release.check_signature(store, verifier)
    digest = image.manifest_digest
    sts = [(t, dsse.statement("tiny", digest, t, {"lock": {"digest": {"sha256": "e" * 64}}}))
           for t in (dsse.CYCLONEDX, dsse.VERIFICATION)]
    release.sign_image(store, signer, statements_=sts)
    assert release.check_signature(store, verifier) == "lockbuild-test/tiny"
    with pytest.raises(AttestationError, match="provenance"):  # only two of the three were attached
        release.check_attestations(store, verifier, None)
    # the layout still holds exactly one image for every reader (the signature entries carry an artifactType)
    from lockbuild.fsutil import sha256_bytes
    from lockbuild.oci.layout import read_oci_layout

    assert sha256_bytes(read_oci_layout(root).manifest) == digest
    other = keys.generate(tmp_path / "other", passphrase_env=PW)
    with pytest.raises(BadSignature, match="does not verify"):
        release.check_signature(store, keys.load_public_key(other.public))
    # the missing provenance attested by another key does not count
    prov = [(dsse.SLSA_PROVENANCE, dsse.statement("tiny", digest, dsse.SLSA_PROVENANCE, {}))]
    release.sign_image(store, keys.load_private_key(other.private, PW), statements_=prov, signature=False)
    with pytest.raises(AttestationError, match="no signature on the envelope verifies"):
        release.check_attestations(store, verifier, None)
    release.sign_image(store, signer, statements_=None)  # re-signing is idempotent: still one signature layer
    sig = json.loads(store.get_manifest(cosign.sig_tag(digest)) or b"{}")
    assert len(sig["layers"]) == 1


# -- admission policy -------------------------------------------------------------------------------------


def test_policy_documents(pair: keys.KeyPair) -> None:
    pem = pair.public.read_bytes()
    repo = "myacr.azurecr.io/models/churn"
    doc = policy.containers_policy([f"{repo}@sha256:{'a' * 64}", f"{repo}:v1"], pem)
    assert doc["default"] == [{"type": "reject"}]
    assert list(doc["transports"]["docker"]) == [repo]
    req = doc["transports"]["docker"][repo][0]
    assert req["type"] == "sigstoreSigned" and base64.b64decode(req["keyData"]) == pem
    assert req["signedIdentity"] == {"type": "matchRepository"}
    assert policy.containers_policy([repo], pem, others="accept")["default"] == [{"type": "insecureAcceptAnything"}]
    assert policy.registries_d(["127.0.0.1:5000/m:v1"]) == {"docker": {"127.0.0.1:5000/m": {
        "use-sigstore-attachments": True}}}
    text = policy.render_yaml(policy.ratify_manifests([repo], pem, name="lockbuild-churn", namespaces=["ml"]),
                              "header")
    docs = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in docs] == ["KeyManagementProvider", "Store", "Verifier", "RatifyVerification"]
    assert docs[0]["spec"]["parameters"]["value"] == pem.decode()
    assert docs[2]["spec"]["parameters"]["trustPolicies"][0]["scopes"] == [repo]
    assert docs[2]["spec"]["parameters"]["trustPolicies"][0]["keys"] == [{"provider": "lockbuild-churn-key"}]
    assert docs[3]["spec"]["match"]["namespaces"] == ["ml"] and "&" not in text


def test_statements_name_the_lock_and_spec_and_are_reproducible() -> None:
    """The three statements of the example's lock: same inputs, same bytes; the provenance names the
    lock and the spec by sha256, the verification predicate the lock, the digest and the reports."""
    from lockbuild.audit import read_locked
    from lockbuild.fsutil import sha256_bytes

    example = Path(__file__).resolve().parent.parent / "examples" / "keras3"
    locked = read_locked(example / "lockbuild.lock")
    lock_bytes = (example / "lockbuild.lock").read_bytes()
    spec = ("lockbuild.toml", (example / "lockbuild.toml").read_bytes())
    digest = "sha256:" + "f" * 64
    verify_report = {"ok": True, "checked": {"layers": 7, "config": 1}, "findings": []}

    def make() -> list[tuple[str, bytes]]:
        return release.statements(locked.lock, lock_bytes, digest, sbom=b'{"bomFormat":"CycloneDX"}',
                                  verify=verify_report, smoke=None, built=True, spec=spec)

    first = make()
    assert first == make()
    by_type = {t: json.loads(st) for t, st in first}
    assert set(by_type) == set(release.REQUIRED)
    prov = by_type[dsse.SLSA_PROVENANCE]["predicate"]["buildDefinition"]
    assert prov["externalParameters"]["lockDigest"] == sha256_bytes(lock_bytes)
    assert prov["resolvedDependencies"][1] == {"name": "lockbuild.toml", "mediaType": "application/toml",
                                               "digest": {"sha256": sha256_bytes(spec[1]).removeprefix("sha256:")}}
    ver = by_type[dsse.VERIFICATION]["predicate"]
    assert ver["lock"]["digest"]["sha256"] == sha256_bytes(lock_bytes).removeprefix("sha256:")
    assert ver["image"]["digest"] == digest and ver["builtFromLock"] is True and ver["smoke"] is None
    assert ver["verify"]["result"] == "passed" and ver["verify"]["checked"] == {"layers": 7, "config": 1}
    assert all(st["subject"][0]["digest"] == {"sha256": "f" * 64} for st in by_type.values())
    # each statement parses strictly with in-toto's own bindings (unknown fields are errors)
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement

    for _, st in first:
        Statement.copy_from_pb(json_format.Parse(st, statement_pb2.Statement())).validate()
    json_format.ParseDict(by_type[dsse.SLSA_PROVENANCE]["predicate"], provenance_pb2.Provenance())


# -- a registry with the referrers API (fake; the real registry without it is in test_sign_skopeo) -------


class FakeOCI11Registry:
    """Blobs, manifests by tag and digest, OCI-Subject on manifest PUT, GET referrers filtered by subject."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}

    def __call__(self, request: Any) -> Any:
        import httpx

        from lockbuild.fsutil import sha256_bytes

        path, method = request.url.path, request.method
        last = path.rsplit("/", 1)[1]
        if "/blobs/uploads/" in path:
            if method == "POST":
                return httpx.Response(202, headers={"Location": "/v2/repo/blobs/uploads/1"})
            self.blobs[request.url.params["digest"]] = request.read()
            return httpx.Response(201)
        if "/blobs/" in path:
            if last not in self.blobs:
                return httpx.Response(404)
            return httpx.Response(200, content=b"" if method == "HEAD" else self.blobs[last])
        if "/manifests/" in path and method == "PUT":
            body = request.read()
            self.manifests[last] = self.manifests[sha256_bytes(body)] = body
            subject = json.loads(body).get("subject", {}).get("digest")
            return httpx.Response(201, headers={"Docker-Content-Digest": sha256_bytes(body),
                                                **({"OCI-Subject": subject} if subject else {})})
        if "/manifests/" in path:
            body = self.manifests.get(last)
            if body is None:
                return httpx.Response(404)
            return httpx.Response(200, content=body, headers={"Content-Type": json.loads(body)["mediaType"],
                                                              "Docker-Content-Digest": sha256_bytes(body)})
        if "/referrers/" in path:
            kind = request.url.params.get("artifactType")
            found = [{"mediaType": json.loads(b)["mediaType"], "digest": d, "size": len(b),
                      "artifactType": json.loads(b).get("artifactType")}
                     for d, b in self.manifests.items() if d.startswith("sha256:")
                     and json.loads(b).get("subject", {}).get("digest") == last
                     and (kind is None or json.loads(b).get("artifactType") == kind)]
            return httpx.Response(200, json={"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                             "manifests": found},
                                  headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
        return httpx.Response(404)


def test_referrers_api_registry_gets_signature_and_attestation_referrers(pair: keys.KeyPair,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from lockbuild.audit import attach
    from lockbuild.oci import registry as reg
    from lockbuild.oci.image import MANIFEST_MEDIA_TYPE, canonical_json
    from lockbuild.sign.store import RegistryStore

    fake = FakeOCI11Registry()

    def session(ref: reg.Reference, *, push: bool, mount_from: str | None = None) -> reg.Session:
        return reg.Session(ref, httpx.Client(base_url=ref.base_url, transport=httpx.MockTransport(fake)))

    monkeypatch.setattr(reg, "open_session", session)
    monkeypatch.setattr(attach, "open_session", session)
    image = canonical_json({"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": {}, "layers": []})
    fake.manifests["v1"] = image
    signer, verifier = keys.load_private_key(pair.private, PW), keys.load_public_key(pair.public)
    digest = "sha256:" + __import__("hashlib").sha256(image).hexdigest()
    sts = [(t, dsse.statement("m", digest, t, {"lock": {"digest": {"sha256": "a" * 64}}})) for t in release.REQUIRED]
    with RegistryStore("127.0.0.1:1/repo:v1", push=True) as st:
        result = release.sign_image(st, signer, statements_=sts)
    assert [r["mechanism"] for r in result.referrers] == ["referrers-api"] * 4
    assert result.referrers[-1]["artifactType"] == cosign.SIG_ARTIFACT_TYPE
    assert not any(k == digest.replace(":", "-") for k in fake.manifests)  # no referrers tag schema index
    # drop cosign's tags: signature and attestations are still found through the referrers API alone
    for tag in (cosign.sig_tag(digest), cosign.sig_tag(digest, "att")):
        del fake.manifests[tag]
    with RegistryStore("127.0.0.1:1/repo:v1", push=False) as st:
        assert release.verify_release(st, verifier, None).digest == digest



def test_k8s_signed_by_writes_the_admission_policy(pair: keys.KeyPair, tmp_path: Path) -> None:
    from tests.tiny_project import run_lockbuild

    example = Path(__file__).resolve().parent.parent / "examples" / "keras3"
    image = "myacr.azurecr.io/models/churn@sha256:" + "a" * 64
    out = json.loads(run_lockbuild("k8s", "--spec", str(example), "--image", image, "-o", str(tmp_path / "d.yaml"),
                                   "--signed-by", str(pair.public), "--json", cwd=tmp_path).stdout)
    assert out["policy"]["files"] == ["policy.json", "ratify.yaml", "registries.d/lockbuild.yaml"]
    assert out["policy"]["repository"] == "myacr.azurecr.io/models/churn"
    doc = json.loads((tmp_path / "policy" / "policy.json").read_text())
    assert list(doc["transports"]["docker"]) == ["myacr.azurecr.io/models/churn"]
    regd = yaml.safe_load((tmp_path / "policy" / "registries.d" / "lockbuild.yaml").read_text())
    assert regd == {"docker": {"myacr.azurecr.io/models/churn": {"use-sigstore-attachments": True}}}
    bad = run_lockbuild("k8s", "--spec", str(example), "--image", image, "-o", str(tmp_path / "e.yaml"),
                        "--signed-by", str(pair.private), cwd=tmp_path, ok=False)
    assert bad.returncode == 31 and not (tmp_path / "e.yaml").exists()  # refused before anything is written


def test_a_registry_refusing_oci_artifacts_still_gets_tags_and_a_warning(pair: keys.KeyPair,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from lockbuild.audit import attach
    from lockbuild.oci import registry as reg
    from lockbuild.oci.image import MANIFEST_MEDIA_TYPE, canonical_json
    from lockbuild.sign.store import RegistryStore

    class Refusing(FakeOCI11Registry):
        def __call__(self, request: Any) -> Any:
            if request.method == "PUT" and "/manifests/" in request.url.path and b'"subject"' in request.read():
                return httpx.Response(400, json={"errors": [{"code": "MANIFEST_INVALID", "message": "subject"}]})
            if "/referrers/" in request.url.path:
                return httpx.Response(404)
            return super().__call__(request)

    fake = Refusing()

    def session(ref: reg.Reference, *, push: bool, mount_from: str | None = None) -> reg.Session:
        return reg.Session(ref, httpx.Client(base_url=ref.base_url, transport=httpx.MockTransport(fake)))

    monkeypatch.setattr(reg, "open_session", session)
    monkeypatch.setattr(attach, "open_session", session)
    image = canonical_json({"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": {}, "layers": []})
    fake.manifests["v1"] = image
    digest = "sha256:" + __import__("hashlib").sha256(image).hexdigest()
    sts = [(t, dsse.statement("m", digest, t, {"lock": {"digest": {"sha256": "a" * 64}}})) for t in release.REQUIRED]
    with RegistryStore("127.0.0.1:1/repo:v1", push=True) as st:
        result = release.sign_image(st, keys.load_private_key(pair.private, PW), statements_=sts).to_dict()
    assert [r["mechanism"] for r in result["referrers"]] == ["refused"] * 3 and len(result["warnings"]) == 3
    assert result["signature_tag"] in fake.manifests and result["attestation_tag"] in fake.manifests
    with RegistryStore("127.0.0.1:1/repo:v1", push=False) as st:
        assert release.verify_release(st, keys.load_public_key(pair.public), None).digest == digest
