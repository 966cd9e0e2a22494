"""Issue 21, items 1-2 without a Docker engine: which interpreter a model gets when Debian does not
ship the minor it was logged with, what binds a model to its interpreter, the platform tag uv is
given for trixie's glibc, the one table that maps other platforms' training requirements onto the
target, and what the lock records of each decision. (End to end, with real models trained here:
tests/test_e2e_interpreters.py.)"""

from __future__ import annotations

import dataclasses
import pickle
import shutil
import tomllib
from pathlib import Path

import cloudpickle
import pytest

from lockbuild.errors import PythonVersionError, ResolveError
from lockbuild.lockfile.io import dumps, loads, read_lock
from lockbuild.lockfile.model import Mapped, PythonChoice, Wheel
from lockbuild.model.metadata import read_model
from lockbuild.resolve import overlap, platform_map, runtime
from lockbuild.resolve.interpreter import bound_artifacts
from lockbuild.resolve.uv import uv_platform
from lockbuild.verify.doctor import doctor
from tests.lockbuild_testing import (
    EXAMPLES,
    KERAS3_MODEL,
    make_project,
    run_cli,
    set_model_python,
    set_model_requirements,
    shared_cache,
)

MODELS = Path(__file__).resolve().parent / "data" / "models"


# -- which interpreter -----------------------------------------------------------------------------
@pytest.mark.parametrize(("logged", "order"), [
    ("3.10.13", ["3.11", "3.9", "3.13"]),  # a tie: the newer first
    ("3.12.1", ["3.13", "3.11", "3.9"]),
    ("3.8.18", ["3.9", "3.11", "3.13"]),
    ("3.14.0", ["3.13", "3.11", "3.9"]),
])
def test_candidates_are_debian_interpreters_nearest_first(logged: str, order: list[str]) -> None:
    choices = runtime.candidates(logged)
    assert [c.python_minor for c in choices] == order
    assert [c.codename for c in choices] == [runtime.SUITES[m] for m in order]


def test_python_2_has_no_candidate() -> None:
    with pytest.raises(PythonVersionError, match="Python 3"):
        runtime.candidates("2.7.18")


def test_unquoted_python_310_in_python_env_yaml_is_not_31(tmp_path: Path) -> None:
    model = shutil.copytree(KERAS3_MODEL, tmp_path / "model")
    env = model / "python_env.yaml"
    env.write_text(env.read_text().replace("python: 3.11.7", "python: 3.10"))
    assert read_model(model).python_version == "3.10"
    env.write_text(env.read_text().replace("python: 3.10", "python: '3.12'"))
    assert read_model(model).python_version == "3.12"


# -- what binds a model to its interpreter ------------------------------------------------------------
def _bound(model: Path) -> list[str]:
    return bound_artifacts(model, read_model(model).files)


def test_weights_and_library_pickles_are_not_bound(tmp_path: Path) -> None:
    assert _bound(KERAS3_MODEL) == []
    # the TF flavor's custom objects: keras classes pickled by reference
    assert _bound(MODELS / "savedmodel-tf215" / "model") == []
    model = shutil.copytree(KERAS3_MODEL, tmp_path / "model")
    (model / "data" / "scaler.pkl").write_bytes(pickle.dumps({"mean": [1.0, 2.0], "cls": Path}))
    assert _bound(model) == []


def test_code_custom_pyfunc_and_pickled_functions_are_bound(tmp_path: Path) -> None:
    model = shutil.copytree(KERAS3_MODEL, tmp_path / "model")
    (model / "data" / "fn.cloudpickle").write_bytes(cloudpickle.dumps(lambda x: x + 1))
    (one,) = _bound(model)
    assert "data/fn.cloudpickle" in one and "by value" in one
    mlmodel = model / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("    loader_module: mlflow.tensorflow\n",
                                                   "    loader_module: mlflow.pyfunc.model\n"
                                                   "    python_model: python_model.pkl\n    code: code\n"))
    (model / "code").mkdir()
    (model / "code" / "helpers.py").write_text("def f(): return 1\n")
    (model / "python_model.pkl").write_bytes(pickle.dumps({}))
    found = _bound(model)
    assert any(f.startswith("code_paths: Python source in code/ (1 .py file(s))") for f in found), found
    assert any("custom pyfunc: python_model.pkl" in f for f in found), found


def test_init_writes_no_python_lock_refuses(tmp_path: Path) -> None:
    project = make_project(tmp_path, "")
    (project / "lockbuild.toml").unlink()
    set_model_python(project / "model", "3.12.1")
    r = run_cli("init", "--model", "model", "--spec", str(project / "lockbuild.toml"), "--json")
    assert r.code == 0, r.stderr
    text = (project / "lockbuild.toml").read_text()
    assert "python" not in tomllib.loads(text)["target"]
    assert "the model logged 3.12.1; Debian ships 3.9, 3.11, 3.13" in text and "(3.13 or 3.11)" in text
    assert r.json["warnings"] == []
    # a model whose Python code is bound to 3.12: init says lock will refuse, and how to proceed
    (project / "model" / "data" / "fn.cloudpickle").write_bytes(cloudpickle.dumps(lambda x: x))
    r = run_cli("init", "--model", "model", "--spec", str(project / "lockbuild.toml"), "--force", "--json")
    assert r.code == 0 and "python" not in tomllib.loads((project / "lockbuild.toml").read_text())["target"]
    (warning,) = r.json["warnings"]
    assert "data/fn.cloudpickle" in warning and 'set [target] python = "3.13"' in warning
    r = run_cli("init", "--model", "model", "--spec", str(project / "lockbuild.toml"), "--force")
    assert "Traceback" not in r.text


def test_spec_python_not_shipped_by_debian_names_a_followable_fix(tmp_path: Path) -> None:
    project = make_project(tmp_path, '[model]\nuri = "model"\n[target]\npython = "3.12"\n')
    set_model_python(project / "model", "3.12.1")
    r = run_cli("lock", "--spec", str(project))
    assert r.code == 7 and "Traceback" not in r.text
    assert "set [target] python to one of 3.9, 3.11, 3.13, or remove the line" in r.text
    assert not (project / "lockbuild.lock").exists()


# -- the platform tag uv is given ---------------------------------------------------------------------
def test_trixie_glibc_241_resolves_for_the_highest_manylinux_uv_accepts() -> None:
    assert runtime.wheel_platform("2.41", "amd64") == "x86_64-manylinux_2_41"
    capped = uv_platform("x86_64-manylinux_2_41")
    level = int(capped.rsplit("_", 1)[1])
    assert capped.startswith("x86_64-manylinux_2_") and 36 <= level <= 41
    assert uv_platform("x86_64-manylinux_2_36") == "x86_64-manylinux_2_36"  # bookworm: unchanged
    assert uv_platform("aarch64-manylinux_2_31") == "aarch64-manylinux_2_31"  # bullseye
    with pytest.raises(ResolveError, match="no manylinux platform"):
        uv_platform("x86_64-manylinux_2_3")


# -- the platform table ----------------------------------------------------------------------------
MAC = ["tensorflow-macos==2.16.2", "tensorflow-metal==1.1.0", "numpy==1.26.4", "pyobjc-core==10.3"]
WINDOWS = ["tensorflow-intel==2.15.0", "pywin32==306; sys_platform == 'win32'", "pywin32==306"]
CUDA = ["tensorflow[and-cuda]==2.21.0", "nvidia-cudnn-cu12==9.3.0.75", "tensorrt==10.0.1"]


def _mapped(lines: list[str], platform: str = "linux/amd64", cuda: bool = False) -> tuple[list[str], list[tuple]]:
    out, records = platform_map.map_requirements(lines, platform=platform, python="3.11.2", cuda=cuda)
    return out, [(m.logged, m.locked) for m in records]


def test_mac_windows_and_cuda_lines_map_to_linux_cpu_before_resolution() -> None:
    out, rec = _mapped(MAC)
    assert out == ["tensorflow-cpu==2.16.2", "numpy==1.26.4"]
    assert rec == [("tensorflow-macos==2.16.2", "tensorflow-cpu==2.16.2"), ("tensorflow-metal==1.1.0", ""),
                   ("pyobjc-core==10.3", "")]
    out, rec = _mapped(WINDOWS)
    # a line whose marker is false on the target is left to uv (which skips it): not "mapped"
    assert out == ["tensorflow-cpu==2.15.0", "pywin32==306; sys_platform == 'win32'"]
    assert rec == [("tensorflow-intel==2.15.0", "tensorflow-cpu==2.15.0"), ("pywin32==306", "")]
    out, rec = _mapped(CUDA)
    assert out == ["tensorflow==2.21.0"]
    assert [r[1] for r in rec] == ["tensorflow==2.21.0", "", ""]
    _, records = platform_map.map_requirements(CUDA, platform="linux/amd64", python="3.11.2")
    assert "NVIDIA CUDA libraries" in records[0].reason and "NVIDIA CUDA libraries" in records[1].reason


def test_arm64_gets_tensorflow_for_tensorflow_cpu() -> None:
    out, rec = _mapped(["tensorflow-cpu==2.21.0", "tensorflow-macos==2.16.2"], platform="linux/arm64")
    assert out == ["tensorflow==2.21.0", "tensorflow==2.16.2"]
    assert _mapped(["tensorflow-cpu==2.21.0"])[1] == []  # amd64: unchanged, nothing recorded


def test_cuda_only_when_the_spec_asks() -> None:
    assert not platform_map.spec_asks_for_cuda(["pillow==11.0.0"])
    assert platform_map.spec_asks_for_cuda(["tensorflow[and-cuda]==2.21.0"])
    assert platform_map.spec_asks_for_cuda(["nvidia-cudnn-cu12==9.3.0.75"])
    out, rec = _mapped(CUDA, cuda=True)
    assert out == CUDA and rec == []
    w = Wheel(name="nvidia-cublas-cu12", version="12.5.3.2", filename="x.whl", url="", size=1,
              sha256="sha256:" + "0" * 64)
    with pytest.raises(ResolveError, match="CUDA wheels the spec did not ask for: nvidia-cublas-cu12==12.5.3.2"):
        platform_map.cuda_guard([w], cuda=False, platform="linux/amd64")
    platform_map.cuda_guard([w], cuda=True, platform="linux/amd64")


def test_variant_reasons_name_who_asked_for_each_distribution() -> None:
    v = {"tensorflow": "2.16.2", "tensorflow-cpu": "2.16.2"}
    shared = ["site-packages/tensorflow/__init__.py"]
    mapped = (Mapped("tensorflow-macos==2.16.2", "tensorflow-cpu==2.16.2", "macOS"),)
    # a Mac requirements file plus MLflow's tensorflow pin: not "the model logged both"
    c = overlap.decide(("tensorflow", "tensorflow-cpu"), shared, v,
                       overlap.origins(["tensorflow-cpu==2.16.2", "tensorflow==2.16.2"], [], mapped))
    assert c is not None and (c.dropped, c.kept) == ("tensorflow", "tensorflow-cpu")
    assert "logged both" not in c.reason and "tensorflow-macos==2.16.2, mapped for the target to" in c.reason
    # the exclude + requirements workaround: the spec named tensorflow-cpu, not the model
    c = overlap.decide(("tensorflow", "tensorflow-cpu"), shared, v,
                       overlap.origins(["tensorflow==2.16.2"], ["tensorflow-cpu==2.16.2"]))
    assert c is not None and c.reason.startswith("lockbuild.toml's [python] requirements name tensorflow-cpu")
    assert "logged both" not in c.reason
    # what MLflow's default inference logs: unchanged wording (the committed example locks)
    c = overlap.decide(("tensorflow", "tensorflow-cpu"), shared, v,
                       overlap.origins(["tensorflow-cpu==2.16.2", "tensorflow==2.16.2"], []))
    assert c is not None and c.reason.startswith("the model logged both")


# -- what the lock records -------------------------------------------------------------------------
def test_lock_records_the_choice_and_the_mapping_and_old_locks_render_unchanged() -> None:
    path = EXAMPLES / "keras3" / "lockbuild.lock"
    lock = read_lock(path)
    assert dumps(lock) == path.read_text()  # no new field rendered for a lock without choices
    choice = PythonChoice(requested="3.12", chosen="3.11", reason="nearest", tried=("3.9 (bullseye): no cp39",))
    mapped = (Mapped("tensorflow-metal==1.1.0", "", "Apple GPU plugin"),)
    bent = dataclasses.replace(lock, target=dataclasses.replace(lock.target, python_choice=choice),
                               python=dataclasses.replace(lock.python, mapped=mapped))
    text = dumps(bent)
    assert loads(text) == bent
    data = tomllib.loads(text)
    assert data["target"]["python-choice"] == {"requested": "3.12", "chosen": "3.11", "reason": "nearest",
                                               "tried": ["3.9 (bullseye): no cp39"]}
    assert data["python"]["mapped"] == [{"logged": "tensorflow-metal==1.1.0", "locked": "",
                                         "reason": "Apple GPU plugin"}]


def test_doctor_python_minor_chosen_by_lock_is_a_warning_with_a_followable_fix() -> None:
    lock = read_lock(EXAMPLES / "keras3" / "lockbuild.lock")
    model = dataclasses.replace(lock.model, python_version="3.12.1")
    choice = PythonChoice(requested="3.12", chosen="3.11", reason="nearest")
    chosen = dataclasses.replace(lock, model=model, target=dataclasses.replace(lock.target, python_choice=choice))
    (f,) = doctor(chosen)
    assert f.severity == "warning" and "chosen by lock" in f.message
    assert "re-log the model under Python 3.11" in f.fix and "remove [target] python" not in f.fix
    (f,) = doctor(dataclasses.replace(lock, model=model))  # no recorded choice: a silent mismatch
    assert f.severity == "error" and "re-lock with `lockbuild lock`" in f.fix


# -- real locks (uv, PyPI, Debian's archive; no engine) ---------------------------------------------
WINDOWS_GPU = ["mlflow==3.17.2", "cloudpickle==3.1.3", "tensorflow-intel==2.21.0", "tensorflow[and-cuda]==2.21.0",
               "nvidia-cudnn-cu12==9.3.0.75", "pywin32==308"]


@pytest.mark.network
@pytest.mark.parametrize(("platform", "logged", "mapped", "variant"), [
    # a Windows GPU workstation's requirements on the default target: CPU TensorFlow, no CUDA, no pywin32
    ("linux/amd64", WINDOWS_GPU,
     [("tensorflow-intel==2.21.0", "tensorflow-cpu==2.21.0"), ("tensorflow[and-cuda]==2.21.0", "tensorflow==2.21.0"),
      ("nvidia-cudnn-cu12==9.3.0.75", ""), ("pywin32==308", "")], ("tensorflow", "tensorflow-cpu")),
    # what MLflow logs from an x86-64 CPU env (tensorflow-cpu has no arm64 wheels) on linux/arm64
    ("linux/arm64", None, [("tensorflow-cpu==2.21.0", "tensorflow==2.21.0")], None),
])
def test_other_platforms_requirements_lock_for_the_target(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, platform: str,
        logged: list[str] | None, mapped: list[tuple[str, str]], variant: tuple[str, str] | None) -> None:
    monkeypatch.setenv("LOCKBUILD_CACHE", str(shared_cache(tmp_path_factory)))
    project = make_project(tmp_path, f'[model]\nuri = "model"\n[target]\nplatform = "{platform}"\n')
    if logged:
        set_model_requirements(project / "model", logged)
    r = run_cli("lock", "--spec", str(project), "--json")
    assert r.code == 0, r.stderr
    assert [(m["logged"], m["locked"]) for m in r.json["mapped"]] == mapped
    lock = tomllib.loads((project / "lockbuild.lock").read_text())
    assert [(m["logged"], m["locked"]) for m in lock["python"]["mapped"]] == mapped
    names = {p["name"] for p in lock["python"]["packages"]}
    assert not [n for n in names if platform_map.is_cuda(n)] and "pywin32" not in names
    tf = "tensorflow-cpu" if platform == "linux/amd64" else "tensorflow"
    assert tf in names and not names & {"tensorflow-intel", "tensorflow-cpu", "tensorflow"} - {tf}
    variants = [(v["dropped"], v["kept"], v["reason"]) for v in lock["python"].get("variants", [])]
    if variant is None:
        assert variants == []
    else:
        ((dropped, kept, reason),) = variants
        assert (dropped, kept) == variant and "logged both" not in reason and "mapped for the target" in reason
