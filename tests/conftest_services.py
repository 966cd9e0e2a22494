"""Session fixtures for real services: lockbuild's own dockerd and a throwaway registry.

Use from tests/conftest.py with ``pytest_plugins = ["tests.conftest_services"]`` (test modules
may also name it). Both start through the scripts a developer or CI would run by hand.

One call for every missing tool or privilege (gpg, skopeo, umoci, dockerd, registry, root, ...):
``unavailable(reason)`` skips the test on a developer's machine; when LOCKBUILD_STRICT_TESTS=1
(.ci/run sets it) tests/conftest.py turns every skip into a failure, so CI never lands untested
work by skipping.
An engine this session started is stopped at the end (keep it with LOCKBUILD_KEEP_DOCKER=1);
a registry always is.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import docker
import pytest

from lockbuild.errors import EngineUnavailable
from lockbuild.fetch.cache import Cache
from lockbuild.oci import daemon
from lockbuild.oci.image import Image, ImageSpec, build_image
from lockbuild.oci.tar import write_layer

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"



def unavailable(reason: str) -> NoReturn:
    """A tool or privilege the test needs is missing: a skip here; under LOCKBUILD_STRICT_TESTS=1 the
    one hook in tests/conftest.py turns it (like every other skip) into a failure."""
    pytest.skip(reason)


def need_tool(*names: str) -> None:
    """Every named command on PATH, else unavailable()."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed: run scripts/install-deps.sh")


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{why} needs root")


def _script(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPTS / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _tail(text: str) -> str:
    return " | ".join(text.strip().splitlines()[-3:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[docker.DockerClient]:
    """A client for lockbuild's dockerd (scripts/dockerd.sh). Containers: network_mode="host"."""
    was_running = _script("dockerd.sh", "status").returncode == 0
    started = _script("dockerd.sh", "start")
    if started.returncode != 0:
        unavailable(f"scripts/dockerd.sh start failed: {_tail(started.stderr or started.stdout)}")
    host = started.stdout.strip().splitlines()[-1].removeprefix("DOCKER_HOST=")
    try:
        client = daemon.engine(host)
    except EngineUnavailable as e:
        unavailable(e.message)
    yield client
    client.close()
    if not was_running and os.environ.get("LOCKBUILD_KEEP_DOCKER") != "1":
        _script("dockerd.sh", "stop")


@pytest.fixture(scope="session")
def registry() -> Iterator[str]:
    """"127.0.0.1:PORT" of a fresh docker-registry (plain http, loopback only)."""
    port = str(free_port())
    started = _script("registry.sh", "start", port)
    if started.returncode != 0:
        unavailable(f"scripts/registry.sh start failed: {_tail(started.stderr or started.stdout)}")
    yield f"127.0.0.1:{port}"
    _script("registry.sh", "stop", port)


# -- tiny images for the OCI tests ------------------------------------------------------------------

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (scripts/install-deps.sh)
CREATED = "2026-11-25T00:00:00Z"
MTIME = 1795564800  # CREATED as epoch seconds


def make_tiny_image(cache: Cache, staging: Path, *, text: str = "hello\n", busybox: bool = False) -> Image:
    """One layer: /hello.txt, /tmp (1777), and optionally a static /bin/busybox entrypoint."""
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "hello.txt").write_text(text)
    (staging / "tmp").mkdir(exist_ok=True)
    os.chmod(staging / "tmp", 0o1777)
    spec = ImageSpec(env={"PATH": "/bin"}, labels={"org.opencontainers.image.title": "tiny"})
    if busybox:
        if not BUSYBOX.is_file():
            unavailable(f"{BUSYBOX} missing: run scripts/install-deps.sh (busybox-static)")
        (staging / "bin").mkdir(exist_ok=True)
        shutil.copy2(BUSYBOX, staging / "bin" / "busybox")
        spec = ImageSpec(env={"PATH": "/bin"}, entrypoint=("/bin/busybox",), cmd=("echo", "ok"))
    layer = write_layer(cache, staging, mtime=MTIME)
    return build_image([("tiny", layer)], config=spec, created=CREATED,
                       annotations={"org.opencontainers.image.created": CREATED})


@pytest.fixture()
def tiny_image() -> Callable[..., Image]:
    """``tiny_image(cache, staging_dir, text=..., busybox=False) -> Image`` (see make_tiny_image)."""
    return make_tiny_image


def skopeo(*args: str) -> str:
    """Run skopeo (the independent checker of what we write); skip when it is not installed."""
    need_tool("skopeo")
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture()
def cache(tmp_path: Path) -> Cache:
    """A fresh, empty content-addressed cache for one test."""
    return Cache(tmp_path / "cache")
