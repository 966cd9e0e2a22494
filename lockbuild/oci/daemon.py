"""Docker engine access: find one that answers, and load an image into it.

Discovery order: the explicit ``docker_host``; else ``$DOCKER_HOST``, then lockbuild's own
engine (``scripts/dockerd.sh start``: unix:///run/lockbuild-docker.sock), then the system one
(unix:///var/run/docker.sock). Loading streams a docker archive written to a temp file in the
cache's tmp dir (same filesystem, removed afterwards); nothing is held in memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from lockbuild.errors import EngineUnavailable, PublishError
from lockbuild.fetch.cache import Cache
from lockbuild.oci.docker_archive import write_docker_archive
from lockbuild.oci.image import Image

LOCKBUILD_DOCKER_HOST = "unix:///run/lockbuild-docker.sock"
SYSTEM_DOCKER_HOST = "unix:///var/run/docker.sock"
START_HINT = ("run `scripts/dockerd.sh start` (as root) and export "
              f"DOCKER_HOST={LOCKBUILD_DOCKER_HOST}, or point DOCKER_HOST at a running engine")
LOAD_TIMEOUT = 900  # seconds: loading a ~1 GB layer on a slow disk


def candidate_hosts(docker_host: str | None = None) -> list[str]:
    if docker_host:
        return [docker_host]
    hosts = [os.environ.get("DOCKER_HOST", ""), LOCKBUILD_DOCKER_HOST, SYSTEM_DOCKER_HOST]
    return list(dict.fromkeys(h for h in hosts if h))


def _socket_missing(host: str) -> bool:
    return host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists()


def _connect(host: str) -> docker.DockerClient:
    client = docker.DockerClient(base_url=host, version="auto", timeout=LOAD_TIMEOUT)
    client.ping()
    return client


def engine(docker_host: str | None = None) -> docker.DockerClient:
    """A client for the first engine that answers a ping; EngineUnavailable if none does."""
    tried = []
    for host in candidate_hosts(docker_host):
        if _socket_missing(host):
            tried.append(f"{host} (no socket)")
            continue
        try:
            return _connect(host)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            tried.append(f"{host} ({type(e).__name__})")
    raise EngineUnavailable("no Docker engine answers: tried " + ", ".join(tried), hint=START_HINT)


def load(image: Image, cache: Cache, client: docker.DockerClient, repo_tag: str) -> str:
    """Load ``image`` as ``repo_tag``; returns the engine's image ID (== the config digest)."""
    fd, tmp = tempfile.mkstemp(prefix="load-", suffix=".tar", dir=cache.tmpdir())
    os.close(fd)
    try:
        write_docker_archive(image, Path(tmp), cache, repo_tag=repo_tag)
        with open(tmp, "rb") as f:
            loaded = client.images.load(f)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise PublishError(f"docker load of {repo_tag} failed: {e}",
                           hint="check the engine's log (scripts/dockerd.sh writes "
                           "/var/tmp/lockbuild-docker/dockerd.log) and free space") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    ids = {img.id for img in loaded}
    if ids != {image.image_id}:
        raise PublishError(f"the engine loaded {sorted(ids)}, expected {image.image_id}",
                           hint="the engine rewrote the image; use a Docker engine with the classic "
                           "image store or load the OCI layout with skopeo")
    return image.image_id
