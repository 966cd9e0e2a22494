"""`lock --check`: whether a lock is still what `lock` would write, as reasons (one line each) and
notes. The CLI adds doctor's errors (verify/doctor.py, a later stage) and renders the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lockbuild import __version__
from lockbuild.digest import short
from lockbuild.fetch.cache import Cache
from lockbuild.lock import pruned
from lockbuild.lock.create import BUILD_RULES_VERSION, input_digests
from lockbuild.lock.keep import kept_complete
from lockbuild.lockfile.io import dumps, read_lock
from lockbuild.lockfile.model import LOCK_VERSION, Lock
from lockbuild.model.intake import ModelSource, fetch_model
from lockbuild.model.metadata import ModelInfo, read_model
from lockbuild.progress import Notify
from lockbuild.resolve.archive import KeptInputs
from lockbuild.spec import Spec


@dataclass
class CheckResult:
    lock: Lock  # the lock as read (its content header not checked: a hand edit is a reason below)
    reasons: list[str] = field(default_factory=list)  # why it is stale; [] when fresh
    notes: list[str] = field(default_factory=list)  # worth saying, not a reason


def check_lock(spec: Spec, path: Path, cache: Cache, notify: Notify = lambda _m: None) -> CheckResult:
    """Every reason the lock at ``path`` is not what `lock` writes for ``spec`` now: changed inputs,
    a hand edit, pruned lists that no longer follow the rules; a note when the kept audit inputs
    lack what the lock pins."""
    current = read_lock(path, verify_content=False)  # a hand edit is reported below as a reason
    result = CheckResult(current, explain_stale(spec, current))
    if dumps(current) != path.read_text(encoding="utf-8"):
        result.reasons.append(f"{path.name} was edited by hand (it does not render back to the same bytes)")
    notify("checking the pruned lists against the wheels' file lists…")
    pruned_reasons, result.notes = pruned.check(current, cache)
    result.reasons += pruned_reasons
    kept = KeptInputs.beside(path)
    if kept.root.is_dir() and not kept_complete(kept, current):
        result.notes.append(f"{kept.root.parent.name}/ lacks InRelease files this lock pins: `lock --check "
                            "--rederive` may not run later; run `lockbuild export audit-inputs` and commit it")
    return result


def explain_stale(spec: Spec, lock: Lock) -> list[str]:
    """Why `lock` no longer matches its inputs: one line per changed input, [] when fresh."""
    source = fetch_model(spec.model_uri, tracking_uri=spec.tracking_uri, base_dir=spec.root)
    try:
        info = read_model(source.path)
        now = input_digests(spec, source, info)
    finally:
        source.cleanup()
    then = dict(lock.inputs)
    reasons: list[str] = []
    if now["spec"] != then.get("spec"):
        reasons.append(f"spec edited: {spec.path.name} differs from the one the lock was made from")
    if now["model"] != then.get("model"):
        reasons += _model_reasons(lock, source, info)
    if now["tool"] != then.get("tool"):
        if lock.tool_version != __version__:
            reasons.append(f"lockbuild changed: the lock was written by {lock.tool_version}, this is {__version__}")
        else:
            reasons.append(f"lockbuild {__version__} now writes locks differently (lock format {LOCK_VERSION}, "
                           f"default build rules version {BUILD_RULES_VERSION}) than when this lock was written")
    return reasons


def _model_reasons(lock: Lock, source: ModelSource, info: ModelInfo) -> list[str]:
    """The model's digest differs: where it moved, which files changed (else just "model changed")."""
    reasons: list[str] = []
    if source.resolved_uri != lock.model.resolved_uri:
        reasons.append(f"model moved: {lock.model.uri} now resolves to {source.resolved_uri} "
                       f"(the lock has {lock.model.resolved_uri})")
    old = {f.path: f.sha256 for f in lock.model.files}
    new = {p: h for p, _, h in info.files}
    for p in sorted(set(old) | set(new)):
        if p not in new:
            reasons.append(f"model file removed: {p}")
        elif p not in old:
            reasons.append(f"model file added: {p}")
        elif old[p] != new[p]:
            reasons.append(f"model file changed: {p} (sha256 {short(old[p])}… -> {short(new[p])}…)")
    if not reasons or (source.resolved_uri == lock.model.resolved_uri
                       and not any(r.startswith("model file") for r in reasons)):
        reasons.append("model changed")
    return reasons
