"""Pruning wheel contents that serving never reads: the rules, and the per-wheel lists in the lock.

Rules are globs relative to site-packages (``tensorflow/include/**``): ``**`` as a whole path
segment matches any number of segments (zero included), ``*`` and ``?`` stay within one
segment. A path is pruned when it matches a ``prune`` glob and no ``keep`` glob. The rules are
written into the lock (``[build] prune``/``keep``, defaults expanded), so the image is a
function of the lock. At lock time every wheel's pruned paths are listed in the lock
(``pruned_paths``, compacted to ``d/`` where a whole directory goes); the builder prunes exactly
the listed paths (``PrunedSet``) as it streams each wheel (assemble/wheels.py), and reports what
it removed.

Defaults (``DEFAULT_PRUNE``; ``[build] prune-defaults = false`` turns them off, ``keep``
exempts paths):

- C/C++ headers shipped for building extensions against a package, never read by the package
  at run time: ``tensorflow/include`` (~255 MB, including extensionless Eigen headers),
  numpy's and pyarrow's include directories.
- Test suites that no module of the package imports: ``pandas/tests``, numpy's and scipy's
  ``tests`` directories (``numpy.testing``/``pandas._testing``, which code does import, are
  elsewhere and kept).

Not pruned by default, deliberately: ``torch/include`` (torch.compile's C++ backend compiles
against it while serving), triton's headers (compiled at run time), ``*.pyi`` (small).
"""

from __future__ import annotations

import posixpath
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lockbuild.errors import BuildError
from lockbuild.fsutil import escapes
from lockbuild.lockfile.model import Lock, Wheel
from lockbuild.lockfile.scheme import SITE, MemberError, Refuse, scheme_paths

DEFAULT_PRUNE: tuple[str, ...] = (
    "tensorflow/include/**",
    "numpy/_core/include/**",
    "numpy/core/include/**",
    "pyarrow/include/**",
    "pandas/tests/**",
    "numpy/**/tests/**",
    "scipy/**/tests/**",
)
# Distributions resolved as dependencies but never imported while serving. Left out at lock time
# (recorded in [python] omitted) unless named in [python] requirements or prune-defaults = false.
DEFAULT_OMIT: tuple[str, ...] = ("libclang",)  # tensorflow's dependency for its own code generators


def _glob_regex(glob: str) -> re.Pattern[str]:
    out = []
    parts = glob.strip("/").split("/")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        seg = ""
        for ch in part:
            seg += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
        out.append(seg if last else seg + "/")
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class Rules:
    prune: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    _prune_re: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)
    _keep_re: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, prune: Sequence[str], keep: Sequence[str]) -> Rules:
        return cls(tuple(prune), tuple(keep), tuple(_glob_regex(g) for g in prune),
                   tuple(_glob_regex(g) for g in keep))

    def pruned(self, rel: str) -> bool:
        return any(r.match(rel) for r in self._prune_re) and not any(r.match(rel) for r in self._keep_re)


@dataclass
class WheelContent:
    """What staging did to one installed distribution (for `lockbuild image` output and tests)."""

    dist_info: str
    installed_bytes: int = 0
    pruned_files: int = 0
    pruned_bytes: int = 0
    sources: list[str] = field(default_factory=list)  # .py files (site-relative) to byte-compile


def site_paths(members: Iterable[str], filename: str | None = None, *, refuse: Refuse = MemberError) -> list[str]:
    """The site-packages-relative paths a wheel's zip members are installed to, as its installed
    RECORD names them (lockfile/scheme.py's mapping, the root scheme and ``purelib``/``platlib``):
    the other ``.data`` schemes (scripts, headers, data) land outside site-packages and are left
    out (never pruned)."""
    return [path for key, path in scheme_paths(members, filename, refuse=refuse) if key in SITE]


def _metadata(rel: str) -> bool:
    """A path in a top-level ``*.dist-info`` directory: the distribution's metadata, never pruned."""
    first, sep, _ = rel.partition("/")
    return bool(sep) and first.endswith(".dist-info")


def pruned_paths(site_rels: Iterable[str], rules: Rules) -> list[str]:
    """What ``rules`` prune from one wheel whose files (site-relative, see ``site_paths``) are
    ``site_rels``, compacted: a directory entry ``d/`` stands for every file of the wheel below
    ``d`` and is used only when the rules prune ALL of them (the topmost such directory); any
    other pruned file is listed itself. Sorted, no duplicates: the same listing and rules give the
    same list. ``PrunedSet.of(result).matches(p) == rules.pruned(p)`` for every ``p`` of the
    listing (outside the ``*.dist-info`` metadata, which is never pruned)."""
    files = sorted({posixpath.normpath(r) for r in site_rels} - {"."})
    pruned = {f for f in files if not _metadata(f) and rules.pruned(f)}
    if not pruned:
        return []
    kept_below: set[str] = set()  # directories with at least one file the rules keep
    for f in files:
        if f in pruned:
            continue
        d = posixpath.dirname(f)
        while d and d not in kept_below:  # ancestors of a marked directory are marked already
            kept_below.add(d)
            d = posixpath.dirname(d)
    out: set[str] = set()
    for f in pruned:
        top = ""
        d = posixpath.dirname(f)
        while d and d not in kept_below:
            top = d
            d = posixpath.dirname(d)
        out.add(top + "/" if top else f)
    return sorted(out)


def _entry_error(entry: str) -> str | None:
    """Why ``entry`` is not a well-formed pruned-list entry (None when it is)."""
    path = entry[:-1] if entry.endswith("/") else entry
    if not path or escapes(path) or posixpath.normpath(path) != path:
        return f"{entry!r} is not a normalised path relative to site-packages"
    if _metadata(path) or path.endswith(".dist-info"):
        return f"{entry!r} is in the distribution's .dist-info metadata, which is never pruned"
    return None


def parent_dirs(paths: Iterable[str]) -> set[str]:
    """Every directory above the given relative paths ("a/b/c" -> {"a", "a/b"})."""
    dirs: set[str] = set()
    for rel in paths:
        d = posixpath.dirname(rel)
        while d and d not in dirs:
            dirs.add(d)
            d = posixpath.dirname(d)
    return dirs


@dataclass(frozen=True)
class PrunedSet:
    """One wheel's recorded pruned list (``pruned_paths``'s output, as the lock stores it), for
    matching the paths of that wheel's installed RECORD: a file entry matches itself, a directory
    entry ``d/`` every path below ``d``."""

    files: frozenset[str] = frozenset()
    dirs: frozenset[str] = frozenset()  # without the trailing "/"

    @classmethod
    def of(cls, entries: Iterable[str]) -> PrunedSet:
        """Raises ValueError naming the first malformed entry (absolute, ``..``, not normalised,
        inside ``*.dist-info``)."""
        files, dirs = set(), set()
        for e in entries:
            why = _entry_error(e)
            if why is not None:
                raise ValueError(why)
            if e.endswith("/"):
                dirs.add(e[:-1])
            else:
                files.add(e)
        return cls(frozenset(files), frozenset(dirs))

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs)

    def matches(self, rel: str) -> bool:
        """Whether the site-relative path ``rel`` (a RECORD path, normalised here) is pruned."""
        rel = posixpath.normpath(rel)
        if rel in self.files:
            return True
        if not self.dirs:
            return False
        d = posixpath.dirname(rel)
        while d:
            if d in self.dirs:
                return True
            d = posixpath.dirname(d)
        return False

    def unmatched(self, site_rels: Iterable[str]) -> list[str]:
        """Entries that match none of ``site_rels`` (the wheel's files): a list made for another
        wheel or edited by hand. Sorted."""
        rels = {posixpath.normpath(r) for r in site_rels}
        dirs_of = parent_dirs(rels)
        return sorted([f for f in self.files if f not in rels] + [d + "/" for d in self.dirs if d not in dirs_of])


def listed_pruning(lock: Lock, blobs: dict[str, Path]) -> Callable[[Wheel], Callable[[str], bool]] | None:
    """What to prune in each wheel: exactly the paths the lock lists for it (``pruned``), once
    the list is checked against the verified wheel's own file names; None for a lock written
    before the lists (``[build] pruned-listed`` absent): then the rules decide, as they did."""
    if not lock.build.pruned_listed:
        return None

    def for_wheel(w: Wheel) -> Callable[[str], bool]:
        try:
            listed = PrunedSet.of(w.pruned)
        except ValueError as e:
            raise BuildError(f"lockbuild.lock: python.packages[{w.name}].pruned: {e}",
                             hint="run `lockbuild lock` to write the lists again") from None
        if listed:
            with zipfile.ZipFile(blobs[w.sha256]) as zf:  # its members were checked by the install before
                names = zf.namelist()
            stray = listed.unmatched(site_paths(names, w.filename,
                                                refuse=lambda why: BuildError(f"{w.filename}: {why}")))
            if stray:
                raise BuildError(
                    f"lockbuild.lock: python.packages[{w.name}].pruned lists {stray[0]!r}, which is not in "
                    f"{w.filename} (verified by sha256)",
                    hint="the list was made for another wheel or edited by hand; run `lockbuild lock --check`, "
                         "then `lockbuild lock` to write it again")
        return listed.matches

    return for_wheel
