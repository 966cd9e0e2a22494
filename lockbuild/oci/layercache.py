"""The layer descriptor and the layer cache's records.

``Layer`` names one compressed layer blob in the content-addressed cache (digest, diff_id, size,
media type, compressor). A record maps a builder input key to the Layer made from it, so an
unchanged input is not tarred again; each record carries an HMAC made with a key kept outside
the cache dir (``key_file``), and a record without a valid MAC is never reused nor trusted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache, key_file, mac_key
from lockbuild.oci.compress import LAYER_MEDIA_TYPE

META_NAMESPACE = "layers"


@dataclass(frozen=True)
class Layer:
    """One layer blob in the cache. ``digest`` names the compressed bytes (gzip or zstd), ``diff_id`` the tar."""

    digest: str  # sha256:<hex> of the compressed blob
    diff_id: str  # sha256:<hex> of the uncompressed tar: the reproducibility guarantee
    size: int  # compressed bytes
    media_type: str = LAYER_MEDIA_TYPE
    compressor: str = ""
    # bytes of the uncompressed tar, when the builder wrote it (records before 2026-12-03 and shared-cache
    # entries have none): verify's bound for decompressing another encoding of the same tar. Not part
    # of a layer's identity (equality), and absent from to_dict when unknown, so older records' MACs hold.
    tar_size: int | None = field(default=None, compare=False)

    def path(self, cache: Cache) -> Path:
        return cache.path(self.digest)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        if self.tar_size is None:
            del d["tar_size"]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Layer:
        return cls(
            digest=str(data["digest"]),
            diff_id=str(data["diff_id"]),
            size=int(str(data["size"])),
            media_type=str(data.get("media_type", LAYER_MEDIA_TYPE)),
            compressor=str(data.get("compressor", "")),
            tar_size=int(str(data["tar_size"])) if data.get("tar_size") is not None else None,
        )


# -- layer cache: skip re-tarring when the builder's input key is unchanged ---------------------


def _meta_key(key: str) -> str:
    safe = key.replace("sha256:", "")
    if not safe or "/" in safe or safe.startswith("."):
        raise BuildError(f"bad layer cache key {key!r}", hint="use a digest of the layer's inputs")
    return safe


# A layer record says "this key's layer is blob <digest>, whose tar is <diff_id>". Whoever can
# write the cache dir could point it at another well-formed blob (digests recomputed), so every
# record carries an HMAC-SHA256 made with a key that lives OUTSIDE the cache dir
# (fetch/cache.py ``key_file``: $LOCKBUILD_KEY_FILE, default $XDG_CONFIG_HOME/lockbuild/cache.key,
# created 0600 on first use; the uv head start's records use it too).
# A record without a valid MAC is never reused (the layer is rebuilt) and never trusted by verify.
MAC_VERSION = "lockbuild-layer-record-1"


def record_mac(key: str, layer: Layer) -> str | None:
    import hashlib
    import hmac
    import json

    secret = mac_key()
    if secret is None:
        return None
    msg = json.dumps([MAC_VERSION, key, layer.to_dict()], sort_keys=True).encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def layer_record(cache: Cache, key: str) -> tuple[Layer | None, str | None]:
    """(layer, None) for a record whose MAC checks out; (None, why) for a record present but not
    trustworthy (forged, edited, or made without a key); (None, None) when there is none."""
    import hmac

    record = cache.meta_get(META_NAMESPACE, _meta_key(key))
    if record is None:
        return None, None
    try:
        layer = Layer.from_dict(record)
    except (KeyError, ValueError, TypeError):
        return None, "the record is malformed"
    want = record_mac(key, layer)
    got = record.get("mac")
    if want is None:
        return None, f"no record key at {key_file()} (cannot check the record)"
    if not isinstance(got, str) or not hmac.compare_digest(want, got):
        return None, "its MAC does not match (edited or forged record)"
    return layer, None


def remember_layer(cache: Cache, key: str, layer: Layer) -> None:
    record = layer.to_dict()
    mac = record_mac(key, layer)
    if mac is not None:
        record["mac"] = mac
    cache.meta_put(META_NAMESPACE, _meta_key(key), record)
