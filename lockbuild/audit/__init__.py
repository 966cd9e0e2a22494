"""Release artifacts platform teams can audit: SBOM, provenance, lock diff, Kubernetes manifests.

Everything here is derived from the lock alone (plus, optionally, the image digest and the
cache for wheel licenses), so the same lock always gives the same bytes. Shared helpers:
reading a lock together with its file digest, and normalising image digests.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from lockbuild.digest import PREFIX, from_hex
from lockbuild.errors import IntegrityError, LockbuildError
from lockbuild.lockfile.io import LockFile, read_lockfile

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://lockbuild.dev/")


# A lock and the sha256 of its exact bytes (what `image` records as io.lockbuild.lock.digest), from one
# read: lockfile/io.py's LockFile. The audit commands still call it by these names.
LockedInput = LockFile


def read_locked(path: Path) -> LockFile:
    return read_lockfile(path)


def normalize_digest(value: str, what: str = "--image-digest") -> str:
    """'sha256:<hex>' or a bare 64-hex digest -> 'sha256:<hex>' (lowercase)."""
    try:
        return from_hex(value.strip().lower().removeprefix(PREFIX))
    except IntegrityError:
        raise LockbuildError(f"{what} {value!r} is not a sha256 digest",
                             hint="pass sha256:<64 hex>, e.g. the digest `lockbuild image` prints") from None


def stable_uuid(*parts: str) -> uuid.UUID:
    """A UUID that depends only on ``parts`` (uuid5 in lockbuild's namespace): no clock, no randomness."""
    return uuid.uuid5(NAMESPACE, "\n".join(parts))
