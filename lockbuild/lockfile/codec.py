"""Which layer compressor a lock pins: lock-time policy, so the lock stage records it without importing
the image writer (oci/compress.py, which imports these names from here).

The compression names, the encoders (each a PyPI wheel bundling its C library) and the compression
each makes, the (encoder, level) new locks pin per compression (``DEFAULT_CODEC``) and what locks
written before ``[image] compression-level`` build (``LEGACY_CODEC``), which encoder a lock's
``[image]`` selects (``codec_for``), and the pinned library's name and version recorded in the lock
and per layer (``compressor_version``).
"""

from __future__ import annotations

from lockbuild.errors import BuildError

COMPRESSIONS = ("gzip", "zstd")
DEFAULT_COMPRESSION = "zstd"  # [image] compression of new locks: smaller than gzip, CPU-independent
ZSTD_LEVEL = 3  # zstd locks without [image] compression-level (written before zstd became the default)
ENCODERS = {"isal": "gzip", "zlib-ng": "gzip", "zstandard": "zstd"}  # encoder (PyPI name) -> compression
DEFAULT_ENCODER = {"gzip": "zlib-ng", "zstd": "zstandard"}
# (encoder, level) per compression: what new locks pin (both CPU-independent), and what a lock written
# before [image] compression-level builds, everywhere it makes that compression (the digests it always had).
DEFAULT_CODEC = {"gzip": ("zlib-ng", 1), "zstd": ("zstandard", 1)}
LEGACY_CODEC = {"gzip": ("isal", 1), "zstd": ("zstandard", ZSTD_LEVEL)}


def codec_for(compression: str, lock_compression: str, lock_compressor: str, lock_level: int) -> tuple[str, int]:
    """The encoder and level that write ``compression`` layers for a lock whose ``[image]`` says
    ``compression``/``compressor``/``compression-level`` (0: not recorded). A lock without a level
    was written before zstd became the default: it builds what it always built (gzip from ISA-L,
    zstd level 3), so its digests stay. A newer lock uses the encoder it names for its own
    compression, and the CPU-independent default for the other one (the gzip layers that
    ``--docker-archive``/``--load`` need for a zstd lock, or ``--compression``)."""
    if compression not in COMPRESSIONS:
        raise BuildError(f"unknown layer compression {compression!r}", hint=f"use one of {', '.join(COMPRESSIONS)}")
    if not lock_level:
        return LEGACY_CODEC[compression]
    if compression != lock_compression:
        return DEFAULT_CODEC[compression]
    named = lock_compressor.split(" ")[0]
    return (named if ENCODERS.get(named) == compression else DEFAULT_ENCODER[compression]), lock_level


def encoder_module(encoder: str):  # type: ignore[no-untyped-def]
    """The pinned encoder's module (isal_zlib, zlib_ng or zstandard); a clear error if absent."""
    try:
        if encoder == "isal":
            from isal import isal_zlib

            return isal_zlib
        if encoder == "zlib-ng":
            from zlib_ng import zlib_ng

            return zlib_ng
        if encoder == "zstandard":
            import zstandard

            return zstandard
    except ImportError as e:
        raise BuildError(f"the pinned {ENCODERS[encoder]} compressor is not installed ({e.name})",
                         hint="reinstall lockbuild with its dependencies (pip install lockbuild)") from None
    raise BuildError(f"unknown layer compressor {encoder!r}", hint=f"use one of {', '.join(ENCODERS)}")


def pinned_encoder(compression: str, encoder: str | None) -> str:
    """``encoder`` (default: the one new locks pin) checked to make ``compression``."""
    enc = encoder or DEFAULT_ENCODER.get(compression, "")
    if ENCODERS.get(enc) != compression:
        raise BuildError(f"no {compression} layer compressor {enc!r}",
                         hint=f"use one of {', '.join(e for e, c in ENCODERS.items() if c == compression)}")
    return enc


def compressor_version(compression: str = "gzip", encoder: str | None = None) -> str:
    """Name and version of the pinned library that makes the compressed bytes, e.g. ``zlib-ng 1.1.0
    (zlib-ng 2.3.3)``; ``encoder`` defaults to the one new locks pin for ``compression``."""
    enc = pinned_encoder(compression, encoder)
    z = encoder_module(enc)
    if enc == "zstandard":
        return f"zstandard {z.__version__} (libzstd {'.'.join(map(str, z.ZSTD_VERSION))})"
    if enc == "zlib-ng":
        import zlib_ng

        return f"zlib-ng {zlib_ng.__version__} (zlib-ng {z.ZLIBNG_VERSION})"
    import isal

    return f"isal {isal.__version__}"
