"""The layer cache as production uses it: `lockbuild image` (assemble/build.py) reuses a layer only
through a record whose MAC checks out and whose blob still hashes to its digest; anything else is
rebuilt, to the same image digest. The builds run on a private copy of the tiny project's cache
(blobs hard-linked, records copied), so removing or damaging a blob here touches nobody else's.
A poisoned record through `lockbuild image` and `verify`: test_verify_tamper.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache
from lockbuild.oci.layercache import Layer, layer_record, remember_layer
from lockbuild.oci.tar import write_layer
from tests.tiny_project import run_lockbuild

MTIME = 1795564800


def _private_cache(dest: Path) -> Path:
    src = Path(os.environ.get("LOCKBUILD_CACHE") or Path.home() / ".cache" / "lockbuild")
    shutil.copytree(src / "blobs", dest / "blobs", copy_function=os.link)
    shutil.copytree(src / "meta", dest / "meta")
    return dest


def _image(project: dict, cache: Path, out: str) -> dict:
    proc = run_lockbuild("image", "--oci", out, "--json", cwd=project["dir"], env={"LOCKBUILD_CACHE": str(cache)})
    return json.loads(proc.stdout)


def _reused(summary: dict) -> dict[str, bool]:
    return {x["name"]: x["reused"] for x in summary["layers"]}


@pytest.fixture()
def warm(tiny_project: dict, tmp_path: Path) -> tuple[Path, dict]:
    """A private cache on which every layer of the tiny image is reused (checked)."""
    cache = _private_cache(tmp_path / "cache")
    summary = _image(tiny_project, cache, str(tmp_path / "oci0"))
    assert summary["digest"] == tiny_project["image"]["digest"] and all(_reused(summary).values()), summary
    return cache, summary


def _model_blob(cache: Path, summary: dict) -> Path:
    digest = next(x["digest"] for x in summary["layers"] if x["name"] == "model")
    return Cache(cache).path(digest)


def test_a_layer_whose_blob_left_the_cache_is_rebuilt_to_the_same_bytes(
        tiny_project: dict, warm: tuple[Path, dict], tmp_path: Path) -> None:
    cache, before = warm
    blob = _model_blob(cache, before)
    blob.unlink()  # the record stays, its blob is gone (a cache cleaner, a full disk)
    summary = _image(tiny_project, cache, str(tmp_path / "oci1"))
    assert summary["digest"] == tiny_project["image"]["digest"]
    assert {n for n, r in _reused(summary).items() if not r} == {"model"}, summary["layers"]
    assert blob.is_file()


def test_a_layer_blob_damaged_in_the_cache_is_rehashed_dropped_and_rebuilt(
        tiny_project: dict, warm: tuple[Path, dict], tmp_path: Path) -> None:
    cache, before = warm
    blob = _model_blob(cache, before)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.unlink()  # a hard link to the shared cache: replace it, never write through it
    blob.write_bytes(bytes(data))
    summary = _image(tiny_project, cache, str(tmp_path / "oci1"))
    assert summary["digest"] == tiny_project["image"]["digest"]  # the damaged blob was not used
    assert {n for n, r in _reused(summary).items() if not r} == {"model"}, summary["layers"]
    assert blob.read_bytes() != bytes(data)


# -- the records themselves (assemble/build.py reads them with layer_record, share/gc.py too) --------


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Cache, Layer]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    cache = Cache(tmp_path / "cache")
    return cache, write_layer(cache, root, mtime=MTIME)


def test_layer_cache_rejects_path_like_keys(built: tuple[Cache, Layer]) -> None:
    cache, layer = built
    with pytest.raises(BuildError):
        remember_layer(cache, "../escape", layer)


def test_a_layer_record_is_trusted_only_with_its_mac(built: tuple[Cache, Layer], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever can write the cache dir but not the key file cannot make a record trusted: an edited
    record pointing at another well-formed blob (digests recomputed) or one signed with another key
    is refused, with the reason."""
    cache, layer = built
    monkeypatch.setenv("LOCKBUILD_KEY_FILE", str(tmp_path / "machine.key"))
    key = "sha256:" + "cd" * 32
    assert layer_record(cache, key) == (None, None)
    remember_layer(cache, key, layer)
    assert (tmp_path / "machine.key").stat().st_mode & 0o777 == 0o600
    assert layer_record(cache, key) == (layer, None)
    other_root = tmp_path / "other"
    other_root.mkdir()
    (other_root / "evil.py").write_text("import os\n")
    other = write_layer(cache, other_root, mtime=MTIME)
    record = json.loads((cache.root / "meta" / "layers" / f"{key.removeprefix('sha256:')}.json").read_text())
    record.update(digest=other.digest, diff_id=other.diff_id, size=other.size)
    cache.meta_put("layers", key.removeprefix("sha256:"), record)
    assert layer_record(cache, key)[0] is None
    assert "MAC does not match" in (layer_record(cache, key)[1] or "")
    monkeypatch.setenv("LOCKBUILD_KEY_FILE", str(tmp_path / "attacker.key"))
    remember_layer(cache, key, other)  # signed, but with another key
    monkeypatch.setenv("LOCKBUILD_KEY_FILE", str(tmp_path / "machine.key"))
    assert layer_record(cache, key)[0] is None


def test_a_recompressed_layer_is_verified_within_its_records_tar_size_without_a_derivation(
        tiny_project: dict, tmp_path: Path) -> None:
    """A build records each layer's tar size. A transport that recompresses every layer (gzip level 6, the
    default of zlib and of Go's compress/gzip) gives blobs no record names: verify decompresses each
    within its record's tar size and takes the diff_id from that, with nothing derived from the lock.
    Records made before tar sizes were kept (a warm cache) still make verify derive the layer for its bound:
    the model and config layers are rebuilt here so that at least they have a size, and every other layer is
    checked either way."""
    from tests import hostile_images as h

    cache = _private_cache(tmp_path / "cache")
    for layer in tiny_project["image"]["layers"]:
        if layer["name"] in ("model", "config"):
            for p in _records_naming(cache, layer["digest"]):
                p.unlink()
    summary = _image(tiny_project, cache, str(tmp_path / "oci"))
    assert summary["digest"] == tiny_project["image"]["digest"]
    for layer in summary["layers"]:
        if layer["name"] in ("model", "config"):
            assert not layer["reused"] and all(
                json.loads(p.read_text())["tar_size"] > 0 for p in _records_naming(cache, layer["digest"])), layer
    layout = h.copy_layout(tmp_path / "oci", tmp_path / "recompressed")
    h.recompressed(layout, compression="gzip", level=6)  # level 9: 51 s of compressing here, level 6: 15 s
    h.prune_unreferenced(layout)
    proc = run_lockbuild("verify", str(layout), "--json", cwd=tiny_project["dir"], env={"LOCKBUILD_CACHE": str(cache)})
    report = json.loads(proc.stdout)
    assert report["ok"], report["findings"][:5]
    assert {(x["expected_from"], x["found_from"]) for x in report["layers"]} == {
        ("signed layer record", "decompressed")}, report["layers"]
    assert {"model", "config"} <= {x["name"] for x in report["layers"] if not x["derived"]}, report["layers"]


def _records_naming(cache: Path, digest: str) -> list[Path]:
    """The layer records (meta/layers/<key>.json) naming this blob."""
    return [p for p in (cache / "meta" / "layers").glob("*.json") if json.loads(p.read_text())["digest"] == digest]
