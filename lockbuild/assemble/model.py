"""The model's files into the image tree at /opt/ml/model, each checked against the lock."""

from __future__ import annotations

import posixpath
import shutil
from pathlib import Path

from lockbuild.errors import BuildError, IntegrityError
from lockbuild.fsutil import sha256_file
from lockbuild.lockfile.model import ModelLock

MODEL_DIR = "opt/ml/model"


def stage_model(model: ModelLock, blobs: dict[str, Path], root: Path) -> None:
    """Copy each locked model file (from its verified cache blob) into root/opt/ml/model."""
    base = root / MODEL_DIR
    base.mkdir(parents=True, exist_ok=True)
    for f in model.files:
        rel = posixpath.normpath(f.path)
        if rel.startswith("/") or rel.startswith(".."):
            raise BuildError(f"model file path {f.path!r} escapes the model directory")
        src = blobs[f.sha256]
        dest = base / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        digest, size = sha256_file(dest)
        if digest != f.sha256 or size != f.size:
            raise IntegrityError(f"model file {f.path} does not match the lock after copying")
