"""`lockbuild lock --check --rederive`: audit a lock by deriving it again and comparing.

The lock's `# content:` header only catches accidental edits: anyone can recompute it. This
audit re-derives every field from the spec and the model at the lock's recorded pins:

- Debian: the exact InRelease files the lock names (by sha256), from the content-addressed
  cache (`lock` keeps every verified InRelease and Packages index there), the audit inputs kept
  beside the lock (`lockbuild.lock.d/`, `lockbuild export audit-inputs`), the live archive if it
  still serves those bytes, or a snapshot archive (LOCKBUILD_SNAPSHOT_URL); each is re-verified
  (signature against the configured keyring, Codename, Packages index hashes) and the closure is
  recomputed.
- Python: uv resolves the same requirements again with the lock's `exclude-newer` cutoff and the
  lock's versions as preferences (as `lock` re-locks); wheel URLs and sha256 come from the index,
  never from the lock. So a version is accepted when the resolver accepts it for these inputs at
  this cutoff (a stable re-lock keeps older pins); another allowed release, edited in together
  with its own index data, is not a difference — `lockbuild diff` shows version moves in review.
- Everything else (target, runtime, model files, image) is derived as `lock` derives it.

The derived lock is compared field by field with the file. What cannot be re-derived is the
cutoff itself (it was "now" at lock time) and the choice of Debian archive state: both are taken
from the lock, and a forged one shows up as a signature or hash failure or as differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lockbuild.fetch.cache import Cache
from lockbuild.lock.create import _make_lock, input_digests, python_minor
from lockbuild.lockfile.io import to_dict
from lockbuild.lockfile.model import Lock
from lockbuild.model.intake import fetch_model
from lockbuild.model.metadata import read_model
from lockbuild.platforms import debian_arch
from lockbuild.progress import Notify
from lockbuild.resolve import debian, runtime
from lockbuild.spec import Spec

# Lists of tables keyed by this field compare entry by entry (a swapped wheel names the package).
_KEYS = ("name", "path")


@dataclass(frozen=True)
class Difference:
    field: str  # dotted path: python.packages[numpy].sha256
    locked: Any  # what the file says (None: absent)
    derived: Any  # what re-derivation gives (None: absent)

    def __str__(self) -> str:
        if self.locked is None:
            return f"{self.field}: missing from the lock (derived: {self.derived!r})"
        if self.derived is None:
            return f"{self.field}: not derived from the spec and model (lock has: {self.locked!r})"
        return f"{self.field}: lock has {self.locked!r}, re-derived {self.derived!r}"

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "locked": self.locked, "derived": self.derived}


def _keyed(rows: list[Any]) -> dict[str, Any] | None:
    if not rows or not all(isinstance(r, dict) for r in rows):
        return None
    for key in _KEYS:
        if all(key in r for r in rows) and len({r[key] for r in rows}) == len(rows):
            return {str(r[key]): r for r in rows}
    return None


def compare(locked: Any, derived: Any, where: str = "") -> list[Difference]:
    """Field-by-field differences between two plain (to_dict) locks."""
    if isinstance(locked, dict) and isinstance(derived, dict):
        return _compare_keyed(locked, derived, lambda k: f"{where}.{k}" if where else k)
    if isinstance(locked, list) and isinstance(derived, list):
        a, b = _keyed(locked), _keyed(derived)
        if a is not None and b is not None:
            return _compare_keyed(a, b, lambda k: f"{where}[{k}]")
    return [] if locked == derived else [Difference(where, locked, derived)]


def _compare_keyed(a: dict, b: dict, name: Callable[[str], str]) -> list[Difference]:
    """Entries only one side has, then the differences inside the entries both have."""
    out: list[Difference] = []
    for k in sorted(set(a) | set(b)):
        if k not in b:
            out.append(Difference(name(k), a[k], None))
        elif k not in a:
            out.append(Difference(name(k), None, b[k]))
        else:
            out += compare(a[k], b[k], name(k))
    return out


def derive_lock(spec: Spec, lock: Lock, cache: Cache, notify: Notify = lambda _m: None,
                kept: Path | None = None, notes: list[str] | None = None) -> Lock:
    """The lock `lock` would write for this spec and model at `lock`'s pins (cutoff, InRelease files)."""
    source = fetch_model(spec.model_uri, tracking_uri=spec.tracking_uri, base_dir=spec.root)
    try:
        info = read_model(source.path)
        # the interpreter the lock chose (a logged minor Debian does not ship) is re-derived by
        # `_make_lock` below; the Debian side it names is the one re-derived here
        chosen = lock.target.python_choice.chosen if lock.target.python_choice else python_minor(spec, info)
        choice = runtime.choose_suite(chosen)
        codename = spec.base.split(":", 1)[1] if spec.base else choice.codename
        arch = debian_arch(spec.platform)
        roots = tuple(sorted(set(debian.default_roots(choice.interpreter_package)) | set(spec.debian_packages)))
        notify(f"re-deriving Debian {codename}/{arch} from the locked InRelease files")
        deb = debian.resolve_debian(codename, arch, roots, cache, locked=lock.debian, mirror=spec.mirror,
                                    security_mirror=spec.security_mirror, keyring=spec.keyrings or None,
                                    progress=notify, kept=kept, notes=notes)
        # `lock` keeps a previous lock's Debian side and cutoff when its inputs changed: hand it the
        # re-derived Debian side and the recorded cutoff, with an inputs digest that never matches.
        previous = replace(lock, inputs_digest="", debian=deb,
                           target=replace(lock.target, base=f"debian:{codename}", platform=spec.platform))
        result = _make_lock(spec, source, info, previous=previous, upgrade=False, cache=cache, notify=notify)
        inputs = input_digests(spec, source, info)
        assert dict(result.lock.inputs) == inputs
        return result.lock
    finally:
        source.cleanup()


def rederive(spec: Spec, lock: Lock, cache: Cache, notify: Notify = lambda _m: None,
             kept: Path | None = None, notes: list[str] | None = None) -> list[Difference]:
    """Every field where `lock` differs from what its spec and model derive at its pins ([] = genuine)."""
    derived = derive_lock(spec, lock, cache, notify, kept=kept, notes=notes)
    diffs = compare(to_dict(lock), to_dict(derived))
    # Locks written before signer fingerprints were recorded have no `signed-by`: nothing to compare
    # (the InRelease files were still re-verified against the configured keyring above).
    return [d for d in diffs if not (d.field.endswith(".signed-by") and d.locked is None)]
