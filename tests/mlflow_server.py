"""A real MLflow tracking server for the models:/ and runs:/ tests (pytest plugin).

``mlflow_server`` (session) starts the venv's ``mlflow server`` with a sqlite backend store and a
local artifact root on 127.0.0.1 and a free port, waits for /health and yields its URI; the
whole process group (server, uvicorn worker) is stopped at the end. The process is launched
right after collection when a collected test needs it, so its start (schema migration, imports:
half a minute on a busy machine) overlaps the tests that run first. ``register_model_dir``
logs a model directory that is already on disk as a run artifact and registers it, so no
TensorFlow is needed: the committed example trees are the models.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MLFLOW = Path(sys.executable).parent / "mlflow"
START_TIMEOUT = 240  # seconds; the first start migrates the sqlite schema and imports a lot


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    return free_port()


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server's whole process group (it forks a uvicorn worker)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _start(root: Path, *, workers: bool) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    if workers:
        cmd += ["--workers", "1"]
    env = dict(os.environ)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job consumers: the tests need none
    log = root / f"server-{port}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=root, start_new_session=True)
    return proc, uri, log


class _Server:
    """One `mlflow server` process: started early (at collection, so its slow start overlaps the
    first tests) when any collected test needs it, waited for by the fixture, stopped at the end."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lockbuild-mlflow-server-"))
        self.proc, self.uri, self.log = _start(self.root, workers=True)

    def wait(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(self.uri):
            if self.proc.poll() is not None:
                text = self.log.read_text(errors="replace")
                if "--workers" in text and "No such option" in text:  # an MLflow without --workers
                    self.proc, self.uri, self.log = _start(self.root, workers=False)
                    continue
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{text[-3000:]}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {START_TIMEOUT}s:\n"
                            f"{self.log.read_text(errors='replace')[-3000:]}", pytrace=False)
            time.sleep(0.25)
        return self.uri

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


_server: _Server | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _server
    if _server is None and MLFLOW.exists() and not session.config.option.collectonly and any(
            "mlflow_server" in getattr(item, "fixturenames", ()) for item in session.items):
        _server = _Server()


def pytest_sessionfinish(session: pytest.Session) -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    """URI of a running `mlflow server` (sqlite backend, local artifacts) on 127.0.0.1."""
    global _server
    if not MLFLOW.exists():
        pytest.fail(f"{MLFLOW} missing: install the test extras (pip install -e '.[test]')", pytrace=False)
    if _server is None:
        _server = _Server()
    try:
        yield _server.wait()
    finally:
        _server.stop()
        _server = None


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str


def register_model_dir(tracking_uri: str, model_dir: Path, name: str, alias: str | None = "champion") -> Registered:
    """Log `model_dir` as the artifact `model` of a new run, register it as a new version of
    `name` and (unless alias is None) point `alias` at that version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.create_run("0")  # the Default experiment
    run_id = run.info.run_id
    client.log_artifacts(run_id, str(model_dir), "model")
    client.set_terminated(run_id)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    mv = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    if alias is not None:
        client.set_registered_model_alias(name, alias, mv.version)
    return Registered(name=name, version=str(mv.version), run_id=run_id)
