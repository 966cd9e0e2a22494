"""lockbuild benchmark suite (`make bench`): lockbuild vs the tools it replaces, on one model.

Measures, in ONE run, on examples/keras3 (copied to a scratch directory) and its committed pins:

1. lock:   `lockbuild lock --upgrade` (warm uv + Debian index caches) vs a bare `uv pip compile`
           of the same Python inputs with the same flags (interleaved pairs, medians).
2. cold:   `lockbuild image` into an empty LOCKBUILD_CACHE vs `docker build --no-cache` of the
           Dockerfile `mlflow models generate-dockerfile --env-manager local` writes (rounds
           alternate which goes first). Floors per round: pure download of the same artifacts with
           lockbuild's own fetch code, and `lockbuild image` on that download-only cache
           ("warm-downloads build"); once per run: gzip level 1 of the image's own tar bytes.
3. warm:   no-op rebuild; model-only change (add a file to the model, `lock`, `image`);
           image sizes; peak RSS of every `lockbuild image` process.
4. start-up: time from `docker run` to the first 200 on /ping and to the first correct
           /invocations answer, for the image with build-time bytecode + pruning and for the same
           lock without either ([build] bytecode = false, prune-defaults = false), interleaved.

Writes benchmarks/results/latest.json (atomically) and prints a markdown table. See
benchmarks/README.md for the baseline's construction and the caveats.

    .venv/bin/python benchmarks/run.py                 # everything (~30 min on 2 cores)
    .venv/bin/python benchmarks/run.py --quick         # no docker build, no cold builds
    .venv/bin/python benchmarks/run.py --skip-docker   # no MLflow-style docker baseline
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "keras3"
RESULTS = REPO / "benchmarks" / "results" / "latest.json"
README = REPO / "README.md"
BENCH_ROOT = Path(os.environ.get("LOCKBUILD_BENCH_DIR", "/var/tmp/lockbuild-bench"))
DOCKER_HOST_DEFAULT = "unix:///run/lockbuild-docker.sock"

BASE_TAG = "lockbuild-bench/bookworm-base:latest"
PYTHON_TAG = "python:3.11.7-slim"  # what MLflow's Dockerfile says FROM; a local stand-in (see README)
MLFLOW_TAG = "lockbuild-bench/mlflow-style:bench"
LOADED_TAG = "lockbuild-bench/keras3:bench"
STANDIN_LABEL = "io.lockbuild.bench.standin"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
EXTRA_CA_DIR = "/usr/local/share/ca-certificates"

# Set by main(): a frozen copy of the lockbuild package that every lockbuild process of the run
# imports (PYTHONPATH), so edits to the working tree during a 20-minute run cannot mix versions;
# and the run's private bytecode cache.
SNAPSHOT: Path | None = None
PYCACHE: Path = BENCH_ROOT / "pycache"

MARK_BEGIN, MARK_END = "<!-- bench-table -->", "<!-- /bench-table -->"

# Targets from issue 6. Thresholds are fixed here, before measuring; "about a second" is <= 1.5 s.
TARGETS = {
    "cold_vs_docker": ("cold lockbuild image <= 0.1x docker build (issue 13; was 0.3x)", 0.1),
    "cold_vs_floor": ("cold lockbuild image <= 1.5x floor (download + one compressor pass)", 1.5),
    "noop_seconds": ("no-op rebuild about 1 s (<= 1.5 s)", 1.5),
    "model_change_vs_cold": ("model-only change (lock + image) <= 0.1x cold", 0.1),
    "size_vs_mlflow": ("image (uncompressed) <= 0.5x MLflow-style image", 0.5),
    "peak_rss_mb": ("peak RSS of `lockbuild image` < 500 MB", 500.0),
    "ready_vs_nopyc": ("docker run -> /ping 200 <= 0.5x the image without bytecode", 0.5),  # issue 12
    "verify_seconds": ("verify, warm cache, well under 30 s (issue 11)", 30.0),
    "verify_rss_mb": ("peak RSS of `lockbuild verify` < 200 MB (issue 11)", 200.0),
}


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


# -- the Docker engine and the MLflow-style baseline ---------------------------------------------------


def ensure_engine() -> str | None:
    host = os.environ.get("DOCKER_HOST", DOCKER_HOST_DEFAULT)
    if subprocess.run(["docker", "-H", host, "info"], capture_output=True).returncode == 0:
        return host
    p = subprocess.run(["bash", str(REPO / "scripts" / "dockerd.sh"), "start"], capture_output=True, text=True)
    if p.returncode == 0 and "DOCKER_HOST=" in p.stdout:
        return p.stdout.strip().split("DOCKER_HOST=", 1)[1]
    log(f"no Docker engine: {p.stderr.strip()[-400:]}")
    return None


def docker(host: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=host, DOCKER_BUILDKIT="0")
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=env, **kw)


def image_size(host: str, ref: str) -> int | None:
    p = docker(host, "image", "inspect", "--format", "{{.Size}}", ref)
    return int(p.stdout.strip()) if p.returncode == 0 else None


def docker_build_env(host: str) -> dict[str, str]:
    # The legacy builder: the engine is Debian's 20.10 and the client has no buildx plugin.
    return dict(os.environ, DOCKER_HOST=host, DOCKER_BUILDKIT="0")


STANDIN_VERSION = "2"
STANDIN_DOCKERFILE = f"""\
FROM {BASE_TAG}
ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN printf '%s\\n' \\
      'deb {DEBIAN_MIRROR} bookworm main' \\
      'deb {DEBIAN_MIRROR} bookworm-updates main' \\
      'deb {DEBIAN_MIRROR}-security bookworm-security main' > /etc/apt/sources.list \\
 && apt-get update \\
 && apt-get install -y --no-install-recommends python3.11 python3-pip python3-venv python-is-python3 \\
      ca-certificates \\
 && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \\
 && rm -rf /var/lib/apt/lists/*
# The host's extra CAs (e.g. a TLS-inspecting egress proxy), so pip reaches PyPI as on the host.
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
LABEL {STANDIN_LABEL}="v{STANDIN_VERSION}: Debian bookworm python3.11 (3.11.2) + pip under the {PYTHON_TAG} tag"
CMD ["python3"]
"""

# debian:bookworm-slim's dpkg filter (debuerreotype --slimify), so the stand-in is not fatter than
# the real slim base.
SLIM_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
"""


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _slim_rootfs(root: Path) -> None:
    """What debian:bookworm-slim leaves out: apt lists and caches, docs (but copyrights), man, locales."""
    for sub in ("var/cache/apt", "var/lib/apt/lists"):
        for p in (root / sub).glob("*"):
            if p.is_file():
                p.unlink()
        for p in (root / sub).glob("archives/*.deb"):
            p.unlink()
    for p in (root / "usr/share/doc").glob("*/*"):
        if p.name != "copyright":
            _remove(p)
    for sub in ("man", "info", "locale", "groff", "lintian", "linda"):
        for p in (root / "usr/share" / sub).glob("*"):
            if p.name != "locale.alias":
                _remove(p)


def ensure_standin_base(host: str) -> dict[str, Any]:
    """Build (once, cached in the engine, untimed) the local stand-in for python:3.11.7-slim."""
    label = docker(host, "image", "inspect", "--format", f'{{{{index .Config.Labels "{STANDIN_LABEL}"}}}}',
                   PYTHON_TAG)
    have = label.stdout.strip() if label.returncode == 0 else None
    if have and have.startswith(f"v{STANDIN_VERSION}:"):
        return {"built_now": False, "size": image_size(host, PYTHON_TAG), "base_size": image_size(host, BASE_TAG)}
    if have is not None and have in ("", "<no value>"):
        raise RuntimeError(f"{PYTHON_TAG} exists in the engine but is not lockbuild's stand-in; "
                           "remove it or use another engine")
    if image_size(host, BASE_TAG) is None:
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is missing: apt-get install -y debootstrap")
        root = BENCH_ROOT / "bookworm-rootfs"
        shutil.rmtree(root, ignore_errors=True)
        log(f"debootstrap --variant=minbase bookworm {root} (once; not timed)")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR], check=True,
                       stdout=subprocess.DEVNULL)
        _slim_rootfs(root)
        (root / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_EXCLUDES)
        (root / "etc/apt/apt.conf.d/docker-clean").write_text(
            'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
            'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n')
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "-H", host, "import", "-", BASE_TAG], stdin=tar.stdout,
                             capture_output=True, text=True)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imp.returncode != 0:
            raise RuntimeError(f"docker import failed: {imp.stderr}")
        shutil.rmtree(root, ignore_errors=True)
    log(f"building the {PYTHON_TAG} stand-in (once; not timed)")
    with tempfile.TemporaryDirectory(dir=BENCH_ROOT) as d:
        (Path(d) / "Dockerfile").write_text(STANDIN_DOCKERFILE)
        (Path(d) / "extra-ca").mkdir()
        for crt in sorted(Path(EXTRA_CA_DIR).glob("*.crt")):
            shutil.copyfile(crt, Path(d) / "extra-ca" / crt.name)
        built = subprocess.run(["docker", "build", "--network", "host", "-t", PYTHON_TAG, d],
                               capture_output=True, text=True, env=docker_build_env(host))
    if built.returncode != 0:
        raise RuntimeError(f"building the stand-in failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}")
    return {"built_now": True, "size": image_size(host, PYTHON_TAG), "base_size": image_size(host, BASE_TAG)}


def mlflow_dockerfile(model: Path, dest: Path) -> str:
    """MLflow's own Dockerfile for the model (`mlflow models generate-dockerfile`), unmodified."""
    mlflow = Path(sys.executable).parent / "mlflow"
    r = run([str(mlflow), "models", "generate-dockerfile", "-m", str(model), "-d", str(dest),
             "--env-manager", "local"]).check()
    text = (dest / "Dockerfile").read_text()
    if f"FROM {PYTHON_TAG}" not in text:
        raise RuntimeError(f"MLflow's Dockerfile no longer says FROM {PYTHON_TAG}; update the stand-in:\n{text}"
                           f"\n{r.stderr[-1000:]}")
    return text


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)


def saved_compressed_bytes(host: str, ref: str) -> int:
    """gzip -1 size of `docker save ref` (layer tars + metadata): about what a registry would store
    for the image with lockbuild's own compression level, i.e. what a node pulls."""
    from lockbuild.oci.tar import gzip_writer

    counter = _Counter()
    proc = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE, env=docker_build_env(host))
    assert proc.stdout is not None
    with gzip_writer(counter, 1) as gz:
        while chunk := proc.stdout.read(1 << 20):
            gz.write(chunk)
    if proc.wait() != 0:
        raise RuntimeError(f"docker save {ref} failed")
    return counter.n


def docker_build(host: str, context: Path, log_path: Path) -> float:
    docker(host, "rmi", "-f", MLFLOW_TAG)
    r = run(["docker", "build", "--no-cache", "--network", "host", "-t", MLFLOW_TAG, str(context)],
            env=docker_build_env(host))
    log_path.write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    r.check()
    return r.seconds


# -- lockbuild steps ---------------------------------------------------------------------------------


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("out", "*.tar", "__pycache__", "out.*"))
    return dest


def lb_image(work: Path, cache: Path, docker_host: str | None, *extra: str, bytecode: bool = True) -> Run:
    oci = work / "out" / "oci"
    shutil.rmtree(oci, ignore_errors=True)
    return run([*lockbuild_cmd(), "image", "--json", "--oci", str(oci), *extra],
               env=lb_env(cache, docker_host, bytecode=bytecode), cwd=work).check()


def uv_compile_cmd(work: Path, out_dir: Path) -> list[str]:
    """lockbuild's own uv invocation (resolve/python.py), on the inputs the lock in `work` records."""
    from uv import find_uv_bin

    from lockbuild.lock.io import read_lock
    from lockbuild.model.metadata import read_model

    lk = read_lock(work / "lockbuild.lock")
    (out_dir / "requirements.in").write_text("\n".join(lk.python.requirements) + "\n")
    cmd = [str(find_uv_bin()), "pip", "compile", str(out_dir / "requirements.in"),
           "--python-platform", lk.target.wheel_platform, "--python-version", lk.target.python,
           "--only-binary", ":all:", "--generate-hashes", "--exclude-newer", lk.python.exclude_newer,
           "--index-url", lk.python.index_url, "--format", "pylock.toml", "--no-header", "--quiet",
           "--output-file", str(out_dir / "pylock.toml")]
    constraints = read_model(work / "model").constraints
    if constraints:
        (out_dir / "constraints.txt").write_text("\n".join(constraints) + "\n")
        cmd += ["--constraint", str(out_dir / "constraints.txt")]
    return cmd


def same_pins(work: Path, pylock: Path) -> bool:
    import tomllib

    from lockbuild.lock.io import read_lock

    lk = read_lock(work / "lockbuild.lock")
    doc = tomllib.loads(pylock.read_text())
    from packaging.utils import canonicalize_name

    uv_pins = {(canonicalize_name(p["name"]), str(p["version"])) for p in doc.get("packages", [])}
    lb_pins = {(w.name, w.version) for w in lk.python.packages} | {(n, v) for n, v in uv_pins if n in lk.python.omitted}
    return uv_pins == lb_pins


def bench_lock(res: Results, cache: Path, repeats: int) -> None:
    log(f"1. lock --upgrade vs uv pip compile: 1 warm-up + {repeats} interleaved pairs")
    work = copy_example(res.scratch / "lock")
    uv_dir = res.scratch / "uv"
    uv_dir.mkdir()
    env = lb_env(cache, None)
    uv_env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    uv_env.update(UV_NO_CONFIG="1", UV_CACHE_DIR=str(cache / "uv"))
    lock_s, uv_s = [], []
    for i in range(repeats + 1):
        r = run([*lockbuild_cmd(), "lock", "--upgrade", "--json"], env=env, cwd=work).check()
        u = run(uv_compile_cmd(work, uv_dir), env=uv_env, cwd=uv_dir).check()
        if i == 0:
            res.facts["pins_identical_uv_vs_lockbuild"] = same_pins(work, uv_dir / "pylock.toml")
            res.facts["lock_python_packages"] = r.json()["python_packages"]
            res.facts["lock_debian_packages"] = r.json()["debian_packages"]
            continue
        lock_s.append(r.seconds)
        uv_s.append(u.seconds)
    res.add("lock_upgrade_s", lock_s, "lockbuild lock --upgrade (warm caches)")
    res.add("uv_compile_s", uv_s, "bare uv pip compile, same inputs and flags")


def download_floor(work: Path, cache: Path) -> float:
    """Pure download of every wheel and .deb the lock names, with lockbuild's fetch code, empty cache."""
    from lockbuild.fetch.cache import Cache
    from lockbuild.fetch.download import Item, fetch_all
    from lockbuild.lock.io import read_lock
    from lockbuild.resolve.debian import deb_items

    lk = read_lock(work / "lockbuild.lock")
    items = list(deb_items(lk.debian))
    items += [Item(urls=(w.url,), sha256=w.sha256, size=w.size, label=w.filename) for w in lk.python.packages]
    c = Cache(cache)
    seconds, _ = timed(lambda: fetch_all(c, items, jobs=4))  # `lockbuild image` default: --jobs 4
    return seconds


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def compression_floor(layers: list[dict[str, Any]], cache: Path, scratch: Path, repeats: int) -> dict[str, Any]:
    """gzip level 1 (lockbuild's level and writer: ISA-L) of the image's own uncompressed layer tars.

    Each layer blob is first decompressed to a scratch file (not timed); then the tar is compressed
    into a null sink `repeats` times. Returns the median total seconds and the uncompressed bytes.
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.oci.tar import gzip_writer

    c = Cache(cache)
    per_round = [0.0] * repeats
    tar_bytes = 0
    per_layer: dict[str, int] = {}
    for layer in layers:
        blob = c.path(layer["digest"])
        tar = scratch / "layer.tar"
        with gzip.open(blob, "rb") as src, open(tar, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tar_bytes += tar.stat().st_size
        per_layer[layer["name"]] = tar.stat().st_size
        for i in range(repeats):
            def compress(tar: Path = tar) -> None:
                with open(tar, "rb") as f, gzip_writer(_Null(), 1) as gz:  # type: ignore[arg-type]
                    while chunk := f.read(1 << 20):
                        gz.write(chunk)
            per_round[i] += timed(compress)[0]
        tar.unlink()
    return {"seconds": per_round, "uncompressed_bytes": tar_bytes, "per_layer": per_layer}


def bench_cold(res: Results, host: str | None, rounds: int, with_docker: bool, mlflow_ctx: Path | None) -> None:
    log(f"2. cold builds: {rounds} round(s) of cold lockbuild image"
        + (" / docker build --no-cache" if with_docker else "") + " / download floor / warm-downloads build")
    cold, dock, dl, warmdl, rss = [], [], [], [], []
    for r in range(rounds):
        def lockbuild_cold(r: int = r) -> None:
            work = copy_example(res.scratch / f"cold-{r}")
            cache = res.scratch / f"cold-cache-{r}"
            log(f"   round {r + 1}: cold lockbuild image")
            run_ = lb_image(work, cache, host)
            cold.append(run_.seconds)
            rss.append(run_.max_rss_kb)
            d = run_.json()
            res.digests.append(("cold", d["digest"]))
            if not any(layer["reused"] for layer in d["layers"]):
                res.facts.setdefault("cold_layers", d["layers"])
                res.facts["image_digest"] = d["digest"]
                res.facts["compressed_bytes"] = d["compressed_bytes"]
            else:
                raise RuntimeError("a cold build reused a cached layer: the cache was not empty")
            shutil.rmtree(cache)
            shutil.rmtree(work)

        def docker_cold(r: int = r) -> None:
            assert host and mlflow_ctx
            log(f"   round {r + 1}: docker build --no-cache (MLflow Dockerfile)")
            dock.append(docker_build(host, mlflow_ctx, res.scratch / f"docker-build-{r}.log"))
            res.facts["mlflow_image_bytes"] = image_size(host, MLFLOW_TAG)

        order = [lockbuild_cold, docker_cold] if with_docker else [lockbuild_cold]
        for step in order if r % 2 == 0 else reversed(order):
            step()

        log(f"   round {r + 1}: download floor + warm-downloads build")
        work = copy_example(res.scratch / f"floor-{r}")
        cache = res.scratch / f"floor-cache-{r}"
        dl.append(download_floor(work, cache))
        res.facts["download_bytes"] = du_bytes(cache / "blobs")
        run_ = lb_image(work, cache, host)
        res.digests.append(("warm-downloads", run_.json()["digest"]))
        warmdl.append(run_.seconds)
        rss.append(run_.max_rss_kb)
        shutil.rmtree(cache)
        shutil.rmtree(work)
    res.add("cold_image_s", cold, "cold lockbuild image (empty cache)")
    if dock and host:
        log("   MLflow-style image: gzip -1 of docker save (its compressed size)")
        res.facts["mlflow_compressed_bytes"] = saved_compressed_bytes(host, MLFLOW_TAG)
    if dock:
        res.add("docker_build_s", dock, "docker build --no-cache of MLflow's Dockerfile")
    res.add("download_floor_s", dl, "download floor: same wheels + .debs, lockbuild fetch, --jobs 4")
    res.add("warm_downloads_image_s", warmdl, "lockbuild image, downloads cached, no layers cached")
    res.rss_kb.extend(rss)
    res.facts["peak_rss_cold_kb"] = max(rss)


def bench_zstd(res: Results, host: str | None, rounds: int) -> None:
    """The `--compression zstd` variant of the same lock: time with downloads cached (no layer cache;
    add the download floor for a cold build) and compressed size. Same diff_ids as gzip."""
    log(f"2b. zstd variant: {rounds} round(s) of lockbuild image --compression zstd, downloads cached")
    secs = []
    for r in range(rounds):
        work = copy_example(res.scratch / f"zstd-{r}")
        cache = res.scratch / f"zstd-cache-{r}"
        download_floor(work, cache)
        run_ = lb_image(work, cache, host, "--compression", "zstd")
        secs.append(run_.seconds)
        d = run_.json()
        if any(layer["reused"] for layer in d["layers"]):
            raise RuntimeError("a zstd build reused a cached layer: the cache was not empty")
        res.facts["zstd_compressed_bytes"] = d["compressed_bytes"]
        res.facts["zstd_image_digest"] = d["digest"]
        shutil.rmtree(cache)
        shutil.rmtree(work)
    res.add("zstd_warm_downloads_image_s", secs, "lockbuild image --compression zstd, downloads cached")


def bench_warm(res: Results, cache: Path, host: str | None, repeats: int, compress_repeats: int) -> None:
    work = copy_example(res.scratch / "warm")
    log("3. warm: prime the warm cache (not reported)")
    prime = lb_image(work, cache, host)
    layers = prime.json()["layers"]
    res.digests.append(("warm-prime", prime.json()["digest"]))
    res.facts.setdefault("image_digest", prime.json()["digest"])
    res.facts.setdefault("compressed_bytes", prime.json()["compressed_bytes"])
    res.facts["layers"] = [{"name": x["name"], "size": x["size"]} for x in layers]

    log(f"   no-op rebuild x{repeats}")
    noop, rss = [], []
    for _ in range(repeats):
        r = lb_image(work, cache, host)
        if not all(x["reused"] for x in r.json()["layers"]):
            raise RuntimeError("a no-op rebuild rebuilt a layer")
        res.digests.append(("no-op", r.json()["digest"]))
        noop.append(r.seconds)
        rss.append(r.max_rss_kb)
    res.add("noop_image_s", noop, "no-op rebuild (unchanged lock, warm cache)")
    nopyc = []
    shutil.rmtree(PYCACHE.with_name("no-pycache"), ignore_errors=True)
    for _ in range(repeats):
        nopyc.append(lb_image(work, cache, host, bytecode=False).seconds)
    res.add("noop_nopyc_image_s", nopyc, "no-op rebuild without bytecode (PYTHONDONTWRITEBYTECODE=1)")

    log(f"   verify x{repeats} (warm, signed layer records) and once --rederive (every layer from the lock)")
    ver, ver_rss = [], []
    for _ in range(repeats):
        v = run([*lockbuild_cmd(), "verify", "out/oci"], env=lb_env(cache, None), cwd=work).check()
        ver.append(v.seconds)
        ver_rss.append(v.max_rss_kb)
    res.add("verify_s", ver, "lockbuild verify out/oci (warm)")
    v = run([*lockbuild_cmd(), "verify", "out/oci", "--rederive"], env=lb_env(cache, None), cwd=work).check()
    res.add("verify_rederive_s", [v.seconds], "lockbuild verify --rederive out/oci (every layer re-derived)")
    res.facts["peak_rss_verify_kb"] = max([*ver_rss, v.max_rss_kb])

    log(f"   model-only change x{repeats}: add a file to the model, lock, image")
    lock_s, img_s, rebuilt = [], [], set()
    for i in range(repeats):
        (work / "model" / f"bench-extra-{i}.txt").write_text(f"benchmark model change {i} {time.time_ns()}\n")
        lk = run([*lockbuild_cmd(), "lock", "--json"], env=lb_env(cache, None), cwd=work).check()
        if lk.json()["changed"] is not True or lk.json()["reused"] is not False:
            raise RuntimeError(f"lock did not change after a model change: {lk.stdout}")
        r = lb_image(work, cache, host)
        names = {x["name"] for x in r.json()["layers"] if not x["reused"]}
        rebuilt |= names
        lock_s.append(lk.seconds)
        img_s.append(r.seconds)
        rss.append(r.max_rss_kb)
    res.add("model_lock_s", lock_s, "model-only change: lockbuild lock")
    res.add("model_image_s", img_s, "model-only change: lockbuild image")
    res.add("model_total_s", [a + b for a, b in zip(lock_s, img_s, strict=True)], "model-only change: lock + image")
    res.facts["model_change_rebuilt_layers"] = sorted(rebuilt)
    res.rss_kb.extend(rss)
    res.facts["peak_rss_warm_kb"] = max(rss)

    if compress_repeats:
        log(f"   compression floor: gzip -1 of the image's {len(layers)} layer tars x{compress_repeats}")
        cf = compression_floor(layers, cache, res.scratch, compress_repeats)
        res.add("compress_floor_s", cf["seconds"], "compression floor: gzip -1 of the same tar bytes")
        res.facts["uncompressed_bytes"] = cf["uncompressed_bytes"]
        for entry in res.facts["layers"]:
            entry["uncompressed"] = cf["per_layer"].get(entry["name"])

    if host:
        log("   load into the engine (for the engine's size)")
        docker(host, "rmi", "-f", LOADED_TAG)
        r = lb_image(work, cache, host, "--load", "--tag", LOADED_TAG)
        res.add("load_s", [r.seconds], "lockbuild image --load (warm; streams layers into dockerd)")
        res.facts["lockbuild_engine_bytes"] = image_size(host, LOADED_TAG)
        docker(host, "rmi", "-f", LOADED_TAG)


# -- start-up: docker run -> first /ping 200 -> first correct /invocations (issue 12) ---------------

STARTUP_TAGS = {"bytecode": "lockbuild-bench/keras3:startup-pyc", "none": "lockbuild-bench/keras3:startup-nopyc"}


def _http(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return bool(a == b)


def time_to_serve(host: str, tag: str, body: bytes, expected: Any, tol: float,
                  timeout: float = 300) -> tuple[float, float]:
    """Seconds from `docker run` to the first 200 on /ping, and to the first correct /invocations answer."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    cid = docker(host, "run", "-d", "--network", "host", "-e", f"PORT={port}", "-e", "HOST=127.0.0.1",
                 tag).stdout.strip()
    try:
        ping = inv = None
        while time.perf_counter() - t0 < timeout:
            if ping is None:
                if _http(base + "/ping")[0] == 200:
                    ping = time.perf_counter() - t0
            else:
                code, out = _http(base + "/invocations", body)
                if code == 200 and _close(json.loads(out).get("predictions"), expected, tol):
                    inv = time.perf_counter() - t0
                    break
            time.sleep(0.05)
        if ping is None or inv is None:
            raise RuntimeError(f"{tag} did not serve a correct answer in {timeout} s")
        return ping, inv
    finally:
        docker(host, "rm", "-f", cid)


def bench_startup(res: Results, cache: Path, host: str | None, repeats: int) -> None:
    """The TF example with and without build-time bytecode (and without pruning: today's image),
    interleaved; plus each image's unpacked (engine) and compressed size."""
    if host is None:
        log("4. start-up: skipped (no Docker engine)")
        return
    log(f"4. start-up: docker run -> /ping 200 -> correct /invocations, bytecode vs none, x{repeats}")
    expected = json.loads((EXAMPLE / "predictions.json").read_text())
    body = json.dumps(expected.get("input") or json.loads(
        (EXAMPLE / "model" / "serving_input_example.json").read_text())).encode()
    for kind, tag in STARTUP_TAGS.items():
        work = copy_example(res.scratch / f"startup-{kind}")
        if kind == "none":  # what images were before issue 12: no .pyc, nothing pruned
            with open(work / "lockbuild.toml", "a") as f:
                f.write("\n[build]\nbytecode = false\nprune-defaults = false\n")
            run([*lockbuild_cmd(), "lock"], env=lb_env(cache, None), cwd=work).check()
        docker(host, "rmi", "-f", tag)
        d = lb_image(work, cache, host, "--load", "--tag", tag).json()
        res.facts[f"startup_{kind}_engine_bytes"] = image_size(host, tag)
        res.facts[f"startup_{kind}_compressed_bytes"] = d["compressed_bytes"]
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in STARTUP_TAGS}
    for i in range(repeats):
        for kind in (list(STARTUP_TAGS) if i % 2 == 0 else list(reversed(STARTUP_TAGS))):
            ping, inv = time_to_serve(host, STARTUP_TAGS[kind], body, expected["predictions"],
                                      float(expected.get("tolerance", 1e-5)))
            samples[kind][0].append(ping)
            samples[kind][1].append(inv)
    for kind, (ping_s, inv_s) in samples.items():
        res.add(f"ping_{kind}_s", ping_s, f"docker run -> first /ping 200 ({kind})")
        res.add(f"invocations_{kind}_s", inv_s, f"docker run -> first correct /invocations ({kind})")
    for tag in STARTUP_TAGS.values():
        docker(host, "rmi", "-f", tag)


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


def summarize(metrics: dict[str, dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    """Ratios and target verdicts from the medians (None when a side was not measured)."""
    def med(k: str) -> float | None:
        m = metrics.get(k)
        return m["median"] if m else None

    cold = med("cold_image_s")
    floor = None
    if med("download_floor_s") is not None and med("compress_floor_s") is not None:
        floor = med("download_floor_s") + med("compress_floor_s")  # type: ignore[operator]
    uncompressed = facts.get("lockbuild_engine_bytes") or facts.get("uncompressed_bytes")
    rss_mb = [facts[k] / 1024 for k in ("peak_rss_cold_kb", "peak_rss_warm_kb") if facts.get(k)]
    cold_s = (metrics.get("cold_image_s") or {}).get("samples") or []
    dock_s = (metrics.get("docker_build_s") or {}).get("samples") or []
    ratios: dict[str, Any] = {
        "lock_vs_uv": ratio(med("lock_upgrade_s"), med("uv_compile_s")),
        # round by round (the two builds of a round ran back to back): shows the spread under load
        "cold_vs_docker_per_round": [round(a / b, 3) for a, b in zip(cold_s, dock_s, strict=False)] or None,
        "cold_vs_docker": ratio(cold, med("docker_build_s")),
        "floor_s": floor,
        "cold_vs_floor": ratio(cold, floor),
        "cold_vs_download_floor": ratio(cold, med("download_floor_s")),
        "noop_seconds": med("noop_image_s"),
        "model_change_vs_cold": ratio(med("model_total_s"), cold),
        "model_image_vs_cold": ratio(med("model_image_s"), cold),
        "size_vs_mlflow": ratio(uncompressed, facts.get("mlflow_image_bytes")),
        "compressed_vs_mlflow": ratio(facts.get("compressed_bytes"), facts.get("mlflow_compressed_bytes")),
        "peak_rss_mb": max(rss_mb) if rss_mb else None,
        **startup_ratios(med, facts),
        "verify_seconds": med("verify_s"),
        "verify_rss_mb": facts["peak_rss_verify_kb"] / 1024 if facts.get("peak_rss_verify_kb") else None,
    }
    targets = []
    for key, (what, limit) in TARGETS.items():
        value: float | None = ratios.get(key)
        strict = key in ("peak_rss_mb", "verify_rss_mb", "verify_seconds")
        met = None if value is None else (value < limit if strict else value <= limit)
        targets.append({"key": key, "target": what, "limit": limit, "value": value, "met": met})
    return {"ratios": ratios, "targets": targets}


def startup_ratios(med: Callable[[str], float | None], facts: dict[str, Any]) -> dict[str, Any]:
    """Issue 12: ready time with bytecode vs without (today's image), and the sizes vs MLflow-style."""
    return {
        "ready_vs_nopyc": ratio(med("ping_bytecode_s"), med("ping_none_s")),
        "answer_vs_nopyc": ratio(med("invocations_bytecode_s"), med("invocations_none_s")),
        "startup_size_vs_mlflow": ratio(facts.get("startup_bytecode_engine_bytes"), facts.get("mlflow_image_bytes")),
        "startup_compressed_vs_mlflow": ratio(facts.get("startup_bytecode_compressed_bytes"),
                                              facts.get("mlflow_compressed_bytes")),
    }


def startup_rows(metrics: dict[str, dict[str, Any]], facts: dict[str, Any],
                 r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Issue 12's rows: start-up with and without build-time bytecode, and that image's sizes."""
    if not any(k.startswith("ping_") for k in metrics):
        return []

    def cell(k: str) -> tuple[str, str]:
        m = metrics.get(k)
        return (_s(m["median"]), str(len(m["samples"]))) if m else ("n/a", "0")

    return [
        ("start", "`docker run` -> /ping 200, build-time .pyc + pruning", *cell("ping_bytecode_s"),
         f"{_x(r.get('ready_vs_nopyc'))} without"),
        ("start", "`docker run` -> /ping 200, no .pyc, no pruning", *cell("ping_none_s"), ""),
        ("start", "`docker run` -> correct /invocations, .pyc + pruning", *cell("invocations_bytecode_s"),
         f"{_x(r.get('answer_vs_nopyc'))} without"),
        ("start", "`docker run` -> correct /invocations, no .pyc", *cell("invocations_none_s"), ""),
        ("size", "image with .pyc + pruning, uncompressed (engine)",
         _mb(facts.get("startup_bytecode_engine_bytes")), "", f"{_x(r.get('startup_size_vs_mlflow'))} MLflow-style"),
        ("size", "image with .pyc + pruning, compressed", _mb(facts.get("startup_bytecode_compressed_bytes")), "",
         f"{_x(r.get('startup_compressed_vs_mlflow'))} MLflow-style"),
    ]


def _s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def _mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e6:,.0f} MB"


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def render_table(metrics: dict[str, dict[str, Any]], facts: dict[str, Any], summary: dict[str, Any],
                 machine: dict[str, Any]) -> str:
    """The results as markdown: one table of measurements, one of targets."""
    def med(k: str) -> float | None:
        m = metrics.get(k)
        return m["median"] if m else None

    def n(k: str) -> str:
        m = metrics.get(k)
        return str(len(m["samples"])) if m else "0"

    r = summary["ratios"]
    rows = [
        ("lock", "`lockbuild lock --upgrade` (warm caches)", _s(med("lock_upgrade_s")), n("lock_upgrade_s"),
         f"{_x(r['lock_vs_uv'])} bare uv"),
        ("lock", "bare `uv pip compile`, same inputs/flags", _s(med("uv_compile_s")), n("uv_compile_s"), ""),
        ("cold", "`lockbuild image`, empty cache", _s(med("cold_image_s")), n("cold_image_s"),
         f"{_x(r['cold_vs_docker'])} docker"
         + (f" (by round: {', '.join(f'{x:.2f}' for x in r['cold_vs_docker_per_round'])})"
            if r.get("cold_vs_docker_per_round") else "")
         + f", {_x(r['cold_vs_floor'])} floor"),
        ("cold", "`docker build --no-cache`, MLflow's Dockerfile", _s(med("docker_build_s")), n("docker_build_s"),
         ""),
        ("floor", "download only (same wheels + .debs)", _s(med("download_floor_s")), n("download_floor_s"),
         _mb(facts.get("download_bytes"))),
        ("floor", "gzip -1 (ISA-L, lockbuild's writer) of the image tars", _s(med("compress_floor_s")),
         n("compress_floor_s"),
         f"{_mb(facts.get('uncompressed_bytes'))} in"),
        ("floor", "download + compress", _s(r["floor_s"]), "", ""),
        ("floor", "`lockbuild image`, downloads cached", _s(med("warm_downloads_image_s")),
         n("warm_downloads_image_s"), "no layer cache"),
        ("zstd", "`lockbuild image --compression zstd`, downloads cached", _s(med("zstd_warm_downloads_image_s")),
         n("zstd_warm_downloads_image_s"), f"{_mb(facts.get('zstd_compressed_bytes'))} compressed (gzip: "
         f"{_mb(facts.get('compressed_bytes'))})"),
        ("warm", "no-op rebuild", _s(med("noop_image_s")), n("noop_image_s"), "bytecode cached"),
        ("warm", "no-op rebuild, no bytecode cache", _s(med("noop_nopyc_image_s")), n("noop_nopyc_image_s"),
         "PYTHONDONTWRITEBYTECODE=1"),
        ("verify", "`lockbuild verify`, warm", _s(med("verify_s")), n("verify_s"), "signed layer records"),
        ("verify", "`lockbuild verify --rederive`", _s(med("verify_rederive_s")), n("verify_rederive_s"),
         "every layer staged from the lock"),
        ("warm", "model-only change: `lock`", _s(med("model_lock_s")), n("model_lock_s"), ""),
        ("warm", "model-only change: `image`", _s(med("model_image_s")), n("model_image_s"),
         "rebuilt: " + (", ".join(facts.get("model_change_rebuilt_layers", [])) or "n/a")),
        ("warm", "model-only change: lock + image", _s(med("model_total_s")), n("model_total_s"),
         f"{_x(r['model_change_vs_cold'])} cold"),
        ("size", "lockbuild image, compressed (layer blobs)", _mb(facts.get("compressed_bytes")), "",
         f"{_x(r['compressed_vs_mlflow'])} MLflow-style"),
        ("size", "MLflow-style image, compressed (gzip -1 of `docker save`)",
         _mb(facts.get("mlflow_compressed_bytes")), "", ""),
        ("size", "lockbuild image, uncompressed (engine)",
         _mb(facts.get("lockbuild_engine_bytes") or facts.get("uncompressed_bytes")), "",
         f"{_x(r['size_vs_mlflow'])} MLflow-style"),
        ("size", "MLflow-style image (engine)", _mb(facts.get("mlflow_image_bytes")), "",
         f"incl. {_mb(facts.get('standin_bytes'))} stand-in base" if facts.get("standin_bytes") else ""),
        ("memory", "peak RSS `lockbuild image`, cold",
         "n/a" if not facts.get("peak_rss_cold_kb") else f"{facts['peak_rss_cold_kb'] / 1024:.0f} MB", "", ""),
        ("memory", "peak RSS `lockbuild image`, warm",
         "n/a" if not facts.get("peak_rss_warm_kb") else f"{facts['peak_rss_warm_kb'] / 1024:.0f} MB", "", ""),
        ("memory", "peak RSS `lockbuild verify` (incl. --rederive)",
         "n/a" if not facts.get("peak_rss_verify_kb") else f"{facts['peak_rss_verify_kb'] / 1024:.0f} MB", "", ""),
    ]
    rows += startup_rows(metrics, facts, r)
    lines = ["| | measurement | median | runs | ratio / note |", "|---|---|---:|---:|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    lines += ["", "| target (issues 6, 11) | measured | met |", "|---|---:|---|"]
    for t in summary["targets"]:
        v = t["value"]
        shown = "n/a" if v is None else (f"{v:.0f} MB" if t["key"] in ("peak_rss_mb", "verify_rss_mb") else
                                         _s(v) if t["key"] in ("noop_seconds", "verify_seconds") else _x(v))
        verdict = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {shown} | {verdict} |")
    if facts.get("layers"):
        lines += ["", "Layers, compressed / uncompressed: " + ", ".join(
            f"{x['name']} {_size(x['size'])}" + (f" / {_size(x['uncompressed'])}" if x.get("uncompressed") else "")
            for x in facts["layers"]) + "."]
    if facts.get("unchanged_lock_builds"):
        same = "identical" if facts.get("unchanged_lock_digests_identical") else "**DIFFERENT**"
        kinds = ", ".join(dict.fromkeys(x.split(" ", 1)[0] for x in facts.get("unchanged_lock_digests", [])))
        lines += ["", f"Reproducibility: {facts['unchanged_lock_builds']} builds of the unchanged lock"
                  + (f" ({kinds})" if kinds else "") + f" gave {same} image digests"
                  + (f" (`{str(facts.get('image_digest'))[:19]}…`)." if facts.get("image_digest") else ".")]
    lines += ["", "Baseline: the Dockerfile `mlflow models generate-dockerfile --env-manager local` writes, built "
              "with `docker build --no-cache` on a local stand-in for `python:3.11.7-slim` (Debian's Python "
              "3.11.2; see benchmarks/README.md). Medians; baseline and lockbuild interleaved in one run."]
    lines += ["", f"Machine: {machine.get('nproc')} cores ({machine.get('cpu')}), {machine.get('ram_gb')} GB RAM, "
              f"{machine.get('os', '')}, Docker {machine.get('docker_server') or 'n/a'}; "
              f"{machine.get('date')}, lockbuild {str(machine.get('lockbuild_commit'))[:12]}"
              + (f" + uncommitted changes (source {str(machine.get('lockbuild_source_digest'))[:19]}…)"
                 if machine.get("lockbuild_tree_dirty") else "")
              + f"; load average at start {_load(machine.get('loadavg_start'))}, "
              f"end {_load(machine.get('loadavg_end'))}."]
    return "\n".join(lines) + "\n"


def _load(x: Any) -> str:
    return "n/a" if not x else "/".join(f"{v:.1f}" for v in x)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".latest.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def replace_readme_table(text: str, table: str) -> str:
    """Replace only what lies between the bench-table markers."""
    start, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
    return text[:start] + "\n" + table.rstrip("\n") + "\n" + text[end:]


def snapshot_source(dest: Path) -> tuple[Path, str]:
    """Copy the lockbuild package (as it is now) to dest/lockbuild; return dest and a digest of it."""
    import hashlib

    shutil.copytree(REPO / "lockbuild", dest / "lockbuild", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    h = hashlib.sha256()
    for f in sorted((dest / "lockbuild").rglob("*"), key=lambda q: q.as_posix()):
        if f.is_file():
            h.update(f.relative_to(dest).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return dest, "sha256:" + h.hexdigest()


@contextlib.contextmanager
def scratch_dir(keep: bool) -> Iterator[Path]:
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH_ROOT))
    try:
        yield d
    finally:
        if keep:
            log(f"kept scratch {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the docker build baseline and the cold builds")
    ap.add_argument("--skip-docker", action="store_true", help="skip the MLflow-style docker build baseline")
    ap.add_argument("--rounds", type=int, default=3, help="cold rounds (cold image, docker build, floors)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the cheap measurements")
    ap.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    ap.add_argument("--update-readme", action="store_true", help="put the table into README.md's bench block")
    ap.add_argument("--keep-scratch", action="store_true", help="keep the scratch directory")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only recompute ratios and the table of a results file (rewritten in place)")
    args = ap.parse_args(argv)
    if args.render:
        doc = json.loads(args.render.read_text())
        table = render_table(doc["metrics"], doc["facts"], summarize(doc["metrics"], doc["facts"]), doc["machine"])
        print(table)
        doc.update(summarize(doc["metrics"], doc["facts"]), table_markdown=table)
        write_json(args.render, doc)
        if args.update_readme and doc.get("mode") == "full":
            README.write_text(replace_readme_table(README.read_text(), table))
        return 0
    if args.quick:
        args.repeats = min(args.repeats, 2)
    with_docker = not (args.quick or args.skip_docker)

    t_start = time.perf_counter()
    host = ensure_engine()
    machine = machine_facts(host)
    log(f"machine: {machine['nproc']} cores, {machine['cpu']}, {machine['ram_gb']} GB, docker {host or 'none'}")
    warm_cache = BENCH_ROOT / "cache"  # persistent: warm uv cache, Debian indexes, downloads, layers
    global SNAPSHOT, PYCACHE
    with scratch_dir(args.keep_scratch) as scratch:
        SNAPSHOT, machine["lockbuild_source_digest"] = snapshot_source(scratch / "src")
        sys.path.insert(0, str(SNAPSHOT))  # the runner's own lockbuild imports use the snapshot too
        PYCACHE = scratch / "pycache"
        res = Results(scratch)
        mlflow_ctx = None
        if with_docker:
            if host is None:
                raise SystemExit("no Docker engine: run scripts/dockerd.sh start, or pass --skip-docker")
            base = ensure_standin_base(host)
            res.facts["standin_bytes"] = base["size"]
            res.facts["standin_base_bytes"] = base["base_size"]
            mlflow_ctx = scratch / "mlflow-docker"
            res.facts["mlflow_dockerfile"] = mlflow_dockerfile(EXAMPLE / "model", mlflow_ctx)
        bench_lock(res, warm_cache, args.repeats)
        if not args.quick:
            bench_cold(res, host, args.rounds, with_docker, mlflow_ctx)
            bench_zstd(res, host, args.rounds)
        bench_warm(res, warm_cache, host, args.repeats, compress_repeats=0 if args.quick else args.rounds)
        bench_startup(res, warm_cache, host, args.repeats)
        if with_docker and host:
            docker(host, "rmi", "-f", MLFLOW_TAG)
    machine["loadavg_end"] = list(os.getloadavg())
    res.facts["unchanged_lock_builds"] = len(res.digests)
    res.facts["unchanged_lock_digests_identical"] = len({d for _, d in res.digests}) == 1
    res.facts["unchanged_lock_digests"] = [f"{kind} {d}" for kind, d in res.digests]
    wall = time.perf_counter() - t_start
    summary = summarize(res.metrics, res.facts)
    table = render_table(res.metrics, res.facts, summary, machine)
    doc = {"machine": machine, "mode": "quick" if args.quick else ("skip-docker" if not with_docker else "full"),
           "wall_seconds": round(wall, 1), "metrics": res.metrics, "facts": res.facts, **summary,
           "table_markdown": table}
    write_json(args.output, doc)
    print(table)
    log(f"wrote {args.output} (run took {wall / 60:.1f} min)")
    if args.update_readme:
        if args.quick or not with_docker:
            log("not updating README.md from a partial run")
        else:
            README.write_text(replace_readme_table(README.read_text(), table))
            log("updated README.md's bench table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
