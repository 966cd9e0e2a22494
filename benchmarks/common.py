"""What the benchmark modules share: paths, process running (wall time and peak RSS), lockbuild's
environment, the run's results and the machine facts. Every other benchmark module imports it; it
imports none of them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "keras3"
RESULTS = REPO / "benchmarks" / "results" / "latest.json"
README = REPO / "README.md"
BENCH_ROOT = Path(os.environ.get("LOCKBUILD_BENCH_DIR", "/var/tmp/lockbuild-bench"))

# Set by run.py's main(): a frozen copy of the lockbuild package that every lockbuild process of the run
# imports (PYTHONPATH), so edits to the working tree during a 20-minute run cannot mix versions;
# and the run's private bytecode cache.
SNAPSHOT: Path | None = None
PYCACHE: Path = BENCH_ROOT / "pycache"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- running and measuring processes ----------------------------------------------------------------


@dataclass
class Run:
    cmd: list[str]
    seconds: float
    returncode: int
    max_rss_kb: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def check(self) -> Run:
        if self.returncode != 0:
            raise RuntimeError(f"command failed ({self.returncode}): {' '.join(self.cmd)}\n"
                               f"stdout tail: {self.stdout[-2000:]}\nstderr tail: {self.stderr[-4000:]}")
        return self


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        stdin: Any = None) -> Run:
    """Run one process; wall time (perf_counter) and its peak RSS from wait4 (ru_maxrss, KiB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=cwd, stdin=stdin)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(list(cmd), seconds, p.returncode, usage.ru_maxrss,
                   out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def lockbuild_cmd() -> list[str]:
    script = Path(sys.executable).parent / "lockbuild"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lockbuild"]


def lb_env(cache: Path, docker_host: str | None, *, bytecode: bool = True) -> dict[str, str]:
    """lockbuild's environment. Bytecode is cached in a private prefix, as an installed tool has it
    (pip compiles on install); this machine sets PYTHONDONTWRITEBYTECODE=1, which would add ~1 s of
    compiling to every command. bytecode=False measures that case (an empty, read-only prefix)."""
    env = dict(os.environ)
    env["LOCKBUILD_CACHE"] = str(cache)
    env.pop("SOURCE_DATE_EPOCH", None)
    if SNAPSHOT is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(SNAPSHOT), *filter(None, [env.get("PYTHONPATH")])])
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE.with_name("no-pycache"))
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return env


def du_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


# -- machine facts -----------------------------------------------------------------------------------


def machine_facts(docker_host: str | None) -> dict[str, Any]:
    def cmd_out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    os_name = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    docker_version = ""
    if docker_host:
        docker_version = cmd_out("docker", "-H", docker_host, "version", "--format", "{{.Server.Version}}")
    from uv import find_uv_bin

    dirty = cmd_out("git", "-C", str(REPO), "status", "--porcelain", "--", "lockbuild", "pyproject.toml")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker_server": docker_version,
        "uv": cmd_out(str(find_uv_bin()), "--version"),
        "lockbuild_commit": cmd_out("git", "-C", str(REPO), "rev-parse", "HEAD"),
        "lockbuild_tree_dirty": bool(dirty),  # uncommitted changes under lockbuild/ at start
        "loadavg_start": list(os.getloadavg()),
    }


# -- results -----------------------------------------------------------------------------------------


@dataclass
class Results:
    scratch: Path
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    rss_kb: list[int] = field(default_factory=list)
    digests: list[tuple[str, str]] = field(default_factory=list)  # (kind, digest) of every unchanged-lock build

    def add(self, key: str, samples: list[float], what: str) -> None:
        self.metrics[key] = {"what": what, "samples": [round(s, 3) for s in samples],
                             "median": round(statistics.median(samples), 3) if samples else None}

    def med(self, key: str) -> float | None:
        m = self.metrics.get(key)
        return m["median"] if m else None
