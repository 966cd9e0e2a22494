"""The audit inputs kept beside a lock (`lockbuild.lock.d/debian/`, resolve/archive.py: KeptInputs):
written by `export audit-inputs`, kept up to date by `lock` once the directory exists."""

from __future__ import annotations

from pathlib import Path

from lockbuild.errors import LockbuildError
from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import Lock
from lockbuild.progress import Notify
from lockbuild.resolve.archive import KeptInputs
from lockbuild.spec import Spec


def kept_complete(kept: KeptInputs, lock: Lock) -> bool:
    """Whether every InRelease file the lock pins is kept."""
    return all(kept.inrelease(st.inrelease_sha256).is_file() for st in lock.debian.suites)


def export_kept(spec: Spec, lock: Lock, dest: Path, cache: Cache, notify: Notify | None = None) -> list[Path]:
    """Write the Debian audit inputs of ``lock`` into ``dest`` (lockbuild.lock.d/debian)."""
    from lockbuild.resolve.debian import export_audit_inputs

    return export_audit_inputs(lock.debian, lock.target.base.split(":", 1)[1], lock.target.platform, cache, dest,
                               mirror=spec.mirror, security_mirror=spec.security_mirror,
                               keyring=spec.keyrings or None, kept=dest if dest.is_dir() else None,
                               progress=notify)


def refresh_kept(spec: Spec, previous: Lock | None, lock: Lock, path: Path, cache: Cache,
                 notes: list[str]) -> list[Path]:
    """After `lock` wrote ``lock`` at ``path``: bring an existing lockbuild.lock.d/ up to date when the
    Debian state moved or it lacks a pinned InRelease. A failure is a note (the lock is written and
    good; its audit inputs are a convenience beside it). Returns the files written."""
    kept = KeptInputs.beside(path)
    if not kept.root.is_dir():
        return []
    if (previous is not None and previous.debian.suites == lock.debian.suites
            and previous.debian.roots == lock.debian.roots and kept_complete(kept, lock)):
        return []
    try:
        return export_kept(spec, lock, kept.root, cache)
    except LockbuildError as e:
        notes.append(f"the audit inputs in {kept.root.parent} were not refreshed: {e.message}"
                     + (f" ({e.hint})" if e.hint else ""))
        return []
