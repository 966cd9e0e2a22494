"""What changed between two locks: interpreter, platform, Debian and Python packages, model, runtime.

Versions are compared the way their ecosystems do (packaging.version for Python,
debian_support.Version for Debian), so a change is classified as added, removed, upgraded,
downgraded or changed (same version, different bytes or a value without an order). ``major``
marks bumps that usually break: a new major version (or a new minor in 0.x), a new Python
minor for the interpreter, a new Debian epoch or upstream major.

Why one module of ~380 lines: one section per lock section (target, runtime, Debian, Python,
variants, build rules, model), each a few small functions over the same Change record and ordering
helpers; split per section, every file would import those helpers and nothing else.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions
from debian.debian_support import Version as DebVersion
from packaging.version import InvalidVersion
from packaging.version import Version as PyVersion

from lockbuild.digest import short
from lockbuild.errors import LockFileError
from lockbuild.lockfile.io import loads
from lockbuild.lockfile.model import Lock
from lockbuild.platforms import debian_arch

SECTIONS = ("interpreter", "platform", "debian", "python", "build", "model", "runtime", "image")
Order = Callable[[str, str], int | None]  # -1/0/1, None when the two cannot be ordered


@dataclass(frozen=True)
class Change:
    section: str  # one of SECTIONS
    name: str  # package, file or setting
    kind: str  # added | removed | upgraded | downgraded | changed
    old: str | None = None
    new: str | None = None
    major: bool = False
    detail: str = ""  # e.g. "same version, different wheel"


@dataclass
class LockDiff:
    old: str
    new: str
    changes: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def summary(self) -> dict[str, dict[str, int]]:
        counts: dict[str, Counter[str]] = {}
        for c in self.changes:
            counts.setdefault(c.section, Counter())[c.kind] += 1
        return {s: dict(sorted(counts[s].items())) for s in SECTIONS if s in counts}

    def to_dict(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "changed": self.changed, "summary": self.summary(),
                "major": sum(1 for c in self.changes if c.major),
                "changes": [asdict(c) for c in self.changes]}


# -- version orders ----------------------------------------------------------------------------------


def _sign(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def py_order(old: str, new: str) -> int | None:
    try:
        return _sign(PyVersion(new), PyVersion(old))
    except InvalidVersion:
        return None


def deb_order(old: str, new: str) -> int | None:
    try:
        return _sign(DebVersion(new), DebVersion(old))
    except ValueError:
        return None


def py_major(old: str, new: str) -> bool:
    try:
        a, b = PyVersion(old), PyVersion(new)
    except InvalidVersion:
        return False
    return a.major != b.major or (a.major == 0 and a.minor != b.minor)


def interpreter_major(old: str, new: str) -> bool:
    try:
        a, b = PyVersion(old), PyVersion(new)
    except InvalidVersion:
        return old != new
    return (a.major, a.minor) != (b.major, b.minor)


def _upstream_major(v: DebVersion) -> str:
    m = re.match(r"\d+", v.upstream_version or "")
    lead = m.group(0) if m else ""
    return "" if len(lead) >= 8 else lead  # 20250419-style date versions have no "major"


def deb_major(old: str, new: str) -> bool:
    try:
        a, b = DebVersion(old), DebVersion(new)
    except ValueError:
        return False
    return (a.epoch or "0") != (b.epoch or "0") or _upstream_major(a) != _upstream_major(b)


def classify(section: str, name: str, old: str, new: str, order: Order,
             major: Callable[[str, str], bool] = lambda _a, _b: False) -> Change | None:
    """One versioned value compared; None when equal."""
    if old == new:
        return None
    if not old or not new:
        return _plain(section, name, old, new)
    sign = order(old, new)
    kind = {1: "upgraded", -1: "downgraded"}.get(sign or 0, "changed")
    return Change(section, name, kind, old, new, major=kind != "changed" and major(old, new))


def _plain(section: str, name: str, old: object, new: object) -> Change | None:
    if old == new:
        return None
    return Change(section, name, "changed", None if old in ("", None) else str(old),
                  None if new in ("", None) else str(new))


# -- package sets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinned:
    version: str
    sha256: str
    label: str  # wheel file name or deb suite


def compare_packages(section: str, old: Mapping[str, Pinned], new: Mapping[str, Pinned], order: Order,
                     major: Callable[[str, str], bool]) -> list[Change]:
    out: list[Change] = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a is None and b is not None:
            out.append(Change(section, name, "added", None, b.version))
        elif b is None and a is not None:
            out.append(Change(section, name, "removed", a.version, None))
        elif a is not None and b is not None:
            change = classify(section, name, a.version, b.version, order, major)
            if change is None and a.sha256 != b.sha256:
                labels = f" ({a.label} -> {b.label})" if a.label != b.label else ""
                change = Change(section, name, "changed", a.version, b.version,
                                detail=f"same version, different sha256{labels}")
            if change is not None:
                out.append(change)
    return out


def wheels(lock: Lock) -> dict[str, Pinned]:
    return {w.name: Pinned(w.version, w.sha256, w.filename) for w in lock.python.packages}


def debs(lock: Lock) -> dict[str, Pinned]:
    arch = debian_arch(lock.target.platform)
    return {f"{d.name}:{d.architecture}" if d.architecture not in ("all", arch) else d.name:
            Pinned(d.version, d.sha256, d.suite) for d in lock.debian.packages}


# -- sections -------------------------------------------------------------------------------------------


def _keep(changes: Iterable[Change | None]) -> list[Change]:
    return [c for c in changes if c is not None]


def interpreter_changes(a: Lock, b: Lock) -> list[Change]:
    ta, tb = a.target, b.target
    return _keep([
        classify("interpreter", "python", ta.python, tb.python, py_order, interpreter_major),
        _plain("interpreter", "interpreter-package", ta.interpreter_package, tb.interpreter_package),
        classify("interpreter", "interpreter-deb-version", ta.interpreter_deb_version, tb.interpreter_deb_version,
                 deb_order, deb_major),
        _plain("interpreter", "python-abi", ta.python_abi, tb.python_abi),
    ])


def platform_changes(a: Lock, b: Lock) -> list[Change]:
    ta, tb = a.target, b.target
    return _keep([
        _plain("platform", "base", ta.base, tb.base),
        _plain("platform", "platform", ta.platform, tb.platform),
        classify("platform", "glibc", ta.glibc, tb.glibc, py_order),
        _plain("platform", "wheel-platform", ta.wheel_platform, tb.wheel_platform),
        *[_plain("platform", f"suite {name}", sa, sb) for name, sa, sb in _suite_snapshots(a, b)],
    ])


def _suite_snapshots(a: Lock, b: Lock) -> list[tuple[str, str | None, str | None]]:
    sa = {s.name: s.snapshot for s in a.debian.suites}
    sb = {s.name: s.snapshot for s in b.debian.suites}
    return [(n, sa.get(n), sb.get(n)) for n in sorted(sa.keys() | sb.keys())]


def python_settings_changes(a: Lock, b: Lock) -> list[Change]:
    """Resolver settings, and distributions resolved but left out of the image ([python] omit)."""
    pa, pb = a.python, b.python
    oa, ob = set(pa.omitted), set(pb.omitted)
    return _keep([
        _plain("python", "exclude-newer", pa.exclude_newer, pb.exclude_newer),
        _plain("python", "index-url", pa.index_url, pb.index_url),
        *[Change("python", f"omitted {n}", "added" if n in ob else "removed") for n in sorted(oa ^ ob)],
    ])


def build_changes(a: Lock, b: Lock) -> list[Change]:
    """The [build] rules: bytecode mode, prune/keep globs added or removed, and the per-wheel
    pruned lists of the wheels both locks have (what the builder really removes)."""
    ba, bb = a.build, b.build
    out: list[Change | None] = [_plain("build", "bytecode", ba.bytecode, bb.bytecode)]
    for key, ga, gb in (("prune", set(ba.prune), set(bb.prune)), ("keep", set(ba.keep), set(bb.keep))):
        out += [Change("build", f"{key} {g}", "added" if g in gb else "removed") for g in sorted(ga ^ gb)]
    out.append(_plain("build", "pruned-listed", str(ba.pruned_listed).lower() if ba.pruned_listed else "",
                      str(bb.pruned_listed).lower() if bb.pruned_listed else ""))
    pa = {w.name: set(w.pruned) for w in a.python.packages}
    pb = {w.name: set(w.pruned) for w in b.python.packages}
    for name in sorted(pa.keys() & pb.keys()):
        if pa[name] != pb[name]:
            gone, new = sorted(pa[name] - pb[name]), sorted(pb[name] - pa[name])
            detail = ", ".join([f"+{e}" for e in new[:3]] + [f"-{e}" for e in gone[:3]])
            more = len(new) + len(gone) - min(len(new), 3) - min(len(gone), 3)
            out.append(Change("build", f"pruned {name}", "changed", f"{len(pa[name])} entries",
                              f"{len(pb[name])} entries", detail=detail + (f" and {more} more" if more else "")))
    return _keep(out)


def model_changes(a: Lock, b: Lock) -> list[Change]:
    ma, mb = a.model, b.model
    fa = {f.path: f.sha256 for f in ma.files}
    fb = {f.path: f.sha256 for f in mb.files}
    files = []
    for path in sorted(fa.keys() | fb.keys(), key=str.encode):
        if path not in fa:
            files.append(Change("model", f"file {path}", "added", None, short(fb[path])))
        elif path not in fb:
            files.append(Change("model", f"file {path}", "removed", short(fa[path]), None))
        elif fa[path] != fb[path]:
            files.append(Change("model", f"file {path}", "changed", short(fa[path]), short(fb[path])))
    return _keep([
        _plain("model", "uri", ma.uri, mb.uri),
        _plain("model", "resolved-uri", ma.resolved_uri, mb.resolved_uri),
        classify("model", "version", ma.version, mb.version, py_order),
        _plain("model", "run-id", ma.run_id, mb.run_id),
        _plain("model", "flavors", ",".join(ma.flavors), ",".join(mb.flavors)),
        classify("model", "logged mlflow-version", ma.mlflow_version, mb.mlflow_version, py_order, py_major),
        classify("model", "logged python-version", ma.python_version, mb.python_version, py_order,
                 interpreter_major),
        _plain("model", "tree-digest", ma.tree_digest, mb.tree_digest),
        *files,
    ])


def runtime_changes(a: Lock, b: Lock) -> list[Change]:
    ra, rb = a.runtime, b.runtime
    ea, eb = dict(ra.env), dict(rb.env)
    env = [_plain("runtime", f"env {k}", ea.get(k), eb.get(k)) for k in sorted(ea.keys() | eb.keys())]
    return _keep([
        _plain("runtime", "serving", ra.serving, rb.serving),
        classify("runtime", "mlflow-version", ra.mlflow_version, rb.mlflow_version, py_order, py_major),
        _plain("runtime", "server", ra.server, rb.server),
        _plain("runtime", "port", ra.port, rb.port),
        _plain("runtime", "workers", ra.workers, rb.workers),
        _plain("runtime", "user", ra.user, rb.user),
        *env,
    ])


def image_changes(a: Lock, b: Lock) -> list[Change]:
    la, lb = dict(a.labels), dict(b.labels)
    return _keep([
        _plain("image", "name", a.image_name, b.image_name),
        *[_plain("image", f"label {k}", la.get(k), lb.get(k)) for k in sorted(la.keys() | lb.keys())],
    ])


def diff_locks(a: Lock, b: Lock, old: str = "old", new: str = "new") -> LockDiff:
    changes = [
        *interpreter_changes(a, b),
        *platform_changes(a, b),
        *compare_packages("debian", debs(a), debs(b), deb_order, deb_major),
        *compare_packages("python", wheels(a), wheels(b), py_order, py_major),
        *python_settings_changes(a, b),
        *build_changes(a, b),
        *model_changes(a, b),
        *runtime_changes(a, b),
        *image_changes(a, b),
    ]
    return LockDiff(old=old, new=new, changes=changes)


# -- reading two locks ----------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LockFileError(f"no lock at {path}", hint="pass two lockbuild.lock files (see `lockbuild diff --help`)")\
            from None
    except UnicodeDecodeError as e:
        raise LockFileError(f"{path} is not UTF-8: {e}", hint="pass a lockbuild.lock file") from None


def format_version(text: str) -> object:
    """The lock's top-level ``version`` (None when the TOML does not parse; loads reports that)."""
    try:
        return tomlkit.parse(text).get("version")
    except tomlkit.exceptions.ParseError:
        return None


def load_pair(old: Path, new: Path) -> tuple[Lock, Lock]:
    """Both locks, refusing to compare different lock format versions (naming both)."""
    ta, tb = _read_text(old), _read_text(new)
    va, vb = format_version(ta), format_version(tb)
    if va is not None and vb is not None and va != vb:
        raise LockFileError(
            f"cannot compare lock format version {va!r} ({old}) with version {vb!r} ({new})",
            hint="re-lock the older one with the same lockbuild (`lockbuild lock --upgrade`) and diff again",
        )
    return loads(ta, str(old)), loads(tb, str(new))


# -- rendering -------------------------------------------------------------------------------------------

ARROWS = {"upgraded": "↑", "downgraded": "↓", "added": "+", "removed": "-", "changed": "~"}


def _cell(value: str | None) -> str:
    return value if value is not None else "—"


def _kind(c: Change) -> str:
    return f"{c.kind} (major)" if c.major else c.kind


def summary_line(d: LockDiff) -> str:
    if not d.changed:
        return "no changes"
    parts = [f"{s}: " + ", ".join(f"{n} {k}" for k, n in kinds.items()) for s, kinds in d.summary().items()]
    major = sum(1 for c in d.changes if c.major)
    return "; ".join(parts) + (f"; {major} major" if major else "")


def rich_table(d: LockDiff):  # type: ignore[no-untyped-def]
    from rich.table import Table

    t = Table("section", "name", "old", "new", "change", title=f"{d.old} → {d.new}", title_justify="left")
    for c in d.changes:
        style = "bold red" if c.major or c.kind == "downgraded" else ""
        t.add_row(c.section, c.name, _cell(c.old), _cell(c.new),
                  f"{ARROWS[c.kind]} {_kind(c)}" + (f" — {c.detail}" if c.detail else ""), style=style)
    return t


def _md(value: str | None) -> str:
    return "—" if value is None else "`" + value.replace("`", "'").replace("|", "\\|") + "`"


def markdown(d: LockDiff) -> str:
    """A PR comment: a summary line, then one table per section that changed."""
    lines = ["### lockbuild.lock changes", ""]
    if not d.changed:
        return "\n".join([*lines, "No changes.", ""])
    lines += [f"**{summary_line(d)}**", ""]
    for section in SECTIONS:
        rows = [c for c in d.changes if c.section == section]
        if not rows:
            continue
        lines += [f"#### {section}", "", "| name | old | new | change |", "| --- | --- | --- | --- |"]
        for c in rows:
            kind = f"**{_kind(c)}**" if c.major or c.kind == "downgraded" else _kind(c)
            detail = f" ({c.detail})" if c.detail else ""
            name = c.name.replace("|", "\\|")
            lines.append(f"| {name} | {_md(c.old)} | {_md(c.new)} | {kind}{detail} |")
        lines.append("")
    return "\n".join(lines)
