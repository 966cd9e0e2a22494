"""uv's head start for `lock --upgrade` (resolve/headstart.py), through the real console script,
real uv and PyPI: a second run adopts the uv started before the CLI loaded and writes the same
pins; changed inputs discard it; a record edited in the cache never runs; nothing is left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.io import read_lock
from lockbuild.resolve import headstart
from tests.lockbuild_testing import finish, lockbuild_process


def _upgrade(work: Path, tmp: Path) -> dict:
    r = finish(lockbuild_process("lock", "--upgrade", "--json", cwd=work, env={"TMPDIR": str(tmp)}))
    assert r.code == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _pins(work: Path) -> dict[str, str]:
    return {p.name: p.version for p in read_lock(work / "lockbuild.lock").python.packages}


def test_lock_upgrade_adopts_the_recorded_uv_call_only_when_it_is_the_same(tiny_project: dict, tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    for name in ("model", "lockbuild.toml", "lockbuild.lock"):
        src = tiny_project["dir"] / name
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, work / name)
    tmp = tmp_path / "tmp"
    tmp.mkdir()

    first = _upgrade(work, tmp)
    assert first["uv_head_start"] == "not started"  # a new directory: nothing recorded for it yet
    pins = _pins(work)
    second = _upgrade(work, tmp)
    assert second["uv_head_start"] == "adopted", second
    assert _pins(work) == pins

    # the inputs changed: the started call is not the one the resolution needs
    spec = work / "lockbuild.toml"
    spec.write_text(spec.read_text() + '\n[python]\nrequirements = ["six"]\n')
    third = _upgrade(work, tmp)
    assert third["uv_head_start"] == "discarded", third
    assert "six" in _pins(work)

    # a record edited in the cache (its MAC no longer matches) is never started
    key = headstart.record_key(["lock", "--upgrade", "--json"], str(work))
    path = Cache()._meta_path(headstart.NAMESPACE, key)
    record = json.loads(path.read_text())
    assert record["call"]["requirements"][-1] == "six"
    record["call"]["requirements"].append("pyjokes")
    path.write_text(json.dumps(record))
    fourth = _upgrade(work, tmp)
    assert fourth["uv_head_start"] == "not started", fourth
    assert "pyjokes" not in _pins(work)
    assert not list(tmp.glob("lockbuild-uv-*")), "a head start's work directory was left behind"
