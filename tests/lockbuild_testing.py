"""Helpers shared by the front-half tests (spec, intake, resolution, lock, CLI): example model
copies, the shared download cache, and running the real CLI in-process or as a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
KERAS3_MODEL = EXAMPLES / "keras3" / "model"
LEGACY_MODEL = EXAMPLES / "legacy-tfkeras" / "model"
LOCK_SCHEMA = ROOT / "schemas" / "lockbuild.lock.schema.json"


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LOCKBUILD_CACHE all front-half tests share: the caller's (e.g. ~/.cache/lockbuild under
    scripts/run-tests.sh, so a second run is warm), else one directory for this pytest session.
    Debian indexes, model files and uv's cache (<cache>/uv) live there."""
    env = os.environ.get("LOCKBUILD_CACHE")
    path = Path(env).expanduser() if env else tmp_path_factory.getbasetemp() / "lockbuild-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def make_project(dest: Path, spec: str, model: Path = KERAS3_MODEL) -> Path:
    """dest/model (a copy of `model`) and dest/lockbuild.toml (`spec`). Returns dest."""
    dest.mkdir(parents=True, exist_ok=True)
    copy_model(model, dest / "model")
    (dest / "lockbuild.toml").write_text(spec)
    return dest


def set_model_requirements(model_dir: Path, requirements: list[str]) -> None:
    """Rewrite what a model copy logged: requirements.txt and the pip section of conda.yaml."""
    (model_dir / "requirements.txt").write_text("\n".join(requirements) + "\n")
    conda = model_dir / "conda.yaml"
    if conda.exists():
        lines = conda.read_text().splitlines()
        head = lines[: lines.index("- pip:") + 1]
        tail = [ln for ln in lines[lines.index("- pip:") + 1:] if not ln.startswith("  - ")]
        conda.write_text("\n".join(head + [f"  - {r}" for r in requirements] + tail) + "\n")


def set_model_python(model_dir: Path, version: str) -> None:
    """Pretend the model was logged with another Python (python_env.yaml, conda.yaml, MLmodel)."""
    for name, old, new in (("python_env.yaml", "python: 3.11.7", f"python: {version}"),
                           ("conda.yaml", "python=3.11.7", f"python={version}"),
                           ("MLmodel", "python_version: 3.11.7", f"python_version: {version}")):
        p = model_dir / name
        text = p.read_text()
        assert old in text, f"{p} does not contain {old!r}"
        p.write_text(text.replace(old, new))


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def text(self) -> str:
        """stderr with line wrapping undone, for substring checks."""
        return " ".join(self.stderr.split())


def run_cli(*args: str) -> CliResult:
    """`lockbuild ARGS` in this process through lockbuild.cli.main (the real error handling:
    message, hint, exit code). Importing lockbuild once per session keeps the suite fast."""
    from lockbuild import cli
    from lockbuild.cli import common

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_width = sys.argv, common.err.width
    sys.argv = ["lockbuild", *args]
    common.state.emitted = False
    common.err.width = 10_000  # no wrapping inside messages
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code
    finally:
        sys.argv = old_argv
        common.err.width = old_width
    return CliResult(code=int(code or 0) if not isinstance(code, str) else 1, stdout=out.getvalue(),
                     stderr=err.getvalue())


def lockbuild_process(*args: str, cwd: Path, env: dict[str, str | None] | None = None) -> subprocess.Popen[str]:
    """Start the real `lockbuild` console script (a separate process: exit codes and stderr as a
    user sees them). `env` adds to this process's environment; a None value removes the variable."""
    merged: dict[str, str | None] = {**os.environ, "COLUMNS": "1000", **(env or {})}
    full = {k: v for k, v in merged.items() if v is not None}
    return subprocess.Popen([str(Path(sys.executable).parent / "lockbuild"), *args], cwd=cwd, env=full,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> CliResult:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        raise AssertionError(f"lockbuild timed out after {timeout}s: {stderr[-2000:]}") from None
    return CliResult(code=proc.returncode, stdout=stdout, stderr=stderr)
