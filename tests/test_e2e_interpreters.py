"""Models trained and logged here the way users log them, on interpreters and platforms lockbuild
does not build on (issue 21): Python 3.10 and 3.12 (no Debian release ships them), Python 3.13
(trixie, glibc 2.41, which uv does not accept as a platform tag), and a Mac-style requirements
file (tensorflow-macos, tensorflow-metal). With NO spec edits (`lockbuild init` writes the spec),
`lock && image` must work, and `smoke` (which verifies the image against the lock first) must
serve the training-time predictions on the interpreter the lock records.

The models, their make script, training-venv freezes and predictions: tests/data/models/.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.test_e2e_tf import lockbuild

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.network]

MODELS = Path(__file__).resolve().parent / "data" / "models"

# kind -> (logged Python minor, image minor, Debian base, what lock must record)
CASES: dict[str, dict[str, Any]] = {
    "keras3-py310": {"logged": "3.10", "image": "3.11", "base": "debian:bookworm",
                     "choice": ("3.10", "3.11"), "tried": [], "rederive": True},
    "keras3-py312": {"logged": "3.12", "image": "3.13", "base": "debian:trixie",
                     "choice": ("3.12", "3.13"), "tried": []},
    "keras3-py313": {"logged": "3.13", "image": "3.13", "base": "debian:trixie", "choice": None,
                     "wheel_platform": "x86_64-manylinux_2_40", "glibc": "2.41"},
    "keras3-macos": {"logged": "3.11", "image": "3.11", "base": "debian:bookworm", "choice": None,
                     "mapped": [("tensorflow-macos==2.16.2", "tensorflow-cpu==2.16.2"),
                                ("tensorflow-metal==1.1.0", "")]},
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_model_from_another_interpreter_or_platform_locks_builds_and_serves(
        kind: str, tmp_path: Path, docker_engine: object) -> None:
    case = CASES[kind]
    work = tmp_path / kind
    shutil.copytree(MODELS / kind / "model", work / "model")
    shutil.copy(MODELS / kind / "predictions.json", work / "predictions.json")
    times: dict[str, float] = {}

    def step(name: str, *args: str) -> str:
        t = time.monotonic()
        r = lockbuild(*args, cwd=work)
        times[name] = round(time.monotonic() - t, 1)
        assert "Traceback" not in r.stdout + r.stderr
        return r.stdout

    init = json.loads(step("init", "init", "--model", "./model", "--json"))
    assert init["python"].startswith(case["logged"] + ".") and init["warnings"] == []
    spec = tomllib.loads((work / "lockbuild.toml").read_text())
    # init never writes a value lock refuses: the logged minor only when Debian ships it
    assert spec["target"].get("python") == (case["logged"] if case["choice"] is None else None)
    try:
        _lock_build_verify_smoke(kind, case, work, step)
    finally:  # smoke loads the image into the shared engine: remove what this test created
        for img in docker_engine.images.list(name=f"lockbuild/{kind}"):  # type: ignore[attr-defined]
            docker_engine.images.remove(img.id, force=True)  # type: ignore[attr-defined]
    print(f"{kind}: {times}")


def _lock_build_verify_smoke(kind: str, case: dict[str, Any], work: Path, step: Any) -> None:
    lock = json.loads(step("lock", "lock", "--json"))
    assert not [f for f in lock["doctor"] if f["severity"] == "error"], lock["doctor"]
    assert lock["python"].startswith(case["image"] + ".") and lock["base"] == case["base"]
    written = tomllib.loads((work / "lockbuild.lock").read_text())
    choice = written["target"].get("python-choice")
    if case["choice"] is None:
        assert choice is None and lock["python_choice"] is None
    else:
        assert (choice["requested"], choice["chosen"]) == case["choice"], choice
        assert [t.split(" ", 1)[0] for t in choice.get("tried", [])] == case["tried"], choice
        assert "no Python code bound" in choice["reason"] and lock["python_choice"]["chosen"] == case["image"]
        assert any(n.startswith("interpreter:") for n in lock["notes"])
        if case.get("rederive"):  # the audit re-derives the choice: same candidates, same order, same cutoff
            audit = json.loads(step("rederive", "lock", "--check", "--rederive", "--json"))
            assert audit["genuine"], audit["differences"][:5]
    if "wheel_platform" in case:
        assert written["target"]["wheel-platform"] == case["wheel_platform"]
        assert written["target"]["glibc"] == case["glibc"]
    mapped = [(m["logged"], m["locked"]) for m in written["python"].get("mapped", [])]
    assert mapped == case.get("mapped", []), mapped
    names = {p["name"] for p in written["python"]["packages"]}
    assert not {n for n in names if n.startswith("nvidia-") or n.startswith("tensorrt")}
    assert not names & {"tensorflow-macos", "tensorflow-metal"}
    step("image", "image", "--docker-archive", "out/image.tar", "--json")
    # smoke verifies the image against the lock first (`verify`), then serves it
    smoke = json.loads(step("smoke", "smoke", "out/image.tar", "--expected", "predictions.json", "--json"))
    assert smoke["ok"] and smoke["status"] == 200 and smoke["verified"], smoke
    # the serving process runs the interpreter the lock records (asked inside the running container)
    assert smoke["python"] == f"{written['target']['python']} /usr/bin/python{case['image']}", smoke["python"]
    expected = json.loads((work / "predictions.json").read_text())["predictions"]
    got = smoke["predictions"]
    got = got["predictions"] if isinstance(got, dict) else got
    flat = [x for row in got for x in (row if isinstance(row, list) else [row])]
    want = [x for row in expected for x in row]
    assert len(flat) == len(want) and all(abs(a - b) <= 1e-5 for a, b in zip(flat, want, strict=True)), (got, expected)
