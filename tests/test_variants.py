"""Overlapping distributions settled at lock time from file evidence (issue 10), and a lock that
`lock` writes must build: real uv, real PyPI (wheel file lists by HTTP range requests), real
models logged with MLflow's default requirement inference (tests/data/models/)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockbuild.errors import DoctorFailed, IntegrityError, OverlapError, SpecError, StaleLock
from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.io import read_lock
from lockbuild.lockfile.model import Wheel
from lockbuild.resolve import overlap
from tests.lockbuild_testing import make_project, run_cli, set_model_requirements, shared_cache

pytestmark = pytest.mark.network

MODELS = Path(__file__).resolve().parent / "data" / "models"
SPEC = '[model]\nuri = "model"\n'


@pytest.fixture()
def lb_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = shared_cache(tmp_path_factory)
    monkeypatch.setenv("LOCKBUILD_CACHE", str(cache))
    return cache


def lock_json(project: Path) -> tuple[int, dict, str]:
    r = run_cli("lock", "--spec", str(project), "--json")
    assert "Traceback" not in r.stderr, r.stderr
    return r.code, json.loads(r.stdout), r.stderr


def test_both_tf_dists_logged_keeps_tensorflow_cpu_and_records_why(tmp_path: Path, lb_cache: Path) -> None:
    project = make_project(tmp_path / "p", SPEC, MODELS / "keras3-tf221" / "model")
    code, out, err = lock_json(project)
    assert code == 0, out
    assert out["variants"] == [{
        "dropped": "tensorflow", "kept": "tensorflow-cpu",
        "reason": "the model logged both; tensorflow==2.21.0 is the MLflow flavor's default pin, "
                  "tensorflow-cpu==2.21.0 the distribution installed in the training environment",
        "paths": out["variants"][0]["paths"],
        "example": "usr/local/lib/python3.11/dist-packages/tensorflow/__init__.py"}]
    assert out["variants"][0]["paths"] > 1000  # file evidence, not a name table
    assert "variant: tensorflow-cpu kept, tensorflow dropped" in err
    lk = read_lock(project / "lockbuild.lock")
    names = {w.name for w in lk.python.packages}
    assert "tensorflow-cpu" in names and "tensorflow" not in names
    assert [(c.dropped, c.kept) for c in lk.python.variants] == [("tensorflow", "tensorflow-cpu")]
    assert run_cli("lock", "--spec", str(project), "--check").code == 0


def test_transitive_requirement_on_the_dropped_name_resolves_to_the_kept_one(tmp_path: Path, lb_cache: Path) -> None:
    """tf-keras==2.21.0 itself requires tensorflow: [python] exclude could not help; the override does."""
    project = make_project(tmp_path / "p", SPEC, MODELS / "tfkeras-tf221" / "model")
    code, out, _ = lock_json(project)
    assert code == 0, out
    assert [(v["dropped"], v["kept"]) for v in out["variants"]] == [("tensorflow", "tensorflow-cpu")]
    lk = read_lock(project / "lockbuild.lock")
    versions = {w.name: w.version for w in lk.python.packages}
    assert versions["tf-keras"] == versions["tensorflow-cpu"] == "2.21.0" and "tensorflow" not in versions
    assert dict(lk.runtime.env)["TF_USE_LEGACY_KERAS"] == "1"


def test_spec_choice_overrides_the_default(tmp_path: Path, lb_cache: Path) -> None:
    spec = SPEC + '[python]\nvariants = { tensorflow-cpu = "tensorflow" }\n'
    project = make_project(tmp_path / "p", spec, MODELS / "keras3-tf221" / "model")
    code, out, _ = lock_json(project)
    assert code == 0, out
    assert [(v["dropped"], v["kept"], v["reason"]) for v in out["variants"]] == [
        ("tensorflow-cpu", "tensorflow", "chosen in lockbuild.toml ([python] variants)")]
    names = {w.name for w in read_lock(project / "lockbuild.lock").python.packages}
    assert "tensorflow" in names and "tensorflow-cpu" not in names


def test_spec_variant_naming_nothing_resolved_is_a_spec_error(tmp_path: Path, lb_cache: Path) -> None:
    spec = SPEC + '[python]\nvariants = { "opencv-python" = "opencv-python-headless" }\n'
    project = make_project(tmp_path / "p", spec, MODELS / "keras3-tf221" / "model")
    r = run_cli("lock", "--spec", str(project))
    assert r.code == SpecError.exit_code, r.stderr
    assert "opencv-python" in r.stderr and "remove it from [python] variants" in r.stderr
    assert not (project / "lockbuild.lock").exists()


@pytest.mark.parametrize(("reqs", "pair"), [
    (["jwt==1.3.1", "pyjwt==2.9.0"], ("jwt", "pyjwt")),  # not a known family
    (["opencv-python==4.10.0.84", "opencv-python-headless==4.9.0.80"],  # a family, different versions
     ("opencv-python", "opencv-python-headless")),
])
def test_unsettleable_overlap_fails_with_the_paths_and_the_fix(tmp_path: Path, lb_cache: Path, reqs: list[str],
                                                               pair: tuple[str, str]) -> None:
    project = make_project(tmp_path / "p", SPEC, MODELS / "keras3-tf221" / "model")
    set_model_requirements(project / "model", ["mlflow==3.17.2", *reqs])
    r = run_cli("lock", "--spec", str(project))
    assert r.code == OverlapError.exit_code == 19, r.stderr
    assert "Traceback" not in r.stderr
    a, b = pair
    assert f"{a}==" in r.stderr and f"{b}==" in r.stderr and "write the same files" in r.stderr
    assert "dist-packages/" in r.stderr  # the evidence
    assert f'[python] variants = {{ "{a}" = "{b}" }}' in r.stderr  # the fix
    assert not (project / "lockbuild.lock").exists()
    # ... and the fix it names works
    (project / "lockbuild.toml").write_text(SPEC + f'[python]\nvariants = {{ "{a}" = "{b}" }}\n')
    code, out, _ = lock_json(project)
    assert code == 0, out
    assert [(v["dropped"], v["kept"]) for v in out["variants"]] == [(a, b)]


def test_doctor_error_writes_no_lock_and_exits_non_zero(tmp_path: Path, lb_cache: Path) -> None:
    """A Keras 2 model whose tf-keras is excluded would load with Keras 3: the lock must not be written."""
    spec = SPEC + '[python]\nexclude = ["tf-keras"]\n'
    project = make_project(tmp_path / "p", spec, MODELS / "tfkeras-tf221" / "model")
    r = run_cli("lock", "--spec", str(project))
    assert r.code == DoctorFailed.exit_code, r.stderr
    assert "keras-major" in r.stderr and "was not written" in r.stderr and "Traceback" not in r.stderr
    assert not (project / "lockbuild.lock").exists()


def test_lock_check_fails_on_a_lock_with_a_doctor_error(tmp_path: Path, lb_cache: Path) -> None:
    """A lock an older lockbuild wrote despite a doctor error: --check must not call it fresh."""
    from lockbuild.lock.create import make_lock
    from lockbuild.lockfile.io import write_lock
    from lockbuild.spec import load_spec

    spec = SPEC + '[python]\nexclude = ["tf-keras"]\n'
    project = make_project(tmp_path / "p", spec, MODELS / "tfkeras-tf221" / "model")
    result = make_lock(load_spec(project), previous=None, upgrade=False, cache=Cache())
    write_lock(result.lock, project / "lockbuild.lock")  # what `lock` did before issue 10
    r = run_cli("lock", "--spec", str(project), "--check")
    assert r.code == StaleLock.exit_code, r.stderr
    assert "doctor error [keras-major]" in r.stderr


# -- wheel file lists ------------------------------------------------------------------------------
@pytest.fixture()
def no_range_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server that ignores Range (Python's http.server answers 200 with the whole file)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", root
    srv.shutdown()


def _pypi_wheel(lb_cache: Path) -> Wheel:
    """six 1.17.0 (small, pure Python) as uv pins it, fetched once into the cache for the local server."""
    from lockbuild.fetch.download import Item, fetch_all

    w = Wheel(name="six", version="1.17.0", filename="six-1.17.0-py2.py3-none-any.whl",
              url="https://files.pythonhosted.org/packages/b7/ce/149a00dd41f10bc29e5921b496af8b574d8413afcd5e30dfa0ed46c2cc5e/six-1.17.0-py2.py3-none-any.whl",
              size=11050, sha256="sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274")
    fetch_all(Cache(lb_cache), [Item(urls=(w.url,), sha256=w.sha256, size=w.size, label=w.filename)])
    return w


def test_range_listing_equals_the_full_wheel_listing(tmp_path: Path, lb_cache: Path) -> None:
    w = _pypi_wheel(lb_cache)
    fresh = Cache(tmp_path / "empty-cache")  # nothing cached: the list comes from range requests
    from lockbuild.fetch.download import client

    with client() as http:
        by_range = overlap.wheel_members(w, fresh, http)
    assert fresh.meta_get(overlap.META, w.sha256)["source"] == "range"
    assert fresh.get(w.sha256, w.size) is None  # nothing downloaded
    import zipfile

    with zipfile.ZipFile(Cache(lb_cache).get(w.sha256, w.size)) as zf:  # type: ignore[arg-type]
        assert by_range == [i.filename for i in zf.infolist() if not i.is_dir()]


def test_no_ranges_falls_back_to_the_verified_download(tmp_path: Path, lb_cache: Path,
                                                       no_range_server: tuple[str, Path]) -> None:
    w = _pypi_wheel(lb_cache)
    base, root = no_range_server
    (root / w.filename).write_bytes(Cache(lb_cache).get(w.sha256, w.size).read_bytes())  # type: ignore[union-attr]
    local = Wheel(**{**w.__dict__, "url": f"{base}/{w.filename}"})
    fresh = Cache(tmp_path / "c1")
    from lockbuild.fetch.download import client

    with client() as http:
        members = overlap.wheel_members(local, fresh, http)
    assert "six.py" in members and fresh.meta_get(overlap.META, w.sha256)["source"] == "wheel"
    assert fresh.get(w.sha256, w.size) is not None  # the download was verified and kept


def test_a_tampered_wheel_behind_a_no_range_server_is_refused(tmp_path: Path, lb_cache: Path,
                                                              no_range_server: tuple[str, Path]) -> None:
    w = _pypi_wheel(lb_cache)
    base, root = no_range_server
    data = bytearray(Cache(lb_cache).get(w.sha256, w.size).read_bytes())  # type: ignore[union-attr]
    data[100] ^= 1
    (root / w.filename).write_bytes(bytes(data))
    assert "sha256:" + hashlib.sha256(data).hexdigest() != w.sha256
    local = Wheel(**{**w.__dict__, "url": f"{base}/{w.filename}"})
    fresh = Cache(tmp_path / "c2")
    from lockbuild.fetch.download import client

    with client() as http, pytest.raises(IntegrityError):
        overlap.wheel_members(local, fresh, http)
    assert fresh.meta_get(overlap.META, w.sha256) is None


# -- the policy, on its own --------------------------------------------------------------------------
@pytest.mark.parametrize(("pair", "versions", "logged", "expect"), [
    (("tensorflow", "tensorflow-cpu"), {"tensorflow": "2.21.0", "tensorflow-cpu": "2.21.0"},
     {"tensorflow", "tensorflow-cpu"}, ("tensorflow", "tensorflow-cpu")),  # MLflow's default pin beside it
    (("tensorflow", "tensorflow-cpu"), {"tensorflow": "2.21.0", "tensorflow-cpu": "2.21.0"},
     {"tensorflow-cpu", "tf-keras"}, ("tensorflow", "tensorflow-cpu")),  # tensorflow only through tf-keras
    (("tensorflow", "tensorflow-cpu"), {"tensorflow": "2.21.0", "tensorflow-cpu": "2.21.0"},
     {"tensorflow"}, ("tensorflow-cpu", "tensorflow")),  # the model named only tensorflow
    (("tensorflow", "tensorflow-cpu"), {"tensorflow": "2.20.0", "tensorflow-cpu": "2.21.0"},
     {"tensorflow", "tensorflow-cpu"}, None),  # different versions: not variants of one build
    (("opencv-python-headless", "opencv-contrib-python"),
     {"opencv-python-headless": "4.10.0.84", "opencv-contrib-python": "4.10.0.84"},
     {"opencv-python-headless", "opencv-contrib-python"}, None),  # both logged, neither is the default name
    (("psycopg2", "psycopg2-binary"), {"psycopg2": "2.9.10", "psycopg2-binary": "2.9.10"}, set(), None),
    (("jwt", "pyjwt"), {"jwt": "1.3.1", "pyjwt": "2.9.0"}, {"jwt", "pyjwt"}, None),  # no family
])
def test_default_policy(pair: tuple[str, str], versions: dict[str, str], logged: set[str],
                        expect: tuple[str, str] | None) -> None:
    choice = overlap.decide(pair, ["site-packages/x/__init__.py"], versions, logged)
    assert (None if choice is None else (choice.dropped, choice.kept)) == expect


def test_full_mlflow_beside_skinny_names_the_serving_fix() -> None:
    e = overlap.unsettled_error(("mlflow", "mlflow-skinny"), ["site-packages/mlflow/__init__.py"],
                                {"mlflow": "3.17.2", "mlflow-skinny": "3.17.2"})
    assert e.exit_code == 19 and 'serving = "mlflow-skinny"' in (e.hint or "")


def test_a_member_escaping_the_install_root_is_refused_at_lock_time() -> None:
    w = Wheel(name="evil", version="1", filename="evil-1-py3-none-any.whl", url="", size=1, sha256="sha256:" + "0" * 64)
    with pytest.raises(Exception, match="outside the install root"):
        overlap.install_paths(w, ["evil/../../../etc/passwd"], "3.11")
    site = "usr/local/lib/python3.11/dist-packages"
    assert overlap.install_paths(w, ["evil-1.data/scripts/run", "evil-1.data/purelib/e.py", "e/__init__.py",
                                     "evil-1.data/data/bin/run"], "3.11") == [
        "usr/local/bin/run", f"{site}/e.py", f"{site}/e/__init__.py", "usr/local/bin/run"]  # the same path twice
