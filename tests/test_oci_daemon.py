"""Loading into a real dockerd (scripts/dockerd.sh) and running the image as uid 65532."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from lockbuild.errors import EngineUnavailable
from lockbuild.fetch.cache import Cache
from lockbuild.oci import daemon
from lockbuild.oci.docker_archive import write_docker_archive
from lockbuild.oci.image import Image

pytest_plugins = ["tests.conftest_services"]

TinyImage = Callable[..., Image]
TAG = "lockbuild-test/busybox:v1"


@pytest.fixture()
def loaded(docker_engine: docker.DockerClient, tmp_path: Path,
           tiny_image: TinyImage) -> Iterator[tuple[Image, str]]:
    cache = Cache(tmp_path / "cache")
    image = tiny_image(cache, tmp_path / "staging", busybox=True)
    image_id = daemon.load(image, cache, docker_engine, TAG)
    yield image, image_id
    docker_engine.images.remove(TAG, force=True)


def test_loaded_image_id_is_the_config_digest(loaded: tuple[Image, str],
                                              docker_engine: docker.DockerClient) -> None:
    image, image_id = loaded
    assert image_id == image.config_digest
    attrs = docker_engine.images.get(TAG).attrs
    assert attrs["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
    assert attrs["Config"]["User"] == "65532:65532"


def test_image_runs_as_nonroot_with_host_networking(loaded: tuple[Image, str],
                                                    docker_engine: docker.DockerClient) -> None:
    out = docker_engine.containers.run(TAG, network_mode="host", remove=True)
    assert out == b"ok\n"
    ids = docker_engine.containers.run(TAG, ["sh", "-c", "id -u; id -g; ls -ld /tmp"],
                                       network_mode="host", remove=True).decode().split("\n")
    assert ids[:2] == ["65532", "65532"] and ids[2].startswith("drwxrwxrwt")


def test_loading_twice_gives_the_same_id(loaded: tuple[Image, str], docker_engine: docker.DockerClient,
                                         tmp_path: Path, tiny_image: TinyImage) -> None:
    cache = Cache(tmp_path / "cache2")
    again = tiny_image(cache, tmp_path / "staging2", busybox=True)
    assert daemon.load(again, cache, docker_engine, TAG) == loaded[1]
    assert not list(cache.tmpdir().iterdir()), "the temporary archive is removed"


def test_docker_archive_loads_with_the_docker_cli_too(docker_engine: docker.DockerClient, tmp_path: Path,
                                                     tiny_image: TinyImage) -> None:
    cache = Cache(tmp_path / "cache")
    image = tiny_image(cache, tmp_path / "staging", text="cli\n")
    archive = write_docker_archive(image, tmp_path / "img.tar", cache, repo_tag="lockbuild-test/cli:v1")
    with open(archive, "rb") as f:
        (img,) = docker_engine.images.load(f)
    try:
        assert img.id == image.config_digest
        assert img.tags == ["lockbuild-test/cli:v1"]
    finally:
        docker_engine.images.remove("lockbuild-test/cli:v1", force=True)


def test_no_engine_is_engine_unavailable_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable) as err:
        daemon.engine(f"unix://{tmp_path}/none.sock")
    assert "scripts/dockerd.sh start" in (err.value.hint or "")
    assert err.value.exit_code == 16


def test_discovery_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert daemon.candidate_hosts() == ["tcp://127.0.0.1:2375", daemon.LOCKBUILD_DOCKER_HOST,
                                        daemon.SYSTEM_DOCKER_HOST]
    assert daemon.candidate_hosts("unix:///x.sock") == ["unix:///x.sock"]
    monkeypatch.delenv("DOCKER_HOST")
    assert daemon.candidate_hosts()[0] == daemon.LOCKBUILD_DOCKER_HOST
