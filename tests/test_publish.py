"""Every publisher of `lockbuild image` (lockbuild/publish/), each into a real target, read back by a
tool that is not lockbuild: the OCI layout by skopeo and umoci, the docker archive by skopeo and
umoci, the engine by dockerd itself (the image runs), the registry by skopeo; attachments become
referrers where the target has a place for them. ``publish_all`` composes them as the CLI does."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from lockbuild.audit.attach import layout_referrers, list_referrers
from lockbuild.fetch.cache import Cache
from lockbuild.oci.image import Image
from lockbuild.publish import Attachment, publish_all
from lockbuild.publish.archive import ArchivePublisher
from lockbuild.publish.engine import EnginePublisher
from lockbuild.publish.layout import LayoutPublisher
from lockbuild.publish.registry import RegistryPublisher
from tests.conftest_services import make_tiny_image, need_root, need_tool, skopeo

SBOM = Attachment("application/spdx+json", b'{"spdxVersion": "SPDX-2.3"}')
PROVENANCE = Attachment("application/vnd.in-toto+json", b'{"_type": "https://in-toto.io/Statement/v1"}')
TAG = "lockbuild-test/publish:v1"


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Image, Cache]:
    cache = Cache(tmp_path / "cache")
    return make_tiny_image(cache, tmp_path / "staging", text="published\n", busybox=True), cache


def _umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    need_tool("umoci")
    need_root("umoci unpack without --rootless")
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True, capture_output=True,
                   timeout=120)
    return bundle / "rootfs"


def test_layout_publisher_writes_a_layout_skopeo_and_umoci_read_with_referrers(
        built: tuple[Image, Cache], tmp_path: Path) -> None:
    image, cache = built
    dest = tmp_path / "oci"
    assert LayoutPublisher(dest, ref_name="v1").publish(image, cache, [SBOM, PROVENANCE]) == {"oci": str(dest)}
    raw = skopeo("inspect", "--raw", f"oci:{dest}:v1")
    assert raw.encode() == image.manifest  # the manifest bytes, as built
    config = json.loads(skopeo("inspect", "--config", f"oci:{dest}:v1"))
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    rootfs = _umoci_unpack(dest, "v1", tmp_path / "bundle")
    assert (rootfs / "hello.txt").read_text() == "published\n"
    refs = layout_referrers(dest, image.manifest_digest)
    assert sorted(r["artifactType"] for r in refs) == sorted([SBOM.artifact_type, PROVENANCE.artifact_type])


def test_archive_publisher_writes_a_docker_archive_skopeo_and_umoci_read(
        built: tuple[Image, Cache], tmp_path: Path) -> None:
    image, cache = built
    dest = tmp_path / "image.tar"
    assert ArchivePublisher(dest, TAG).publish(image, cache, [SBOM]) == {"docker_archive": str(dest)}
    config = json.loads(skopeo("inspect", "--config", f"docker-archive:{dest}"))
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.layers]
    assert config["config"]["Entrypoint"] == ["/bin/busybox"]
    skopeo("copy", f"docker-archive:{dest}", f"oci:{tmp_path / 'copied'}:v1")  # every blob read and checked
    rootfs = _umoci_unpack(tmp_path / "copied", "v1", tmp_path / "bundle")
    assert (rootfs / "hello.txt").read_text() == "published\n"


@pytest.fixture()
def engine(docker_engine: docker.DockerClient) -> Iterator[docker.DockerClient]:
    yield docker_engine
    for img in docker_engine.images.list(name=TAG.split(":")[0]):
        docker_engine.images.remove(img.id, force=True)


def test_engine_publisher_loads_an_image_the_engine_runs(built: tuple[Image, Cache],
                                                         engine: docker.DockerClient) -> None:
    image, cache = built
    result = EnginePublisher(TAG).publish(image, cache, [SBOM])  # $DOCKER_HOST, else lockbuild's engine
    assert result == {"loaded": image.config_digest, "tag": TAG}  # the engine's image ID is the config digest
    assert engine.images.get(TAG).attrs["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
    assert engine.containers.run(TAG, network_mode="host", remove=True) == b"ok\n"


def test_registry_publisher_pushes_the_image_and_its_referrers(built: tuple[Image, Cache], registry: str) -> None:
    image, cache = built
    ref = f"{registry}/publish/tiny:v1"
    result = RegistryPublisher(ref).publish(image, cache, [SBOM, PROVENANCE])
    assert result["pushed"] == ref and len(result["referrers"]) == 2
    assert result["push"]["digest"] == image.manifest_digest and result["push"]["uploaded"] == 2  # layer, config
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert raw.encode() == image.manifest
    got = list_referrers(ref, image.manifest_digest)
    assert sorted(r["digest"] for r in got) == sorted(result["referrers"])
    for digest in result["referrers"]:
        artifact = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry}/publish/tiny@{digest}"))
        assert artifact["subject"]["digest"] == image.manifest_digest
    again = RegistryPublisher(ref).publish(image, cache, [])  # every blob is there: nothing uploaded again
    assert (again["push"]["uploaded"], again["push"]["skipped"]) == (0, 2) and "referrers" not in again


def test_publish_all_runs_every_publisher_in_order_and_merges_their_reports(
        built: tuple[Image, Cache], tmp_path: Path, registry: str, engine: docker.DockerClient) -> None:
    image, cache = built
    ref = f"{registry}/publish/all:v1"
    result = publish_all([LayoutPublisher(tmp_path / "oci", ref_name="v1"), RegistryPublisher(ref),
                          ArchivePublisher(tmp_path / "image.tar", TAG), EnginePublisher(TAG)],
                         image, cache, [SBOM])
    assert set(result) == {"oci", "pushed", "push", "referrers", "docker_archive", "loaded", "tag"}
    assert result["loaded"] == image.config_digest == engine.images.get(TAG).id
    assert skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").encode() == image.manifest
    assert skopeo("inspect", "--raw", f"oci:{tmp_path / 'oci'}:v1").encode() == image.manifest
    assert (tmp_path / "image.tar").is_file() and len(result["referrers"]) == 1
