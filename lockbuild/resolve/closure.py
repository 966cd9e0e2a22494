"""The dependency solver: Pre-Depends + Depends closure of root relations over merged suites.

The closure follows Pre-Depends and Depends only (not Recommends/Suggests), like
``apt-get install --no-install-recommends``, over the merge of the suites where the highest
version of each package wins (``merge_suites``). Virtual packages go to the real package first,
then to providers by Priority and name; Conflicts/Breaks inside the closure fail. It works on
Packages entries that archive.py has already verified; maintainer scripts never run (see
assemble/rootfs.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import cast

from debian import deb822
from debian.debian_support import Version, version_compare

from lockbuild.digest import from_hex
from lockbuild.errors import ResolveError
from lockbuild.lockfile.model import Deb
from lockbuild.resolve.archive import COMPONENT

# Package-manager machinery whose only consumers are maintainer scripts and dpkg triggers, which
# lockbuild never runs: a dependency naming one of them (alone or as an alternative) counts as
# satisfied. debconf: ca-certificates' and tzdata's config/postinst questions; dpkg | install-info:
# readline-common's info-page trigger (drags in dpkg, tar, libselinux1, libacl1, libpcre2, libmd0,
# libzstd1). Explicit roots are never excluded. See docs/debian.md.
DEFAULT_EXCLUDE = ("debconf", "debconf-2.0", "dpkg", "install-info")

PRIORITY_RANK = {"required": 0, "important": 1, "standard": 2, "optional": 3, "extra": 4}


Relation = list[dict]  # one comma-separated item: alternatives as parsed by python-debian


# -- candidates ------------------------------------------------------------------------------
def _relations(text: str) -> list[Relation]:
    return cast(list[Relation], deb822.PkgRelation.parse_relations(text)) if text.strip() else []


@dataclass
class Candidate:
    """The version of one package that the merged suites offer."""

    entry: dict[str, str]
    suite: str
    name: str = field(init=False)
    version: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.entry["Package"]
        self.version = self.entry["Version"]

    @cached_property
    def vobj(self) -> Version:
        return Version(self.version)

    @cached_property
    def depends(self) -> list[Relation]:
        return _relations(self.entry.get("Pre-Depends", "")) + _relations(self.entry.get("Depends", ""))

    @cached_property
    def provides(self) -> list[tuple[str, str | None]]:
        """[(virtual name, provided version or None)]."""
        out = []
        for rel in _relations(self.entry.get("Provides", "")):
            for alt in rel:
                ver = alt["version"][1] if alt["version"] and alt["version"][0] == "=" else None
                out.append((alt["name"], ver))
        return out

    @cached_property
    def negative(self) -> list[Relation]:
        return _relations(self.entry.get("Conflicts", "")) + _relations(self.entry.get("Breaks", ""))

    @property
    def priority_rank(self) -> int:
        return PRIORITY_RANK.get(self.entry.get("Priority", ""), len(PRIORITY_RANK))

    def to_deb(self, arch: str) -> Deb:
        source = self.entry.get("Source", "").split(" ", 1)[0] or self.name
        return Deb(
            name=self.name, version=self.version, architecture=self.entry.get("Architecture", arch),
            suite=self.suite, filename=self.entry["Filename"], size=int(self.entry["Size"]),
            sha256=from_hex(self.entry["SHA256"], f"{self.suite} {self.name}: SHA256"), source=source,
        )


def merge_suites(loaded: Sequence[tuple[str, list[dict[str, str]]]]) -> dict[str, Candidate]:
    """name -> the highest version across suites; an equal version stays with the earlier suite."""
    best: dict[str, Candidate] = {}
    for suite, entries in loaded:
        for entry in entries:
            cand = Candidate(entry, suite)
            cur = best.get(cand.name)
            if cur is None or (cand.version != cur.version and cand.vobj > cur.vobj):
                best[cand.name] = cand
    return best


def version_ok(have: str, op: str, want: str) -> bool:
    """Debian relation operators; the deprecated '<' and '>' mean '<=' and '>='."""
    c = version_compare(have, want)
    return {"<<": c < 0, "<=": c <= 0, "<": c <= 0, "=": c == 0, ">=": c >= 0, ">": c >= 0, ">>": c > 0}[op]


def relation_text(alts: Relation) -> str:
    return deb822.PkgRelation.str([alts])  # type: ignore[list-item]


# -- closure ---------------------------------------------------------------------------------
class Closure:
    """Pre-Depends + Depends closure of root relations over merged candidates."""

    def __init__(self, index: dict[str, Candidate], arch: str, suites: Sequence[str],
                 exclude: Iterable[str] = ()) -> None:
        self.index = index
        self.arch = arch
        self.suites = list(suites)
        self.exclude = set(exclude)
        self.selected: dict[str, Candidate] = {}
        self.why: dict[str, tuple[str | None, str]] = {}  # name -> (parent or None for a root, relation)
        self.skipped: set[str] = set()
        self.queue: deque[str] = deque()
        self.looked_up: set[str] = set()  # every name satisfiers() asked for (the audit keeps their stanzas)

    @cached_property
    def providers(self) -> dict[str, list[tuple[str, str | None]]]:
        out: dict[str, list[tuple[str, str | None]]] = {}
        for cand in self.index.values():
            if "Provides" in cand.entry:
                for virt, ver in cand.provides:
                    out.setdefault(virt, []).append((cand.name, ver))
        return out

    # -- matching --------------------------------------------------------------------------
    def _arch_ok(self, alt: dict) -> bool:
        if alt.get("archqual") not in (None, "any", "native", self.arch):
            return False
        restr = alt.get("arch")
        if not restr:
            return True
        enabled = [r.arch for r in restr if r.enabled]
        disabled = [r.arch for r in restr if not r.enabled]
        return self.arch in enabled if enabled else self.arch not in disabled

    @staticmethod
    def _real_ok(cand: Candidate, alt: dict) -> bool:
        return alt["version"] is None or version_ok(cand.version, *alt["version"])

    @staticmethod
    def _provided_ok(ver: str | None, alt: dict) -> bool:
        if alt["version"] is None:
            return True
        return ver is not None and version_ok(ver, *alt["version"])

    def satisfiers(self, alt: dict) -> list[Candidate]:
        """Candidates that satisfy one alternative: the real package first, then providers."""
        out = []
        self.looked_up.add(alt["name"])
        real = self.index.get(alt["name"])
        if real is not None and self._real_ok(real, alt):
            out.append(real)
        provs = {self.index[p].name: self.index[p] for p, ver in self.providers.get(alt["name"], [])
                 if self._provided_ok(ver, alt) and p != alt["name"]}
        out += sorted(provs.values(), key=lambda c: (c.priority_rank, c.name))
        return out

    def _selected_satisfier(self, alt: dict) -> Candidate | None:
        for cand in self.satisfiers(alt):
            if cand.name in self.selected:
                return cand
        return None

    # -- walking ---------------------------------------------------------------------------
    def add_root(self, text: str) -> None:
        for rel in _relations(text):
            self.choose(rel, None, honor_exclude=False)

    def run(self) -> list[Candidate]:
        while self.queue:
            name = self.queue.popleft()
            for rel in self.selected[name].depends:
                self.choose(rel, name)
        self.check_conflicts()
        return [self.selected[n] for n in sorted(self.selected)]

    def choose(self, rel: Relation, parent: str | None, *, honor_exclude: bool = True) -> None:
        alts = [a for a in rel if self._arch_ok(a)]
        if not alts:
            return
        if honor_exclude and any(a["name"] in self.exclude for a in alts):
            self.skipped.update(a["name"] for a in alts if a["name"] in self.exclude)
            return
        if any(self._selected_satisfier(a) for a in alts):
            return
        for alt in alts:
            cands = self.satisfiers(alt)
            if cands:
                self._select(cands[0], parent, relation_text(rel))
                return
        raise self._unsatisfiable(alts, parent, relation_text(rel))

    def _select(self, cand: Candidate, parent: str | None, rel: str) -> None:
        self.selected[cand.name] = cand
        self.why[cand.name] = (parent, rel)
        self.queue.append(cand.name)

    # -- explanations ----------------------------------------------------------------------
    def chain(self, name: str | None) -> str:
        """'roots -> python3.11 -> libpython3.11-stdlib' for a selected package."""
        parts: list[str] = []
        while name is not None and name not in parts:
            parts.append(name)
            name = self.why.get(name, (None, ""))[0]
        return " -> ".join(["roots", *reversed(parts)])

    def _where(self) -> str:
        return f"{', '.join(self.suites)} ({COMPONENT}, {self.arch})"

    def _unsatisfiable(self, alts: Relation, parent: str | None, rel: str) -> ResolveError:
        wanted_by = parent or "roots"
        known = [a["name"] for a in alts if a["name"] in self.index or a["name"] in self.providers]
        if not known:
            names = " | ".join(a["name"] for a in alts)
            return ResolveError(
                f"Debian package {names} (wanted by {wanted_by}) does not exist in {self._where()}",
                hint=f"required by: {self.chain(parent)} -> {rel}. Check the package name "
                "(`apt-cache policy NAME` on a machine of that release) or choose another suite",
            )
        have = "; ".join(self._available(n) for n in known)
        return ResolveError(
            f"no version satisfies '{rel}' (wanted by {wanted_by}): available {have}",
            hint=f"constraint chain: {self.chain(parent)} -> {rel}. The suites disagree with the "
            "requested versions; relax the root's version or use the suite that carries it",
        )

    def _available(self, name: str) -> str:
        if name in self.index:
            c = self.index[name]
            return f"{name} {c.version} ({c.suite})"
        provs = ", ".join(f"{p}{f' (= {v})' if v else ''}" for p, v in self.providers.get(name, []))
        return f"{name} is virtual, provided by {provs}"

    def check_conflicts(self) -> None:
        """Conflicts/Breaks between two selected packages fail, like apt would refuse them."""
        for name in sorted(self.selected):
            cand = self.selected[name]
            for rel in cand.negative:
                for alt in rel:
                    if not self._arch_ok(alt):
                        continue
                    hits = [c for c in self.satisfiers(alt) if c.name in self.selected and c.name != name]
                    if hits:
                        other = hits[0].name
                        raise ResolveError(
                            f"{name} {cand.version} conflicts with {other} {hits[0].version} "
                            f"('{relation_text([alt])}'); both are in the closure",
                            hint=f"{name}: {self.chain(name)}; {other}: {self.chain(other)}. "
                            "Remove one of the roots that pulls them in",
                        )
