"""A tiny real MLflow model (pyfunc from code: no TensorFlow, no pickle) locked and built once
per session: a fast real image for verify/smoke/builder tests. The slow TF cases live in
test_e2e_tf.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MODEL_CODE = textwrap.dedent('''
    import mlflow
    import pandas as pd


    class AddOne(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return (model_input.astype("float64") + 1.0).values.tolist()


    mlflow.models.set_model(AddOne())
''')


def run_lockbuild(*args: str, cwd: Path, ok: bool = True, env: dict[str, str] | None = None,
                  timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "lockbuild", *args], cwd=cwd, text=True, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if ok and proc.returncode != 0:
        raise AssertionError(f"lockbuild {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc


def save_tiny_model(dest: Path) -> None:
    """Save the AddOne pyfunc model with MLflow itself (in a subprocess: no global MLflow state)."""
    code = dest.parent / "tiny_model_code.py"
    code.write_text(MODEL_CODE)
    script = textwrap.dedent(f'''
        import mlflow, pandas as pd
        from mlflow.models import infer_signature
        x = pd.DataFrame({{"a": [1.0, 2.0], "b": [3.0, 4.0]}})
        mlflow.pyfunc.save_model(
            path={str(dest)!r}, python_model={str(code)!r}, input_example=x,
            pip_requirements=["mlflow==3.17.2", "pandas", "numpy"],
        )
    ''')
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_TRACKING_URI": f"file://{dest.parent}/mlruns"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("tiny")
    save_tiny_model(work / "model")
    (work / "lockbuild.toml").write_text(textwrap.dedent('''
        [model]
        uri = "./model"

        [image]
        name = "lockbuild-test/tiny"
        port = 8080
        compression = "gzip"  # the verify/tamper tests read and repack gzip layers (zlib-ng); zstd: examples/keras3

        [smoke]
        input = "input.json"
        expected = "expected.json"
    '''))
    (work / "input.json").write_text(json.dumps({"dataframe_split": {"columns": ["a", "b"],
                                                                     "data": [[1.0, 3.0], [2.0, 4.0]]}}))
    (work / "expected.json").write_text(json.dumps({"predictions": [[2.0, 4.0], [3.0, 5.0]]}))
    lock = json.loads(run_lockbuild("lock", "--json", cwd=work).stdout)
    image = json.loads(run_lockbuild("image", "--oci", "out/oci", "--docker-archive", "out/image.tar", "--json",
                                     cwd=work).stdout)
    yield {"dir": work, "lock": lock, "image": image}


@pytest.fixture(scope="module")
def tiny_in_engine(tiny_project: dict, docker_engine: Any) -> Iterator[str]:
    """The tiny image loaded into the engine for one module, under a tag of its own (as on a node that
    already runs it): a later `docker load` of it, or of a tampered copy, then extracts only the layers
    the engine does not hold yet (the engine keeps a layer whose chain it already has; a tampered layer
    has a new diff_id, so it and every layer above it are extracted). Removed at the module's end. Not
    for a test that must see the engine decompress the image's own layers."""
    tag = "lockbuild-test/tiny-base:session"
    with open(tiny_project["dir"] / "out" / "image.tar", "rb") as f:
        image = docker_engine.images.load(f)[0]
    image.tag(tag)
    for own in [t for t in image.tags if t != tag]:  # the archive's own tag stays free for tests that load it
        docker_engine.images.remove(own)
    yield tag
    docker_engine.images.remove(tag, force=True)
