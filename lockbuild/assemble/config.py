"""The small config layer: the launcher, its runtime.json, and the lock itself (for audits)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from lockbuild.assemble.model import MODEL_DIR
from lockbuild.lockfile.model import Lock

LAUNCHER = "opt/lockbuild/serve.py"
RUNTIME = "opt/lockbuild/runtime.json"
LOCK_COPY = "opt/lockbuild/lockbuild.lock"


def runtime_json(lock: Lock) -> bytes:
    rt = {
        "server": lock.runtime.server,
        "port": lock.runtime.port,
        "workers": lock.runtime.workers,
        "model_path": "/" + MODEL_DIR,
        "mlflow_version": lock.runtime.mlflow_version,
    }
    return (json.dumps(rt, sort_keys=True, indent=1) + "\n").encode()


def stage_config(lock: Lock, lock_bytes: bytes, root: Path) -> None:
    base = root / "opt" / "lockbuild"
    base.mkdir(parents=True, exist_ok=True)
    (root / LAUNCHER).write_bytes(resources.files("lockbuild").joinpath("serve/launcher.py").read_bytes())
    (root / RUNTIME).write_bytes(runtime_json(lock))
    (root / LOCK_COPY).write_bytes(lock_bytes)


def entrypoint(lock: Lock) -> list[str]:
    minor = ".".join(lock.target.python.split(".")[:2])
    return [f"/usr/bin/python{minor}", "/" + LAUNCHER]
