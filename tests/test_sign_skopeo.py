"""Signatures against an independent verifier: trixie's skopeo 1.18 (containers/image with sigstore), run
from a debootstrapped trixie root (scripts/trixie-skopeo.sh; Debian 12's skopeo has sigstore disabled),
and a real registry (docker-registry, no referrers API: the tag schema is used).

skopeo must accept what lockbuild signs and refuse a wrong key, an unsigned digest, an edited payload
or signature, a signature for another digest and a signature copied to another repository; lockbuild
must accept what skopeo signs (with skopeo's own encrypted key format) and refuse the same forgeries.
The CLI release flow (image --push --sign, verify --key, k8s --signed-by) runs on the tiny project.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lockbuild.errors import BadSignature, NoSignature
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import sha256_bytes
from lockbuild.oci import registry as reg
from lockbuild.oci.layout import write_oci_layout
from lockbuild.sign import cosign, keys, policy, release
from lockbuild.sign.store import RegistryStore
from tests.conftest_services import SCRIPTS, make_tiny_image, need_root, need_tool, unavailable
from tests.tiny_project import run_lockbuild

PW = "LOCKBUILD_TEST_KEY_PASSWORD"
Skopeo = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def trixie_skopeo() -> Skopeo:
    """``run(mnt_dir, *skopeo_args)``: skopeo 1.18 in the cached trixie root, mnt_dir at /mnt."""
    need_root("chroot into the debootstrapped trixie root that carries skopeo 1.18")
    need_tool("debootstrap", "unshare", "chroot")
    built = subprocess.run(["bash", str(SCRIPTS / "trixie-skopeo.sh"), "install"], capture_output=True, text=True,
                           timeout=1800)
    if built.returncode != 0:
        unavailable(f"scripts/trixie-skopeo.sh install failed: {built.stderr.strip()[-400:]}")

    def run(mnt: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPTS / "trixie-skopeo.sh"), "run", str(mnt), *args],
                              capture_output=True, text=True, timeout=300)

    return run


@dataclass
class World:
    registry: str
    mnt: Path
    cache: Cache
    signer: keys.FileSigner
    verifier: keys.Verifier
    other: keys.Verifier  # a second key pair's public half
    n: int = 0

    def push(self, repo: str, text: str) -> str:
        """A tiny image with its own digest pushed to REGISTRY/repo:t; returns repo@digest."""
        self.n += 1
        image = make_tiny_image(self.cache, self.mnt / f"stage{self.n}", text=text)
        return reg.push(image, f"{self.registry}/{repo}:t{self.n}", self.cache).reference

    def skopeo_accepts(self, run: Skopeo, ref: str, public: keys.Verifier) -> tuple[bool, str]:
        """Does skopeo's policy (written by lockbuild.sign.policy for the ref's repository) accept the image?"""
        self.n += 1
        repo = ref.split("@")[0]
        pol = self.mnt / f"pol{self.n}"
        (pol / "registries.d").mkdir(parents=True)
        (pol / "policy.json").write_text(policy.render_json(policy.containers_policy([repo], public.public_pem())))
        (pol / "registries.d" / "l.yaml").write_text(policy.render_yaml([policy.registries_d([repo])], "t"))
        proc = run(self.mnt, "--policy", f"/mnt/pol{self.n}/policy.json", "--registries.d",
                   f"/mnt/pol{self.n}/registries.d", "copy", "--src-tls-verify=false", f"docker://{ref}",
                   f"dir:/mnt/pol{self.n}/out")
        return proc.returncode == 0, proc.stderr

    def store(self, ref: str, push: bool = False) -> RegistryStore:
        return RegistryStore(ref, push=push)


@pytest.fixture(scope="module")
def world(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    mnt = tmp_path_factory.mktemp("skopeo-mnt")
    os.environ[PW] = "pw"
    a = keys.generate(mnt / "a", passphrase_env=PW)
    b = keys.generate(mnt / "b", passphrase_env=PW)
    yield World(registry, mnt, Cache(mnt / "cache"), keys.load_private_key(a.private, PW),
                keys.load_public_key(a.public), keys.load_public_key(b.public))
    os.environ.pop(PW, None)


def sign(w: World, ref: str) -> None:
    with w.store(ref, push=True) as st:
        release.sign_image(st, w.signer, statements_=None)


def sig_manifest(w: World, ref: str) -> dict:
    with w.store(ref) as st:
        data = st.get_manifest(cosign.sig_tag(ref.split("@")[1]))
    assert data is not None
    return dict(json.loads(data))


def put_sig(w: World, ref: str, manifest: dict, blobs: list[bytes] = ()) -> None:  # type: ignore[assignment]
    """Write a (forged) .sig manifest for ref's digest, with any blobs it needs, straight to the registry."""
    with w.store(ref, push=True) as st:
        for b in blobs:
            st.put_blob(b)
        st.put_manifest(cosign.sig_tag(ref.split("@")[1]), json.dumps(manifest).encode(), cosign.SIG_ARTIFACT_TYPE)


def test_skopeo_accepts_a_lockbuild_signature_and_refuses_another_key(world: World, trixie_skopeo: Skopeo) -> None:
    ref = world.push("signed", "accepted\n")
    sign(world, ref)
    ok, errors = world.skopeo_accepts(trixie_skopeo, ref, world.verifier)
    assert ok, errors
    ok, errors = world.skopeo_accepts(trixie_skopeo, ref, world.other)
    assert not ok and "invalid signature" in errors
    with world.store(ref) as st:
        assert release.check_signature(st, world.verifier) == ref.split("@")[0]
        with pytest.raises(BadSignature, match="does not verify"):
            release.check_signature(st, world.other)


def test_both_refuse_an_unsigned_digest(world: World, trixie_skopeo: Skopeo) -> None:
    ref = world.push("signed", "unsigned\n")
    ok, errors = world.skopeo_accepts(trixie_skopeo, ref, world.verifier)
    assert not ok and "signature" in errors.lower()
    with world.store(ref) as st, pytest.raises(NoSignature) as e:
        release.check_signature(st, world.verifier)
    assert e.value.exit_code == 32


def test_both_refuse_an_edited_payload_or_signature(world: World, trixie_skopeo: Skopeo) -> None:
    ref = world.push("signed", "edited\n")
    sign(world, ref)
    m = sig_manifest(world, ref)
    layer = m["layers"][0]
    with world.store(ref) as st:
        payload = st.get_blob(layer["digest"])
    edited = payload.replace(b'"optional":null', b'"optional":{"creator":"mallory"}')
    assert edited != payload
    forged = dict(m, layers=[dict(layer, digest=sha256_bytes(edited), size=len(edited))])
    put_sig(world, ref, forged, [edited])
    ok, errors = world.skopeo_accepts(trixie_skopeo, ref, world.verifier)
    assert not ok and "invalid signature" in errors, errors
    with world.store(ref) as st, pytest.raises(BadSignature):
        release.check_signature(st, world.verifier)
    # the signature annotation replaced by a valid signature over other bytes
    other_sig = base64.b64encode(world.signer.sign(b"something else")).decode()
    put_sig(world, ref, dict(m, layers=[dict(layer, annotations={cosign.SIGNATURE_ANNOTATION: other_sig})]))
    ok, errors = world.skopeo_accepts(trixie_skopeo, ref, world.verifier)
    assert not ok and "invalid signature" in errors, errors
    with world.store(ref) as st, pytest.raises(BadSignature):
        release.check_signature(st, world.verifier)


def test_both_refuse_a_signature_made_for_another_digest(world: World, trixie_skopeo: Skopeo) -> None:
    signed = world.push("signed", "original\n")
    sign(world, signed)
    target = world.push("signed", "substitute\n")
    put_sig(world, target, sig_manifest(world, signed))  # same repository: the blobs are there
    ok, errors = world.skopeo_accepts(trixie_skopeo, target, world.verifier)
    assert not ok and "does not match" in errors, errors
    with world.store(target) as st, pytest.raises(BadSignature, match="is for sha256:"):
        release.check_signature(st, world.verifier)


def test_both_refuse_a_signature_copied_to_another_repository(world: World, trixie_skopeo: Skopeo) -> None:
    ref = world.push("signed", "copied\n")
    sign(world, ref)
    m = sig_manifest(world, ref)
    with world.store(ref) as st:
        blobs = [st.get_blob(m["config"]["digest"]), *(st.get_blob(x["digest"]) for x in m["layers"])]
    elsewhere = world.push("elsewhere", "copied\n")
    assert elsewhere.split("@")[1] == ref.split("@")[1]  # the same image, in another repository
    put_sig(world, elsewhere, m, blobs)
    ok, errors = world.skopeo_accepts(trixie_skopeo, elsewhere, world.verifier)
    assert not ok and ("not accepted" in errors.lower() or "identity" in errors.lower()), errors
    with world.store(elsewhere) as st, pytest.raises(BadSignature, match="names repository"):
        release.check_signature(st, world.verifier)


def test_lockbuild_accepts_what_skopeo_signs_with_its_own_key_format(world: World, trixie_skopeo: Skopeo) -> None:
    """skopeo generate-sigstore-key + copy --sign-by-sigstore-private-key -> lockbuild verifies the signature
    and reads skopeo's encrypted private key; skopeo signs with a key lockbuild wrote in that format."""
    mnt = world.mnt
    (mnt / "pass").write_text("skopeo-pass")
    gen = trixie_skopeo(mnt, "generate-sigstore-key", "--output-prefix", "/mnt/sk", "--passphrase-file", "/mnt/pass")
    assert gen.returncode == 0, gen.stderr
    image = make_tiny_image(world.cache, mnt / "stage-sk", text="signed by skopeo\n")
    write_oci_layout(image, mnt / "oci", world.cache, ref_name="v1")
    regd = mnt / "regd"
    regd.mkdir()
    (regd / "l.yaml").write_text(policy.render_yaml([policy.registries_d([f"{world.registry}/by-skopeo"])], "t"))

    def skopeo_sign(key: str, tag: str) -> None:
        proc = trixie_skopeo(mnt, "--registries.d", "/mnt/regd", "copy", "--dest-tls-verify=false",
                             "--sign-by-sigstore-private-key", key, "--sign-passphrase-file", "/mnt/pass",
                             "oci:/mnt/oci:v1", f"docker://{world.registry}/by-skopeo:{tag}")
        assert proc.returncode == 0, proc.stderr

    skopeo_sign("/mnt/sk.private", "v1")
    skopeo_pub = keys.load_public_key(mnt / "sk.pub")
    ref = f"{world.registry}/by-skopeo@{image.manifest_digest}"
    with world.store(ref) as st:
        assert release.check_signature(st, skopeo_pub).startswith(f"{world.registry}/by-skopeo")
        with pytest.raises(BadSignature):
            release.check_signature(st, world.verifier)
    os.environ["SKOPEO_PASS"] = "skopeo-pass"
    try:
        skopeo_key = keys.load_private_key(mnt / "sk.private", "SKOPEO_PASS")  # skopeo's scrypt + secretbox
        assert skopeo_key.key_id == skopeo_pub.key_id and skopeo_pub.verify(b"x", skopeo_key.sign(b"x"))
        os.environ[PW] = "skopeo-pass"
        ours = keys.generate(mnt / "ours", passphrase_env=PW, sigstore_format=True)
    finally:
        os.environ.pop("SKOPEO_PASS", None)
        os.environ[PW] = "pw"
    skopeo_sign("/mnt/ours.key", "v2")  # containers/image decrypts the key lockbuild encrypted
    with world.store(ref) as st:
        release.check_signature(st, keys.load_public_key(ours.public))


# -- the CLI release flow on a real lock -------------------------------------------------------------------


@pytest.mark.slow
def test_release_flow_sign_verify_enforce(tiny_project: dict, world: World, trixie_skopeo: Skopeo,
                                          tmp_path: Path) -> None:
    cwd = tiny_project["dir"]
    env = {"LOCKBUILD_KEY_PASSWORD": "pw"}  # the CLI's default passphrase variable
    key, pub = str(world.mnt / "a.key"), str(world.mnt / "a.pub")
    repo = f"{world.registry}/tiny-release"
    # a bad passphrase fails before anything is built or pushed
    bad = run_lockbuild("image", "--push", f"{repo}:v1", "--sign", "--key", key, cwd=cwd, ok=False,
                        env={PW: "wrong", "LOCKBUILD_KEY_PASSWORD": "wrong"})
    assert bad.returncode == 31 and "wrong passphrase" in " ".join(bad.stderr.split())
    tags = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{repo}"], capture_output=True,
                          text=True)
    assert tags.returncode != 0 or json.loads(tags.stdout)["Tags"] in ([], None), tags.stdout  # nothing pushed
    pushed = json.loads(run_lockbuild("image", "--push", f"{repo}:v1", "--sign", "--key", key, "--json", cwd=cwd,
                                      env={"LOCKBUILD_KEY_PASSWORD": "pw"}).stdout)
    digest = pushed["digest"]
    assert digest == tiny_project["image"]["digest"] and pushed["signed"]["signature_tag"]
    # docker-registry 2.8 has no referrers API: the attestations went to the referrers tag schema
    assert {r["mechanism"] for r in pushed["signed"]["referrers"]} == {"tag-schema"}
    verified = json.loads(run_lockbuild("verify", f"docker://{repo}:v1", "--key", pub, "--json", cwd=cwd).stdout)
    assert verified["ok"] and verified["signature"]["digest"] == digest
    assert set(verified["signature"]["attestations"]) == set(release.REQUIRED)
    # the admission policy `k8s --signed-by` writes is enforced by skopeo
    pol = world.mnt / "k8s-policy"
    run_lockbuild("k8s", "--image", f"{repo}@{digest}", "-o", str(tmp_path / "deploy.yaml"), "--signed-by", pub,
                  "--policy-dir", str(pol), cwd=cwd)
    proc = trixie_skopeo(world.mnt, "--policy", "/mnt/k8s-policy/policy.json", "--registries.d",
                         "/mnt/k8s-policy/registries.d", "copy", "--src-tls-verify=false",
                         f"docker://{repo}@{digest}", "dir:/mnt/k8s-out")
    assert proc.returncode == 0, proc.stderr
    # distinct exit codes
    assert run_lockbuild("verify", f"docker://{repo}:v1", "--key", str(world.mnt / "b.pub"), cwd=cwd,
                         ok=False).returncode == 33
    import dataclasses

    from lockbuild.lockfile.io import dumps, read_lock

    lock = read_lock(cwd / "lockbuild.lock")
    other_lock = tmp_path / "other.lock"
    other_lock.write_text(dumps(dataclasses.replace(lock, runtime=dataclasses.replace(lock.runtime, port=8081))))
    mismatch = run_lockbuild("verify", f"docker://{repo}:v1", "--key", pub, "--lock", str(other_lock), cwd=cwd,
                             ok=False)
    assert mismatch.returncode == 35 and "released from another lock" in " ".join(mismatch.stderr.split())
    # an unsigned copy of the same image (an OCI layout: no second push), then signed without attestations
    # (attestations by another key: test_sign_keys)
    import shutil

    layout = tmp_path / "oci"
    shutil.copytree(cwd / "out" / "oci", layout)
    assert run_lockbuild("verify", str(layout), "--key", pub, cwd=cwd, ok=False).returncode == 32
    run_lockbuild("sign", str(layout), "--key", key, "--no-attest", "--no-verify", cwd=cwd, env=env)
    missing = run_lockbuild("verify", str(layout), "--key", pub, cwd=cwd, ok=False)
    assert missing.returncode == 34 and "lacks valid signed attestation" in " ".join(missing.stderr.split())


@pytest.mark.slow
def test_verify_key_accepts_a_skopeo_signed_release(tiny_project: dict, world: World, trixie_skopeo: Skopeo) -> None:
    """The reverse direction through the CLI: skopeo signs the tiny project's layout with its own key;
    lockbuild attests with that same (skopeo-format) key and `verify --key` accepts skopeo's signature."""
    cwd = tiny_project["dir"]
    (world.mnt / "pass2").write_text("pw2")
    assert trixie_skopeo(world.mnt, "generate-sigstore-key", "--output-prefix", "/mnt/rel",
                         "--passphrase-file", "/mnt/pass2").returncode == 0
    layout = world.mnt / "tiny-oci"
    import shutil

    shutil.copytree(cwd / "out" / "oci", layout)
    repo = f"{world.registry}/tiny-by-skopeo"
    regd = world.mnt / "regd2"
    regd.mkdir()
    (regd / "l.yaml").write_text(policy.render_yaml([policy.registries_d([repo])], "t"))
    proc = trixie_skopeo(world.mnt, "--registries.d", "/mnt/regd2", "copy", "--dest-tls-verify=false",
                         "--sign-by-sigstore-private-key", "/mnt/rel.private", "--sign-passphrase-file", "/mnt/pass2",
                         "oci:/mnt/tiny-oci", f"docker://{repo}:v1")
    assert proc.returncode == 0, proc.stderr
    run_lockbuild("sign", f"{repo}:v1", "--key", str(world.mnt / "rel.private"), "--attest-only", "--no-verify",
                  cwd=cwd, env={"LOCKBUILD_KEY_PASSWORD": "pw2"})
    out = json.loads(run_lockbuild("verify", f"docker://{repo}:v1", "--key", str(world.mnt / "rel.pub"), "--json",
                                   cwd=cwd).stdout)
    assert out["ok"] and out["signature"]["signed_reference"].startswith(repo)
