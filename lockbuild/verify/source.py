"""Where an image to verify comes from: an OCI layout dir, a docker-archive tarball, a running
Docker engine, or a registry reference. Each becomes the same small interface: the config,
the manifest's layer descriptors (when known) and a way to open each layer blob as a stream.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

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
    problems: list[tuple[str, str, str, str]] = field(default_factory=list)  # path, expected, actual, why

    @property
    def config_json(self) -> dict:
        return json.loads(self.config)

    @property
    def config_digest(self) -> str:
        return sha256_bytes(self.config)

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


class _Slice(io.RawIOBase):
    """One member of a tar file, read through its own file handle (safe across threads)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.f.seek(offset)
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), self.left)
        if n <= 0:
            return 0
        data = self.f.read(n)
        buf[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def _archive_json(tar: tarfile.TarFile, name: str, path: Path) -> Any:
    try:
        return json.loads(tar.extractfile(name).read())  # type: ignore[union-attr]
    except (KeyError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path} is not a docker-archive ({name}: {e})",
                             hint="pass an archive written by `lockbuild image --docker-archive` or `docker save`"
                             ) from None


def from_docker_archive(path: Path) -> ImageSource:
    """A `docker save` tarball. Engines load ``manifest.json``; OCI tools read ``index.json``. When
    both are present they must name the same image (config and layers), else the archive is refused
    with a finding: an archive whose two views differ would verify one image and run another."""
    with tarfile.open(path, "r:") as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isreg()}
        manifest = _archive_json(tar, "manifest.json", path)
        if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
            raise IntegrityError(f"{path}: manifest.json must name exactly one image",
                                 hint="verify one image per archive (docker save one reference)")
        entry = manifest[0]
        try:
            config_name = str(entry["Config"])
            layer_names = [str(n) for n in entry["Layers"]]
            config = tar.extractfile(members[config_name]).read()  # type: ignore[union-attr]
        except (KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"{path}: manifest.json names a missing member: {e}") from None
        problems: list[tuple[str, str, str, str]] = []
        oci_manifest = None
        digests: list[str | None] = [None] * len(layer_names)
        if "index.json" in members:
            index = _archive_json(tar, "index.json", path)
            try:
                mdesc = index["manifests"][0]["digest"]
                oci_manifest = tar.extractfile(members[f"blobs/sha256/{mdesc.split(':', 1)[1]}"]).read()  # type: ignore[union-attr]
                if sha256_bytes(oci_manifest) != mdesc:
                    problems.append(("index.json", mdesc, sha256_bytes(oci_manifest),
                                     "the manifest blob index.json names does not match its digest"))
                om = json.loads(oci_manifest)
                oci_config = str(om["config"]["digest"])
                oci_layers = [str(d["digest"]) for d in om["layers"]]
            except (KeyError, IndexError, TypeError, AttributeError, json.JSONDecodeError) as e:
                raise IntegrityError(f"{path}: index.json does not lead to an image manifest: {e}",
                                     hint="the archive is damaged; rebuild it") from None
            if len(index.get("manifests", [])) != 1:
                problems.append(("index.json", "1 manifest", f"{len(index.get('manifests', []))} manifests",
                                 "index.json must name exactly one image"))
            found_config = sha256_bytes(config)
            if oci_config != found_config:
                problems.append(("manifest.json Config", oci_config, found_config,
                                 "index.json and manifest.json name different image configs"))
            if len(oci_layers) != len(layer_names):
                problems.append(("manifest.json Layers", f"{len(oci_layers)} layers (index.json)",
                                 f"{len(layer_names)} layers", "index.json and manifest.json list different layers"))
            else:
                digests = list(oci_layers)  # each layer manifest.json names must hash to index.json's digest
        try:
            slices = [(members[n].offset_data, members[n].size) for n in layer_names]
        except KeyError as e:
            raise IntegrityError(f"{path}: manifest.json names a missing layer {e}") from None
    opens = [(lambda o=o, n=n: _Slice(path, o, n)) for o, n in slices]
    src = ImageSource(f"docker-archive {path}", config, oci_manifest, digests, opens)
    src.problems.extend(problems)
    return src


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
