"""`lockbuild lock` and lockbuild.lock: schema-valid, byte-stable, `--check` names what went stale,
and a failed lock never leaves a half-written or changed file behind.

The `network` tests resolve for real (Debian's archive, PyPI through uv) into one shared
LOCKBUILD_CACHE, so only the first lock of a session pays for indexes and metadata.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from lockbuild.errors import LockFileError
from lockbuild.fsutil import sha256_file
from lockbuild.lockfile.io import dumps, loads, read_lock
from tests.lockbuild_testing import (
    EXAMPLES,
    KERAS3_MODEL,
    LOCK_SCHEMA,
    make_project,
    run_cli,
    set_model_python,
    shared_cache,
)
from tests.mlflow_server import register_model_dir

SPEC = '[model]\nuri = "model"\n'
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture()
def lb_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = shared_cache(tmp_path_factory)
    monkeypatch.setenv("LOCKBUILD_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the Keras 3 example, locked once for the module (never modified: copy it)."""
    cache = shared_cache(tmp_path_factory)
    project = make_project(tmp_path_factory.mktemp("locked") / "keras3", SPEC)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCKBUILD_CACHE", str(cache))
        r = run_cli("lock", "--spec", str(project), "--json")
    assert r.code == 0, r.stderr
    assert r.json["reused"] is False and r.json["changed"] is True
    yield project


@pytest.fixture()
def project(locked: Path, tmp_path: Path, lb_cache: Path) -> Path:
    """A private copy of the locked project (spec, model, lock) for a test to change."""
    return Path(shutil.copytree(locked, tmp_path / "keras3"))


def lock_check(project: Path) -> tuple[int, str, dict]:
    r = run_cli("lock", "--check", "--spec", str(project), "--json")
    return r.code, r.text, r.json


def leftovers(directory: Path) -> list[str]:
    """Temp files an interrupted atomic write would leave (.lockbuild.lock.*.tmp)."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- the lock file --------------------------------------------------------------------------------
@pytest.mark.network
def test_lock_validates_against_the_published_schema_and_pins_the_target(locked: Path) -> None:
    text = (locked / "lockbuild.lock").read_text()
    data = tomllib.loads(text)
    jsonschema.Draft202012Validator(json.loads(LOCK_SCHEMA.read_text())).validate(data)
    t = data["target"]
    assert (t["platform"], t["base"], t["python-abi"], t["wheel-platform"]) == (
        "linux/amd64", "debian:bookworm", "cp311", "x86_64-manylinux_2_36")
    assert t["python"].startswith("3.11.") and t["interpreter-package"] == "python3.11"
    assert data["runtime"]["serving"] == "mlflow-skinny" and data["runtime"]["server"] == "uvicorn"
    wheels = {w["name"]: w for w in data["python"]["packages"]}
    assert len(wheels) == len(data["python"]["packages"])
    assert wheels["tensorflow-cpu"]["version"] == "2.21.0" and wheels["keras"]["version"] == "3.15.1"
    assert wheels["mlflow-skinny"]["version"] == "3.17.2" and "mlflow" not in wheels
    assert all(HEX64.fullmatch(w["sha256"]) for w in wheels.values())
    debs = {d["name"]: d for d in data["debian"]["packages"]}
    assert "python3.11" in debs and "libc6" in debs and all(HEX64.fullmatch(d["sha256"]) for d in debs.values())
    model = data["model"]
    assert (model["uri"], model["resolved-uri"], model["saved-format"]) == ("model", "model", "keras")
    for f in model["files"]:  # every model file pinned by the hash of its bytes
        assert sha256_file(locked / "model" / f["path"]) == ("sha256:" + f["sha256"], f["size"])
    assert sorted(data["inputs"]) == ["model", "spec", "tool"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["python"]["exclude-newer"])
    assert dumps(loads(text)) == text  # the lock renders back to its own bytes


@pytest.mark.network
def test_relock_with_unchanged_inputs_is_byte_identical_and_reused(project: Path) -> None:
    lock = project / "lockbuild.lock"
    before, mtime = lock.read_bytes(), lock.stat().st_mtime_ns
    r = run_cli("lock", "--spec", str(project), "--json")
    assert r.code == 0, r.stderr
    assert r.json["reused"] is True and r.json["changed"] is False
    assert lock.read_bytes() == before and lock.stat().st_mtime_ns == mtime
    assert run_cli("lock", "--spec", str(project)).code == 0 and lock.read_bytes() == before


@pytest.mark.network
def test_relock_after_a_spec_edit_keeps_the_debian_pins_and_the_cutoff(project: Path) -> None:
    before = read_lock(project / "lockbuild.lock")
    (project / "lockbuild.toml").write_text(SPEC + "[image]\nport = 9090\n")
    r = run_cli("lock", "--spec", str(project), "--json")
    assert r.code == 0, r.stderr
    assert r.json["reused"] is False and r.json["changed"] is True
    after = read_lock(project / "lockbuild.lock")
    assert after.runtime.port == 9090 and after.inputs_digest != before.inputs_digest
    assert after.debian == before.debian  # without --upgrade the Debian side stays as locked
    assert after.python.exclude_newer == before.python.exclude_newer
    assert after.python.packages == before.python.packages


# -- lock --check ---------------------------------------------------------------------------------
@pytest.mark.network
def test_check_passes_on_a_fresh_lock(project: Path) -> None:
    code, text, report = lock_check(project)
    assert code == 0, text
    assert report["fresh"] is True and report["reasons"] == []
    r = run_cli("lock", "--check", "--spec", str(project))
    assert r.code == 0 and "fresh" in r.text


@pytest.mark.network
def test_check_names_the_model_file_that_changed(project: Path) -> None:
    lock_bytes = (project / "lockbuild.lock").read_bytes()
    model_file = project / "model" / "data" / "model.keras"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))
    code, text, report = lock_check(project)
    assert code == 1
    assert any(r.startswith("model file changed: data/model.keras") for r in report["reasons"]), report
    assert "model file changed: data/model.keras" in text and "stale" in text
    assert "hint: run `lockbuild lock`" in text
    assert (project / "lockbuild.lock").read_bytes() == lock_bytes  # --check never writes


@pytest.mark.network
def test_check_names_model_files_added_and_removed(project: Path) -> None:
    (project / "model" / "input_example.json").unlink()
    (project / "model" / "notes.txt").write_text("retrained\n")
    code, _, report = lock_check(project)
    assert code == 1
    assert "model file removed: input_example.json" in report["reasons"]
    assert "model file added: notes.txt" in report["reasons"]


@pytest.mark.network
def test_check_names_the_edited_spec(project: Path) -> None:
    (project / "lockbuild.toml").write_text(SPEC + "[image]\nworkers = 2\n")
    code, text, report = lock_check(project)
    assert code == 1
    assert report["reasons"] == ["spec edited: lockbuild.toml differs from the one the lock was made from"]
    assert "spec edited: lockbuild.toml" in text


@pytest.mark.network
def test_comment_only_spec_edit_keeps_the_lock_fresh(project: Path) -> None:
    (project / "lockbuild.toml").write_text("# reviewed 2026-11-25\n" + SPEC.replace('"model"', '"model"  # here'))
    assert lock_check(project)[0] == 0


@pytest.mark.network
def test_check_reports_a_lock_edited_by_hand(project: Path) -> None:
    lock = project / "lockbuild.lock"
    text = lock.read_text()
    lock.write_text(text.replace("[target]\n", "# pinned by hand\n[target]\n", 1))
    code, out, report = lock_check(project)
    assert code == 1
    assert report["reasons"] == ["lockbuild.lock was edited by hand (it does not render back to the same bytes)"]
    assert "edited by hand" in out


@pytest.mark.network
def test_check_rejects_a_lock_whose_sha256_was_edited(project: Path) -> None:
    lock = project / "lockbuild.lock"
    text = lock.read_text()
    m = re.search(r'(?m)^sha256 = "([0-9a-f]{64})"$', text)  # the first wheel's hash
    assert m is not None
    lock.write_text(text[: m.start(1)] + "x" + text[m.start(1) + 1:])
    r = run_cli("lock", "--check", "--spec", str(project))
    assert r.code == 8, r.stderr
    assert "lock does not match its schema at python.packages.0.sha256" in r.text
    assert "edited by hand" in r.text and "Traceback" not in r.stderr


@pytest.mark.network
def test_check_notices_a_wheel_hash_edited_to_another_valid_hash(project: Path) -> None:
    lock = project / "lockbuild.lock"
    text = lock.read_text()
    m = re.search(r'(?m)^sha256 = "([0-9a-f]{64})"$', text)
    assert m is not None
    flipped = "0" if text[m.start(1)] != "0" else "1"
    lock.write_text(text[: m.start(1)] + flipped + text[m.start(1) + 1:])
    assert lock_check(project)[0] != 0


@pytest.mark.network
def test_check_says_the_model_moved_when_the_alias_points_at_a_new_version(
        mlflow_server: str, tmp_path: Path, lb_cache: Path) -> None:
    v1 = register_model_dir(mlflow_server, KERAS3_MODEL, "lock-alias-moves")
    project = tmp_path / "registry"
    project.mkdir()
    (project / "lockbuild.toml").write_text(
        f'[model]\nuri = "models:/lock-alias-moves@champion"\ntracking-uri = "{mlflow_server}"\n')
    r = run_cli("lock", "--spec", str(project), "--json")
    assert r.code == 0, r.stderr
    lk = read_lock(project / "lockbuild.lock")
    assert (lk.model.uri, lk.model.resolved_uri) == ("models:/lock-alias-moves@champion", "models:/lock-alias-moves/1")
    assert (lk.model.name, lk.model.version, lk.model.run_id) == ("lock-alias-moves", "1", v1.run_id)
    assert lock_check(project)[0] == 0  # downloading the same version again gives the same tree

    v2 = register_model_dir(mlflow_server, KERAS3_MODEL, "lock-alias-moves")  # moves @champion to 2
    assert v2.version == "2"
    code, text, report = lock_check(project)
    assert code == 1
    assert ("model moved: models:/lock-alias-moves@champion now resolves to models:/lock-alias-moves/2 "
            "(the lock has models:/lock-alias-moves/1)") in report["reasons"]
    assert "model moved" in text

    r = run_cli("lock", "--spec", str(project), "--json")
    assert r.code == 0 and r.json["model"] == "models:/lock-alias-moves/2"
    assert lock_check(project)[0] == 0


def test_check_without_a_lock_says_to_lock_first(tmp_path: Path, lb_cache: Path) -> None:
    make_project(tmp_path, SPEC)
    r = run_cli("lock", "--check", "--spec", str(tmp_path))
    assert r.code == 8 and "no lock at" in r.text and "run `lockbuild lock` first" in r.text


# -- lock format errors (offline: the committed example lock is the specimen) ---------------------------
@pytest.fixture()
def example_lock(tmp_path: Path) -> Path:
    dest = tmp_path / "lockbuild.lock"
    shutil.copy(EXAMPLES / "keras3" / "lockbuild.lock", dest)
    return dest


def test_lock_format_version_2_is_refused_naming_both_versions(example_lock: Path) -> None:
    example_lock.write_text(example_lock.read_text().replace("\nversion = 1\n", "\nversion = 2\n", 1))
    with pytest.raises(LockFileError) as e:
        read_lock(example_lock)
    assert "lock format version 2 is not supported (this lockbuild reads version 1)" in e.value.message
    assert e.value.where == str(example_lock) and e.value.exit_code == 8
    r = run_cli("export", "pylock", "--lock", str(example_lock), "-o", str(example_lock.parent / "pylock.toml"))
    assert r.code == 8 and "version 2 is not supported" in r.text
    assert not (example_lock.parent / "pylock.toml").exists()


def test_malformed_lock_names_line_and_column(example_lock: Path) -> None:
    example_lock.write_text(example_lock.read_text().replace("[target]", "[target", 1))
    with pytest.raises(LockFileError) as e:
        read_lock(example_lock)
    assert e.value.message.startswith("malformed TOML") and re.search(r":\d+:\d+$", e.value.where or "")


def test_lock_missing_a_required_key_fails_its_schema(example_lock: Path) -> None:
    text = example_lock.read_text()
    example_lock.write_text(re.sub(r"(?m)^user = \d+\n", "", text, count=1))  # [runtime] user
    with pytest.raises(LockFileError) as e:
        read_lock(example_lock)
    assert "lock does not match its schema at runtime: 'user' is a required property" in e.value.message
    assert "edited by hand" in (e.value.hint or "")


# -- failures leave nothing behind ----------------------------------------------------------------
def test_spec_error_creates_no_lock(tmp_path: Path, lb_cache: Path) -> None:
    make_project(tmp_path, SPEC + "[image]\nprot = 1\n")
    r = run_cli("lock", "--spec", str(tmp_path))
    assert r.code == 3 and "unknown key 'prot' in [image]" in r.text
    assert not (tmp_path / "lockbuild.lock").exists() and leftovers(tmp_path) == []


@pytest.mark.network
def test_failed_resolution_leaves_the_previous_lock_unchanged(project: Path) -> None:
    lock = project / "lockbuild.lock"
    before = lock.read_bytes()
    (project / "lockbuild.toml").write_text(SPEC + '[python]\nrequirements = ["numpy==0.0.0.1"]\n')
    r = run_cli("lock", "--spec", str(project))
    assert r.code == 6, r.stderr
    assert "resolve: uv could not resolve" in r.text and "numpy==0.0.0.1" in r.text
    assert lock.read_bytes() == before and leftovers(project) == []


@pytest.mark.network
def test_python_312_model_gets_the_nearest_interpreter_that_resolves_unless_code_binds_it(
        tmp_path: Path, lb_cache: Path) -> None:
    """Debian ships no 3.12. The nearest are 3.13 and 3.11 (a tie: the newer first), but this model
    pins TensorFlow 2.16.2, which has no cp313 wheel: lock records 3.13's failure and chooses 3.11.
    With a by-value pickle in the model, the same resolution ends in a refusal whose fix names 3.11;
    following it works (tests/test_e2e_interpreters.py builds and serves such models)."""
    import cloudpickle

    make_project(tmp_path, SPEC, model=Path(__file__).parent / "data" / "models" / "keras3-macos" / "model")
    set_model_python(tmp_path / "model", "3.12.1")
    r = run_cli("lock", "--spec", str(tmp_path), "--json")
    assert r.code == 0, r.stderr
    choice = tomllib.loads((tmp_path / "lockbuild.lock").read_text())["target"]["python-choice"]
    assert (choice["requested"], choice["chosen"]) == ("3.12", "3.11")
    assert "(3.13 did not: see tried)" in choice["reason"]
    (tried,) = choice["tried"]
    assert tried.startswith("3.13 (trixie): ") and "cp313" in tried and "tensorflow-cpu" in tried
    assert r.json["python_choice"] == {**choice, "tried": [tried]}
    locked = (tmp_path / "lockbuild.lock").read_bytes()

    (tmp_path / "model" / "data" / "preprocess.cloudpickle").write_bytes(cloudpickle.dumps(lambda x: x * 2))
    r = run_cli("lock", "--spec", str(tmp_path))
    assert r.code == 7, r.stderr
    assert "python-version: the model was logged with Python 3.12.1, which Debian does not ship" in r.text
    assert "3.9 (bullseye), 3.11 (bookworm), 3.13 (trixie)" in r.text and "data/preprocess.cloudpickle" in r.text
    assert '[target] python = "3.11"' in r.text  # the way out: the nearest that resolves
    assert (tmp_path / "lockbuild.lock").read_bytes() == locked and leftovers(tmp_path) == []
    # following the fix: the spec's deliberate choice, noted and recorded
    (tmp_path / "lockbuild.toml").write_text(SPEC + '[target]\npython = "3.11"\n')
    r = run_cli("lock", "--spec", str(tmp_path), "--json")
    assert r.code == 0, r.stderr
    lock = tomllib.loads((tmp_path / "lockbuild.lock").read_text())
    assert lock["target"]["python-requested"] == "3.11" and "python-choice" not in lock["target"]
    assert [f["severity"] for f in r.json["doctor"] if f["rule"] == "python-minor"] == ["warning"]
