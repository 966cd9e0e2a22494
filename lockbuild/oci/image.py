"""Image config, manifest and the descriptors that tie them to layer blobs.

Everything is serialised canonically (sorted keys, no whitespace) and timestamped only with the
``created`` string the lock gives, so the same layers and spec give the same digests anywhere.

The config names layers by diff_id (uncompressed), so the config digest (= Docker's image ID)
does not depend on the compressor; the manifest names the compressed blobs and so does. That is
why the compressor (the pinned library, e.g. "gzip level 1 (isal 1.9.1)") is recorded as a
layer-descriptor annotation in the manifest and not in the config's labels or history: the gzip
and zstd outputs of one lock have different manifest digests but the same image ID.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import sha256_bytes
from lockbuild.oci.layercache import Layer

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
COMPRESSOR_ANNOTATION = "lockbuild.layer.compressor"
LAYER_NAME_ANNOTATION = "lockbuild.layer.name"


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class ImageSpec:
    """What the container runs: everything in the config except layers and history."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = "65532:65532"
    workdir: str = "/"
    exposed_ports: tuple[str, ...] = ("8080/tcp",)
    labels: Mapping[str, str] = field(default_factory=dict)
    architecture: str = "amd64"
    os: str = "linux"
    variant: str = ""  # e.g. "v8" for arm64

    def platform(self) -> dict[str, str]:
        p = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            p["variant"] = self.variant
        return p


@dataclass(frozen=True)
class Image:
    """A built image: config and manifest bytes in memory, layer blobs in the cache."""

    config: bytes
    manifest: bytes
    layers: tuple[Layer, ...]
    platform: Mapping[str, str]

    @property
    def config_digest(self) -> str:
        return sha256_bytes(self.config)

    @property
    def manifest_digest(self) -> str:
        return sha256_bytes(self.manifest)

    @property
    def image_id(self) -> str:
        """Docker's image ID: the config digest."""
        return self.config_digest

    def manifest_descriptor(self, annotations: Mapping[str, str] | None = None) -> dict[str, object]:
        d: dict[str, object] = {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": self.manifest_digest,
            "size": len(self.manifest),
            "platform": dict(self.platform),
        }
        if annotations:
            d["annotations"] = dict(annotations)
        return d



BlobSource = bytes | Path  # in-memory JSON, or a layer blob file in the cache


def blob_sources(image: Image, cache: Cache) -> dict[str, BlobSource]:
    """digest -> content of every blob the manifest references: layers (bottom first), config."""
    sources: dict[str, BlobSource] = {}
    for layer in image.layers:
        sources.setdefault(layer.digest, blob_path(cache, layer.digest))
    sources[image.config_digest] = image.config
    return sources


def _container_config(spec: ImageSpec) -> dict[str, object]:
    cfg: dict[str, object] = {
        "User": spec.user,
        "Env": [f"{k}={v}" for k, v in sorted(spec.env.items())],
        "WorkingDir": spec.workdir,
    }
    if spec.entrypoint:
        cfg["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        cfg["Cmd"] = list(spec.cmd)
    if spec.exposed_ports:
        cfg["ExposedPorts"] = {p: {} for p in sorted(spec.exposed_ports)}
    if spec.labels:
        cfg["Labels"] = dict(spec.labels)
    return cfg


def build_config(layers: Sequence[tuple[str, Layer]], *, spec: ImageSpec, created: str) -> bytes:
    """The OCI image config JSON (canonical bytes)."""
    config = {
        **spec.platform(),
        "created": created,
        "config": _container_config(spec),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for _, layer in layers]},
        "history": [{"created": created, "created_by": f"lockbuild: {name}"} for name, _ in layers],
    }
    return canonical_json(config)


def _layer_descriptor(name: str, layer: Layer) -> dict[str, object]:
    annotations = {LAYER_NAME_ANNOTATION: name}
    if layer.compressor:
        annotations[COMPRESSOR_ANNOTATION] = layer.compressor
    return {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size,
            "annotations": annotations}


def build_manifest(layers: Sequence[tuple[str, Layer]], config: bytes,
                   annotations: Mapping[str, str]) -> bytes:
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": sha256_bytes(config), "size": len(config)},
        "layers": [_layer_descriptor(name, layer) for name, layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return canonical_json(manifest)


def build_image(layers: Sequence[tuple[str, Layer]], *, config: ImageSpec,
                annotations: Mapping[str, str], created: str) -> Image:
    """Config + manifest for ``layers`` given bottom first as (name, Layer) pairs.

    ``created`` is the lock's RFC 3339 timestamp (never the clock). ``annotations`` go on the
    manifest (e.g. org.opencontainers.image.created, lockbuild.lock.digest).
    """
    if not layers:
        raise BuildError("an image needs at least one layer", hint="this is a lockbuild bug")
    names = [name for name, _ in layers]
    if len(set(names)) != len(names):
        raise BuildError(f"duplicate layer names: {names}", hint="this is a lockbuild bug")
    cfg = build_config(layers, spec=config, created=created)
    manifest = build_manifest(layers, cfg, annotations)
    return Image(config=cfg, manifest=manifest, layers=tuple(layer for _, layer in layers),
                 platform=config.platform())


def blob_path(cache: Cache, digest: str) -> Path:
    """Where a layer blob lives in the cache; not re-hashed (the verifier hashes outputs)."""
    path = cache.path(digest)
    if not path.exists():
        raise BuildError(f"layer blob {digest} is missing from the cache at {cache.root}",
                         hint="rebuild the image (`lockbuild image`); the cache may have been pruned")
    return path
