"""Where an image to verify comes from: an OCI layout dir, a docker-archive tarball, a running
Docker engine, or a registry reference. Each becomes the same small interface: the config,
the manifest's layer descriptors (when known), the documents a runtime reads (index.json,
manifest.json, oci-layout: judged byte for byte in verify/documents.py) and a way to open each
layer blob as a stream.

Reading is bounded and never trusts a size it has not checked: documents over
``strictjson.MAX_DOCUMENT`` are refused unread, an archive's tar headers are pre-scanned (count,
extended-header sizes) before ``tarfile`` sees them. A document that cannot be read at all is an
``InvalidImage`` (its own exit code), never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lockbuild.errors import IntegrityError, InvalidImage, LockbuildError, VerifyFailed
from lockbuild.fsutil import check_bytes, sha256_bytes
from lockbuild.verify import strictjson

MAX_ARCHIVE_MEMBERS = 256  # lockbuild writes 2 dirs + 5 documents + at most 40 layers
MAX_EXTENDED_HEADER = 64 << 10  # a PAX/GNU long-name header; lockbuild's longest path is far under 4 KiB
@dataclass
class ImageSource:
    description: str
    config: bytes
    manifest: bytes | None  # None for docker archives without an OCI manifest
    layer_digests: list[str | None]  # compressed digest per layer when a manifest names it
    _open: list  # callables returning a binary stream per layer
    _cleanup: list = field(default_factory=list)
    problems: list[tuple[str, str, str, str]] = field(default_factory=list)  # path, expected, actual, why
    kind: str = "layout"  # layout | archive | engine | registry
    layer_descs: list[dict] = field(default_factory=list)  # the manifest's layer descriptors, as found
    index: bytes | None = None  # index.json (layout, archive)
    oci_layout: bytes | None = None  # oci-layout (layout, archive)
    docker_manifest: bytes | None = None  # manifest.json (archive)
    archive: Path | None = None  # the archive file (archive)
    layer_offsets: list[int] = field(default_factory=list)  # archive: where each layer's bytes start
    artifacts: dict[str, bytes] = field(default_factory=dict)  # layout: digest -> artifact manifest (attach)
    engine_id: str | None = None  # engine: the image ID the engine reports for the reference
    ambiguities: list[tuple[str, str]] = field(default_factory=list)  # (document, duplicate / case-variant key)

    @property
    def config_json(self) -> dict:
        doc = self.doc(self.config, "config")
        return doc if isinstance(doc, dict) else {}

    def doc(self, data: bytes, what: str) -> Any:
        """A document parsed strictly; its duplicate and case-variant keys recorded once."""
        parsed, problems = _parse(data, what)
        for p in problems:
            if (what, p) not in self.ambiguities:
                self.ambiguities.append((what, p))
        return parsed

    @property
    def config_digest(self) -> str:
        return sha256_bytes(self.config)

    def open_layer(self, i: int) -> BinaryIO:
        return self._open[i]()

    def close(self) -> None:
        for fn in self._cleanup:
            fn()


def _parse(data: bytes, what: str) -> tuple[Any, list[str]]:
    try:
        return strictjson.parse(data, what)
    except strictjson.Malformed as e:
        raise InvalidImage(str(e), hint="this is not an image lockbuild wrote; rebuild it from the lock") from None


def _bounded_read(path: Path, what: str, limit: int = strictjson.MAX_DOCUMENT) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise InvalidImage(f"{path.parent} is not an OCI image layout (no {path.name})",
                           hint="point at a directory written by `lockbuild image`") from None
    except IsADirectoryError:
        raise InvalidImage(f"{what} {path} is a directory") from None
    if len(data) > limit:
        raise InvalidImage(f"{what} {path} is larger than {limit} bytes (no lockbuild document is)",
                           hint="this is not an image lockbuild wrote; rebuild it from the lock")
    return data


def _obj(v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise InvalidImage(f"{what} is not a JSON object", hint="this is not an image lockbuild wrote")
    return v


def _digest(v: Any, what: str) -> str:
    from lockbuild.oci.layout import blob_name

    if not isinstance(v, str):
        raise InvalidImage(f"{what} has no digest string")
    try:
        blob_name(v)
    except IntegrityError:
        raise InvalidImage(f"{what} has a malformed digest {v[:80]!r}") from None
    return v


def parse_manifest(src: ImageSource, manifest: bytes, what: str = "manifest") -> tuple[str, list[dict]]:
    """(config digest, layer descriptors) of an image manifest; anything else is InvalidImage."""
    m = _obj(src.doc(manifest, what), what)
    config = _obj(m.get("config"), f"{what} config descriptor")
    layers = m.get("layers")
    if not isinstance(layers, list) or not layers:
        raise InvalidImage(f"{what} has no layers list", hint="this is not an image lockbuild wrote")
    descs = [_obj(d, f"{what} layer descriptor") for d in layers]
    for i, d in enumerate(descs):
        _digest(d.get("digest"), f"{what} layer {i}")
    return _digest(config.get("digest"), f"{what} config descriptor"), descs


def _image_entries(index: Any) -> list[dict]:
    from lockbuild.oci.image import MANIFEST_MEDIA_TYPE

    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list):
        raise InvalidImage("index.json has no manifests list", hint="this is not an image lockbuild wrote")
    return [m for m in manifests if isinstance(m, dict) and m.get("mediaType") == MANIFEST_MEDIA_TYPE
            and "artifactType" not in m]


def from_layout(path: Path) -> ImageSource:
    """An OCI layout dir: oci-layout, index.json -> the one image manifest -> config and layer
    blobs (each digest-checked before use; layers are hashed by verify)."""
    from lockbuild.oci.layout import blob_name

    src = ImageSource(f"OCI layout {path}", b"", None, [], [], kind="layout")
    src.oci_layout = _bounded_read(path / "oci-layout", "oci-layout")
    src.index = _bounded_read(path / "index.json", "index.json")
    index = src.doc(src.index, "index.json")
    images = _image_entries(index)
    if not images:
        raise InvalidImage(f"{path}/index.json names no image manifest",
                           hint="point at a layout `lockbuild image` wrote")
    mdigest = _digest(images[0].get("digest"), "index.json manifest descriptor")
    src.manifest = _layout_blob(path, mdigest, "manifest")
    config_digest, descs = parse_manifest(src, src.manifest)
    src.config = _layout_blob(path, config_digest, "config")
    for m in index["manifests"]:
        if isinstance(m, dict) and "artifactType" in m and isinstance(m.get("digest"), str):
            with contextlib.suppress(LockbuildError):
                src.artifacts[m["digest"]] = _layout_blob(path, _digest(m["digest"], "index.json artifact"), "artifact")
    src.layer_descs = descs
    src.layer_digests = [d["digest"] for d in descs]
    for d in descs:
        blob = path / blob_name(d["digest"])
        if not blob.is_file():
            raise IntegrityError(f"layer blob {d['digest']} is missing from {path}",
                                 hint="the layout is incomplete; rebuild it")
    blobs = [path / blob_name(d["digest"]) for d in descs]
    src._open = [(lambda p=p: open(p, "rb")) for p in blobs]
    return src


def _layout_blob(root: Path, digest: str, what: str) -> bytes:
    from lockbuild.oci.layout import blob_name

    path = root / blob_name(digest)
    if not path.is_file():
        raise IntegrityError(f"{what} blob {digest} is missing from {root}",
                             hint="the layout is incomplete; rebuild it")
    data = _bounded_read(path, f"{what} blob")
    return check_bytes(data, digest, f"{what} blob {path}", "the layout was modified after it was written; rebuild it")


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


def prescan_archive(path: Path) -> int:
    """Walk an archive's 512-byte tar headers before ``tarfile`` does: at most
    ``MAX_ARCHIVE_MEMBERS`` headers, extended headers (PAX, GNU long names) of at most 64 KiB.
    A hostile archive of a million members or a gigabyte PAX header costs nothing."""

    size = path.stat().st_size
    n = 0
    with open(path, "rb") as f:
        pos = 0
        while pos + 512 <= size:
            f.seek(pos)
            block = f.read(512)
            if block == bytes(512):
                return n
            n += 1
            if n > MAX_ARCHIVE_MEMBERS:
                raise InvalidImage(f"{path} has more than {MAX_ARCHIVE_MEMBERS} tar members (lockbuild writes one "
                                   "per layer plus seven)", hint="this is not an archive lockbuild wrote")
            raw = block[124:136]
            try:
                if raw[0] & 0x80:
                    raise InvalidImage(f"{path}: a base-256 tar size field (lockbuild never writes one)")
                length = int(raw.rstrip(b"\0 ").strip() or b"0", 8)
            except ValueError:
                raise InvalidImage(f"{path} is not a tar archive (bad header at byte {pos})",
                                   hint="pass an archive written by `lockbuild image --docker-archive`") from None
            if block[156:157] in (b"x", b"g", b"X", b"L", b"K") and length > MAX_EXTENDED_HEADER:
                raise InvalidImage(f"{path}: a {length}-byte extended tar header at byte {pos}",
                                   hint="this is not an archive lockbuild wrote")
            pos += 512 + (length + 511) // 512 * 512
    return n


def _clean(name: str) -> str:
    """A member name as Go's filepath.Clean (Docker's loader) sees it."""
    import posixpath

    name = posixpath.normpath("/" + name).lstrip("/")
    return name or "."


@dataclass
class _Archive:
    """A docker-archive's members as Docker's classic loader sees them (names cleaned, the last entry of
    a name wins), and its non-regular members."""

    path: Path
    tar: tarfile.TarFile
    members: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    links: list[tarfile.TarInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        for m in self.tar.getmembers():
            if m.isreg():
                self.members[_clean(m.name)] = m
            elif not m.isdir():
                self.links.append(m)

    def read(self, name: str, what: str) -> bytes:
        m = self.members.get(_clean(name))
        if m is None:
            raise InvalidImage(f"{self.path}: {what} names a missing member {name[:120]!r}",
                               hint="pass an archive written by `lockbuild image --docker-archive`")
        if m.size > strictjson.MAX_DOCUMENT:
            raise InvalidImage(f"{self.path}: {what} member {name[:120]!r} is {m.size} bytes")
        return self.tar.extractfile(m).read()  # type: ignore[union-attr]


def from_docker_archive(path: Path, *, engine: bool = False) -> ImageSource:
    """A docker-archive tarball. Read as Docker's classic loader does (names cleaned, the last entry
    of a name wins) so verify looks at the members ``docker load`` would; whether the archive is
    exactly what lockbuild writes (no other member, name spelling, link or duplicate) is judged in
    verify/documents.py, byte for byte. ``engine``: a `docker save` of our own engine (its own
    layout, judged by the image ID instead)."""
    try:
        prescan_archive(path)
        with tarfile.open(path, "r:") as tar:
            ar = _Archive(path, tar)
            src = ImageSource(f"docker-archive {path}", b"", None, [], [], kind="engine" if engine else "archive",
                              archive=path)
            for m in ar.links if not engine else []:
                src.problems.append((m.name[:200], "regular files only", f"a link to {m.linkname[:200]}",
                                     "a link member in the archive: Docker's loader extracts it over the member of "
                                     "that name and follows it"))
            layer_names = _archive_manifest(src, ar)
            _archive_index(src, ar, layer_names, engine=engine)
            src.layer_digests = [None] * len(layer_names)
            if src.layer_descs and len(src.layer_descs) == len(layer_names):
                src.layer_digests = [d["digest"] for d in src.layer_descs]
            slices = []
            for n in layer_names:
                lm = ar.members.get(_clean(n))
                if lm is None:
                    raise InvalidImage(f"{path}: manifest.json names a missing layer {n[:120]!r}")
                slices.append((lm.offset_data, lm.size))
    except tarfile.TarError as e:
        raise InvalidImage(f"{path} is not a readable tar archive: {e}",
                           hint="pass an archive written by `lockbuild image --docker-archive`") from None
    src.layer_offsets = [o for o, _n in slices]
    src._open = [(lambda o=o, n=n: _Slice(path, o, n)) for o, n in slices]
    return src


def _archive_manifest(src: ImageSource, ar: _Archive) -> list[str]:
    """Docker's manifest.json (exactly one image) and the config it names; returns its layer member names."""
    src.docker_manifest = ar.read("manifest.json", "the archive")
    manifest = src.doc(src.docker_manifest, "manifest.json")
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        raise InvalidImage(f"{ar.path}: manifest.json must name exactly one image",
                           hint="verify one image per archive (docker save one reference)")
    entry = manifest[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list) or not layer_names \
            or not all(isinstance(n, str) for n in layer_names):
        raise InvalidImage(f"{ar.path}: manifest.json has no Config string and Layers list")
    src.config = ar.read(config_name, "manifest.json Config")
    return layer_names


def _archive_index(src: ImageSource, ar: _Archive, layer_names: list[str], *, engine: bool) -> None:
    """The OCI index.json lockbuild's archives carry (an engine's `docker save` may not): its manifest
    must name the same config and layers as manifest.json."""
    if "index.json" not in ar.members:
        if not engine:
            src.problems.append(("archive", "index.json", "absent", "not an archive lockbuild writes (no "
                                 "index.json); verify an image saved by an engine as docker-daemon:REF"))
        return
    src.index = ar.read("index.json", "the archive")
    if "oci-layout" in ar.members:
        src.oci_layout = ar.read("oci-layout", "the archive")
    images = _image_entries(src.doc(src.index, "index.json"))
    if not images:
        return
    mdigest = _digest(images[0].get("digest"), "index.json manifest descriptor")
    from lockbuild.oci.layout import blob_name

    src.manifest = ar.read(blob_name(mdigest), "index.json")
    if sha256_bytes(src.manifest) != mdigest:
        src.problems.append(("index.json", mdigest, sha256_bytes(src.manifest),
                             "the manifest blob index.json names does not match its digest"))
    oci_config, src.layer_descs = parse_manifest(src, src.manifest)
    if oci_config != sha256_bytes(src.config):
        src.problems.append(("manifest.json Config", oci_config, sha256_bytes(src.config),
                             "index.json and manifest.json name different image configs"))
    if len(src.layer_descs) != len(layer_names):
        src.problems.append(("manifest.json Layers", f"{len(src.layer_descs)} layers (index.json)",
                             f"{len(layer_names)} layers", "index.json and manifest.json list different layers"))


def from_daemon(ref: str) -> ImageSource:
    from lockbuild.oci.daemon import engine

    client = engine()
    try:
        image = client.images.get(ref)
    except Exception as e:
        raise VerifyFailed(f"the Docker engine has no image {ref}: {e}") from None
    tmp = Path(tempfile.mkdtemp(prefix="lockbuild-verify-"))
    try:
        tar_path = tmp / "image.tar"
        with open(tar_path, "wb") as f:
            for chunk in client.images.get(image.id).save(named=False):  # by ID: the image just resolved
                f.write(chunk)
        src = from_docker_archive(tar_path, engine=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    src.description = f"Docker engine image {ref}"
    src.engine_id = str(image.id)
    src._cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return src


def from_registry(ref: str) -> ImageSource:
    """The manifest (strictly parsed, digest-checked) and config from a registry; each layer blob
    fetched into a temp dir, capped at its descriptor's size and digest-checked. A reference that
    resolves to an image index is refused (lockbuild pushes one image manifest; a Go client picks
    from an index with its own reading of it), and its manifest is still judged."""
    from lockbuild.errors import PublishError
    from lockbuild.oci import registry

    r = registry.parse_reference(ref)
    s = registry.open_session(r, push=False)
    src = ImageSource(f"registry {ref}", b"", None, [], [], kind="registry")
    with s.client:
        manifest, media_type = registry._get_manifest(s, r.reference)
        if media_type in registry.INDEX_MEDIA_TYPES:
            src.problems.append(("manifest", "an image manifest (what lockbuild pushes)", "an image index",
                                 "the reference names an image index: verify the image manifest's digest"))
            src.doc(manifest, "image index")
            manifest, _ = registry._get_manifest(s, registry._pick_platform(manifest, "amd64", "linux"))
        src.manifest = manifest
        config_digest, src.layer_descs = parse_manifest(src, manifest)
        resp = s.send("GET", s.url(f"blobs/{config_digest}"), ok=(200, 404), follow_redirects=True)
        if resp.status_code == 404:
            said = "; ".join(f"{w}: {p}" for w, p in src.ambiguities)
            raise InvalidImage(f"the registry has no config {config_digest}, the one the manifest names"
                               + (f" ({said})" if said else ""),
                               hint="the manifest is not lockbuild's; do not run this image")
        src.config = registry._check(resp.content, config_digest, "config")
    digests = [d["digest"] for d in src.layer_descs]
    tmp = Path(tempfile.mkdtemp(prefix="lockbuild-verify-"))
    src._cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    try:
        paths = []
        for d, desc in zip(digests, src.layer_descs, strict=True):
            p = tmp / d.replace(":", "_")
            size = desc.get("size")
            with open(p, "wb") as f:
                try:
                    registry.fetch_blob(ref, d, _Capped(f, size if isinstance(size, int) else 0, d))
                except PublishError as e:
                    if "HTTP 404" not in e.message:
                        raise
                    raise InvalidImage(f"the registry has no layer {d}, one the manifest names",
                                       hint="the manifest is not lockbuild's; do not run this image") from None
            paths.append(p)
    except BaseException:
        src.close()
        raise
    src.layer_digests = list(digests)
    src._open = [(lambda p=p: open(p, "rb")) for p in paths]
    return src


class _Capped:
    """A sink that refuses more bytes than the descriptor's size: a registry cannot fill the disk."""

    def __init__(self, f: Any, limit: int, what: str) -> None:
        self.f, self.left, self.what = f, limit, what

    def write(self, data: bytes) -> int:
        self.left -= len(data)
        if self.left < 0:
            raise InvalidImage(f"blob {self.what} is larger than its descriptor's size",
                               hint="the registry serves another blob than the manifest describes")
        return int(self.f.write(data))


def looks_like_path(image: str) -> bool:
    """A reference the user meant as a file: it must exist, never fall through to an engine lookup."""
    return image.startswith(("/", "./", "../", "~")) or image.endswith((".tar", ".tar.gz")) \
        or image in (".", "..") or os.sep in image and Path(image.split(os.sep, 1)[0]).exists()


def open_image(image: str) -> ImageSource:
    p = Path(image).expanduser()
    if p.is_dir():
        return from_layout(p)
    if p.is_file():
        return from_docker_archive(p)
    if p.exists():
        raise InvalidImage(f"{image} is neither a directory nor a regular file",
                           hint="pass an OCI layout dir or a docker-archive file")
    if looks_like_path(image):
        raise InvalidImage(f"{image} does not exist", hint="pass an OCI layout dir, a docker-archive file, "
                           "docker-daemon:REF or docker://host/repo@sha256:…")
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
