"""Where an image to verify comes from: an OCI layout dir, a docker-archive tarball, a running
Docker engine, or a registry reference. Each becomes the same small interface: the config,
the manifest's layer descriptors (when known) and a way to open each layer blob as a stream.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lockbuild.errors import IntegrityError, VerifyFailed
from lockbuild.fsutil import sha256_bytes


@dataclass
class ImageSource:
    description: str
    config: bytes
    manifest: bytes | None  # None for docker archives without an OCI manifest
    layer_digests: list[str | None]  # compressed digest per layer when a manifest names it
    _open: list  # callables returning a binary stream per layer
    _cleanup: list = field(default_factory=list)

    @property
    def config_json(self) -> dict:
        return json.loads(self.config)

    @property
    def config_digest(self) -> str:
        return "sha256:" + sha256_bytes(self.config)

    def open_layer(self, i: int) -> BinaryIO:
        return self._open[i]()

    def close(self) -> None:
        for fn in self._cleanup:
            fn()


def from_layout(path: Path) -> ImageSource:
    from lockbuild.oci.layout import read_oci_layout

    img = read_oci_layout(path)
    m = img.manifest_json()
    digests = [layer["digest"] for layer in m["layers"]]
    opens = [(lambda p=img.layer_paths[d]: open(p, "rb")) for d in digests]
    return ImageSource(f"OCI layout {path}", img.config, img.manifest, list(digests), opens)


def from_docker_archive(path: Path) -> ImageSource:
    tar = tarfile.open(path, "r:")
    try:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    except (KeyError, AttributeError, json.JSONDecodeError) as e:
        tar.close()
        raise IntegrityError(f"{path} is not a docker-archive (manifest.json: {e})") from None
    entry = manifest[0]
    config = tar.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
    oci_manifest = None
    digests: list[str | None] = [None] * len(entry["Layers"])
    with contextlib.suppress(KeyError, AttributeError, json.JSONDecodeError):
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        mdesc = index["manifests"][0]["digest"].split(":", 1)[1]
        oci_manifest = tar.extractfile(f"blobs/sha256/{mdesc}").read()  # type: ignore[union-attr]
    opens = [(lambda n=name: tar.extractfile(n)) for name in entry["Layers"]]
    return ImageSource(f"docker-archive {path}", config, oci_manifest, digests, opens, [tar.close])


def from_daemon(ref: str) -> ImageSource:
    from lockbuild.oci.daemon import engine

    client = engine()
    try:
        image = client.images.get(ref)
    except Exception as e:
        raise VerifyFailed(f"the Docker engine has no image {ref}: {e}") from None
    tmp = Path(tempfile.mkdtemp(prefix="lockbuild-verify-"))
    tar_path = tmp / "image.tar"
    with open(tar_path, "wb") as f:
        for chunk in image.save(named=False):
            f.write(chunk)
    src = from_docker_archive(tar_path)
    src.description = f"Docker engine image {ref}"
    src._cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return src


def from_registry(ref: str) -> ImageSource:
    from lockbuild.oci import registry

    tmp = Path(tempfile.mkdtemp(prefix="lockbuild-verify-"))
    manifest, config = registry.pull_manifest(ref)
    m = json.loads(manifest)
    digests = [layer["digest"] for layer in m["layers"]]
    paths = []
    for d in digests:
        p = tmp / d.replace(":", "_")
        with open(p, "wb") as f:
            registry.fetch_blob(ref, d, f)
        paths.append(p)
    opens = [(lambda p=p: open(p, "rb")) for p in paths]
    return ImageSource(f"registry {ref}", config, manifest, list(digests), opens,
                       [lambda: shutil.rmtree(tmp, ignore_errors=True)])


def open_image(image: str) -> ImageSource:
    p = Path(image)
    if p.is_dir():
        return from_layout(p)
    if p.is_file():
        return from_docker_archive(p)
    if image.startswith("docker://"):
        return from_registry(image.removeprefix("docker://"))
    if image.startswith("docker-daemon:"):
        return from_daemon(image.removeprefix("docker-daemon:"))
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return from_registry(image)
    return from_daemon(image)


@contextlib.contextmanager
def opened(image: str) -> Iterator[ImageSource]:
    src = open_image(image)
    try:
        yield src
    finally:
        src.close()
