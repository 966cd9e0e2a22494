"""The MLflow-style baseline: the Docker engine, the local stand-in for python:3.11.7-slim (debootstrap +
a Dockerfile, built once and untimed), MLflow's own Dockerfile for the model and its timed
`docker build --no-cache`. See benchmarks/README.md, "The baseline"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import BENCH_ROOT, REPO, log, run

DOCKER_HOST_DEFAULT = "unix:///run/lockbuild-docker.sock"

BASE_TAG = "lockbuild-bench/bookworm-base:latest"
PYTHON_TAG = "python:3.11.7-slim"  # what MLflow's Dockerfile says FROM; a local stand-in (see README)
MLFLOW_TAG = "lockbuild-bench/mlflow-style:bench"
STANDIN_LABEL = "io.lockbuild.bench.standin"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
EXTRA_CA_DIR = "/usr/local/share/ca-certificates"


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
    from lockbuild.oci.compress import gzip_writer

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
