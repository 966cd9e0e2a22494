"""The registry as a shared, trusted build cache (lockbuild/share/), against the real docker-registry:
a runner with an empty local cache takes signed layers from it and gets the same image; poisoned
entries (other content, untrusted key, unsigned) are ignored and rebuilt; four runners at once."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx
import pytest

from lockbuild.oci.layercache import Layer
from lockbuild.share import entry as E
from lockbuild.sign.keys import load_private_key, load_public_key
from tests.test_oci_registry import auth_proxy, rewriting_proxy  # noqa: F401 (fixtures: Basic/Bearer, rewriting proxies)
from tests.tiny_project import run_lockbuild


def make_key(path: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub = path.with_suffix(".pub.pem")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("keys")
    return {"ci": make_key(d / "ci.pem"), "other": make_key(d / "other.pem")}


def runner(tmp: Path, name: str) -> dict[str, str]:
    """Env of a runner with its own, empty local cache (and its own layer-record key)."""
    return {"LOCKBUILD_CACHE": str(tmp / name / "cache"), "LOCKBUILD_KEY_FILE": str(tmp / name / "record.key")}


def image_json(project: Path, env: dict[str, str], *args: str, out: str) -> dict:
    return json.loads(run_lockbuild("image", "--oci", out, "--json", *args, cwd=project, env=env).stdout)


# -- the entry's trust checks, on their own --------------------------------------------------------------

LAYER = Layer(digest="sha256:" + "a" * 64, diff_id="sha256:" + "b" * 64, size=10, compressor="gzip level 1")
KEY = "sha256:" + "c" * 64


def test_entry_trust_checks(keys: dict[str, tuple[Path, Path]]) -> None:
    ci, other = load_private_key(keys["ci"][0]), load_private_key(keys["other"][0])
    ci_pub = load_public_key(keys["ci"][1])
    trusted = {ci_pub.key_id: ci_pub}
    good = E.make_entry(KEY, LAYER, ci.sign(E.statement(KEY, LAYER)), ci_pub.key_id)
    assert E.check_entry(KEY, good.manifest, good.config, trusted) == (LAYER, ci_pub.key_id)

    def refused(entry: E.Entry, why: str, key: str = KEY) -> None:
        with pytest.raises(E.Untrusted, match=why):
            E.check_entry(key, entry.manifest, entry.config, trusted)

    refused(good, "another layer key", key="sha256:" + "d" * 64)  # an entry moved to another key's tag
    other_id = load_public_key(keys["other"][1]).key_id
    refused(E.make_entry(KEY, LAYER, other.sign(E.statement(KEY, LAYER)), other_id), "not trusted")
    # a trusted signature copied onto other content
    evil = Layer(digest="sha256:" + "e" * 64, diff_id=LAYER.diff_id, size=10, compressor=LAYER.compressor)
    refused(E.make_entry(KEY, evil, ci.sign(E.statement(KEY, LAYER)), ci_pub.key_id), "does not match")
    # the signed statement, but the manifest points at another blob
    swapped = json.loads(good.manifest)
    swapped["layers"][0]["digest"] = evil.digest
    refused(E.Entry(good.config, json.dumps(swapped).encode()), "another blob")
    unsigned = json.loads(good.config)
    unsigned["signatures"] = []
    refused(E.Entry(json.dumps(unsigned).encode(), good.manifest), "unsigned")
    # a key id claiming to be the trusted one, with garbage
    unsigned["signatures"] = [{"keyid": ci_pub.key_id, "sig": base64.b64encode(b"x" * 70).decode()}]
    refused(E.Entry(json.dumps(unsigned).encode(), good.manifest), "does not match")
    refused(E.Entry(b"[1, 2]", good.manifest), "not a lockbuild cache statement")


# -- registry helpers for poisoning ------------------------------------------------------------------------


def put_blob(registry: str, repo: str, data: bytes) -> str:
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"http://{registry}/v2/{repo}/blobs/uploads/")
    loc = httpx.URL(f"http://{registry}").join(r.headers["location"])
    httpx.put(loc.copy_merge_params({"digest": digest}), content=data).raise_for_status()
    return digest


def put_manifest(registry: str, repo: str, tag: str, manifest: bytes) -> None:
    httpx.put(f"http://{registry}/v2/{repo}/manifests/{tag}", content=manifest,
              headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}).raise_for_status()


def get_entry(registry: str, repo: str, tag: str) -> tuple[bytes, bytes]:
    m = httpx.get(f"http://{registry}/v2/{repo}/manifests/{tag}",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    m.raise_for_status()
    cfg = json.loads(m.content)["config"]["digest"]
    return m.content, httpx.get(f"http://{registry}/v2/{repo}/blobs/{cfg}", follow_redirects=True).content


def repush(registry: str, repo: str, tag: str, config: bytes, layers: list[dict]) -> None:
    """Overwrite a cache tag with an entry of our making (what anyone with push rights can do)."""
    import hashlib

    digest = put_blob(registry, repo, config)
    assert digest == "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": E.ENTRY_MEDIA_TYPE, "digest": digest, "size": len(config)},
                           "layers": layers}).encode()
    put_manifest(registry, repo, tag, manifest)


@pytest.mark.slow
def test_shared_cache_reuse_and_poisoning(tiny_project: dict, registry: str, keys: dict, tmp_path: Path) -> None:
    project, want = tiny_project["dir"], tiny_project["image"]["digest"]
    repo = "lockbuild-test/cache-poison"
    shared = ["--cache-registry", f"{registry}/{repo}", "--cache-trust", str(keys["ci"][1])]
    # runner A (the session's warm local cache) fills the registry
    filled = image_json(project, {}, *shared, "--cache-key", str(keys["ci"][0]), out=str(tmp_path / "out" / "a"))
    assert filled["digest"] == want
    names = [layer["name"] for layer in filled["layers"]]
    assert sorted(filled["shared_cache"]["pushed"]) == sorted(names)
    # runner B: empty cache, no network needed: every layer comes from the registry, verified
    b = image_json(project, runner(tmp_path, "b"), *shared, out=str(tmp_path / "out" / "b"))
    assert b["digest"] == want
    assert sorted(b["shared_cache"]["fetched"]) == sorted(names) and not b["shared_cache"]["notes"]
    # runner B again: nothing to fetch, nothing to push (no key), everything from its local cache
    again = image_json(project, runner(tmp_path, "b"), *shared, out=str(tmp_path / "out" / "b2"))
    assert again["shared_cache"]["fetched"] == [] and all(x["reused"] for x in again["layers"])
    assert sorted(again["shared_cache"]["local"]) == sorted(names)
    # what B took is the signer's word, kept as the signed entry, never as a layer-cache record of B's
    # (verify believes those without decompressing)
    b_meta = Path(runner(tmp_path, "b")["LOCKBUILD_CACHE"]) / "meta"
    assert not list((b_meta / "layers").glob("*.json")) and len(list((b_meta / "shared-entries").glob("*.json"))) \
        == len(names)

    ci_id = load_public_key(keys["ci"][1]).key_id
    layer_key = {n: json.loads(get_entry(registry, repo, t)[1])["key"]
                 for n, t in _tags(registry, repo, filled["layers"], ci_id).items()}
    tag = {n: E.tag_for(k, ci_id) for n, k in layer_key.items()}
    # push-only to the cache's registry: shared layers are referenced by their signed descriptors, never
    # downloaded, and the image push mounts them from the cache repository (only own layers move)
    lazy = json.loads(run_lockbuild("image", "--push", f"{registry}/lockbuild-test/lazy:v1", "--json", *shared,
                                    cwd=project, env=runner(tmp_path, "lazy")).stdout)
    assert lazy["digest"] == want and lazy["shared_cache"]["fetched_bytes"] == 0
    assert sorted(lazy["shared_cache"]["referenced"]) == sorted(names)
    assert lazy["push"]["uploaded"] == 1 and lazy["push"]["mounted"] == len(names)  # the config blob only
    pulled = json.loads(run_lockbuild("verify", f"docker://{registry}/lockbuild-test/lazy:v1", "--json",
                                      cwd=project).stdout)
    assert pulled["ok"] is True, pulled

    # without a trusted key nothing is used, and the build says so
    from lockbuild.fetch.cache import Cache
    from lockbuild.share.remote import SharedCache

    untrusting = SharedCache(f"{registry}/{repo}")
    assert untrusting.fetch_layers(Cache(tmp_path / "c0"), {"model": layer_key["model"]}) == {}
    assert "no trusted key" in untrusting.stats.notes[0]
    other = load_private_key(keys["other"][0])
    other_id = load_public_key(keys["other"][1]).key_id
    # 1. the model layer's entry re-pushed with other content: the trusted statement, another blob
    _, model_cfg = get_entry(registry, repo, tag["model"])
    fake = put_blob(registry, repo, b"not the model layer")
    repush(registry, repo, tag["model"], model_cfg,
           [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": fake, "size": 19}])
    # 2. the config layer's entry signed by an untrusted key, for other content
    _, cfg_cfg = get_entry(registry, repo, tag["config"])
    doc = json.loads(cfg_cfg)
    evil = Layer(digest=fake, diff_id="sha256:" + "0" * 64, size=19, compressor=doc["layer"]["compressor"])
    evil_entry = E.make_entry(layer_key["config"], evil, other.sign(E.statement(layer_key["config"], evil)), other_id)
    repush(registry, repo, tag["config"], evil_entry.config, [E.layer_descriptor(evil)])
    c = image_json(project, runner(tmp_path, "c"), *shared, out=str(tmp_path / "out" / "c"))
    assert c["digest"] == want
    notes = " | ".join(c["shared_cache"]["notes"])
    assert "another blob" in notes and "not trusted" in notes, notes
    assert sorted(c["shared_cache"]["fetched"]) == sorted(set(names) - {"model", "config"})
    # 3. unsigned, and a trusted signature over a statement edited afterwards
    unsigned = json.loads(model_cfg)
    unsigned["signatures"] = []
    repush(registry, repo, tag["model"], json.dumps(unsigned).encode(),
           [E.layer_descriptor(Layer.from_dict(unsigned["layer"]))])
    edited = json.loads(model_cfg)
    edited["layer"] = {**json.loads(cfg_cfg)["layer"]}  # points at the config layer's real blob
    edited["signatures"] = json.loads(model_cfg)["signatures"]
    repush(registry, repo, tag["config"], json.dumps({**edited, "key": layer_key["config"]}).encode(),
           [E.layer_descriptor(Layer.from_dict(edited["layer"]))])
    d = image_json(project, runner(tmp_path, "d"), *shared, out=str(tmp_path / "out" / "d"))
    assert d["digest"] == want
    notes = " | ".join(d["shared_cache"]["notes"])
    assert "unsigned" in notes and "does not match" in notes, notes
    # housekeeping: gc keeps what the lock needs (its layers) and frees the rest
    import time

    d_cache = Path(runner(tmp_path, "d")["LOCKBUILD_CACHE"])
    Cache(d_cache).put_bytes(b"junk nobody needs")
    (d_cache / "tmp" / "stale.part").write_bytes(b"x" * 1000)
    os.utime(d_cache / "tmp" / "stale.part", (time.time() - 7200, time.time() - 7200))
    gc = json.loads(run_lockbuild("cache", "gc", "--lock", str(project / "lockbuild.lock"), "--json", cwd=project,
                                  env=runner(tmp_path, "d")).stdout)["local"]
    assert gc["freed"]["blobs"] == 1 and gc["freed"]["tmp"] == 1 and gc["kept"]["layer_records"] == len(names)
    # the layers d took from the registry are used again from its own cache, their entries checked again
    # against the trusted key (no download); without --cache-trust they would be rebuilt
    after = image_json(project, runner(tmp_path, "d"), *shared, out=str(tmp_path / "out" / "d2"))
    assert after["digest"] == want and all(x["reused"] for x in after["layers"])
    assert sorted(after["shared_cache"]["local"]) == sorted(d["shared_cache"]["fetched"])
    assert after["shared_cache"]["fetched"] == []
    # every layer of the image derived again from the lock's inputs (the session cache has them)
    verified = json.loads(run_lockbuild("verify", str(tmp_path / "out" / "d"), "--rederive", "--json",
                                        cwd=project).stdout)
    assert verified["ok"] is True, verified


def _tags(registry: str, repo: str, layers: list[dict], key_id: str) -> dict[str, str]:
    """layer name -> its cache tag under ``key_id`` (found through the entries' statements)."""
    tags = httpx.get(f"http://{registry}/v2/{repo}/tags/list").json()["tags"]
    by_digest = {}
    for t in tags:
        parsed = E.parse_tag(t)
        if parsed and key_id.startswith(parsed[1]):
            by_digest[json.loads(get_entry(registry, repo, t)[1])["layer"]["digest"]] = t
    return {layer["name"]: by_digest[layer["digest"]] for layer in layers}


def _delete_tag(registry: str, repo: str, tag: str) -> None:
    r = httpx.head(f"http://{registry}/v2/{repo}/manifests/{tag}",
                   headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    r.raise_for_status()
    httpx.delete(f"http://{registry}/v2/{repo}/manifests/{r.headers['docker-content-digest']}").raise_for_status()


@pytest.mark.slow
def test_four_runners_at_once(tiny_project: dict, registry: str, keys: dict, tmp_path: Path) -> None:
    """Four processes, four empty local caches, two locks (B differs from A in its config layer only),
    one registry; A's model and config entries are missing, so runners race to build and push them
    while others read: every runner gets its lock's reference digest, and nothing is ever rejected."""
    import shutil
    import subprocess
    import sys

    project_a = tiny_project["dir"]
    project_b = tmp_path / "b"
    project_b.mkdir()
    for name in ("model", "lockbuild.toml", "lockbuild.lock"):
        src = project_a / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project_b / name)
    toml = project_b / "lockbuild.toml"
    toml.write_text(toml.read_text().replace('"lockbuild-test/tiny"', '"lockbuild-test/tiny-b"'))
    run_lockbuild("lock", cwd=project_b)  # keeps the lock's created time: only the config layer differs
    want = {"a": tiny_project["image"]["digest"],
            "b": image_json(project_b, {}, out=str(tmp_path / "out" / "ref-b"))["digest"]}

    repo = "lockbuild-test/cache-race"
    shared = ["--cache-registry", f"{registry}/{repo}", "--cache-trust", str(keys["ci"][1]),
              "--cache-key", str(keys["ci"][0])]
    seeded = image_json(project_a, {}, *shared, out=str(tmp_path / "out" / "seed"))
    ci_id = load_public_key(keys["ci"][1]).key_id
    tags = _tags(registry, repo, seeded["layers"], ci_id)
    for name in ("model", "config"):
        _delete_tag(registry, repo, tags[name])

    procs = {}
    for i, lock in enumerate("aabb"):
        env = {**os.environ, **runner(tmp_path, f"r{i}")}
        procs[i, lock] = subprocess.Popen(
            [sys.executable, "-m", "lockbuild", "image", "--oci", str(tmp_path / "out" / f"r{i}"), "--json", *shared],
            cwd=project_a if lock == "a" else project_b, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
    results = {}
    for (i, lock), p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        results[i, lock] = json.loads(stdout)
    for (i, lock), res in results.items():
        assert res["digest"] == want[lock], (i, lock)
        assert res["shared_cache"]["notes"] == [], res["shared_cache"]["notes"]  # nothing rejected, nothing failed
        assert {"debian", "python"} <= set(res["shared_cache"]["fetched"])  # the shared layers came from the registry

    # the registry: every cache tag is a valid entry signed by the runners' key, each names one blob
    # that the registry holds once; no upload left half-done
    state = Path(os.environ.get("LOCKBUILD_REGISTRY_STATE", "/var/tmp/lockbuild-registry")) / registry.split(":")[1]
    store = state / "data" / "docker" / "registry" / "v2"
    ci_pub = load_public_key(keys["ci"][1])
    listed = httpx.get(f"http://{registry}/v2/{repo}/tags/list").json()["tags"]
    seen_keys = set()
    for t in listed:
        parsed = E.parse_tag(t)
        assert parsed is not None and ci_id.startswith(parsed[1]), t
        manifest, config = get_entry(registry, repo, t)
        layer, _ = E.check_entry(parsed[0], manifest, config, {ci_id: ci_pub})
        assert (store / "blobs" / "sha256" / layer.digest[7:9] / layer.digest[7:] / "data").stat().st_size == layer.size
        seen_keys.add(parsed[0])
    assert len(seen_keys) == len(listed) == len(seeded["layers"]) + 1  # A's layers + B's config
    uploads = store / "repositories" / repo / "_uploads"
    assert not uploads.exists() or not any(uploads.iterdir())

    # retention: keeping only lock A drops B's config entry from the registry, and nothing else
    gc = json.loads(run_lockbuild("cache", "gc", "--lock", str(project_a / "lockbuild.lock"), "--registry",
                                  f"{registry}/{repo}", "--json", cwd=project_a, env=runner(tmp_path, "r0")).stdout)
    assert len(gc["registry"]["deleted_tags"]) == 1 and gc["registry"]["kept_tags"] == len(seeded["layers"])
    assert len(httpx.get(f"http://{registry}/v2/{repo}/tags/list").json()["tags"]) == len(seeded["layers"])


class _Counting:
    """A proxy over the real registry that records every blob transfer: layer bytes read (GET of a
    blob) and written (the PUT that commits an upload; a mount moves no bytes)."""

    def __init__(self, registry: str) -> None:
        import threading

        from tests.test_oci_registry import AuthProxy, ProxyHandler

        self.gets: list[str] = []
        self.puts: list[str] = []
        counting = self

        class Handler(ProxyHandler):
            def _authorized(self) -> bool:
                return True

            def _forward(self) -> None:
                url = httpx.URL(self.path)
                if self.command == "GET" and "/blobs/sha256:" in url.path:
                    counting.gets.append(url.path.rsplit("/", 1)[1])
                if self.command == "PUT" and "/blobs/uploads/" in url.path and url.params.get("digest"):
                    counting.puts.append(url.params["digest"])
                super()._forward()

        self.proxy = AuthProxy(registry, "none")
        self.proxy.RequestHandlerClass = Handler
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self.address = self.proxy.address

    def close(self) -> None:
        self.proxy.shutdown()
        self.proxy.server_close()


@pytest.mark.slow
def test_second_model_moves_only_its_own_layers(tiny_project: dict, registry: str, keys: dict,
                                                tmp_path: Path) -> None:
    """Issue 24: a second model on the same pins, built by a runner with an empty cache and pushed to
    the cache's registry, downloads no layer and uploads only its own (model, config); the shared
    layers are used from their signed entries and mounted; the pushed image verifies."""
    import shutil

    project_a = tiny_project["dir"]
    project_b = tmp_path / "second"
    project_b.mkdir()
    for name in ("model", "lockbuild.toml", "lockbuild.lock"):
        src = project_a / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project_b / name)
    (project_b / "model" / "NOTES.txt").write_text("a second model on the same pins\n")
    run_lockbuild("lock", cwd=project_b)

    proxy = _Counting(registry)
    try:
        repo = f"{proxy.address}/lockbuild-test/cache-second"
        shared = ["--cache-registry", repo, "--cache-trust", str(keys["ci"][1]), "--cache-key", str(keys["ci"][0])]
        a = image_json(project_a, {}, *shared, out=str(tmp_path / "out" / "a"))  # fills the cache
        assert a["digest"] == tiny_project["image"]["digest"]
        proxy.gets.clear()
        proxy.puts.clear()
        b = json.loads(run_lockbuild("image", "--push", f"{proxy.address}/lockbuild-test/second:v1", "--json",
                                     *shared, cwd=project_b, env=runner(tmp_path, "b")).stdout)
        gets, puts = set(proxy.gets), list(proxy.puts)
    finally:
        proxy.close()
    a_layers = {x["name"]: x["digest"] for x in a["layers"]}
    b_layers = {x["name"]: x["digest"] for x in b["layers"]}
    own = {n for n, d in b_layers.items() if d != a_layers.get(n)}
    assert own == {"model", "config"}, own  # everything else is the first model's
    assert sorted(b["shared_cache"]["referenced"]) == sorted(set(b_layers) - own)
    assert b["shared_cache"]["fetched_bytes"] == 0
    assert not gets & set(b_layers.values()), "a layer blob was downloaded"
    uploaded_layers = [d for d in puts if d in b_layers.values()]
    assert sorted(uploaded_layers) == sorted(b_layers[n] for n in own), puts  # each own layer once: cache, then mount
    assert b["shared_cache"]["uploaded_bytes"] == sum(x["size"] for x in b["layers"] if x["name"] in own)
    assert b["push"]["mounted"] == len(b_layers)  # the image's layers all come from the cache repository
    verified = json.loads(run_lockbuild("verify", f"docker://{registry}/lockbuild-test/second:v1", "--json",
                                        cwd=project_b).stdout)
    assert verified["ok"] is True, verified


def test_tar_hasher_refuses_what_another_reader_would_unpack_differently() -> None:
    """The diff_id check while reading: the tar's sha256; a truncated stream, bytes after the gzip member
    (a second member Go's reader would unpack) are refused; zstd frames are read across."""
    import gzip
    import hashlib

    import zstandard

    from lockbuild.share.remote import _TarHasher

    tar = os.urandom(1 << 20) + b"a" * (8 << 20)
    want = "sha256:" + hashlib.sha256(tar).hexdigest()
    gz = gzip.compress(tar, 1)

    def diff_id(blob: bytes, media: str = "application/vnd.oci.image.layer.v1.tar+gzip") -> str:
        h = _TarHasher(media)
        try:
            for i in range(0, len(blob), 65536):
                h.update(blob[i:i + 65536])
            return h.diff_id()
        finally:
            h.close()

    assert diff_id(gz) == want
    for bad, why in ((gz + gzip.compress(b"more"), "after the gzip member"), (gz + b"\0", "after the gzip member"),
                     (gz[:-9], "ends inside")):
        with pytest.raises(E.Untrusted, match=why):
            diff_id(bad)
    z = zstandard.ZstdCompressor().compress(tar[:4096]) + zstandard.ZstdCompressor().compress(tar[4096:])
    assert diff_id(z, "application/vnd.oci.image.layer.v1.tar+zstd") == want


# -- in process, through proxies in front of the real registry: auth, and a registry that lies ----------


def _tiny_layer(cache, tmp_path: Path, tiny_image) -> Layer:  # type: ignore[no-untyped-def]
    (layer,) = tiny_image(cache, tmp_path / "staging", text="shared cache\n").layers
    return layer


def test_push_and_use_through_basic_and_bearer_auth(auth_proxy, cache, tmp_path: Path,  # type: ignore[no-untyped-def]  # noqa: F811
                                                    tiny_image, keys: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from lockbuild.fetch.cache import Cache
    from lockbuild.share.remote import SharedCache
    from tests.test_oci_registry import PASSWORD, docker_config

    docker_config(tmp_path, auth_proxy.address, PASSWORD, monkeypatch)
    monkeypatch.setattr("lockbuild.share.remote.SPLIT_BYTES", 1)  # the blob comes as two ranges at once
    layer = _tiny_layer(cache, tmp_path, tiny_image)
    repo = f"{auth_proxy.address}/auth/cache-{auth_proxy.scheme}"
    writer = SharedCache(repo, signer=load_private_key(keys["ci"][0]))
    writer.publish_layers(cache, {"tiny": (KEY, layer)})
    assert writer.stats.pushed == ["tiny"] and not writer.stats.notes
    reader = SharedCache(repo, trusted=[load_public_key(keys["ci"][1])])
    fresh = Cache(tmp_path / "fresh")
    assert reader.fetch_layers(fresh, {"tiny": KEY}) == {"tiny": layer}
    assert fresh.get(layer.digest, layer.size) is not None and not reader.stats.notes


def test_an_entry_whose_blob_another_runner_is_still_committing_is_pushed_again(
        registry: str, cache, tmp_path: Path, tiny_image, keys: dict,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Runners pushing the same entry at once: one may find a blob "there" (another runner's upload)
    that the registry has not linked yet, and the registry answers its manifest with
    MANIFEST_BLOB_UNKNOWN (seen with four runners on docker-registry). Here the first push of the
    entry's config blob is skipped, as if another runner had it under way: the real registry refuses the
    manifest, the entry is pushed again after a back-off, and nothing is noted."""
    from lockbuild.fetch.cache import Cache
    from lockbuild.oci import registry as reg
    from lockbuild.share.remote import SharedCache

    layer = _tiny_layer(cache, tmp_path, tiny_image)
    real, skipped = reg.push_blob, []

    def racing(s, digest, *rest):  # type: ignore[no-untyped-def]
        if digest != layer.digest and not skipped:
            skipped.append(digest)  # the other runner "has" it: nothing uploaded this time
            return None
        return real(s, digest, *rest)

    monkeypatch.setattr(reg, "push_blob", racing)
    monkeypatch.setattr("lockbuild.net.BACKOFF", 0.1)
    repo = f"{registry}/lockbuild-test/cache-race-one"
    writer = SharedCache(repo, signer=load_private_key(keys["ci"][0]))
    writer.publish_layers(cache, {"tiny": (KEY, layer)})
    assert skipped and writer.stats.pushed == ["tiny"] and not writer.stats.notes, writer.stats.notes
    reader = SharedCache(repo, trusted=[load_public_key(keys["ci"][1])])
    assert reader.fetch_layers(Cache(tmp_path / "fresh"), {"tiny": KEY}) == {"tiny": layer}


@pytest.mark.parametrize("split", [False, True], ids=["one-stream", "two-ranges"])
def test_a_registry_serving_other_bytes_is_caught_while_reading(registry: str, cache, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                tiny_image, keys: dict, split: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from lockbuild.fetch.cache import Cache
    from lockbuild.share.remote import SharedCache
    from tests.test_oci_registry import AuthProxy, ProxyHandler

    if split:  # the flipped byte is in the second half, which then comes from the range request
        monkeypatch.setattr("lockbuild.share.remote.SPLIT_BYTES", 1)
    layer = _tiny_layer(cache, tmp_path, tiny_image)
    repo = "lockbuild-test/cache-liar"
    SharedCache(f"{registry}/{repo}", signer=load_private_key(keys["ci"][0])).publish_layers(
        cache, {"tiny": (KEY, layer)})

    class Liar(ProxyHandler):  # serves the layer blob with one byte flipped: a compromised registry or proxy
        def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            if self.command == "GET" and layer.digest in self.path and body:
                body = body[:-20] + bytes([body[-20] ^ 1]) + body[-19:]
            super()._reply(status, headers, body)

        def _authorized(self) -> bool:
            return True

    proxy = AuthProxy(registry, "none")
    proxy.RequestHandlerClass = Liar
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        reader = SharedCache(f"{proxy.address}/{repo}", trusted=[load_public_key(keys["ci"][1])])
        fresh = Cache(tmp_path / "fresh")
        assert reader.fetch_layers(fresh, {"tiny": KEY}) == {}
        assert "served other bytes" in reader.stats.notes[0], reader.stats.notes
        assert not fresh.has(layer.digest) and not any((fresh.root / "tmp").iterdir())  # nothing half-written
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_registry_that_stores_another_entry_manifest_is_a_note_not_a_failed_build(  # type: ignore[no-untyped-def]
        rewriting_proxy, cache, tmp_path: Path, tiny_image, keys: dict) -> None:  # noqa: F811
    """The entry's manifest PUT answered with another digest (a registry that rewrites manifests): the
    layer is not counted as pushed, a note says why, and the build goes on."""
    from lockbuild.share.remote import SharedCache

    layer = _tiny_layer(cache, tmp_path, tiny_image)
    writer = SharedCache(f"{rewriting_proxy.address}/lockbuild-test/cache-rewrite",
                         signer=load_private_key(keys["ci"][0]))
    writer.publish_layers(cache, {"tiny": (KEY, layer)})
    assert writer.stats.pushed == [] and len(writer.stats.notes) == 1, writer.stats.notes
    assert "could not push layer tiny (registry stored the manifest as sha256:000" in writer.stats.notes[0]


def test_a_trusted_keys_diff_id_is_believed_unless_check_tar(registry: str, cache, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                             tiny_image, keys: dict) -> None:
    """The trust decision (docs/architecture.md): a trusted key's signed diff_id is used without
    inflating the blob (only its sha256 and size are checked), as Nix uses a trusted narinfo; with
    check_tar (LOCKBUILD_CACHE_CHECK_TAR=1) a wrong one is caught, downloading or already here."""
    import dataclasses

    from lockbuild.fetch.cache import Cache
    from lockbuild.share.remote import SharedCache

    layer = _tiny_layer(cache, tmp_path, tiny_image)
    lie = dataclasses.replace(layer, diff_id="sha256:" + "0" * 64)  # the real blob, a wrong tar digest
    repo = f"{registry}/lockbuild-test/cache-diff-id"
    SharedCache(repo, signer=load_private_key(keys["ci"][0])).publish_layers(cache, {"tiny": (KEY, lie)})
    trusted = [load_public_key(keys["ci"][1])]
    believing = SharedCache(repo, trusted=trusted, check_tar=False)
    taken = Cache(tmp_path / "taken")
    assert believing.fetch_layers(taken, {"tiny": KEY}) == {"tiny": lie}  # the key's word (verify would refuse it)
    checking = SharedCache(repo, trusted=trusted, check_tar=True)
    fresh = Cache(tmp_path / "fresh")
    assert checking.fetch_layers(fresh, {"tiny": KEY}) == {}
    assert "not the signed diff_id" in checking.stats.notes[0], checking.stats.notes
    assert not fresh.has(layer.digest) and not any((fresh.root / "tmp").iterdir())
    # the blob taken before without the check is checked before it is used again
    again = SharedCache(repo, trusted=trusted, check_tar=True)
    assert again.fetch_layers(taken, {"tiny": KEY}) == {}
    assert "is not the tar of" in again.stats.notes[0], again.stats.notes
