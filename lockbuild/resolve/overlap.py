"""Overlapping distributions, settled at lock time from file evidence.

After uv resolves, every resolved wheel's member list is read from its zip central directory
(HTTP range requests for the tail of the file; the whole, sha256-verified wheel when the server
serves no ranges or the wheel is already in the cache) and cached in the cache's meta by the
wheel's sha256. Two distributions that would write the same install path overlap.

Policy, per overlapping pair:
1. the spec chose: ``[python] variants = { tensorflow = "tensorflow-cpu" }`` (every requirement on
   the key resolves to the value);
2. a known variant family (tensorflow / tensorflow-cpu / ...) at the same version: keep the one the
   training environment really had: the only one the model's requirements name (the other came in
   through a dependency, e.g. tf-keras -> tensorflow), or, when MLflow logged both, the one that is
   not the flavor's default name (MLflow adds ``tensorflow==X`` beside the installed
   ``tensorflow-cpu==X``);
3. anything else fails the lock with the shared paths and the fix.

A decision drops a name everywhere, transitive requirements included, with a uv override whose
marker is never true (``tensorflow ; sys_platform == 'never'``) and re-resolves. The range-read
listing is evidence for the decision only: the builder re-derives every listing from the verified
wheel and refuses any collision, so a lying server can make `lock` fail, never an image wrong.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from packaging.requirements import InvalidRequirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename

from lockbuild.errors import OverlapError, ResolveError, SpecError
from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import Mapped, VariantChoice, Wheel
from lockbuild.lockfile.scheme import install_paths as scheme_install_paths
from lockbuild.lockfile.scheme import install_scheme
from lockbuild.model.metadata import requirement
from lockbuild.progress import Notify

# Distributions built from one source under several names; the first is the default name (what
# MLflow's flavor pins and what other packages require).
FAMILIES: tuple[tuple[str, ...], ...] = (
    ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-aarch64"),
    ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
    ("psycopg2", "psycopg2-binary"),
    ("psycopg", "psycopg-binary"),
)
NEVER = "sys_platform == 'never'"
META = "wheel-members"
_RECORD = re.compile(r"([^/]+)-[^/-]+\.dist-info/RECORD")
TAIL = 1 << 16  # first range request: the last 64 KiB (end of central directory + usually all of it)


def family(name: str) -> tuple[str, ...] | None:
    return next((f for f in FAMILIES if name in f), None)


def override_lines(choices: tuple[VariantChoice, ...] | list[VariantChoice]) -> list[str]:
    """uv --override lines that drop every requirement on a dropped name."""
    return [f"{c.dropped} ; {NEVER}" for c in sorted(choices, key=lambda c: c.dropped)]


# --- wheel member lists ---------------------------------------------------------------------------


class _NoRanges(Exception):
    pass


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file over HTTP range requests (what zipfile needs)."""

    def __init__(self, http: httpx.Client, url: str, size: int) -> None:
        self.http, self.url, self.size, self.pos = http, url, size, 0
        self.buf_start, self.buf = size, b""
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _fetch(self, start: int, end: int) -> None:  # [start, end)
        self.requests += 1
        with self.http.stream("GET", self.url, headers={"Range": f"bytes={start}-{end - 1}"}) as r:
            if r.status_code != 206:
                raise _NoRanges(f"HTTP {r.status_code}")
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", r.headers.get("content-range", ""))
            if not m or int(m.group(3)) != self.size or int(m.group(1)) != start:
                raise _NoRanges(f"Content-Range {r.headers.get('content-range')!r} does not match the locked size")
            data = r.read()
        if len(data) != end - start:
            raise _NoRanges("short range response")
        self.buf_start, self.buf = start, data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        if not (self.buf_start <= self.pos and self.pos + n <= self.buf_start + len(self.buf)):
            if self.pos >= self.size - TAIL:
                self._fetch(max(0, self.size - TAIL), self.size)
            else:
                self._fetch(self.pos, min(self.size, max(self.pos + n, self.pos + TAIL)))
        off = self.pos - self.buf_start
        b[:n] = self.buf[off:off + n]
        self.pos += n
        return n


def _members_of(fileobj: object) -> list[str]:
    with zipfile.ZipFile(fileobj) as zf:  # type: ignore[call-overload]
        return [i.filename for i in zf.infolist() if not i.is_dir()]


def cached_members(w: Wheel, cache: Cache) -> list[str] | None:
    """The wheel's zip member names from the cache's meta (by sha256), or None."""
    meta = cache.meta_get(META, w.sha256)
    if meta is not None and meta.get("size") == w.size and isinstance(meta.get("members"), list):
        return list(meta["members"])
    return None


def wheel_members(w: Wheel, cache: Cache, http: httpx.Client) -> list[str]:
    """The wheel's zip member names: cache meta (by sha256), the verified cached wheel, range
    requests, or (no ranges served) the full download, verified by sha256 and kept in the cache."""
    cached = cached_members(w, cache)
    if cached is not None:
        return cached
    path = cache.get(w.sha256, w.size)
    if path is None and not w.url:  # bundled in the model or built from an sdist: only ever read from the cache
        raise ResolveError(f"cannot read the file list of {w.filename}: a {w.source or 'local'} wheel with no URL, "
                           "not in the cache",
                           hint="run `lockbuild lock` again where the model and its sdists are at hand")
    try:
        if path is not None:
            members, source = _members_of(path), "wheel"
        else:
            try:
                members, source = _members_of(_RangeFile(http, w.url, w.size)), "range"
            except _NoRanges:
                from lockbuild.fetch.download import Item, fetch_all

                path = fetch_all(cache, [Item(urls=(w.url,), sha256=w.sha256, size=w.size, label=w.filename)])[w.sha256]
                members, source = _members_of(path), "wheel"
    except (zipfile.BadZipFile, httpx.HTTPError, OSError) as e:
        raise ResolveError(f"cannot read the file list of {w.filename} ({w.url}): {e}",
                           hint="check the network/index and run `lockbuild lock` again") from None
    records = [r.group(1) for r in map(_RECORD.fullmatch, members) if r]
    if not any(canonicalize_name(r) == w.name for r in records):
        raise ResolveError(f"{w.filename}: its file list has no {w.name} *.dist-info/RECORD; not a wheel of {w.name}",
                           hint="the index served something else under this URL; check [python] index-url")
    cache.meta_put(META, w.sha256, {"size": w.size, "members": members, "source": source})
    return members


def install_paths(w: Wheel, members: list[str], python: str) -> list[str]:
    """Where each member lands in the image for target Python ``python``: the builder's own mapping
    (lockfile/scheme.py), so lock and build see the same overlaps. Refuses members that would
    escape the install root (what the builder refuses too)."""
    def refuse(why: str) -> ResolveError:
        return ResolveError(f"{w.filename}: {why}",
                            hint=f"the wheel is malicious or corrupt; pin another {w.name} version")

    return scheme_install_paths(members, w.filename, install_scheme(python), refuse=refuse)


def member_lists(wheels: list[Wheel] | tuple[Wheel, ...], cache: Cache, jobs: int = 8) -> list[list[str]]:
    """Every wheel's zip member names (``wheel_members``), in order; the lists not in the cache fetched in
    parallel, and only then through an HTTP client (its TLS context alone takes ~0.1 s)."""
    members = {w.sha256: m for w in wheels if (m := cached_members(w, cache)) is not None}
    missing = [w for w in wheels if w.sha256 not in members]
    if missing:
        from lockbuild.fetch.download import client

        with client() as http, ThreadPoolExecutor(max_workers=jobs) as pool:
            fetched = list(pool.map(lambda w: wheel_members(w, cache, http), missing))
        members.update(zip([w.sha256 for w in missing], fetched, strict=True))
    return [members[w.sha256] for w in wheels]


# image paths of the wheels read in this process, by (sha256, size, name, target Python): a wheel's
# bytes and the interpreter's scheme fix its list
_PATHS: dict[tuple[str, int, str, str], list[str]] = {}


def listings(wheels: list[Wheel], cache: Cache, python: str, jobs: int = 8) -> dict[str, list[str]]:
    """{distribution: image paths} for every wheel, for target Python ``python``."""
    todo = [w for w in wheels if (w.sha256, w.size, w.name, python) not in _PATHS]
    for w, m in zip(todo, member_lists(todo, cache, jobs), strict=True):
        _PATHS[(w.sha256, w.size, w.name, python)] = install_paths(w, m, python)
    return {w.name: _PATHS[(w.sha256, w.size, w.name, python)] for w in wheels}


def prefetch_listings(wheels: list[Wheel] | tuple[Wheel, ...], cache: Cache, python: str) -> None:
    """Read ahead the cached listings of ``wheels`` (`lock`: the previous lock's, while uv runs); what is
    not cached, or refused, is left to ``listings``."""
    for w in wheels:
        key = (w.sha256, w.size, w.name, python)
        if key not in _PATHS and (members := cached_members(w, cache)) is not None:
            try:
                _PATHS[key] = install_paths(w, members, python)
            except ResolveError:
                continue


def overlaps(paths: dict[str, list[str]]) -> dict[tuple[str, str], list[str]]:
    """{(a, b): shared paths} for every pair of distributions that write a same path (a < b)."""
    owners: dict[str, set[str]] = {}
    for name, ps in paths.items():
        for p in ps:
            owners.setdefault(p, set()).add(name)
    out: dict[tuple[str, str], list[str]] = {}
    for p, names in owners.items():
        ns = sorted(names)
        for i, a in enumerate(ns):
            for b in ns[i + 1:]:
                out.setdefault((a, b), []).append(p)
    return {k: sorted(v) for k, v in sorted(out.items())}


def check_tags(wheels: list[Wheel], tags: list[Tag], platform: str) -> None:
    """What the target accepts, checked again on the final set (the builder installs what is locked)."""
    accepted = set(tags)
    for w in wheels:
        if not set(parse_wheel_filename(w.filename)[3]) & accepted:
            raise ResolveError(f"{w.filename} does not install on {platform} (its tags are not the target's)",
                               hint=f"pin a {w.name} version with a wheel for this platform")


# --- the policy -----------------------------------------------------------------------------------


def named(requirements: list[str] | tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    for line in requirements:
        try:
            out.add(canonicalize_name(requirement(line).name))
        except InvalidRequirement:
            continue
    return out


MODEL = "the model's requirements name"


def origins(model_requirements: list[str], spec_requirements: list[str],
            mapped: tuple[Mapped, ...] = ()) -> dict[str, str]:
    """{name: who names it}, for the reasons the policy records: the model's own lines, lines
    resolve/platform_map.py rewrote (naming the logged line), or the spec's [python] requirements."""
    out = {n: MODEL for n in named(model_requirements)}
    for m in mapped:
        if m.locked:
            for n in named([m.locked]):
                out[n] = f"the model logged {m.logged}, mapped for the target to"
    for n in named(spec_requirements):
        out.setdefault(n, "lockbuild.toml's [python] requirements name")
    return out


def _example(paths: list[str]) -> str:
    py = [p for p in paths if p.endswith("__init__.py")]
    return min(py or paths, key=len)


def decide(pair: tuple[str, str], shared: list[str], versions: dict[str, str],
           model_names: set[str] | dict[str, str]) -> VariantChoice | None:
    """The default policy for one overlapping pair, or None when it cannot settle it. ``model_names``:
    the names the requirements name ({name: who names it}, see ``origins``; a set: the model's)."""
    a, b = pair
    fam = family(a)
    if fam is None or b not in fam or versions[a] != versions[b]:
        return None
    v = versions[a]
    who = model_names if isinstance(model_names, dict) else dict.fromkeys(model_names, MODEL)
    logged = {a, b} & set(who)
    if len(logged) == 1:
        kept = logged.pop()
        dropped = b if kept == a else a
        reason = (f"{who[kept]} {kept}=={v}; {dropped}=={v} came in only through another "
                  f"package's requirement and writes the same files")
    elif len(logged) == 2 and fam[0] in (a, b):
        dropped = fam[0]
        kept = b if dropped == a else a
        if who[kept] == who[dropped] == MODEL:
            reason = (f"the model logged both; {dropped}=={v} is the MLflow flavor's default pin, {kept}=={v} the "
                      f"distribution installed in the training environment")
        else:
            reason = (f"{who[kept]} {kept}=={v} and {who[dropped]} {dropped}=={v}, the "
                      f"family's default name; they write the same files: {kept} stands in for both")
    else:
        return None
    return VariantChoice(dropped=dropped, kept=kept, reason=reason, paths=len(shared), example=_example(shared))


def unsettled_error(pair: tuple[str, str], shared: list[str], versions: dict[str, str]) -> OverlapError:
    a, b = pair
    if {a, b} <= {"mlflow", "mlflow-skinny", "mlflow-tracing"}:
        sample = ", ".join(shared[:3])
        return OverlapError(
            f"{a}=={versions[a]} and {b}=={versions[b]} write the same files ({len(shared)} paths: {sample}, ...); "
            "the image cannot hold both",
            hint='serve with [python] serving = "mlflow-skinny" (the default) and drop full mlflow from '
            "[python] requirements, then run `lockbuild lock`",
        )
    sample = ", ".join(shared[:3]) + (f" and {len(shared) - 3} more" if len(shared) > 3 else "")
    return OverlapError(
        f"{a}=={versions[a]} and {b}=={versions[b]} write the same files ({len(shared)} paths: {sample}); "
        "only one of them can be installed",
        hint=f'choose one in lockbuild.toml: [python] variants = {{ "{a}" = "{b}" }} (every requirement on {a} '
        f'then resolves to {b}) or the reverse, then run `lockbuild lock`',
    )


Resolver = Callable[[list[str], list[str]], list[Wheel]]  # (extra requirements, overrides) -> wheels


@dataclass
class Settled:
    wheels: list[Wheel]
    choices: tuple[VariantChoice, ...]
    extra_requirements: list[str]  # kept names added as requirements (a spec choice for an unnamed name)


def settle(wheels: list[Wheel], resolve: Resolver, *, cache: Cache, origins: dict[str, str],
           spec_variants: tuple[tuple[str, str], ...], spec_where: str, notify: Notify,
           tags: list[Tag], platform: str, python: str) -> Settled:
    """Apply the spec's variant choices and the default policy until no two wheels share a path
    (installed for target Python ``python``)."""
    chosen: dict[str, VariantChoice] = {}
    for dropped, kept in spec_variants:
        d, k = str(canonicalize_name(dropped)), str(canonicalize_name(kept))
        if d == k:
            raise SpecError(f"[python] variants maps {dropped} to itself", where=spec_where,
                            hint="map the distribution you do not want to the one you want")
        chosen[d] = VariantChoice(dropped=d, kept=k, reason="chosen in lockbuild.toml ([python] variants)")
    resolved_names = {w.name for w in wheels}
    unknown = sorted(d for d in chosen if d not in resolved_names)
    if unknown:
        raise SpecError(f"[python] variants names {', '.join(unknown)}, which the resolution does not contain",
                        where=spec_where, hint="remove it from [python] variants")
    extra: list[str] = []
    versions = {w.name: w.version for w in wheels}
    for c in chosen.values():
        if c.kept not in versions:
            extra.append(f"{c.kept}=={versions[c.dropped]}")  # stand in for the dropped one, same version
    if chosen:
        wheels = resolve(extra, override_lines(list(chosen.values())))
    for _round in range(4):
        notify(f"reading the file lists of {len(wheels)} wheels")
        versions = {w.name: w.version for w in wheels}
        found = overlaps(listings(wheels, cache, python))
        if not found:
            check_tags(wheels, tags, platform)
            return Settled(wheels, tuple(sorted(chosen.values(), key=lambda c: c.dropped)), extra)
        new = False
        for pair, shared in found.items():
            choice = decide(pair, shared, versions, origins)
            if choice is None or choice.dropped in chosen or choice.kept in chosen:
                raise unsettled_error(pair, shared, versions)
            chosen[choice.dropped] = choice
            new = True
        if new:
            wheels = resolve(extra, override_lines(list(chosen.values())))
    raise ResolveError("overlapping distributions did not settle after 4 re-resolutions",
                       hint="choose explicitly with [python] variants in lockbuild.toml")
