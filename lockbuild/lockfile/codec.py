"""Which layer compressor a lock pins: lock-time policy, so the lock stage records it without importing
the image writer (oci/compress.py, which imports these names from here).

The compression names, the encoders (each a PyPI wheel bundling its C library) and the compression
each makes, the (encoder, level) new locks pin per compression (``DEFAULT_CODEC``), which encoder a
lock's ``[image]`` selects (``codec_for``), and the pinned library's name and version recorded in the
lock and per layer (``compressor_version``).
"""

from __future__ import annotations

from lockbuild.errors import BuildError

COMPRESSIONS = ("gzip", "zstd")
DEFAULT_COMPRESSION = "zstd"  # [image] compression of new locks: smaller than gzip, CPU-independent
ENCODERS = {"isal": "gzip", "zlib-ng": "gzip", "zstandard": "zstd"}  # encoder (PyPI name) -> compression
DEFAULT_ENCODER = {"gzip": "zlib-ng", "zstd": "zstandard"}
# (encoder, level) per compression that new locks pin: both CPU-independent.
DEFAULT_CODEC = {"gzip": ("zlib-ng", 1), "zstd": ("zstandard", 1)}


def codec_for(compression: str, lock_compression: str, lock_compressor: str, lock_level: int) -> tuple[str, int]:
    """The encoder and level that write ``compression`` layers for a lock whose ``[image]`` says
    ``compression``/``compressor``/``compression-level`` (0: not recorded). The lock's encoder (by
    name) and level make its own compression; the other one gets the CPU-independent default (the
    gzip layers that ``--docker-archive``/``--load`` need for a zstd lock, or ``--compression``).
    A lock without a level was written by a pre-release lockbuild, whose layer digests are no
    longer made: it is refused with the way out (re-lock)."""
    if compression not in COMPRESSIONS:
        raise BuildError(f"unknown layer compression {compression!r}", hint=f"use one of {', '.join(COMPRESSIONS)}")
    if not lock_level:
        raise BuildError("the lock has no [image] compression-level: it was written by a pre-release lockbuild, "
                         "whose layer compression this version no longer makes",
                         hint="re-lock with `lockbuild lock` (it writes the level; the image's digest will change)")
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
