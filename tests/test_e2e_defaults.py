"""Models as users really log them (issue 10): MLflow's DEFAULT requirement inference in a training
env with tensorflow-cpu, so requirements.txt names both tensorflow-cpu==X and tensorflow==X (and
tf-keras, which itself requires tensorflow). With NO spec edits (`lockbuild init` writes the spec),
`lock && image` must work, and `smoke` (which runs `verify` first) must serve the training-time predictions.

The models, their make script, training-venv freezes and predictions: tests/data/models/.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_e2e_tf import lockbuild

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.network]

MODELS = Path(__file__).resolve().parent / "data" / "models"


@pytest.mark.parametrize("kind", ["keras3-tf221", "savedmodel-tf215", "tfkeras-tf221"])
def test_default_logged_model_locks_builds_verifies_and_serves_its_predictions(
        kind: str, tmp_path: Path, docker_engine: object) -> None:
    work = tmp_path / kind
    shutil.copytree(MODELS / kind / "model", work / "model")
    shutil.copy(MODELS / kind / "predictions.json", work / "predictions.json")
    logged = (work / "model" / "requirements.txt").read_text().split()
    assert any(r.startswith("tensorflow==") for r in logged) and any(r.startswith("tensorflow-cpu==") for r in logged)
    times: dict[str, float] = {}

    def step(name: str, *args: str) -> str:
        t = time.monotonic()
        out = lockbuild(*args, cwd=work).stdout
        times[name] = round(time.monotonic() - t, 1)
        return out

    step("init", "init", "--model", "./model")
    try:
        _lock_build_verify_smoke(kind, work, step)
    finally:  # smoke loads the image into the shared engine: remove what this test created
        for img in docker_engine.images.list(name=f"lockbuild/{kind}"):  # type: ignore[attr-defined]
            docker_engine.images.remove(img.id, force=True)  # type: ignore[attr-defined]
    print(f"{kind}: {times}")


def _lock_build_verify_smoke(kind: str, work: Path, step: Callable[..., str]) -> None:
    lock = json.loads(step("lock", "lock", "--json"))
    assert [(v["dropped"], v["kept"]) for v in lock["variants"]] == [("tensorflow", "tensorflow-cpu")]
    assert not [f for f in lock["doctor"] if f["severity"] == "error"], lock["doctor"]
    step("image", "image", "--docker-archive", "out/image.tar", "--json")
    # smoke runs the whole `verify` of the archive against the lock first (the same code, exit 13 and
    # no container when it fails): a separate `verify` step would repeat ~25 s of hashing per model
    smoke = json.loads(step("smoke", "smoke", "out/image.tar", "--expected", "predictions.json", "--json"))
    assert smoke["ok"] and smoke["status"] == 200 and smoke["verified"], smoke
    expected = json.loads((work / "predictions.json").read_text())["predictions"]
    got = smoke["predictions"]
    got = got["predictions"] if isinstance(got, dict) else got
    flat = [x for row in got for x in (row if isinstance(row, list) else [row])]
    want = [x for row in expected for x in row]
    assert len(flat) == len(want) and all(abs(a - b) <= 1e-5 for a, b in zip(flat, want, strict=True)), (got, expected)
