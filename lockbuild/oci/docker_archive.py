"""`docker load` archive: the OCI layout as a tar, plus Docker's manifest.json.

One file serves every loader: Docker's classic loader (20.10 here) reads manifest.json, whose
Config/Layers paths point straight at the OCI blobs; Docker >= 25 and containerd read
index.json; skopeo reads it as ``docker-archive:`` or ``oci-archive:``. Layers stay gzip (the
cache blobs, copied as-is): Docker's loader decompresses them and checks each diff_id against
the config, so nothing is decompressed or re-hashed on our side.

``layout_archive`` writes the same kind of tar for an OCI layout directory as found on disk (smoke
loads an ``--oci`` output this way): every file as it is, plus manifest.json. One writer for both.

The outer tar follows the layer recipe (sorted, parents first, 0:0, fixed modes) with every
mtime set to the image's ``created`` time, so the archive is byte-for-byte reproducible too.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lockbuild.errors import PublishError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import atomic_writer
from lockbuild.oci.image import BlobSource, Image, canonical_json
from lockbuild.oci.layout import REF_NAME, blob_name, layout_files, read_oci_layout
from lockbuild.oci.tar import new_tarinfo, open_tar

CONTAINERD_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class Opaque:
    """A member whose bytes are judged elsewhere: its size and a reader. verify writes the archive
    lockbuild would write for an image with this (found) layer in place, to compare it byte for byte."""

    size: int
    open: Callable[[], io.RawIOBase]


def split_tag(repo_tag: str) -> tuple[str, str]:
    """("repo", "tag") of "repo[:tag]"; a port colon is not a tag separator."""
    repo, sep, tag = repo_tag.rpartition(":")
    if not sep or "/" in tag:
        return repo_tag, "latest"
    return repo, tag


def docker_manifest(config_digest: str, layer_digests: Sequence[str], repo_tag: str) -> bytes:
    entry = {
        "Config": blob_name(config_digest),
        "RepoTags": [repo_tag],
        "Layers": [blob_name(d) for d in layer_digests],
    }
    return canonical_json([entry])


def archive_files(image: Image, cache: Cache, repo_tag: str) -> dict[str, BlobSource]:
    repo, tag = split_tag(repo_tag)
    annotations = {REF_NAME: tag, CONTAINERD_NAME: f"{repo}:{tag}"}
    files = layout_files(image, cache, annotations)
    files["manifest.json"] = docker_manifest(image.config_digest, [layer.digest for layer in image.layers],
                                             f"{repo}:{tag}")
    return files


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def created_epoch(config: bytes) -> int:
    created = json.loads(config).get("created", "")
    try:
        return int(datetime.fromisoformat(created).timestamp())
    except (TypeError, ValueError):
        return 0


def _write_archive(tar: tarfile.TarFile, files: Mapping[str, BlobSource | Opaque], mtime: int,
                   on_member: Callable[[str], None] = lambda _rel: None) -> None:
    dirs_done: set[str] = set()
    for rel in sorted(files, key=str.encode):
        content = files[rel]
        for d in _parents(rel):
            if d not in dirs_done:
                tar.addfile(new_tarinfo(d, tarfile.DIRTYPE, mode=0o755, mtime=mtime))
                dirs_done.add(d)
        on_member(rel)
        if isinstance(content, Opaque):
            with content.open() as f:
                tar.addfile(new_tarinfo(rel, tarfile.REGTYPE, mode=0o644, mtime=mtime, size=content.size), f)
        elif isinstance(content, Path):
            size = content.stat().st_size
            with open(content, "rb") as f:
                tar.addfile(new_tarinfo(rel, tarfile.REGTYPE, mode=0o644, mtime=mtime, size=size), f)
        else:
            info = new_tarinfo(rel, tarfile.REGTYPE, mode=0o644, mtime=mtime, size=len(content))
            tar.addfile(info, io.BytesIO(content))


def write_archive(files: dict[str, BlobSource], dest_tar: Path, *, mtime: int) -> Path:
    """Write ``files`` as a reproducible tar, atomically: nothing half-written at ``dest_tar``."""
    try:
        with atomic_writer(dest_tar) as f, open_tar(f) as tar:  # type: ignore[arg-type]
            _write_archive(tar, files, mtime)
    except OSError as e:
        raise PublishError(f"cannot write docker archive {dest_tar}: {e}",
                           hint="check free space and permissions of the output path") from e
    return dest_tar


def write_docker_archive(image: Image, dest_tar: Path, cache: Cache, *, repo_tag: str) -> Path:
    """Write a `docker load`-able tar of a built image."""
    return write_archive(archive_files(image, cache, repo_tag), dest_tar, mtime=created_epoch(image.config))


def layout_archive(layout: Path, repo_tag: str, dest_tar: Path, *, unpack_zstd: Path | None = None) -> Path:
    """A `docker load`-able tar of an OCI layout directory: its files taken as they are (verify, not
    this, judges them) and Docker's manifest.json for the layout's manifest, tagged ``repo_tag``.
    With ``unpack_zstd`` (a scratch directory), manifest.json points at zstd layers decompressed there
    (plain tars, as `docker save` writes them): Docker 20.10 cannot read zstd, and checks every layer
    against the config's diff_ids itself."""
    img = read_oci_layout(layout)
    m = img.manifest_json()
    files: dict[str, BlobSource] = {p.relative_to(layout).as_posix(): p for p in layout.rglob("*") if p.is_file()}
    files["manifest.json"] = docker_manifest(m["config"]["digest"], [d["digest"] for d in m["layers"]], repo_tag)
    if unpack_zstd is not None and any(d["mediaType"].endswith("+zstd") for d in m["layers"]):
        import shutil

        import zstandard

        names = []
        for d in m["layers"]:
            name = blob_name(d["digest"])
            if d["mediaType"].endswith("+zstd"):
                plain = unpack_zstd / f"{d['digest'].split(':')[1]}.tar"
                with open(layout / name, "rb") as src, open(plain, "wb") as dst:
                    shutil.copyfileobj(zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True),
                                       dst, 1 << 20)
                name = f"layers/{plain.name}"
                files[name] = plain
            names.append(name)
        files["manifest.json"] = canonical_json([{"Config": blob_name(m["config"]["digest"]),
                                                  "RepoTags": [repo_tag], "Layers": names}])
    return write_archive(files, dest_tar, mtime=created_epoch(img.config))


def write_archive_to(out: io.RawIOBase, files: Mapping[str, BlobSource | Opaque], *, mtime: int,
                     on_member: Callable[[str], None] = lambda _rel: None) -> None:
    """The archive ``write_archive`` makes, into any sink (verify compares it with a found archive)."""
    with open_tar(out) as tar:  # type: ignore[arg-type]
        _write_archive(tar, files, mtime, on_member)
