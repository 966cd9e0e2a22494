"""`lockbuild diff`: classification of changes, the three renderings, and exit codes like diff(1)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lockbuild.audit import diff
from lockbuild.errors import LockFileError
from lockbuild.lockfile.io import dumps, read_lock
from lockbuild.lockfile.model import Deb, Lock, ModelFile

DATA = Path(__file__).parent / "data"
LOCK = DATA / "keras3.lock"


@pytest.fixture(scope="module")
def base() -> Lock:
    return read_lock(LOCK)


def fake(c: str) -> str:
    return "sha256:" + c * 64


def wheel_version(lock: Lock, name: str, version: str, sha: str | None = None) -> Lock:
    pkgs = tuple(replace(w, version=version, sha256=sha or w.sha256) if w.name == name else w
                 for w in lock.python.packages)
    return replace(lock, python=replace(lock.python, packages=pkgs))


def changed(lock: Lock) -> Lock:
    """A realistic upgrade: numpy major, keras patch, a downgrade, a deb removed and one added, model retrained."""
    new = wheel_version(lock, "numpy", "3.0.0", fake("1"))
    new = wheel_version(new, "keras", "3.15.2", fake("2"))
    new = wheel_version(new, "absl-py", "2.4.0", fake("3"))
    new = wheel_version(new, "anyio", next(w.version for w in lock.python.packages if w.name == "anyio"), fake("4"))
    debs = [d for d in new.debian.packages if d.name != "libffi8"]
    debs.append(Deb(name="libgl1", version="1.6.0-1", architecture="amd64", suite="bookworm",
                    filename="pool/main/libg/libglvnd/libgl1_1.6.0-1_amd64.deb", size=1, sha256=fake("5")))
    debs = [replace(d, version="3.11.2-6+deb12u10", sha256=fake("6")) if d.name == "python3.11" else d for d in debs]
    files = [*[f for f in new.model.files if f.path != "input_example.json"], ModelFile("data/extra.bin", 1, fake("7"))]
    files = [replace(f, sha256=fake("8")) if f.path == "data/model.keras" else f for f in files]
    target = replace(new.target, interpreter_deb_version="3.11.2-6+deb12u10")
    runtime = replace(new.runtime, mlflow_version="3.18.0", env=(*new.runtime.env, ("TF_NUM_THREADS", "2")))
    return replace(new, target=target, runtime=runtime,
                   debian=replace(new.debian, packages=tuple(debs)),
                   model=replace(new.model, files=tuple(files), version="4", tree_digest="sha256:" + "9" * 64))


def find(d: diff.LockDiff, section: str, name: str) -> diff.Change:
    return next(c for c in d.changes if c.section == section and c.name == name)


def test_identical_locks_have_no_changes(base: Lock) -> None:
    d = diff.diff_locks(base, base)
    assert not d.changed and d.changes == [] and diff.summary_line(d) == "no changes"


def test_changes_are_classified(base: Lock) -> None:
    d = diff.diff_locks(base, changed(base))
    numpy = find(d, "python", "numpy")
    assert (numpy.kind, numpy.major, numpy.new) == ("upgraded", True, "3.0.0")
    keras = find(d, "python", "keras")
    assert (keras.kind, keras.major) == ("upgraded", False)
    assert find(d, "python", "absl-py").kind == "downgraded"
    rebuilt = find(d, "python", "anyio")
    assert rebuilt.kind == "changed" and "different sha256" in rebuilt.detail
    assert find(d, "debian", "libffi8").kind == "removed"
    assert (find(d, "debian", "libgl1").kind, find(d, "debian", "libgl1").new) == ("added", "1.6.0-1")
    assert find(d, "debian", "python3.11").kind == "upgraded"  # deb12u9 -> deb12u10 (Debian ordering)
    assert find(d, "interpreter", "interpreter-deb-version").kind == "upgraded"
    assert find(d, "model", "file data/model.keras").kind == "changed"
    assert find(d, "model", "file data/extra.bin").kind == "added"
    assert find(d, "model", "file input_example.json").kind == "removed"
    assert find(d, "runtime", "mlflow-version").kind == "upgraded"
    assert find(d, "runtime", "env TF_NUM_THREADS").new == "2"
    assert d.summary()["python"] == {"changed": 1, "downgraded": 1, "upgraded": 2}


@pytest.mark.parametrize(("old", "new", "kind", "major"), [
    ("3.11.2", "3.12.1", "upgraded", True),
    ("3.11.2", "3.11.9", "upgraded", False),
    ("3.12.1", "3.11.2", "downgraded", True),
])
def test_interpreter_minor_is_a_major_change(base: Lock, old: str, new: str, kind: str, major: bool) -> None:
    a = replace(base, target=replace(base.target, python=old))
    b = replace(base, target=replace(base.target, python=new))
    c = find(diff.diff_locks(a, b), "interpreter", "python")
    assert (c.kind, c.major) == (kind, major)


@pytest.mark.parametrize(("old", "new", "major"), [
    ("0.4.1", "0.5.0", True), ("1.2.0", "1.3.0", False), ("1.9", "2.0", True)])
def test_python_major(old: str, new: str, major: bool) -> None:
    assert diff.py_major(old, new) is major


@pytest.mark.parametrize(("old", "new", "major"), [
    ("2.36-9+deb12u13", "2.36-9+deb12u14", False), ("1:4.4.33-2", "2:4.4.33-2", True),
    ("20230311", "20250419~deb12u2", False), ("12.2.0-14", "13.1.0-1", True)])
def test_debian_major(old: str, new: str, major: bool) -> None:
    assert diff.deb_major(old, new) is major


def test_markdown_and_json_renderings(base: Lock) -> None:
    d = diff.diff_locks(base, changed(base), "main", "branch")
    md = diff.markdown(d)
    assert md.startswith("### lockbuild.lock changes")
    assert "| numpy | `2.4.6` | `3.0.0` | **upgraded (major)** |" in md
    assert "#### debian" in md and "#### model" in md
    data = json.loads(json.dumps(d.to_dict()))
    assert data["changed"] is True and data["old"] == "main" and data["major"] >= 1
    assert {"section", "name", "kind", "old", "new", "major", "detail"} <= set(data["changes"][0])
    assert "No changes." in diff.markdown(diff.diff_locks(base, base))


# -- the command: exit codes and errors ---------------------------------------------------------------


def lockbuild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lockbuild", *args], capture_output=True, text=True, timeout=120)


def test_command_exit_codes_like_diff(tmp_path: Path, base: Lock) -> None:
    new = tmp_path / "new.lock"
    new.write_text(dumps(changed(base)))
    same = lockbuild("diff", str(LOCK), str(LOCK))
    assert same.returncode == 0, same.stderr
    differs = lockbuild("diff", str(LOCK), str(new), "--json")
    assert differs.returncode == 1, differs.stderr
    assert json.loads(differs.stdout)["changed"] is True
    md = lockbuild("diff", str(LOCK), str(new), "--markdown")
    assert md.returncode == 1 and md.stdout.startswith("### lockbuild.lock changes")
    table = lockbuild("diff", str(LOCK), str(new))
    assert table.returncode == 1 and "numpy" in table.stdout


def test_different_lock_format_versions_are_refused_naming_both(tmp_path: Path) -> None:
    future = tmp_path / "future.lock"
    future.write_text(LOCK.read_text().replace("\nversion = 1\n", "\nversion = 2\n", 1))
    with pytest.raises(LockFileError) as e:
        diff.load_pair(LOCK, future)
    assert "version 1" in e.value.message and "version 2" in e.value.message
    run = lockbuild("diff", str(LOCK), str(future), "--json")
    assert run.returncode == LockFileError.exit_code
    assert json.loads(run.stdout)["error"] == "lock-file"


def test_a_lock_failing_its_schema_is_a_lock_file_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.lock"
    broken.write_text(LOCK.read_text().replace('platform = "linux/amd64"', "platform = 7", 1))
    with pytest.raises(LockFileError, match="schema"):
        diff.load_pair(LOCK, broken)
    with pytest.raises(LockFileError, match="no lock"):
        diff.load_pair(LOCK, tmp_path / "missing.lock")
