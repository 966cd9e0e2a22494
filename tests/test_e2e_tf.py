"""The real TensorFlow/Keras path end to end: lock -> image -> verify -> smoke on both examples (the
keras3 example served from its committed lock after a registry round trip, legacy-tfkeras from a fresh
lock's docker-archive).

Slow (real TensorFlow wheels, real Debian packages, a real dockerd) but cached: every download
goes through LOCKBUILD_CACHE, so a second run rebuilds from the cache without the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lockbuild.fetch.cache import default_cache_dir

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.network]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["keras3", "legacy-tfkeras"]


def lockbuild(*args: str, cwd: Path, env: dict[str, str] | None = None, ok: bool = True,
              umask: int | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    proc = subprocess.run([sys.executable, "-m", "lockbuild", *args], cwd=cwd, env=full_env, text=True,
                          capture_output=True, preexec_fn=preexec, timeout=1800)
    if ok and proc.returncode != 0:
        raise AssertionError(f"lockbuild {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def copy_example(name: str, dest: Path, *, with_lock: bool = False) -> Path:
    """The example in a scratch directory; without its committed lock unless ``with_lock``."""
    src = ROOT / "examples" / name
    work = dest / name
    skip = ("out", "mlruns", "__pycache__", *(() if with_lock else ("lockbuild.lock",)))
    shutil.copytree(src, work, ignore=shutil.ignore_patterns(*skip))
    return work


@pytest.fixture(scope="module", params=EXAMPLES)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, docker_engine: object) -> dict:
    work = copy_example(request.param, tmp_path_factory.mktemp("e2e"))
    lock = json.loads(lockbuild("lock", "--json", cwd=work).stdout)
    image = json.loads(lockbuild("image", "--oci", "out/oci", "--docker-archive", "out/image.tar", "--json",
                                 cwd=work).stdout)
    return {"name": request.param, "dir": work, "lock": lock, "image": image}


def test_lock_pins_one_target_wheel_per_package_and_every_deb(built: dict) -> None:
    import tomllib

    lock = tomllib.loads((built["dir"] / "lockbuild.lock").read_text())
    from packaging.utils import parse_wheel_filename

    from lockbuild.resolve.uv import PythonTarget, target_tags

    accepted = set(target_tags(PythonTarget(python=lock["target"]["python"],
                                            wheel_platform=lock["target"]["wheel-platform"])))
    wheels = lock["python"]["packages"]
    assert len({w["name"] for w in wheels}) == len(wheels)
    for w in wheels:
        assert len(w["sha256"]) == 64
        tags = parse_wheel_filename(w["filename"])[3]
        assert tags & accepted, f"{w['filename']} does not install on cp311 manylinux_2_36 x86_64"
        assert all(t.platform in ("any",) or t.platform.endswith("x86_64") for t in tags)
    logged = {r.split("==")[0]: r.split("==")[1] for r in lock["model"]["requirements"] if "==" in r}
    versions = {w["name"]: w["version"] for w in wheels}
    for name in ("tensorflow-cpu", "keras", "numpy"):
        assert versions[name] == logged[name], f"{name} must stay at the logged version"
    assert lock["target"]["python"].startswith("3.11.")
    assert all(len(d["sha256"]) == 64 for d in lock["debian"]["packages"])
    assert any(d["name"] == "python3.11" for d in lock["debian"]["packages"])


def test_verify_passes_on_the_layout_and_the_archive_from_the_signed_records(built: dict) -> None:
    """Both outputs of one build verify, each layer from its own signed record: the layout's blobs
    (the lock's compression) and the archive's gzip blobs (its own records), neither re-derived
    from the lock. The smoke test below serves the archive (smoke runs the same `verify` first)."""
    for image in ("out/oci", "out/image.tar"):
        report = json.loads(lockbuild("verify", image, "--json", cwd=built["dir"]).stdout)
        assert report["ok"], report["findings"][:5]
        assert report["checked"]["layers"] == len(built["image"]["layers"])
        assert all(layer["expected"] == layer["found"] for layer in report["layers"])
        assert {(la["expected_from"], la["found_from"]) for la in report["layers"]} == {
            ("signed layer record", "signed layer record")}, (image, report["layers"])


@pytest.mark.parametrize("built", ["legacy-tfkeras"], indirect=True)
def test_smoke_verifies_the_archive_and_serves_the_recorded_predictions(built: dict) -> None:
    """The docker-archive of a lock made from scratch, verified and served. The keras3 example is served
    by test_zstd_push_verifies_and_serves_after_a_registry_round_trip below (its committed lock, through
    a registry and skopeo); serving its archive from a fresh lock too would repeat that ~60 s, and a
    fresh Keras 3 lock's archive is served by test_e2e_defaults and test_e2e_interpreters."""
    expected = json.loads((built["dir"] / "predictions.json").read_text())
    proc = lockbuild("smoke", "out/image.tar", "--expected", "predictions.json", "--json", cwd=built["dir"])
    report = json.loads(proc.stdout)
    assert report["ok"] and report["verified"], report
    assert report["status"] == 200
    flat_got = json.dumps(report["predictions"])
    assert len(report["predictions"]) == len(expected["predictions"]), flat_got


def test_image_is_pruned_and_byte_compiled_by_the_locks_rules(built: dict) -> None:
    layers = {la["name"]: la for la in built["image"]["layers"]}
    assert "python-libclang" not in layers  # omitted by default: serving never imports it
    tf = layers["python-tensorflow-cpu"]
    assert tf["pruned_bytes"] > 100_000_000  # tensorflow/include: 268 MB (2.21), 155 MB (legacy example)
    assert tf["pyc_files"] > 1000 and layers["debian"]["pyc_files"] > 500
    assert tf["unpacked_bytes"] == tf["before_bytes"] - tf["pruned_bytes"] + tf["pyc_bytes"]


def test_relock_is_byte_identical_and_reused(built: dict) -> None:
    before = (built["dir"] / "lockbuild.lock").read_bytes()
    again = json.loads(lockbuild("lock", "--json", cwd=built["dir"]).stdout)
    assert again["reused"] and not again["changed"]
    assert (built["dir"] / "lockbuild.lock").read_bytes() == before


@pytest.fixture(scope="module")
def keras3(tmp_path_factory: pytest.TempPathFactory, docker_engine: object) -> dict:
    """The example as a user's checkout has it: the committed lock (still fresh, so `lock` reuses it;
    `built` above locks both examples from scratch)."""
    work = copy_example("keras3", tmp_path_factory.mktemp("keras3"), with_lock=True)
    assert json.loads(lockbuild("lock", "--json", cwd=work).stdout)["reused"]
    image = json.loads(lockbuild("image", "--oci", "out/oci", "--json", cwd=work).stdout)
    return {"dir": work, "image": image}


def _seeded_cache(tmp: Path) -> Path:
    """A new cache dir holding the downloaded artifacts (hard links) but no layer records,
    so every layer is rebuilt from scratch without downloading 300 MB again."""
    src = default_cache_dir()
    dest = tmp / "cache2"
    shutil.copytree(src / "blobs", dest / "blobs", copy_function=os.link)
    return dest


def test_same_lock_same_digest_with_other_cache_umask_and_tz(keras3: dict, tmp_path: Path) -> None:
    cache2 = _seeded_cache(tmp_path)
    proc = lockbuild("image", "--oci", str(tmp_path / "oci2"), "--json", cwd=keras3["dir"], umask=0o077,
                     env={"LOCKBUILD_CACHE": str(cache2), "TZ": "Pacific/Kiritimati", "LC_ALL": "C"})
    second = json.loads(proc.stdout)
    assert not any(layer["reused"] for layer in second["layers"]), "every layer must be rebuilt"
    assert second["digest"] == keras3["image"]["digest"]
    assert [la["diff_id"] for la in second["layers"]] == [la["diff_id"] for la in keras3["image"]["layers"]]


def test_warm_rebuild_needs_no_network_and_reuses_every_layer(keras3: dict, tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9"  # nothing listens: any download attempt would fail
    proc = lockbuild("image", "--oci", str(tmp_path / "oci3"), "--json", cwd=keras3["dir"],
                     env={"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "ALL_PROXY": dead, "UV_OFFLINE": "1"})
    third = json.loads(proc.stdout)
    assert all(layer["reused"] for layer in third["layers"])
    assert third["digest"] == keras3["image"]["digest"]


def test_model_only_change_rebuilds_only_model_and_config_layers(keras3: dict, tmp_path: Path) -> None:
    work = tmp_path / "changed"
    shutil.copytree(keras3["dir"], work, ignore=shutil.ignore_patterns("out"))
    # unique per run: the fixture builds from the committed lock, so the same change would find the
    # layers an earlier run built in the shared cache
    (work / "model" / "README.txt").write_text(f"a model-only change {time.time_ns()}\n")
    lockbuild("lock", cwd=work)
    image = json.loads(lockbuild("image", "--oci", "out/oci", "--json", cwd=work).stdout)
    rebuilt = sorted(la["name"] for la in image["layers"] if not la["reused"])
    assert rebuilt == ["config", "model"]


def test_push_then_push_again_uploads_nothing_and_pulls_back_the_same_digest(keras3: dict, registry: str) -> None:
    ref = f"{registry}/lockbuild/keras3:e2e"
    first = json.loads(lockbuild("image", "--push", ref, "--json", cwd=keras3["dir"]).stdout)
    second = json.loads(lockbuild("image", "--push", ref, "--json", cwd=keras3["dir"]).stdout)
    assert first["digest"] == second["digest"] == keras3["image"]["digest"]
    assert second["push"]["uploaded"] == 0
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["Digest"] == keras3["image"]["digest"]
    report = json.loads(lockbuild("verify", f"docker://{ref}", "--json", cwd=keras3["dir"]).stdout)
    assert report["ok"], report["findings"][:5]


def test_smoke_diagnoses_a_missing_module(keras3: dict, tmp_path: Path) -> None:
    work = tmp_path / "broken"
    shutil.copytree(keras3["dir"], work, ignore=shutil.ignore_patterns("out", "lockbuild.lock"))
    spec = work / "lockbuild.toml"
    spec.write_text(spec.read_text().replace("[python]", "[python]\nomit = [\"absl-py\"]", 1)
                    if "[python]" in spec.read_text() else spec.read_text() + '\n[python]\nomit = ["absl-py"]\n')
    lockbuild("lock", cwd=work)
    lockbuild("image", "--docker-archive", "out/image.tar", cwd=work)
    proc = lockbuild("smoke", "out/image.tar", "--timeout", "60", cwd=work, ok=False)
    assert proc.returncode == 14, proc.stderr
    assert "missing-module" in proc.stderr and "absl" in proc.stderr


def test_zstd_push_verifies_and_serves_after_a_registry_round_trip(keras3: dict, registry: str,
                                                                    tmp_path: Path) -> None:
    """The real model as zstd (a new lock's default): pushed (tar+zstd layers, the OCI layout's digest),
    verified against the lock straight from the registry, then pulled by skopeo into gzip (what an engine
    without zstd needs; Docker 20.10 cannot load zstd), verified again and served: real predictions."""
    ref = f"{registry}/lockbuild/keras3:zstd"
    pushed = json.loads(lockbuild("image", "--push", ref, "--json", cwd=keras3["dir"]).stdout)
    assert (pushed["digest"], pushed["config_digest"]) == (keras3["image"]["digest"], keras3["image"]["config_digest"])
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert {la["mediaType"] for la in raw["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    report = json.loads(lockbuild("verify", f"docker://{ref}", "--json", cwd=keras3["dir"]).stdout)
    assert report["ok"], report["findings"][:5]

    gz = tmp_path / "gz"
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-compress-format", "gzip",
                    f"docker://{ref}", f"oci:{gz}:zstd-roundtrip"], check=True, capture_output=True, timeout=900)
    proc = lockbuild("smoke", str(gz), "--expected", "predictions.json", "--json", cwd=keras3["dir"])
    smoke = json.loads(proc.stdout)
    assert smoke["ok"] and smoke["status"] == 200, smoke
    expected = json.loads((keras3["dir"] / "predictions.json").read_text())
    assert len(smoke["predictions"]) == len(expected["predictions"])
