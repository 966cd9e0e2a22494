"""Hostile but well-formed variants of a lockbuild image, as an attacker with write access to an
artifact store makes them: every digest, size and descriptor recomputed, so only the parsing tells.

Each generator takes the untouched image (an OCI layout dir written by `lockbuild image --oci`, or
the docker-archive written by `--docker-archive`) and writes a variant. Used by
tests/test_verify_differential.py (verify must refuse each, or, for the few legitimate transport
variants, real loaders must load exactly the expected image) and by the benchmark's hostile-input
rows (verify's cost on them). Layout variants hard-link the layer blobs: cheap to make.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lockbuild.oci.image import canonical_json

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":", 1)[1]


def put(root: Path, data: bytes) -> str:
    d = sha(data)
    p = blob(root, d)
    if not p.exists():
        p.write_bytes(data)
    return d


def copy_layout(src: Path, dest: Path) -> Path:
    """A writable copy; blobs hard-linked (never written in place: variants only add blobs)."""
    shutil.copytree(src, dest, copy_function=os.link)
    for name in ("index.json", "oci-layout"):
        data = (dest / name).read_bytes()
        (dest / name).unlink()
        (dest / name).write_bytes(data)
    return dest


def parts(layout: Path) -> tuple[dict, dict, dict]:
    """(index, manifest, config) of a layout's first image."""
    index = json.loads((layout / "index.json").read_bytes())
    manifest = json.loads(blob(layout, index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(blob(layout, manifest["config"]["digest"]).read_bytes())
    return index, manifest, config


def evil_config(config: dict) -> dict:
    c = json.loads(json.dumps(config))
    c["config"]["User"] = "0:0"
    c["config"]["Entrypoint"] = ["/bin/sh", "-c", "id"]
    return c


def small_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_chain(layout: Path, manifest_bytes: bytes, index_extra: list[dict] | None = None,
                index_raw: Callable[[dict], bytes] | None = None) -> None:
    """Store a manifest and point index.json at it (canonical unless ``index_raw``)."""
    index, _m, _c = parts(layout)
    d = put(layout, manifest_bytes)
    index["manifests"][0].update(digest=d, size=len(manifest_bytes))
    index["manifests"].extend(index_extra or [])
    (layout / "index.json").write_bytes(index_raw(index) if index_raw else canonical_json(index))


def with_config(layout: Path, config_bytes: bytes, manifest_raw: Callable[[dict], bytes] | None = None) -> None:
    _i, manifest, _c = parts(layout)
    manifest["config"].update(digest=put(layout, config_bytes), size=len(config_bytes))
    write_chain(layout, manifest_raw(manifest) if manifest_raw else canonical_json(manifest))


def raw_json(obj: dict, extra: list[tuple[str, Any]]) -> bytes:
    """canonical_json(obj) with further (key, value) pairs appended at the end of the object, as
    raw text: duplicates and case variants a Python dict cannot hold; Go reads the last one."""
    body = canonical_json(obj)[:-1]
    for k, v in extra:
        body += b"," + json.dumps(k).encode() + b":" + canonical_json(v)
    return body + b"}"


# -- layout variants: each (layout) -> None, in place on a copy ----------------------------------------


def index_manifests_case(layout: Path) -> None:
    """index.json: a later "Manifests" key naming an image with the attacker's config (Go reads it)."""
    index, manifest, config = parts(layout)
    evil = evil_config(config)
    cb = canonical_json(evil)
    m2 = dict(manifest, config=dict(manifest["config"], digest=put(layout, cb), size=len(cb)))
    mb = canonical_json(m2)
    desc = dict(index["manifests"][0], digest=put(layout, mb), size=len(mb))
    (layout / "index.json").write_bytes(raw_json(index, [("Manifests", [desc])]))


def manifest_config_case(layout: Path) -> None:
    """manifest: a later "Config" descriptor naming the attacker's config."""
    _index, manifest, config = parts(layout)
    cb = canonical_json(evil_config(config))
    evil = dict(manifest["config"], digest=put(layout, cb), size=len(cb))
    write_chain(layout, raw_json(manifest, [("Config", evil)]))


def manifest_layers_case(layout: Path) -> None:
    """manifest: a later "Layers" list whose last layer is the attacker's."""
    _index, manifest, _config = parts(layout)
    raw = small_tar({"opt/ml/model/MLmodel": b"flavors: {}\n"})
    gz = gzip.compress(raw, mtime=0)
    evil = manifest["layers"][:-1] + [{"mediaType": GZIP_LAYER, "digest": put(layout, gz), "size": len(gz)}]
    write_chain(layout, raw_json(manifest, [("Layers", evil)]))


def config_config_case(layout: Path) -> None:
    """config: a later "Config" object (User 0:0, another Entrypoint): what runtimes run."""
    _index, _manifest, config = parts(layout)
    with_config(layout, raw_json(config, [("Config", evil_config(config)["config"])]))


def config_diff_ids_case(layout: Path) -> None:
    """config: rootfs with a later "DIFF_IDS"."""
    _index, _manifest, config = parts(layout)
    rootfs = raw_json(config["rootfs"], [("DIFF_IDS", config["rootfs"]["diff_ids"][::-1])])
    body = canonical_json({k: v for k, v in config.items() if k != "rootfs"})[:-1] + b',"rootfs":' + rootfs + b"}"
    with_config(layout, body)


def config_duplicate_key(layout: Path) -> None:
    """config: "config" twice (both Python and Go keep the last, the attacker's)."""
    _index, _manifest, config = parts(layout)
    with_config(layout, raw_json(config, [("config", evil_config(config)["config"])]))


def config_unknown_field(layout: Path) -> None:
    _index, _manifest, config = parts(layout)
    with_config(layout, canonical_json({**config, "container_config": {"User": "0:0"}}))


def config_pretty(layout: Path) -> None:
    """The same config, pretty-printed: same meaning, other bytes (another image ID)."""
    _index, _manifest, config = parts(layout)
    with_config(layout, json.dumps(config, indent=2, sort_keys=True).encode())


def manifest_unknown_field(layout: Path) -> None:
    _index, manifest, _config = parts(layout)
    write_chain(layout, canonical_json({**manifest, "subject": manifest["config"]}))


def manifest_pretty(layout: Path) -> None:
    _index, manifest, _config = parts(layout)
    write_chain(layout, json.dumps(manifest, indent=1).encode())


def _evil_manifest(layout: Path) -> tuple[bytes, dict]:
    _index, manifest, config = parts(layout)
    cb = canonical_json(evil_config(config))
    mb = canonical_json(dict(manifest, config=dict(manifest["config"], digest=put(layout, cb), size=len(cb))))
    return mb, {"digest": put(layout, mb), "size": len(mb)}


def index_artifact_latest(layout: Path) -> None:
    """index.json: an extra descriptor with an artifactType and the ref name "latest"."""
    _mb, d = _evil_manifest(layout)
    write_chain(layout, blob(layout, parts(layout)[0]["manifests"][0]["digest"]).read_bytes(),
                [{"mediaType": MANIFEST, **d, "artifactType": "application/vnd.example+json",
                  "annotations": {"org.opencontainers.image.ref.name": "latest"}}])


def index_docker_type(layout: Path) -> None:
    _mb, d = _evil_manifest(layout)
    write_chain(layout, blob(layout, parts(layout)[0]["manifests"][0]["digest"]).read_bytes(),
                [{"mediaType": DOCKER_MANIFEST, **d}])


def index_nested(layout: Path) -> None:
    _mb, d = _evil_manifest(layout)
    nested = canonical_json({"schemaVersion": 2, "mediaType": INDEX, "manifests": [{"mediaType": MANIFEST, **d}]})
    write_chain(layout, blob(layout, parts(layout)[0]["manifests"][0]["digest"]).read_bytes(),
                [{"mediaType": INDEX, "digest": put(layout, nested), "size": len(nested)}])


def index_duplicate_digest(layout: Path) -> None:
    """index.json: the descriptor's "digest" twice, the second naming the attacker's manifest."""
    index, _m, _c = parts(layout)
    _mb, d = _evil_manifest(layout)
    desc = raw_json(index["manifests"][0], [("digest", d["digest"])])
    body = canonical_json({k: v for k, v in index.items() if k != "manifests"})[:-1]
    (layout / "index.json").write_bytes(body + b',"manifests":[' + desc + b"]}")


# -- legitimate transports: recompressed layers, canonical documents --------------------------------


def recompressed(layout: Path, *, compression: str, which: Callable[[int, dict], bool] = lambda _i, _d: True,
                 level: int = 9) -> None:
    """Layers recompressed (gzip at ``level``, or zstd) and the manifest re-serialised canonically with
    lockbuild's own fields: what a transport that changes compression may do."""
    import zstandard

    index, manifest, _config = parts(layout)
    for i, d in enumerate(manifest["layers"]):
        if not which(i, d):
            continue
        raw = gzip.decompress(blob(layout, d["digest"]).read_bytes())
        if compression == "zstd":
            data, mt = zstandard.ZstdCompressor(level=1).compress(raw), ZSTD_LAYER
        else:
            data, mt = gzip.compress(raw, compresslevel=level, mtime=0), GZIP_LAYER
        d.update(mediaType=mt, digest=put(layout, data), size=len(data))
        d.setdefault("annotations", {})["lockbuild.layer.compressor"] = f"recompressed {compression}"
    write_chain(layout, canonical_json(manifest))
    del index


def prune_unreferenced(layout: Path) -> None:
    """Drop blobs no descriptor names (what a transport writing a fresh layout leaves)."""
    _index, manifest, _config = parts(layout)
    keep = {json.loads((layout / "index.json").read_bytes())["manifests"][0]["digest"], manifest["config"]["digest"],
            *(d["digest"] for d in manifest["layers"])}
    for p in (layout / "blobs" / "sha256").iterdir():
        if f"sha256:{p.name}" not in keep:
            p.unlink()


def other_ref_name(layout: Path) -> None:
    index, _m, _c = parts(layout)
    index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "other-tag"}
    (layout / "index.json").write_bytes(canonical_json(index))


# -- malformed ------------------------------------------------------------------------------------------


def manifest_without_config(layout: Path) -> None:
    _index, manifest, _config = parts(layout)
    write_chain(layout, canonical_json({k: v for k, v in manifest.items() if k != "config"}))


def config_wrong_types(layout: Path) -> None:
    _index, _manifest, config = parts(layout)
    with_config(layout, canonical_json({**config, "rootfs": ["x"], "config": "root", "history": 3}))


def config_deep(layout: Path, depth: int = 200_000) -> None:
    with_config(layout, b'{"a":' + b"[" * depth + b"]" * depth + b"}")


def config_not_object(layout: Path) -> None:
    with_config(layout, b"[]")


def index_not_json(layout: Path) -> None:
    (layout / "index.json").write_bytes(b"{\"manifests\": [")


def _replace_layer(layout: Path, name: str, data: bytes, media_type: str) -> None:
    """The named layer's blob replaced by ``data``; manifest canonical, config left as is."""
    _index, manifest, _config = parts(layout)
    for d in manifest["layers"]:
        if d.get("annotations", {}).get("lockbuild.layer.name") == name:
            d.update(mediaType=media_type, digest=put(layout, data), size=len(data))
    write_chain(layout, canonical_json(manifest))


def zstd_trailing_garbage(layout: Path) -> None:
    import zstandard

    _index, manifest, _config = parts(layout)
    d = next(d for d in manifest["layers"] if d["annotations"]["lockbuild.layer.name"] == "config")
    raw = gzip.decompress(blob(layout, d["digest"]).read_bytes())
    _replace_layer(layout, "config", zstandard.ZstdCompressor().compress(raw) + b"garbage!" * 64, ZSTD_LAYER)


def zstd_bomb(layout: Path, gib: int = 1) -> None:
    """A small zstd blob that expands to ``gib`` GiB of zeros, in place of the model layer."""
    import zstandard

    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as w:
        chunk = bytes(64 << 20)
        for _ in range(gib * 16):
            w.write(chunk)
    _replace_layer(layout, "model", out.getvalue(), ZSTD_LAYER)


def pax_name_bomb(layout: Path, entries: int = 400, name_kb: int = 60) -> None:
    """A layer of many entries, each with a huge PAX path (under the 64 KiB cap, over PATH_MAX)."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=1)
    out = io.BytesIO()
    with cctx.stream_writer(out, closefd=False) as w, tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) \
            as tar:
        for i in range(entries):
            info = tarfile.TarInfo(f"{i:06d}/" + "a" * (name_kb << 10))
            tar.addfile(info)
    _replace_layer(layout, "model", out.getvalue(), ZSTD_LAYER)


# -- docker-archive variants: (archive, dest) -> None -------------------------------------------------


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, Callable[[], Any] | None]]:
    with tarfile.open(archive) as tar:
        out = []
        for m in tar.getmembers():
            out.append((m, (lambda m=m: _open_member(archive, m)) if m.isreg() else None))
        return out


def _open_member(archive: Path, m: tarfile.TarInfo) -> Any:
    f = open(archive, "rb")  # noqa: SIM115 - closed by the writer below
    f.seek(m.offset_data)
    return io.BufferedReader(_Limited(f, m.size))  # type: ignore[arg-type]


class _Limited(io.RawIOBase):
    def __init__(self, f: Any, n: int) -> None:
        self.f, self.left = f, n

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.left)
        data = self.f.read(n)
        b[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def rewrite_archive(archive: Path, dest: Path, *, replace: dict[str, bytes] | None = None,
                    append: list[tuple[tarfile.TarInfo, bytes | None]] | None = None, trailing: bytes = b"") -> Path:
    """The archive's members in order (content replaced by name), then ``append``, then ``trailing``."""
    replace = replace or {}
    with open(dest, "wb") as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for m, opener in _members(archive):
                if m.name in replace:
                    data = replace[m.name]
                    m.size = len(data)
                    tar.addfile(m, io.BytesIO(data))
                elif opener is not None:
                    with opener() as f:
                        tar.addfile(m, f)
                else:
                    tar.addfile(m)
            for info, data in append or []:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        out.write(trailing)
    return dest


def archive_docs(archive: Path) -> tuple[list, dict]:
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
    return manifest, config


def _reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, data


def _evil_blob(archive: Path) -> tuple[list, str, tuple[tarfile.TarInfo, bytes]]:
    manifest, config = archive_docs(archive)
    cb = canonical_json(evil_config(config))
    return manifest, "blobs/sha256/" + sha(cb)[7:], _reg("blobs/sha256/" + sha(cb)[7:], cb)


def archive_second_manifest(spelling: str) -> Callable[[Path, Path], Path]:
    """A second manifest.json member spelled ``spelling`` (./manifest.json, blobs/../manifest.json),
    naming the attacker's config: Docker's loader cleans the name and the later one wins."""
    def make(archive: Path, dest: Path) -> Path:
        manifest, name, evil = _evil_blob(archive)
        m2 = [dict(manifest[0], Config=name)]
        return rewrite_archive(archive, dest, append=[evil, _reg(spelling, canonical_json(m2))])
    return make


def archive_link_config(kind: bytes) -> Callable[[Path, Path], Path]:
    """A symlink or hardlink member re-using the config's name, pointing at the attacker's config."""
    def make(archive: Path, dest: Path) -> Path:
        manifest, name, evil = _evil_blob(archive)
        link = tarfile.TarInfo(manifest[0]["Config"])
        link.type = kind
        link.linkname = name.rsplit("/", 1)[1] if kind == tarfile.SYMTYPE else name
        return rewrite_archive(archive, dest, append=[evil, (link, None)])
    return make


def archive_lowercase_key(archive: Path, dest: Path) -> Path:
    """manifest.json with a later lower-case "config" key naming the attacker's config."""
    manifest, name, evil = _evil_blob(archive)
    body = b"[" + raw_json(manifest[0], [("config", name)]) + b"]"
    return rewrite_archive(archive, dest, replace={"manifest.json": body}, append=[evil])


def archive_extra_repotags(archive: Path, dest: Path) -> Path:
    manifest, _config = archive_docs(archive)
    manifest[0]["RepoTags"] = [*manifest[0]["RepoTags"], "victim/app:latest"]
    return rewrite_archive(archive, dest, replace={"manifest.json": canonical_json(manifest)})


def archive_trailing(archive: Path, dest: Path) -> Path:
    return rewrite_archive(archive, dest, trailing=b"\0" * 10240 + b"trailing data")


def archive_reordered(archive: Path, dest: Path) -> Path:
    """The same members, manifest.json first: what loaders read is the same, the bytes are not."""
    members = _members(archive)
    first = [m for m in members if m[0].name == "manifest.json"]
    rest = [m for m in members if m[0].name != "manifest.json"]
    with open(dest, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m, opener in first + rest:
            if opener is None:
                tar.addfile(m)
            else:
                with opener() as f:
                    tar.addfile(m, f)
    return dest


def archive_many_members(archive: Path, dest: Path, n: int = 5_000) -> Path:
    """A tar of thousands of empty members (the cost of reading them must not grow with n)."""
    with open(dest, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n):
            tar.addfile(tarfile.TarInfo(f"x{i}"))
    return dest


def archive_huge_pax(archive: Path, dest: Path) -> Path:
    """A member whose PAX header is 8 MiB."""
    info = tarfile.TarInfo("manifest.json")
    info.pax_headers = {"comment": "x" * (8 << 20)}
    with open(dest, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    return dest
