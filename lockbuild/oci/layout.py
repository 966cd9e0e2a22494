"""OCI image layout directory: write (atomically, blobs hardlinked from the cache) and read.

    DEST/oci-layout                     {"imageLayoutVersion":"1.0.0"}
    DEST/index.json                     one manifest descriptor (+ ref.name annotation)
    DEST/blobs/sha256/<hex>             manifest, config, layers

``layout_files`` is the one list of what a layout holds; the docker archive writer tars the
same list (plus manifest.json), so both outputs always agree.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lockbuild.digest import to_hex
from lockbuild.errors import IntegrityError, PublishError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import check_bytes, sha256_bytes
from lockbuild.oci.image import (
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    BlobSource,
    Image,
    blob_sources,
    canonical_json,
)

REF_NAME = "org.opencontainers.image.ref.name"
OCI_LAYOUT = canonical_json({"imageLayoutVersion": "1.0.0"})


def blob_name(digest: str) -> str:
    """blobs/sha256/<hex>; anything but a sha256 digest (e.g. "sha256:../x") is refused."""
    try:
        return f"blobs/sha256/{to_hex(str(digest))}"
    except IntegrityError as e:
        raise IntegrityError(e.message, hint="the image metadata is corrupt") from None


def index_json(image: Image, annotations: Mapping[str, str] | None) -> bytes:
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [image.manifest_descriptor(annotations)],
    }
    return canonical_json(index)


def layout_files(image: Image, cache: Cache, annotations: Mapping[str, str] | None) -> dict[str, BlobSource]:
    """Relative path -> content of every file in the layout, in byte-sorted path order.

    ``annotations`` go on the manifest's entry in index.json (e.g. the ref name).
    """
    files: dict[str, BlobSource] = {
        "oci-layout": OCI_LAYOUT,
        "index.json": index_json(image, annotations),
        blob_name(image.manifest_digest): image.manifest,
    }
    for digest, content in blob_sources(image, cache).items():
        files[blob_name(digest)] = content
    return {k: files[k] for k in sorted(files, key=str.encode)}


# -- writing ---------------------------------------------------------------------------------


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hardlink a cache blob (read-only, content-addressed) or copy it across filesystems."""
    try:
        os.link(src, dest)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o444)


def _write_file(dest: Path, content: BlobSource) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        _link_or_copy(content, dest)
    else:
        dest.write_bytes(content)


def _check_replaceable(dest: Path) -> None:
    """Only ever replace an OCI layout (or an empty dir): never delete a user's directory."""
    if not dest.exists() and not dest.is_symlink():
        return
    is_dir = dest.is_dir() and not dest.is_symlink()
    if is_dir and ((dest / "oci-layout").exists() or not any(dest.iterdir())):
        return
    raise PublishError(f"{dest} exists and is not an OCI image layout",
                       hint="choose a new output directory; lockbuild only replaces its own layouts")


def _swap_into_place(tmp: Path, dest: Path) -> None:
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / "layout")
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def write_oci_layout(image: Image, dest: Path, cache: Cache, *, ref_name: str | None = None) -> Path:
    """Write the image as an OCI layout at ``dest``, replacing an old layout only on success."""
    dest = dest.absolute()
    _check_replaceable(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        annotations = {REF_NAME: ref_name} if ref_name else None
        for rel, content in layout_files(image, cache, annotations).items():
            _write_file(tmp / rel, content)
        os.chmod(tmp, 0o755)
        _swap_into_place(tmp, dest)
    except OSError as e:
        raise PublishError(f"cannot write OCI layout {dest}: {e}",
                           hint="check free space and permissions of the output directory") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return dest


# -- reading (for verify) ----------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutImage:
    """What a layout holds for one manifest. Layer blobs are paths: the verifier hashes them."""

    manifest: bytes
    config: bytes
    manifest_digest: str
    ref_name: str | None
    layer_paths: Mapping[str, Path]  # layer digest -> blob path

    def manifest_json(self) -> dict:
        return json.loads(self.manifest)

    def config_json(self) -> dict:
        return json.loads(self.config)


def _load_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise IntegrityError(f"{path.parent} is not an OCI image layout (no {path.name})",
                             hint="point at a directory written by `lockbuild image`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{what} {path} is not valid JSON: {e}",
                             hint="the layout is corrupt; rebuild it") from None


def _read_blob(root: Path, digest: str, what: str) -> bytes:
    path = root / blob_name(digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{what} blob {digest} is missing from {root}",
                             hint="the layout is incomplete; rebuild it") from None
    return check_bytes(data, digest, f"{what} blob {path}", "the layout was modified after it was written; rebuild it")


def _pick_manifest(index: dict, ref_name: str | None, root: Path) -> dict:
    manifests = [m for m in index.get("manifests", []) if m.get("mediaType") == MANIFEST_MEDIA_TYPE
                 and not m.get("artifactType")]  # attached SBOM/provenance are not images
    if ref_name is not None:
        manifests = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == ref_name]
    if len(manifests) != 1:
        which = f" named {ref_name!r}" if ref_name else ""
        raise IntegrityError(f"{root} holds {len(manifests)} image manifests{which}, expected one",
                             hint="pass the ref name of the image to read")
    return manifests[0]


def read_oci_layout(root: Path, ref_name: str | None = None) -> LayoutImage:
    """Read one image from a layout, checking the manifest and config digests."""
    _load_json(root / "oci-layout", "oci-layout")
    desc = _pick_manifest(_load_json(root / "index.json", "index"), ref_name, root)
    manifest = _read_blob(root, desc["digest"], "manifest")
    m = json.loads(manifest)
    config = _read_blob(root, m["config"]["digest"], "config")
    paths = {}
    for layer in m.get("layers", []):
        path = root / blob_name(layer["digest"])
        if not path.is_file():
            raise IntegrityError(f"layer blob {layer['digest']} is missing from {root}",
                                 hint="the layout is incomplete; rebuild it")
        paths[layer["digest"]] = path
    name = desc.get("annotations", {}).get(REF_NAME)
    return LayoutImage(manifest=manifest, config=config, manifest_digest=sha256_bytes(manifest),
                       ref_name=name, layer_paths=paths)
