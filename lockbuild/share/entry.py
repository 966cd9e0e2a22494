"""A shared-cache entry: "layer key K is blob D (size S, media type M), whose tar is diff_id T",
signed like a Nix substituter's narinfo. No network here: the statement's bytes, its signature, the
small OCI manifest that carries it in a registry, and the checks a reader makes before it believes one.

In the registry an entry is one manifest, tagged ``lb-<key hex>-<signer key id, 16 hex>``::

    manifest (OCI image manifest)
      config  application/vnd.lockbuild.cache.entry.v1+json   the statement + signatures (this module)
      layers  [the layer blob's descriptor]                   so the registry keeps the blob alive

A tag per signer: a runner never overwrites another signer's entry, and a reader asks only for the
tags of the keys it trusts. Whoever can push can still overwrite any tag; that is why a reader
believes nothing the registry says that a trusted signature does not cover (``check_entry``), and
then re-hashes the blob and its tar while reading it (remote.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass

from lockbuild.digest import check, to_hex
from lockbuild.errors import IntegrityError
from lockbuild.oci.compress import LAYER_MEDIA_TYPE, ZSTD_LAYER_MEDIA_TYPE
from lockbuild.oci.image import MANIFEST_MEDIA_TYPE, canonical_json
from lockbuild.oci.layercache import Layer

STATEMENT_TYPE = "lockbuild-cache-entry-1"
ENTRY_MEDIA_TYPE = "application/vnd.lockbuild.cache.entry.v1+json"
TAG_PREFIX = "lb-"
MAX_ENTRY_BYTES = 64 << 10  # a statement is ~600 bytes: anything much larger is not one of ours
LAYER_MEDIA_TYPES = (LAYER_MEDIA_TYPE, ZSTD_LAYER_MEDIA_TYPE)
_TAG = re.compile(r"^lb-([0-9a-f]{64})-([0-9a-f]{16})$")


def tag_for(key: str, key_id: str) -> str:
    return f"{TAG_PREFIX}{to_hex(key, 'layer key')}-{key_id[:16]}"


def parse_tag(tag: str) -> tuple[str, str] | None:
    """(layer key, signer key id prefix) of a cache tag, or None for any other tag."""
    m = _TAG.match(tag)
    return ("sha256:" + m[1], m[2]) if m else None


def statement(key: str, layer: Layer) -> bytes:
    """The bytes a runner signs: the layer key and everything a reader will check the blob against."""
    return canonical_json({"_type": STATEMENT_TYPE, "key": key,
                           "layer": {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
                                     "media_type": layer.media_type, "compressor": layer.compressor}})


def layer_descriptor(layer: Layer) -> dict[str, object]:
    return {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}


@dataclass(frozen=True)
class Entry:
    config: bytes  # the entry blob: statement fields + signatures
    manifest: bytes

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


def make_entry(key: str, layer: Layer, signature: bytes, key_id: str) -> Entry:
    doc = json.loads(statement(key, layer))
    doc["signatures"] = [{"keyid": key_id, "sig": base64.b64encode(signature).decode()}]
    config = canonical_json(doc)
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": ENTRY_MEDIA_TYPE, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [layer_descriptor(layer)],
        "annotations": {"io.lockbuild.cache.key": key},
    })
    return Entry(config, manifest)


class Untrusted(IntegrityError):
    """An entry a reader must not use; the message says why (it becomes the build's note)."""


def config_digest_of(manifest: bytes) -> tuple[str, int]:
    """The entry blob's (digest, size) named by a cache manifest; Untrusted if it is not one."""
    try:
        doc = json.loads(manifest)
        cfg = doc["config"]
        if cfg["mediaType"] != ENTRY_MEDIA_TYPE:
            raise Untrusted(f"its manifest's config is {cfg['mediaType']!r}, not a lockbuild cache entry")
        size = int(cfg["size"])
        if not 0 < size <= MAX_ENTRY_BYTES:
            raise Untrusted(f"its entry blob is {size} bytes (at most {MAX_ENTRY_BYTES})")
        return check(str(cfg["digest"]), "entry digest"), size
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Untrusted("its manifest is not a lockbuild cache manifest") from None


def check_entry(key: str, manifest: bytes, config: bytes, trusted: dict[str, object]) -> tuple[Layer, str]:
    """(the layer, the signer's key id) an entry vouches for, when a trusted key signed its statement
    for exactly ``key`` and the manifest points at exactly the signed blob; else Untrusted.

    ``trusted`` maps key id -> Verifier (lockbuild.sign.keys). ``config`` must already be the blob the
    manifest names (digest checked by the caller). The blob itself is checked later, while it is read.
    """
    try:
        doc = json.loads(config)
        if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
            raise Untrusted("its entry blob is not a lockbuild cache statement")
        layer = Layer.from_dict(doc["layer"])
        sigs = doc.get("signatures") or []
        if not isinstance(sigs, list):
            raise Untrusted("its signatures are malformed")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Untrusted("its entry blob is malformed") from None
    if doc.get("key") != key:
        raise Untrusted(f"it is signed for another layer key ({str(doc.get('key'))[:19]}…)")
    check(layer.digest, "entry layer digest")
    check(layer.diff_id, "entry diff_id")
    if layer.media_type not in LAYER_MEDIA_TYPES or layer.size <= 0:
        raise Untrusted(f"its layer descriptor is not a lockbuild layer ({layer.media_type}, {layer.size} bytes)")
    if not sigs:
        raise Untrusted("it is unsigned")
    signed = statement(key, layer)
    signer = None
    seen = []
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("keyid"), str) or not isinstance(s.get("sig"), str):
            continue
        seen.append(s["keyid"][:16])
        verifier = trusted.get(s["keyid"])
        if verifier is None:
            continue
        try:
            raw = base64.b64decode(s["sig"], validate=True)
        except (binascii.Error, ValueError):
            raise Untrusted(f"its signature by trusted key {s['keyid'][:16]} is not base64") from None
        if not verifier.verify(signed, raw):  # type: ignore[attr-defined]
            raise Untrusted(f"its signature by trusted key {s['keyid'][:16]} does not match its content "
                            "(re-pushed with other content?)")
        signer = s["keyid"]
        break
    if signer is None:
        raise Untrusted(f"it is signed only by keys not trusted here ({', '.join(seen) or 'none readable'})")
    try:
        layers = json.loads(manifest)["layers"]
    except (ValueError, KeyError, TypeError):
        raise Untrusted("its manifest is malformed") from None
    if layers != [layer_descriptor(layer)]:
        raise Untrusted("its manifest points at another blob than the one signed (re-pushed with other content?)")
    return layer, signer
