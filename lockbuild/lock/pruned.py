"""Every pruned path in the lock: ``python.packages[].pruned``, derived at lock time.

For each locked wheel, ``lock`` applies the lock's ``[build] prune``/``keep`` rules to the wheel's
file list (the zip central directory that resolve/overlap.py reads by HTTP range request and
caches by sha256; never a whole download unless the server serves no ranges) mapped to
site-packages as the installer maps it, and records the result compacted (lockfile/prune.py
``pruned_paths``: a ``d/`` entry when every file of the wheel below ``d`` is pruned). The builder
removes exactly the recorded paths, so the image, and what ``verify`` expects, is a function of
the lock's text rather than of the rules' implementation in whichever lockbuild builds it.

``lock --check`` derives the lists again from the rules and the wheels' file lists and names
every wheel whose recorded list differs (a list edited by hand, its content header recomputed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import BuildRules, Lock, Wheel
from lockbuild.lockfile.prune import PrunedSet, Rules, pruned_paths, site_paths
from lockbuild.resolve import overlap


def site_listings(wheels: Sequence[Wheel], cache: Cache, jobs: int = 8) -> dict[str, list[str]]:
    """{distribution: its files relative to site-packages}, from the cached or range-read zip listing."""
    members = overlap.member_lists(tuple(wheels), cache, jobs)
    return {w.name: site_paths(m) for w, m in zip(wheels, members, strict=True)}


def derive(wheels: Sequence[Wheel], build: BuildRules, listings: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """{distribution: the pruned list the rules give} (empty when the lock lists nothing)."""
    if not build.prune:
        return {w.name: () for w in wheels}
    rules = Rules.of(build.prune, build.keep)
    return {w.name: tuple(pruned_paths(listings[w.name], rules)) for w in wheels}


def with_pruned(wheels: Sequence[Wheel], build: BuildRules, cache: Cache,
                notify: Callable[[str], None] = lambda _m: None) -> tuple[list[Wheel], BuildRules, dict[str, int]]:
    """The wheels with their pruned lists filled in, the rules marked as listing them, and
    {distribution: files pruned} for the wheels that lose any (nothing changes when the rules
    prune nothing)."""
    if not build.prune:
        return list(wheels), build, {}
    memo = {w.name: m for w in wheels if (m := _memo_get(cache, w, build)) is not None}
    todo = [w for w in wheels if w.name not in memo]
    if todo:
        notify(f"listing what [build] prune removes from {len(todo)} wheels")
        listings = site_listings(todo, cache)
        lists = derive(todo, build, listings)
        done = [replace(w, pruned=lists[w.name]) for w in todo]
        n = counts(done, listings)
        for w in done:
            memo[w.name] = (w.pruned, n.get(w.name, 0))
            _memo_put(cache, w, build, memo[w.name])
    out = [replace(w, pruned=memo[w.name][0]) for w in wheels]
    return out, replace(build, pruned_listed=True), {name: c for name, (_, c) in memo.items() if c}


# The pruned list of a wheel is a function of its bytes (sha256) and the rules: memoised, as the parsed
# Debian indexes are, by a meta record naming a content-addressed blob that is re-hashed when read.
_MEMO_NS, _MEMO_FORMAT = "pruned", 1


def _memo_key(w: Wheel, build: BuildRules) -> str:
    import json

    from lockbuild.fsutil import sha256_bytes

    return sha256_bytes(json.dumps({"wheel": w.sha256, "prune": list(build.prune), "keep": list(build.keep),
                                    "format": _MEMO_FORMAT}, sort_keys=True).encode())


_READ: dict[str, tuple[tuple[str, ...], int]] = {}  # records read in this process (``prefetch``), by memo key


def prefetch(wheels: Sequence[Wheel], build: BuildRules, cache: Cache) -> None:
    """Read ahead the memoised pruned lists of ``wheels`` under ``build`` (`lock`: the previous lock's
    wheels, while uv runs)."""
    if build.prune:
        for w in wheels:
            _memo_get(cache, w, build)


def _memo_get(cache: Cache, w: Wheel, build: BuildRules) -> tuple[tuple[str, ...], int] | None:
    key = _memo_key(w, build)
    if key not in _READ:
        value = _memo_read(cache, key)
        if value is None:
            return None
        _READ[key] = value
    return _READ[key]


def _memo_read(cache: Cache, key: str) -> tuple[tuple[str, ...], int] | None:
    import json

    from lockbuild.digest import from_hex
    from lockbuild.errors import IntegrityError

    meta = cache.meta_get(_MEMO_NS, key)
    try:
        blob = cache.get(from_hex(meta["blob"])) if meta and isinstance(meta.get("blob"), str) else None
        if blob is None:
            return None
        value = json.loads(blob.read_bytes())
        return tuple(str(p) for p in value["pruned"]), int(value["count"])
    except (IntegrityError, ValueError, KeyError, TypeError):
        return None  # a damaged record: derived again


def _memo_put(cache: Cache, w: Wheel, build: BuildRules, value: tuple[tuple[str, ...], int]) -> None:
    import json

    from lockbuild.digest import to_hex

    blob = cache.put_bytes(json.dumps({"pruned": list(value[0]), "count": value[1]}).encode())
    cache.meta_put(_MEMO_NS, _memo_key(w, build), {"blob": to_hex(blob)})


def counts(wheels: Sequence[Wheel], listings: dict[str, list[str]]) -> dict[str, int]:
    """{distribution: how many of its files the recorded list prunes}, for wheels with a list."""
    out = {}
    for w in wheels:
        if w.pruned:
            ps = PrunedSet.of(w.pruned)
            out[w.name] = sum(1 for p in listings[w.name] if ps.matches(p))
    return out


def lock_counts(lock: Lock, cache: Cache) -> dict[str, int]:
    """``counts`` for a lock read back (``lock`` reusing it): the file lists of the wheels with a
    list, from the cache or by range request."""
    wheels = [w for w in lock.python.packages if w.pruned and _listable(w, cache)]
    return counts(wheels, site_listings(wheels, cache)) if wheels else {}


def _listable(w: Wheel, cache: Cache) -> bool:
    """Whether the wheel's file list can be had without a build or the model: an index URL, a
    cached list, or the verified wheel in the cache (built from an sdist / bundled in the model)."""
    if w.url:
        return True
    meta = cache.meta_get(overlap.META, w.sha256)
    return (meta is not None and meta.get("size") == w.size) or cache.get(w.sha256, w.size) is not None


def check(lock: Lock, cache: Cache) -> tuple[list[str], list[str]]:
    """(reasons the lock is not what `lock` writes, notes): every wheel whose recorded pruned list
    differs from what the lock's rules give on the wheel's file list."""
    reasons: list[str] = []
    notes: list[str] = []
    wheels = list(lock.python.packages)
    stray = sorted(w.name for w in wheels if w.pruned)
    if not lock.build.pruned_listed:
        if stray:
            reasons.append(f"python.packages[{stray[0]}].pruned is set but [build] has no pruned-listed = true "
                           f"({len(stray)} wheel(s) with a list the builder would ignore)")
        return reasons, notes
    if not lock.build.prune:
        reasons.append("[build] pruned-listed = true without prune rules")
        return reasons, notes
    for w in wheels:
        try:
            PrunedSet.of(w.pruned)
        except ValueError as e:
            reasons.append(f"python.packages[{w.name}].pruned: {e}")
    unlistable = [w for w in wheels if not _listable(w, cache)]
    for w in unlistable:
        notes.append(f"{w.name}: the pruned list was not checked (a {w.source or 'local'} wheel not in the "
                     "cache; `lockbuild lock --check --rederive` or a build checks it)")
    listable = [w for w in wheels if w not in unlistable]
    derived = derive(listable, lock.build, site_listings(listable, cache))
    for w in listable:
        extra = sorted(set(w.pruned) - set(derived[w.name]))
        missing = sorted(set(derived[w.name]) - set(w.pruned))
        if extra or missing:
            parts = []
            if extra:
                parts.append(f"{len(extra)} entr{'y' if len(extra) == 1 else 'ies'} the rules do not give "
                             f"({', '.join(extra[:3])}{', …' if len(extra) > 3 else ''})")
            if missing:
                parts.append(f"{len(missing)} the rules give missing "
                             f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})")
            reasons.append(f"python.packages[{w.name}].pruned is not what [build] prune/keep remove from "
                           f"{w.filename}: " + "; ".join(parts))
    return reasons, notes
