"""sha256 digests, one form in memory: ``sha256:<64 lowercase hex>``.

Every field, key and return value that holds a digest (``Wheel.sha256``, ``Deb.sha256``,
``ModelFile.sha256``, ``Suite.inrelease_sha256``, cache keys, layer digests and diff_ids,
manifest and config digests) carries this prefixed form, as OCI does. Bare hex exists only at
the edges, converted here and nowhere else: the lock file's ``sha256 = "<hex>"`` rows
(lockfile/io.py), Debian's ``SHA256:`` fields and pylock ``hashes`` tables (``from_hex``), cache file
names (fetch/cache.py), and the ``{"sha256": "<hex>"}`` tables of SBOM, provenance and pylock
exports (``to_hex``). Hashing itself is ``fsutil.sha256_file`` / ``fsutil.sha256_bytes``, which
return this form.
"""

from __future__ import annotations

from lockbuild.errors import IntegrityError

PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdef")


def _is_hex(s: str) -> bool:
    return len(s) == 64 and all(c in _HEX for c in s)


def check(digest: str, what: str = "digest") -> str:
    """`digest` itself, if it is ``sha256:<64 lowercase hex>``; else IntegrityError."""
    if not (digest.startswith(PREFIX) and _is_hex(digest[len(PREFIX):])):
        raise IntegrityError(f"{what}: not a sha256 digest (sha256:<64 hex>): {digest!r}")
    return digest


def from_hex(hexdigest: str, what: str = "digest") -> str:
    """Edge in: bare hex (any case) as a file format writes it -> ``sha256:<hex>``."""
    hx = hexdigest.lower()
    if not _is_hex(hx):
        raise IntegrityError(f"{what}: not a sha256 hex digest: {hexdigest!r}")
    return PREFIX + hx


def to_hex(digest: str, what: str = "digest") -> str:
    """Edge out: ``sha256:<hex>`` -> the bare hex a file format or file name wants."""
    return check(digest, what)[len(PREFIX):]


def short(digest: str) -> str:
    """The first 12 hex digits, for messages (``abc123def456``)."""
    return to_hex(digest)[:12]
