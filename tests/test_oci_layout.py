"""Config/manifest JSON, the OCI layout directory and the docker archive, checked by real tools."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from lockbuild.errors import BuildError, IntegrityError, PublishError
from lockbuild.fetch.cache import Cache
from lockbuild.oci.docker_archive import split_tag, write_docker_archive
from lockbuild.oci.image import Image, ImageSpec, build_image
from lockbuild.oci.layout import read_oci_layout, write_oci_layout
from tests.conftest_services import need_root, need_tool

pytest_plugins = ["tests.conftest_services"]

CREATED = "2026-11-25T00:00:00Z"  # what the tiny_image fixture stamps
TinyImage = Callable[..., Image]


def tool(name: str) -> str:
    need_tool(name)
    return str(shutil.which(name))


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120).stdout


# -- config and manifest ---------------------------------------------------------------------------


def test_config_and_manifest_are_canonical_and_clock_free(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    first = tiny_image(cache, tmp_path / "a")
    again = tiny_image(cache, tmp_path / "b")
    assert (first.config, first.manifest) == (again.config, again.manifest)
    config = json.loads(first.config)
    assert first.config == json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    assert config["created"] == CREATED and config["history"][0]["created"] == CREATED
    assert config["history"][0]["created_by"] == "lockbuild: tiny"
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert config["rootfs"] == {"type": "layers", "diff_ids": [first.layers[0].diff_id]}
    manifest = json.loads(first.manifest)
    assert manifest["config"]["digest"] == first.config_digest == first.image_id
    assert manifest["annotations"] == {"org.opencontainers.image.created": CREATED}


def test_compressor_changes_the_manifest_but_not_the_image_id(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    image = tiny_image(cache, tmp_path / "a")
    other = replace(image.layers[0], compressor="gzip level 1 (zlib-ng 2.1)")
    rebuilt = build_image([("tiny", other)], config=ImageSpec(env={"PATH": "/bin"},
                          labels={"org.opencontainers.image.title": "tiny"}), annotations={}, created=CREATED)
    assert rebuilt.config_digest == image.config_digest
    layer_annotations = json.loads(rebuilt.manifest)["layers"][0]["annotations"]
    assert layer_annotations["lockbuild.layer.compressor"] == "gzip level 1 (zlib-ng 2.1)"


def test_build_image_refuses_no_layers_and_duplicate_names(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    layer = tiny_image(cache, tmp_path / "a").layers[0]
    with pytest.raises(BuildError):
        build_image([], config=ImageSpec(), annotations={}, created=CREATED)
    with pytest.raises(BuildError):
        build_image([("x", layer), ("x", layer)], config=ImageSpec(), annotations={}, created=CREATED)


# -- OCI layout --------------------------------------------------------------------------------------


def test_layout_is_accepted_by_skopeo_and_umoci(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    image = tiny_image(cache, tmp_path / "staging")
    out = write_oci_layout(image, tmp_path / "layout", cache, ref_name="v1")
    inspected = json.loads(run(tool("skopeo"), "inspect", f"oci:{out}:v1"))
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["Layers"] == [image.layers[0].digest]
    assert run(tool("umoci"), "ls", "--layout", str(out)).split() == ["v1"]
    run("umoci", "stat", "--image", f"{out}:v1")
    need_root("umoci unpack without --rootless")
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{out}:v1", str(bundle))
    rootfs = bundle / "rootfs"
    assert (rootfs / "hello.txt").read_text() == "hello\n"
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_layout_blobs_are_hardlinked_from_the_cache(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    image = tiny_image(cache, tmp_path / "staging")
    out = write_oci_layout(image, tmp_path / "layout", cache)
    layer = image.layers[0]
    blob = out / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
    assert blob.stat().st_ino == layer.path(cache).stat().st_ino
    index = json.loads((out / "index.json").read_text())
    assert "annotations" not in index["manifests"][0], "no ref name when none is given"


def test_layout_copies_blobs_across_filesystems(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the cache")
    image = tiny_image(cache, tmp_path / "staging")
    dest = shm / f"lockbuild-test-{os.getpid()}"
    try:
        out = write_oci_layout(image, dest, cache, ref_name="v1")
        blob = out / "blobs" / "sha256" / image.layers[0].digest.removeprefix("sha256:")
        assert blob.stat().st_ino != image.layers[0].path(cache).stat().st_ino
        assert read_oci_layout(out, "v1").manifest_digest == image.manifest_digest
        assert blob.read_bytes() == image.layers[0].path(cache).read_bytes()
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_layout_replaces_an_old_layout_but_never_another_directory(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    dest = tmp_path / "layout"
    write_oci_layout(tiny_image(cache, tmp_path / "a", text="old\n"), dest, cache, ref_name="v1")
    new = tiny_image(cache, tmp_path / "b", text="new\n")
    write_oci_layout(new, dest, cache, ref_name="v1")
    assert read_oci_layout(dest).manifest_digest == new.manifest_digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "cache", "layout"], "no temp dirs left"
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(PublishError) as err:
        write_oci_layout(new, precious, cache)
    assert err.value.hint and (precious / "notes.txt").exists()


def test_read_layout_returns_what_was_written_and_detects_tampering(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    image = tiny_image(cache, tmp_path / "staging")
    out = write_oci_layout(image, tmp_path / "layout", cache, ref_name="v1")
    got = read_oci_layout(out, "v1")
    assert (got.manifest, got.config, got.ref_name) == (image.manifest, image.config, "v1")
    assert list(got.layer_paths) == [image.layers[0].digest]
    config_blob = out / "blobs" / "sha256" / image.config_digest.removeprefix("sha256:")
    config_blob.unlink()
    config_blob.write_bytes(image.config.replace(b"65532", b"0"))
    with pytest.raises(IntegrityError):
        read_oci_layout(out)
    with pytest.raises(IntegrityError):
        read_oci_layout(tmp_path / "staging")
    index = json.loads((out / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../etc/passwd"
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(IntegrityError, match="not a sha256 digest"):
        read_oci_layout(out)


# -- docker archive ----------------------------------------------------------------------------------


def test_docker_archive_is_reproducible_and_readable_by_skopeo(
    tmp_path: Path, cache: Cache, tiny_image: TinyImage
) -> None:
    image = tiny_image(cache, tmp_path / "staging")
    a = write_docker_archive(image, tmp_path / "a.tar", cache, repo_tag="lockbuild/tiny:v1")
    b = write_docker_archive(image, tmp_path / "b.tar", cache, repo_tag="lockbuild/tiny:v1")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert names[-3:] == ["index.json", "manifest.json", "oci-layout"]
    assert manifest == [{"Config": f"blobs/sha256/{image.config_digest[7:]}",
                         "RepoTags": ["lockbuild/tiny:v1"],
                         "Layers": [f"blobs/sha256/{image.layers[0].digest[7:]}"]}]
    as_docker = json.loads(run(tool("skopeo"), "inspect", f"docker-archive:{a}"))
    as_oci = json.loads(run("skopeo", "inspect", f"oci-archive:{a}"))
    assert as_oci["Digest"] == image.manifest_digest
    assert as_oci["Layers"] == [image.layers[0].digest]
    assert as_docker["Layers"] == [image.layers[0].diff_id], "docker-archive: skopeo names layers by diff_id"


@pytest.mark.parametrize(("repo_tag", "expected"), [
    ("model", ("model", "latest")),
    ("model:v1", ("model", "v1")),
    ("127.0.0.1:5000/model", ("127.0.0.1:5000/model", "latest")),
    ("127.0.0.1:5000/model:v1", ("127.0.0.1:5000/model", "v1")),
])
def test_split_tag_ignores_a_port_colon(repo_tag: str, expected: tuple[str, str]) -> None:
    assert split_tag(repo_tag) == expected
