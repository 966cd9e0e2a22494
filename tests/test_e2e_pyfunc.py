"""Custom pyfunc models as users produce them, end to end with no spec edits:
`lockbuild lock && lockbuild image`, then verify and smoke (real dockerd) with the recorded predictions.

* examples/pyfunc-sdist: code_paths (code/greeter.py), an artifact, and docopt==0.6.2, which PyPI
  has only as an sdist (built at lock time; the image reuses the built wheel);
* examples/pyfunc-wheels: made here by its make_model.py with MLflow's
  `add_libraries_to_model` (wheels/ inside the model, requirements.txt pointing at them).
No TensorFlow: quick once the cache is warm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockbuild.fetch.cache import default_cache_dir
from tests.test_e2e_tf import copy_example, lockbuild

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.network]

ROOT = Path(__file__).resolve().parents[1]


def _make_wheeled(dest: Path) -> Path:
    """Run the example's make script, unedited, with an MLflow 3.17.2 + pip + roman interpreter:
    the test venv has mlflow 3.17.2 and pip; roman is installed into a throwaway target dir."""
    work = dest / "pyfunc-wheels"
    shutil.copytree(ROOT / "examples" / "pyfunc-wheels", work, ignore=shutil.ignore_patterns("model", "out"))
    extra = dest / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(extra), "roman==5.2"],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(extra), "MLFLOW_ALLOW_FILE_STORE": "true"}
    subprocess.run([sys.executable, str(work / "make_model.py"), str(work)], check=True, capture_output=True,
                   timeout=600, env=env, cwd=dest)
    return work


@pytest.fixture(scope="module", params=["pyfunc-sdist", "pyfunc-wheels"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          docker_engine: object) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("e2e-pyfunc")
    if request.param == "pyfunc-wheels":
        work = _make_wheeled(tmp)
    else:
        work = copy_example(request.param, tmp)
    lock = json.loads(lockbuild("lock", "--json", cwd=work).stdout)
    image = json.loads(lockbuild("image", "--oci", "out/oci", "--docker-archive", "out/image.tar", "--json",
                                 cwd=work).stdout)
    yield {"name": request.param, "dir": work, "lock": lock, "image": image}
    if not os.environ.get("LOCKBUILD_KEEP_IMAGES"):  # smoke loads the image into the shared engine
        import docker

        client = docker_engine
        assert isinstance(client, docker.DockerClient)
        for img in client.images.list(name=f"lockbuild-example/{request.param}"):
            client.images.remove(img.id, force=True)


def _locked(built: dict) -> dict:
    import tomllib

    return tomllib.loads((built["dir"] / "lockbuild.lock").read_text())


def test_the_lock_records_where_each_special_wheel_comes_from(built: dict) -> None:
    packages = {p["name"]: p for p in _locked(built)["python"]["packages"]}
    if built["name"] == "pyfunc-sdist":
        assert packages["docopt"]["source"] == "sdist"
        assert packages["docopt"]["sdist"]["sha256"] == \
            "49b3a825280bd66b3aa83585ef59c4a8c82f2c8a522dbe754a8bc8d08c85c491"
    else:
        assert packages["roman"]["source"] == "model"
        assert packages["roman"]["path"] == "wheels/roman-5.2-py3-none-any.whl"
        assert "mlflow" not in packages  # the bundled mlflow wheel yields to the serving runtime


def test_verify_passes_on_the_layout(built: dict) -> None:
    """The archive is verified by the smoke test below (smoke runs the same `verify` first)."""
    report = json.loads(lockbuild("verify", "out/oci", "--json", cwd=built["dir"]).stdout)
    assert report["ok"], report["findings"][:5]


def test_smoke_verifies_the_archive_and_serves_the_recorded_predictions(built: dict) -> None:
    expected = json.loads((built["dir"] / "predictions.json").read_text())
    report = json.loads(lockbuild("smoke", "out/image.tar", "--expected", "predictions.json", "--json",
                                  cwd=built["dir"]).stdout)
    assert report["ok"] and report["verified"], report
    assert report["predictions"] == expected["predictions"]


SDIST_ONLY = pytest.mark.parametrize("built", ["pyfunc-sdist"], indirect=True)  # the same module-scoped build


@SDIST_ONLY  # only pyfunc-sdist has code_paths
def test_code_dir_is_importable_the_way_mlflows_loader_adds_it(built: dict, docker_engine: object) -> None:
    import docker

    client = docker_engine
    assert isinstance(client, docker.DockerClient)
    archive = (built["dir"] / "out" / "image.tar").read_bytes()
    (img,) = client.images.load(archive)
    script = ("import mlflow.pyfunc as p, mlflow.utils.model_utils as u, sys; "
              "u._add_code_from_conf_to_system_path('/opt/ml/model', "
              "p.Model.load('/opt/ml/model').flavors['python_function']); "
              "import greeter, docopt; print(greeter.__file__, docopt.__version__)")
    try:
        out = client.containers.run(img.id, entrypoint=["/usr/bin/python3.11", "-c", script], remove=True,
                                    network_mode="none").decode()
    finally:
        if not os.environ.get("LOCKBUILD_KEEP_IMAGES"):
            client.images.remove(img.id, force=True)
    assert out.split() == ["/opt/ml/model/code/greeter.py", "0.6.2"]


@SDIST_ONLY  # only pyfunc-sdist has a source-only dependency
def test_image_rebuilds_the_sdist_wheel_bit_for_bit_in_a_fresh_cache(built: dict, tmp_path: Path) -> None:
    src = default_cache_dir()
    docopt = next(p for p in _locked(built)["python"]["packages"] if p["name"] == "docopt")
    cache2 = tmp_path / "cache2"
    shutil.copytree(src / "blobs", cache2 / "blobs", copy_function=os.link,
                    ignore=lambda _d, names: [n for n in names if n == docopt["sha256"]])
    assert not (cache2 / "blobs" / "sha256" / docopt["sha256"][:2] / docopt["sha256"]).exists()
    proc = lockbuild("image", "--oci", str(tmp_path / "oci2"), "--json", cwd=built["dir"], umask=0o077,
                     env={"LOCKBUILD_CACHE": str(cache2), "TZ": "Pacific/Kiritimati"})
    assert json.loads(proc.stdout)["digest"] == built["image"]["digest"]
    assert (cache2 / "blobs" / "sha256" / docopt["sha256"][:2] / docopt["sha256"]).exists()
