"""The command line of the front half: help with examples, `init`, `export pylock` (installable by
uv, hash-checked), and errors as a user sees them: one message, a hint, a distinct exit code and
never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main

from lockbuild.cli import app
from lockbuild.errors import LockFileError, ModelError, PythonVersionError, SpecError, TrackingServerError
from lockbuild.lockfile.io import read_lock
from lockbuild.spec import load_spec
from tests.lockbuild_testing import (
    KERAS3_MODEL,
    CliResult,
    finish,
    lockbuild_process,
    make_project,
    run_cli,
    set_model_python,
    set_model_requirements,
    shared_cache,
)
from tests.mlflow_server import closed_port, register_model_dir

SPEC = '[model]\nuri = "model"\n'


def _commands(group: object, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in sorted(group.commands.items()):  # type: ignore[attr-defined]
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name)


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.fixture()
def lb_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = shared_cache(tmp_path_factory)
    monkeypatch.setenv("LOCKBUILD_CACHE", str(cache))
    return cache


def no_traceback(r: CliResult) -> CliResult:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    return r


# -- help ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    c for c in COMMANDS
], ids=" ".join)
def test_every_command_help_exits_0_and_shows_an_example(command: tuple[str, ...]) -> None:
    r = run_cli(*command, "--help")
    assert r.code == 0, r.stderr
    assert "Example" in r.stdout, r.stdout


def test_front_half_commands_are_all_there() -> None:
    assert {("init",), ("lock",), ("export", "pylock")} <= set(COMMANDS)
    for group in ([], ["export"]):
        assert run_cli(*group, "--help").code == 0


# -- errors as a user sees them: separate processes ----------------------------------------------------
def _error_cases(root: Path) -> dict[str, tuple[list[str], Path, type]]:
    """name -> (argv, cwd, the error class whose exit code and kind it must report)."""
    cases: dict[str, tuple[list[str], Path, type]] = {}

    d = root / "malformed-spec"
    d.mkdir()
    (d / "lockbuild.toml").write_text('[model]\nuri = "model\n')
    cases["malformed-spec"] = (["lock"], d, SpecError)

    d = root / "no-mlmodel"
    (d / "model").mkdir(parents=True)
    (d / "lockbuild.toml").write_text(SPEC)
    cases["no-mlmodel"] = (["lock"], d, ModelError)

    d = root / "server-down"
    d.mkdir()
    (d / "lockbuild.toml").write_text(f'[model]\nuri = "models:/churn@champion"\n'
                                      f'tracking-uri = "http://127.0.0.1:{closed_port()}"\n')
    cases["server-down"] = (["lock"], d, TrackingServerError)

    # the spec asks for an interpreter Debian does not ship (a 3.10 model alone locks on the nearest one)
    d = make_project(root / "python-310", SPEC + '[target]\npython = "3.10"\n')
    set_model_python(d / "model", "3.10.12")
    cases["python-310"] = (["lock"], d, PythonVersionError)

    d = root / "no-lock"
    d.mkdir()
    cases["no-lock"] = (["export", "pylock", "-o", "pylock.toml"], d, LockFileError)
    cases["no-lock-json"] = (["lock", "--check", "--json", "--spec", str(make_project(root / "json", SPEC))],
                             root, LockFileError)
    return cases


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[CliResult, type, float]]:
    """Every error case as a real `lockbuild` process, started together (each pays its own imports)."""
    root = tmp_path_factory.mktemp("cli-errors")
    env: dict[str, str | None] = {"LOCKBUILD_CACHE": str(shared_cache(tmp_path_factory))}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env[var] = None  # lockbuild's own fail-fast defaults
    cases = _error_cases(root)
    start = time.monotonic()
    procs = {name: lockbuild_process(*argv, cwd=cwd, env=env) for name, (argv, cwd, _) in cases.items()}
    results = {}
    for name, proc in procs.items():
        r = finish(proc, timeout=300)
        results[name] = (r, cases[name][2], time.monotonic() - start)
    return results


@pytest.mark.parametrize("case", ["malformed-spec", "no-mlmodel", "server-down", "python-310", "no-lock"])
def test_errors_exit_with_their_own_code_a_message_and_a_hint_but_no_traceback(
        error_runs: dict[str, tuple[CliResult, type, float]], case: str) -> None:
    r, error, _ = error_runs[case]
    assert r.code == error.exit_code, r.stderr
    no_traceback(r)
    lines = r.stderr.strip().splitlines()
    assert any(line.startswith(f"{error.kind}: ") for line in lines), r.stderr
    assert any(line.startswith("hint: ") for line in lines), r.stderr


def test_exit_codes_tell_the_error_kinds_apart() -> None:
    kinds = [SpecError, ModelError, TrackingServerError, PythonVersionError, LockFileError]
    assert len({k.exit_code for k in kinds}) == len(kinds)
    assert 0 not in {k.exit_code for k in kinds} and 1 not in {k.exit_code for k in kinds}  # 1 is a stale lock


def test_unreachable_tracking_server_fails_the_lock_quickly(
        error_runs: dict[str, tuple[CliResult, type, float]]) -> None:
    r, _, elapsed = error_runs["server-down"]
    assert "cannot reach the MLflow tracking server http://127.0.0.1:" in r.stderr
    assert elapsed < 120  # process start and imports included; the request itself fails at once


def test_json_errors_are_one_document_on_stdout(error_runs: dict[str, tuple[CliResult, type, float]]) -> None:
    r, _, _ = error_runs["no-lock-json"]
    assert r.code == 8
    report = r.json
    assert report["error"] == "lock-file" and report["exit_code"] == 8 and "no lock at" in report["message"]
    assert report["hint"] == "run `lockbuild lock` first"


# -- init ----------------------------------------------------------------------------------------
def test_init_writes_a_spec_from_the_model_metadata(tmp_path: Path) -> None:
    shutil.copytree(KERAS3_MODEL, tmp_path / "model")
    r = no_traceback(run_cli("init", "--model", "model", "--spec", str(tmp_path), "--json"))
    assert r.code == 0, r.stderr
    assert r.json["python"] == "3.11.7" and r.json["mlflow_version"] == "3.17.2"
    s = load_spec(tmp_path / "lockbuild.toml")
    assert (s.model_uri, s.python, s.platform, s.serving) == ("model", "3.11", "linux/amd64", "mlflow-skinny")
    assert s.resolve_path(s.model_uri) == (tmp_path / "model").resolve()


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    shutil.copytree(KERAS3_MODEL, tmp_path / "model")
    spec = tmp_path / "lockbuild.toml"
    spec.write_text("# mine\n" + SPEC)
    r = no_traceback(run_cli("init", "--model", "model", "--spec", str(spec)))
    assert r.code == 3 and "already exists" in r.text and "--force" in r.text
    assert spec.read_text() == "# mine\n" + SPEC
    assert run_cli("init", "--model", "model", "--spec", str(spec), "--force").code == 0
    assert load_spec(spec).python == "3.11"


def test_init_with_a_directory_that_is_no_model_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    r = no_traceback(run_cli("init", "--model", "model", "--spec", str(tmp_path)))
    assert r.code == 4 and "no MLmodel file" in r.text
    assert not (tmp_path / "lockbuild.toml").exists()


def test_init_from_a_registry_alias_records_the_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    register_model_dir(mlflow_server, KERAS3_MODEL, "Cli_Init")
    r = no_traceback(run_cli("init", "--model", "models:/Cli_Init@champion", "--tracking-uri", mlflow_server,
                             "--spec", str(tmp_path)))
    assert r.code == 0, r.stderr
    s = load_spec(tmp_path)
    assert (s.model_uri, s.tracking_uri, s.python) == ("models:/Cli_Init@champion", mlflow_server, "3.11")
    assert s.image_name == "lockbuild/cli-init"


# -- export pylock -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A locked project whose model logged only `mlflow==3.17.2`: the runtime is then
    mlflow-skinny, pandas, numpy, uvicorn, fastapi and their dependencies (~60 MB of wheels)."""
    cache = shared_cache(tmp_path_factory)
    project = make_project(tmp_path_factory.mktemp("small") / "small", SPEC)
    set_model_requirements(project / "model", ["mlflow==3.17.2"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKBUILD_CACHE", str(cache))
        r = run_cli("lock", "--spec", str(project))
    assert r.code == 0, r.stderr
    return project


def uv_install(pylock: Path, target: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    uv = Path(sys.executable).parent / "uv"
    env = {**os.environ, "UV_CACHE_DIR": str(cache / "uv"), "UV_NO_CONFIG": "1"}
    return subprocess.run([str(uv), "pip", "install", "-r", str(pylock), "--target", str(target),
                           "--python-platform", "x86_64-manylinux_2_36", "--python-version", "3.11"],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.network
def test_exported_pylock_installs_with_uv_checking_every_hash(small_lock: Path, tmp_path: Path,
                                                              lb_cache: Path) -> None:
    out = tmp_path / "pylock.toml"
    r = no_traceback(run_cli("export", "pylock", "--spec", str(small_lock), "-o", str(out)))
    assert r.code == 0, r.stderr
    lock = read_lock(small_lock / "lockbuild.lock")
    pylock = tomllib.loads(out.read_text())
    assert pylock["lock-version"] == "1.0" and pylock["requires-python"] == "==3.11.*"
    exported = {p["name"]: (p["version"], p["wheels"][0]["hashes"]["sha256"]) for p in pylock["packages"]}
    assert exported == {w.name: (w.version, w.sha256.removeprefix("sha256:")) for w in lock.python.packages}
    assert {"mlflow-skinny", "pandas", "numpy", "uvicorn", "fastapi"} <= set(exported)

    site = tmp_path / "site"
    proc = uv_install(out, site, lb_cache)
    assert proc.returncode == 0, proc.stderr
    assert (site / "mlflow").is_dir() and (site / "mlflow_skinny-3.17.2.dist-info").is_dir()
    assert next(site.glob("numpy-*.dist-info")).name == f"numpy-{dict(exported)['numpy'][0]}.dist-info"

    text = out.read_text()  # the same lock with one hash changed must not install
    m = re.search(r'name = "numpy"\n.*?sha256 = "([0-9a-f])', text, re.S)
    assert m is not None
    bad = tmp_path / "pylock.tampered.toml"
    bad.write_text(text[: m.start(1)] + ("1" if m.group(1) == "0" else "0") + text[m.end(1):])
    proc = uv_install(bad, tmp_path / "site2", lb_cache)
    assert proc.returncode != 0 and "Hash mismatch" in proc.stderr, proc.stderr


@pytest.mark.network
def test_export_accepts_a_named_pylock(small_lock: Path, tmp_path: Path) -> None:
    out = tmp_path / "pylock.serving.toml"
    assert run_cli("export", "pylock", "--spec", str(small_lock), "-o", str(out)).code == 0
    assert tomllib.loads(out.read_text())["packages"]


@pytest.mark.parametrize("name", ["foo.toml", "pylock.a.b.toml", "pylock.txt", "requirements.txt"])
def test_export_refuses_a_file_name_pep751_does_not_allow(tmp_path: Path, name: str) -> None:
    make_project(tmp_path, SPEC)
    r = no_traceback(run_cli("export", "pylock", "--spec", str(tmp_path), "-o", str(tmp_path / name)))
    assert r.code == 3
    assert f"PEP 751 requires the file name pylock.toml or pylock.<name>.toml, not {name}" in r.text
    assert not (tmp_path / name).exists()
