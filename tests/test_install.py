"""lockbuild installs like a tool: the wheel, installed with `uv tool install` and the project's own
dependency pins (constraints.txt) into a temporary tool dir, puts a working `lockbuild` on PATH that
runs daily-use commands outside the repository (a fresh shell: no venv activated, cwd elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lockbuild_testing import EXAMPLES, ROOT

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, rest = line.partition("==")
            out[name.strip().lower()] = rest.split(";")[0].strip()
    return out


def test_uv_tool_install_gives_a_working_lockbuild_on_path(tmp_path: Path) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is a dependency of lockbuild: it must be in the venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(UV_TOOL_DIR=str(tmp_path / "tools"), UV_TOOL_BIN_DIR=str(tmp_path / "bin"))
    dist = tmp_path / "dist"
    subprocess.run([uv, "build", "--wheel", "-o", str(dist), str(ROOT)], check=True, env=env,
                   capture_output=True, text=True)
    (wheel,) = dist.glob("lockbuild-*.whl")
    r = subprocess.run([uv, "tool", "install", "--constraint", str(ROOT / "constraints.txt"), str(wheel)],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exe = tmp_path / "bin" / "lockbuild"
    assert exe.is_file()

    # the tool's environment holds exactly the pinned versions
    tool_python = next((tmp_path / "tools" / "lockbuild" / "bin").glob("python3*"))
    freeze = subprocess.run([uv, "pip", "freeze", "--python", str(tool_python)], env=env, capture_output=True,
                            text=True, check=True).stdout
    pinned = _pins((ROOT / "constraints.txt").read_text())
    installed = _pins(freeze)
    assert installed, freeze
    assert {n: v for n, v in installed.items() if n != "lockbuild" and pinned.get(n) != v} == {}

    # a fresh shell: PATH has the tool bin dir, cwd is outside the repository
    shell_env = {**env, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "COLUMNS": "200"}
    work = tmp_path / "work"
    shutil.copytree(EXAMPLES / "pyfunc-sdist", work / "project", ignore=shutil.ignore_patterns("out"))
    shutil.copy(EXAMPLES / "keras3" / "lockbuild.lock", work / "keras3.lock")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["lockbuild", *args], cwd=work / "project", env=shell_env, capture_output=True,
                              text=True, timeout=300)

    r = run("--help")
    assert r.returncode == 0 and "lock" in r.stdout and "image" in r.stdout, r.stderr
    r = run("version")
    assert r.returncode == 0 and r.stdout.strip()
    r = run("export", "pylock", "-o", "pylock.toml")
    assert r.returncode == 0, r.stderr
    assert "lock-version" in (work / "project" / "pylock.toml").read_text()
    r = run("diff", "lockbuild.lock", str(work / "keras3.lock"), "--json")
    assert r.returncode == 1 and '"changed": true' in r.stdout, r.stderr
    r = run("doctor", "--json")
    assert r.returncode in (0, 15) and "Traceback" not in r.stderr, r.stderr

    # the daily loop's resolver step: the tool's own uv re-locks a changed model (pins kept)
    keras3 = work / "keras3"
    shutil.copytree(EXAMPLES / "keras3", keras3, ignore=shutil.ignore_patterns("out", ".venv"))
    (keras3 / "model" / "notes.txt").write_text("a model-only change\n")
    r = subprocess.run(["lockbuild", "lock", "--json"], cwd=keras3, env=shell_env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert '"moves": []' in r.stdout and '"reused": false' in r.stdout, r.stdout
