"""Bytes, not meanings: every document a runtime reads must be the bytes lockbuild writes.

Builds are reproducible, so the lock determines the config, the manifest and lockbuild's own
index.json / manifest.json / oci-layout byte for byte. Parsing an untrusted document and comparing
its *meaning* leaves room for a parser differential (Go's JSON decoder matches keys
case-insensitively and keeps the last match; a tar read by Docker's loader is cleaned and
last-wins); comparing bytes leaves none. What a legitimate transport may change is only what the
layer blobs are: their compression (gzip or zstd, by magic bytes), hence their digest and size in
the manifest, and the compressor annotation. The manifest is therefore required to be exactly
lockbuild's canonical serialisation of lockbuild's fields, with each layer's digest, size and
media type those of the blob actually found (hashed by verify) and the config and annotations the
lock's.

For a docker-archive the whole file is judged: it must be the archive lockbuild's own writer makes
for those documents and blobs (same members, names, order, headers, padding, end), with the
layers' bytes at the offsets verify hashed. Any other spelling (``./manifest.json``,
``blobs/../manifest.json``), link, duplicate, extra member or RepoTag is a finding.

Each check adds findings to the report naming what differs: duplicate or case-variant keys, unknown
or missing fields, other values, or (when the meaning is the same) the serialisation itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from lockbuild.assemble.recipe import LayerPlan
from lockbuild.lockfile.model import Lock
from lockbuild.oci.compress import media_type
from lockbuild.oci.image import COMPRESSOR_ANNOTATION, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, canonical_json
from lockbuild.verify import strictjson
from lockbuild.verify.source import ImageSource

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MAX_DOC_FINDINGS = 20


def _ambiguity_findings(src: ImageSource, report: Any) -> None:
    for what, problem in src.ambiguities[:MAX_DOC_FINDINGS]:
        report.add("document", what, "each key once, exact case", problem,
                   f"{what}: {problem}: runtimes and verify could read different values")


def _droppable(path: tuple[str, ...]) -> bool:
    """Fields a transport may drop (never add or change): annotations, a descriptor's platform, an
    index's top-level mediaType. No runtime decides what to run from them."""
    return "annotations" in path or path[-1] == "platform" or path == ("mediaType",)


def _equivalent(found: Any, expected: Any, path: tuple[str, ...], dropped: list[str]) -> bool:
    """found has exactly expected's fields and values, except droppable fields it lacks."""
    if isinstance(expected, dict):
        if not isinstance(found, dict) or any(k not in expected for k in found):
            return False
        for k, v in expected.items():
            if k not in found:
                if not _droppable((*path, k)):
                    return False
                dropped.append(".".join((*path, k)))
            elif not _equivalent(found[k], v, (*path, k), dropped):
                return False
        return True
    if isinstance(expected, list):
        return isinstance(found, list) and len(found) == len(expected) and all(
            _equivalent(f, e, (*path, str(i)), dropped) for i, (f, e) in enumerate(zip(found, expected, strict=True)))
    return type(found) is type(expected) and bool(found == expected)


def _compare(report: Any, what: str, found: bytes | None, expected: bytes, src: ImageSource,
             transport: bool = False) -> bool:
    """Byte identity of one document; on a difference, findings that say where. ``transport``: a
    re-serialisation (what skopeo writes when it recompresses layers) is accepted, and said, when
    it has no duplicate or case-variant key and exactly lockbuild's fields and values (annotations,
    platform and an index's mediaType may be dropped, nothing added or changed)."""
    if found == expected:
        return True
    if found is None:
        report.add("document", what, "present", "absent", f"{what} is missing")
        return False
    try:
        doc, _problems = strictjson.parse(found, what)
    except strictjson.Malformed as e:
        report.add("document", what, "lockbuild's bytes", "unreadable", str(e))
        return False
    import json

    dropped: list[str] = []
    if transport and not any(w == what for w, _p in src.ambiguities) \
            and _equivalent(doc, json.loads(expected), (), dropped):
        report.notes.append(f"{what}: a transport's re-serialisation of lockbuild's {what} (same fields and values"
                            + (f"; dropped {', '.join(dropped[:8])}" if dropped else "") + "): accepted")
        return True
    diffs = strictjson.diff(doc, json.loads(expected), limit=MAX_DOC_FINDINGS)
    for d in diffs:
        report.add("document", what, "", d, f"{what} is not what lockbuild writes for this lock: {d}")
    if not diffs and not any(w == what for w, _p in src.ambiguities):
        report.add("document", what, f"{len(expected)} bytes, sha256 {_sha(expected)}",
                   f"{len(found)} bytes, sha256 {_sha(found)}",
                   f"{what} has lockbuild's values but not lockbuild's bytes (whitespace, key order, escaping or "
                   "key spelling): runtimes read the bytes, so verify requires them")
    return False


def _sha(data: bytes) -> str:
    from lockbuild.fsutil import sha256_bytes

    return sha256_bytes(data)[7:19] + "…"


def expected_manifest(lock: Lock, lock_digest: str, plans: Sequence[LayerPlan], found: Sequence[Any],
                      descs: Sequence[dict], config: bytes) -> bytes:
    """The manifest lockbuild writes for this lock with the found layer blobs (digest, size, media
    type of the bytes actually found, compressor annotation as found)."""
    from lockbuild.assemble.recipe import manifest_annotations
    from lockbuild.oci.image import build_manifest
    from lockbuild.oci.layercache import Layer

    layers = []
    for i, plan in enumerate(plans):
        f = found[i] if i < len(found) else None
        d = descs[i] if i < len(descs) else {}
        note = (d.get("annotations") or {}) if isinstance(d.get("annotations"), dict) else {}
        compressor = note.get(COMPRESSOR_ANNOTATION)
        kind = f.compression if f is not None else "gzip"
        layers.append((plan.name, Layer(digest=f.blob_digest if f is not None else str(d.get("digest")), diff_id="",
                                        size=f.blob_size if f is not None else 0,
                                        media_type=media_type(kind) if kind != "tar" else
                                        "application/vnd.oci.image.layer.v1.tar",
                                        compressor=compressor if isinstance(compressor, str) else "")))
    return build_manifest(layers, config, manifest_annotations(lock, lock_digest))


def _recompressed(lock: Lock, found: Sequence[Any], descs: Sequence[dict]) -> list[int]:
    """Layers not compressed the way lockbuild compresses them (another compressor or none named)."""
    from lockbuild.assemble.recipe import LEVEL
    from lockbuild.oci.compress import compressor_name

    ours = {c: compressor_name(LEVEL, c) for c in ("gzip", "zstd")}
    return [i for i, (f, d) in enumerate(zip(found, descs, strict=False))
            if _notes(d).get(COMPRESSOR_ANNOTATION) != ours.get(f.compression)]


def _notes(desc: dict) -> dict:
    notes = desc.get("annotations")
    return notes if isinstance(notes, dict) else {}


def _note_transport(lock: Lock, plans: Sequence[LayerPlan], found: Sequence[Any], descs: Sequence[dict],
                    report: Any) -> None:
    """Say so when a layer is not compressed the way lockbuild compresses it for this lock: a
    transport recompressed it (accepted: its tar is the lock's, the manifest lockbuild's bytes)."""
    from lockbuild.assemble.recipe import LEVEL
    from lockbuild.oci.compress import compressor_name

    ours = {c: compressor_name(LEVEL, c) for c in ("gzip", "zstd")}  # zstd locks' archives are gzip
    for plan, f, d in zip(plans, found, descs, strict=False):
        note = _notes(d).get(COMPRESSOR_ANNOTATION)
        if note != ours.get(f.compression):
            report.notes.append(f"layer {plan.name}: {f.compression} blob (compressor {note!r}; lockbuild writes "
                                f"{ours[lock.compression]!r}): recompressed by a transport; accepted because its "
                                "tar is the lock's and the manifest has exactly lockbuild's fields and values")


def _descriptor(manifest: bytes, platform: dict, annotations: dict | None) -> dict:
    from lockbuild.fsutil import sha256_bytes

    d: dict[str, object] = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": sha256_bytes(manifest),
                            "size": len(manifest), "platform": platform}
    if annotations:
        d["annotations"] = annotations
    return d


def _found_annotations(src: ImageSource) -> dict:
    try:
        index, _ = strictjson.parse(src.index or b"", "index.json")
        note = index["manifests"][0].get("annotations")
        return note if isinstance(note, dict) else {}
    except (strictjson.Malformed, KeyError, IndexError, TypeError, AttributeError):
        return {}


def _artifact_entries(src: ImageSource, manifest_digest: str, report: Any) -> list[dict]:
    """index.json entries lockbuild's `audit attach` writes into a layout: an SBOM or provenance
    artifact whose subject is this image, with exactly attach's fields. Anything else is kept out of
    the expected index (so the byte comparison names it)."""
    from lockbuild.audit.attach import CREATED, PROVENANCE_TYPE, SBOM_TYPE, TITLE

    try:
        index, _ = strictjson.parse(src.index or b"", "index.json")
        entries = index["manifests"]
    except (strictjson.Malformed, KeyError, TypeError):
        return []
    out = []
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict) or "artifactType" not in e:
            continue
        kind, digest = e.get("artifactType"), e.get("digest")
        notes = e.get("annotations", {})
        ok = (src.kind == "layout" and kind in (SBOM_TYPE, PROVENANCE_TYPE)
              and e.get("mediaType") == MANIFEST_MEDIA_TYPE
              and set(e) <= {"mediaType", "digest", "size", "artifactType", "annotations"}
              and isinstance(notes, dict) and set(notes) <= {TITLE, CREATED}
              and all(isinstance(v, str) for v in notes.values()) and ("annotations" not in e or bool(notes)))
        body = src.artifacts.get(digest) if isinstance(digest, str) else None
        art: Any = None
        if ok and body is not None:
            try:
                art, _ = strictjson.parse(body, "artifact manifest")
            except strictjson.Malformed:
                art = None
        if not (ok and isinstance(art, dict) and art.get("artifactType") == kind
                and isinstance(art.get("subject"), dict) and art["subject"].get("digest") == manifest_digest
                and e.get("size") == len(body or b"")):
            report.add("document", "index.json", "only this image and artifacts `lockbuild audit attach` wrote for it",
                       f"descriptor {str(digest)[:80]} ({e.get('mediaType')!s:.60}, artifactType {kind!s:.60})",
                       "index.json names a descriptor lockbuild did not write: a loader may pick it")
            continue
        entry = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": digest, "size": e["size"], "artifactType": kind}
        if "annotations" in e:
            entry["annotations"] = {k: str(v) for k, v in notes.items()}
        out.append(entry)
    return out


def _tag_of(src: ImageSource, lock: Lock, report: Any) -> str | None:
    """The archive's one tag: RepoTags must be exactly [<the lock's image name>:<tag>]."""
    try:
        entry = strictjson.parse(src.docker_manifest or b"", "manifest.json")[0][0]
        tags = entry.get("RepoTags")
    except (strictjson.Malformed, KeyError, IndexError, TypeError, AttributeError):
        return None
    if isinstance(tags, list) and len(tags) == 1 and isinstance(tags[0], str):
        repo, _sep, tag = tags[0].rpartition(":")
        if repo == lock.image_name and TAG.fullmatch(tag):
            return tag
    report.add("document", "manifest.json RepoTags", f"[\"{lock.image_name}:<tag>\"]", str(tags)[:200],
               "RepoTags must be exactly one tag of the lock's image name: `docker load` re-points every tag listed")
    return None


def check_documents(src: ImageSource, lock: Lock, lock_digest: str, plans: Sequence[LayerPlan],
                    found: Sequence[Any], config: bytes, report: Any) -> None:
    """Every document the runtime reads against the bytes lockbuild writes for this lock."""
    from lockbuild.assemble.recipe import image_spec, labels_for
    from lockbuild.fsutil import sha256_bytes
    from lockbuild.oci.docker_archive import CONTAINERD_NAME
    from lockbuild.oci.layout import OCI_LAYOUT, REF_NAME

    _ambiguity_findings(src, report)
    _compare(report, "config", src.config, config, src)
    if src.kind == "engine":
        if src.engine_id != sha256_bytes(config):
            report.add("document", "image ID", sha256_bytes(config), str(src.engine_id),
                       "the engine's image ID is not the digest of the lock's config: the engine holds another image")
        return
    if src.manifest is None:
        report.add("document", "manifest", "lockbuild's image manifest", "absent", "the image has no OCI manifest")
        return
    ok_layers = len(found) == len(plans) and all(f is not None for f in found)
    if not ok_layers:
        return  # the layer findings already say why; a manifest for other layers cannot be lockbuild's
    for i, (f, d) in enumerate(zip(found, src.layer_descs, strict=False)):
        if d.get("size") != f.blob_size:
            report.add("digests", f"layer {i}", str(f.blob_size), str(d.get("size"))[:40],
                       "the manifest's layer size is not the blob's")
    manifest = expected_manifest(lock, lock_digest, plans, found, src.layer_descs, config)
    recompressed = _recompressed(lock, found, src.layer_descs)
    if _compare(report, "manifest", src.manifest, manifest, src, transport=bool(recompressed)):
        _note_transport(lock, plans, found, src.layer_descs, report)
        manifest = src.manifest  # the index names the manifest found (lockbuild's, or a transport's)
    if src.kind == "registry":
        return
    platform = image_spec(lock, labels_for(lock, lock_digest)).platform()
    notes = _found_annotations(src)
    tag: str | None = None
    if src.kind == "archive":
        tag = _tag_of(src, lock, report)
        if tag is None:
            return
        want_notes: dict | None = {REF_NAME: tag, CONTAINERD_NAME: f"{lock.image_name}:{tag}"}
        if CONTAINERD_NAME not in notes:  # an OCI layout written by `image --oci`, tarred by smoke
            ref = notes.get(REF_NAME)
            want_notes = {REF_NAME: ref} if isinstance(ref, str) and TAG.fullmatch(ref) else None
    else:
        ref = notes.get(REF_NAME)
        want_notes = {REF_NAME: ref} if isinstance(ref, str) and TAG.fullmatch(ref) else None
    artifacts = _artifact_entries(src, sha256_bytes(manifest), report)
    index = canonical_json({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                            "manifests": [_descriptor(manifest, platform, want_notes), *artifacts]})
    if _compare(report, "index.json", src.index, index, src, transport=bool(recompressed) and src.kind == "layout"):
        index = src.index or index
    _compare(report, "oci-layout", src.oci_layout, OCI_LAYOUT, src,
             transport=bool(recompressed) and src.kind == "layout")
    if src.kind == "archive" and tag is not None:
        check_archive_bytes(src, lock, manifest, index, config, found, tag, report)


# -- the docker-archive as a whole ---------------------------------------------------------------


class _Differs(Exception):
    def __init__(self, offset: int, member: str) -> None:
        self.offset, self.member = offset, member


class _Compare:
    """A write sink comparing what lockbuild's archive writer produces with the found file; layer
    bytes (judged by verify's hashing) are skipped, not read twice."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.pos = 0
        self.skip = 0
        self.member = "(archive start)"
        self.offsets: dict[str, int] = {}

    def tell(self) -> int:
        return self.pos

    def write(self, data: Any) -> int:
        n = len(data)
        if self.skip:
            step = min(self.skip, n)
            self.skip -= step
            self.pos += step
            self.f.seek(self.pos)
            if step == n:
                return n
            data = memoryview(data)[step:]
        got = self.f.read(len(data))
        if got != bytes(data):
            at = next((i for i, (a, b) in enumerate(zip(got, bytes(data), strict=False)) if a != b), len(got))
            raise _Differs(self.pos + at, self.member)
        self.pos += len(data)
        return n


class _Skip:
    """The content of a layer member: zeros the sink does not compare (verify hashed those bytes)."""

    def __init__(self, sink: _Compare, size: int, rel: str) -> None:
        self.sink, self.left, self.rel = sink, size, rel
        self.started = False

    def read(self, n: int = -1) -> bytes:
        if not self.started:
            self.sink.offsets[self.rel] = self.sink.pos
            self.started = True
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        self.sink.skip += n
        return bytes(n)

    def __enter__(self) -> _Skip:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def check_archive_bytes(src: ImageSource, lock: Lock, manifest: bytes, index: bytes, config: bytes,
                        found: Sequence[Any], tag: str, report: Any) -> None:
    """The found archive must be the archive lockbuild writes for these documents and layer blobs."""
    from lockbuild.fsutil import sha256_bytes
    from lockbuild.oci.docker_archive import Opaque, created_epoch, docker_manifest, write_archive_to
    from lockbuild.oci.layout import OCI_LAYOUT, blob_name

    assert src.archive is not None
    layer_digests = [f.blob_digest for f in found]
    files: dict[str, Any] = {"oci-layout": OCI_LAYOUT, "index.json": index, blob_name(sha256_bytes(manifest)): manifest,
                             blob_name(sha256_bytes(config)): config,
                             "manifest.json": docker_manifest(sha256_bytes(config), layer_digests,
                                                              f"{lock.image_name}:{tag}")}
    with open(src.archive, "rb") as f:
        sink = _Compare(f)
        for digest, fl in zip(layer_digests, found, strict=True):
            rel = blob_name(digest)
            files[rel] = Opaque(fl.blob_size, lambda rel=rel, n=fl.blob_size: _Skip(sink, n, rel))  # type: ignore[misc,arg-type]

        def member(rel: str) -> None:
            sink.member = rel

        try:
            write_archive_to(sink, files, mtime=created_epoch(config), on_member=member)  # type: ignore[arg-type]
            if f.read(1):
                raise _Differs(sink.pos, "(after the end of the archive)")
        except _Differs as d:
            report.add("archive", f"byte {d.offset}", "the archive lockbuild writes", f"differs in or after {d.member}",
                       "the docker-archive is not exactly the archive lockbuild writes for this image (another "
                       "member, name spelling, link, duplicate, header or trailing data): `docker load` could read "
                       "another image than verify")
            return
    for i, digest in enumerate(layer_digests):
        at = sink.offsets.get(blob_name(digest))
        if i < len(src.layer_offsets) and at != src.layer_offsets[i]:
            report.add("archive", blob_name(digest), str(at), str(src.layer_offsets[i]),
                       "the layer verify hashed is not where lockbuild's archive has it")
