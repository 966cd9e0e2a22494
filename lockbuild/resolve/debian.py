"""Debian resolution, the public API: signed suites -> verified Packages indexes -> a pinned .deb closure.

Composes archive.py (the chain of trust: InRelease signatures, Release, Packages indexes by hash)
and closure.py (the Pre-Depends + Depends solver) into ``resolve_debian`` (lock, and
with ``locked=`` lock --check --rederive), and names the default roots of a serving image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import httpx

from lockbuild.errors import AuditUnavailable, FetchError
from lockbuild.fetch import download
from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import Deb, DebianLock
from lockbuild.progress import Notify, quiet
from lockbuild.resolve.archive import (
    DEFAULT_KEYRING,
    DEFAULT_MIRROR,
    DEFAULT_SECURITY_MIRROR,
    KEEP_WHOLE_INDEX_MAX,
    SNAPSHOT_ENV,
    KeptInputs,
    LoadedSuite,
    SuiteSource,
    VerifiedSuite,
    load_entries,
    load_verified_suite,
    pinned_inrelease,
    rfc2822,
    snapshot_base,
    snapshot_dists,
    suite_sources,
    verify_suite,
)
from lockbuild.resolve.closure import DEFAULT_EXCLUDE, Closure, merge_suites
from lockbuild.resolve.runtime import debian_arch

__all__ = ["LIBSSL", "default_roots", "resolve_debian"]


# -- public API ------------------------------------------------------------------------------
# The OpenSSL runtime library per interpreter's release (trixie's libssl3t64 Provides libssl3).
LIBSSL = {"python3.9": "libssl1.1"}


def default_roots(interpreter_package: str) -> list[str]:
    """The Debian packages of a Python serving image (besides what their Depends pull in).

    base-files gives /etc/os-release and /etc/debian_version so image scanners detect the OS;
    libc-bin gives ldconfig (ctypes.util.find_library); libstdc++6 and libgomp1 are what
    manylinux wheels (numpy, TensorFlow, scikit-learn) expect from the system.
    """
    return [
        interpreter_package, "base-files", "libc-bin", "libstdc++6", "libgomp1", "ca-certificates",
        "tzdata", "netbase", LIBSSL.get(interpreter_package, "libssl3"), "zlib1g", "media-types",
    ]


def resolve_debian(
    codename: str,
    arch: str,
    roots: Sequence[str],
    cache: Cache,
    *,
    mirror: str = DEFAULT_MIRROR,
    security_mirror: str = DEFAULT_SECURITY_MIRROR,
    keyring: Path | Sequence[Path] | None = None,
    progress: Notify | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    locked: DebianLock | None = None,
    kept: Path | None = None,
    notes: list[str] | None = None,
) -> DebianLock:
    """Lock the Pre-Depends/Depends closure of `roots` from the signed suites of `codename`.

    `roots` are Debian relations ("python3.11", "libssl3 (>= 3.0.9)"). `exclude` names packages
    never pulled in by a dependency (a dependency naming one is treated as satisfied; roots are
    never excluded). `progress` gets one line per verified suite and one for the closure.

    With `locked` (lock --check --rederive) the suites are the signed InRelease files that lock
    names (by sha256), not the live ones: each is re-verified (signature, keyring, Codename;
    Valid-Until is judged at its own Date, since the lock pins a past archive state) and every
    Packages index is re-checked against it, from the cache, the audit inputs kept beside the lock
    (`kept`: lockbuild.lock.d, archive.KeptInputs), the live archive's by-hash store or the snapshot
    archive. Kept stanzas the signed index could not be checked against are named in `notes`.
    """
    arch = debian_arch(arch)
    say: Notify = progress or quiet
    sources = suite_sources(codename, mirror, security_mirror)
    keyring = keyring or DEFAULT_KEYRING
    if locked is not None:
        loaded = _locked_suites(sources=sources, arch=arch, keyring=keyring, say=say, locked=locked,
                                cache=cache, kept=kept)
        if notes is not None:
            notes += [ls.unverified for ls in loaded if ls.unverified]
        return _close(loaded, sources, arch, roots, exclude, say)
    with download.client() as http:
        from concurrent.futures import ThreadPoolExecutor

        def verified_suite(src: SuiteSource) -> VerifiedSuite:  # network + gpgv: the suites side by side
            return verify_suite(cache, src, arch, keyring, download.fetch_bytes(f"{src.dists}/InRelease", http=http))

        with ThreadPoolExecutor(max_workers=len(sources)) as pool:
            verified = list(pool.map(verified_suite, sources))
        key = _closure_key(verified, arch, roots, exclude)
        packages = _closure_get(cache, key)
        if packages is not None:
            say(f"debian closure: {len(packages)} packages (the same signed indexes and roots as before)")
            return DebianLock(suites=tuple(v.suite for v in verified), roots=tuple(roots), packages=packages)
        loaded = [load_entries(http, cache, src, v, say) for src, v in zip(sources, verified, strict=True)]
    result = _close(loaded, sources, arch, roots, exclude, say)
    _closure_put(cache, key, result.packages)
    return result


# The closure is a function of the verified Packages indexes (pinned by the signed InRelease files),
# the architecture, the roots, the exclusions and the solver: memoised by all of them (the solver by
# its source), as the parsed indexes are, through a content-addressed blob re-hashed when read. A
# warm `lock --upgrade` on an unchanged archive then skips parsing ~60,000 entries and the closure.
_CLOSURE_NS, _CLOSURE_FORMAT = "debian-closure", 1


def _closure_key(verified: Sequence[VerifiedSuite], arch: str, roots: Sequence[str], exclude: Sequence[str]) -> str:
    import json

    from lockbuild.fsutil import sha256_bytes, sha256_file
    from lockbuild.resolve import archive, closure

    solver = [sha256_file(Path(m.__file__ or ""))[0] for m in (closure, archive)]
    return sha256_bytes(json.dumps({
        "format": _CLOSURE_FORMAT, "solver": solver, "arch": arch, "roots": list(roots), "exclude": list(exclude),
        "suites": [[v.suite.name, v.suite.inrelease_sha256, v.index.sha256] for v in verified],
    }, sort_keys=True).encode())


def _closure_get(cache: Cache, key: str) -> tuple[Deb, ...] | None:
    import json

    from lockbuild.digest import from_hex
    from lockbuild.errors import IntegrityError

    meta = cache.meta_get(_CLOSURE_NS, key)
    try:
        blob = cache.get(from_hex(meta["blob"])) if meta and isinstance(meta.get("blob"), str) else None
        if blob is None:
            return None
        return tuple(Deb(**{**row, "sha256": from_hex(row["sha256"])}) for row in json.loads(blob.read_bytes()))
    except (IntegrityError, ValueError, KeyError, TypeError):
        return None  # a damaged record: resolved again


def _closure_put(cache: Cache, key: str, packages: Sequence[Deb]) -> None:
    import dataclasses
    import json

    from lockbuild.digest import to_hex

    rows = [{**dataclasses.asdict(d), "sha256": to_hex(d.sha256)} for d in packages]
    blob = cache.put_bytes(json.dumps(rows, sort_keys=True).encode())
    cache.meta_put(_CLOSURE_NS, key, {"blob": to_hex(blob)})


def _close(loaded: Sequence[LoadedSuite], sources: Sequence[SuiteSource], arch: str, roots: Sequence[str],
           exclude: Sequence[str], say: Notify, closure_out: list[Closure] | None = None) -> DebianLock:
    index = merge_suites([(ls.suite.name, ls.entries) for ls in loaded])
    closure = Closure(index, arch, [s.name for s in sources], exclude)
    for root in roots:
        closure.add_root(root)
    chosen = closure.run()
    if closure_out is not None:
        closure_out.append(closure)
    debs = tuple(c.to_deb(arch) for c in chosen)
    say(f"debian closure: {len(debs)} packages, {sum(d.size for d in debs) / 1e6:.1f} MB of .debs"
        + (f" (excluded: {', '.join(sorted(closure.skipped))})" if closure.skipped else ""))
    return DebianLock(suites=tuple(ls.suite for ls in loaded), roots=tuple(roots), packages=debs)


# -- re-derivation (lock --check --rederive) -------------------------------------------------
def _locked_suites(*, sources: Sequence[SuiteSource], arch: str, keyring: Path | Sequence[Path], say: Notify,
                   locked: DebianLock, cache: Cache, kept: Path | None) -> list[LoadedSuite]:
    """Every suite from the InRelease files `locked` recorded (re-derivation and the audit-input export)."""
    keep = KeptInputs(kept) if kept is not None else None
    with download.client() as http:
        return [_load_locked_suite(http, cache, src, arch, keyring, say, locked, keep) for src in sources]


def _load_locked_suite(http: httpx.Client, cache: Cache, src: SuiteSource, arch: str,
                       keyring: Path | Sequence[Path], say: Notify, locked: DebianLock,
                       kept: KeptInputs | None = None) -> LoadedSuite:
    """One suite from the InRelease `locked` recorded for it."""
    by_name = {s.name: s for s in locked.suites}
    suite = by_name.get(src.name)
    if suite is None:
        raise AuditUnavailable(
            f"the lock records no Debian suite {src.name} (it has: {', '.join(by_name) or 'none'})",
            hint="the lock does not belong to this spec: re-create it with `lockbuild lock --upgrade`")
    inrelease = pinned_inrelease(http, cache, src, suite, kept)
    when = rfc2822(suite.date, src.name)
    snap = snapshot_base()
    try:
        return load_verified_suite(http, cache, src, arch, keyring, say, inrelease, now=when, kept=kept,
                                   snapshot=snapshot_dists(suite, snap) if snap else "")
    except FetchError as e:
        raise AuditUnavailable(
            f"{src.name}: a Packages index the locked InRelease names is neither in the cache nor in the kept "
            f"audit inputs ({kept.root if kept else 'none given'}) nor on the live archive ({e.message})",
            hint="run `lockbuild export audit-inputs` where `lockbuild lock` ran (its LOCKBUILD_CACHE keeps the "
            f"index) and commit lockbuild.lock.d/ beside the lock, or set {SNAPSHOT_ENV}="
            f"https://snapshot.debian.org to read it from {snapshot_dists(suite)}/",
        ) from None


def export_audit_inputs(locked: DebianLock, codename: str, arch: str, cache: Cache, dest: Path, *,
                        mirror: str = DEFAULT_MIRROR, security_mirror: str = DEFAULT_SECURITY_MIRROR,
                        keyring: Path | Sequence[Path] | None = None, kept: Path | None = None,
                        progress: Notify | None = None,
                        exclude: Sequence[str] = DEFAULT_EXCLUDE) -> list[Path]:
    """Write what re-deriving `locked`'s Debian side needs into `dest` (lockbuild.lock.d/debian/):
    each signed InRelease whole; each Packages index whole when small (its signed sha256 is checked
    again at audit time), else only the stanzas the closure reads: every stanza, in every suite, of
    each name the solver looked up and of each package providing one of them, so the merged index
    and the provider lists the solver sees are the same. Checked before writing: the kept stanzas
    alone give the same closure. Returns the files written; stale files in `dest` are removed."""
    arch = debian_arch(arch)
    say: Notify = progress or quiet
    sources = suite_sources(codename, mirror, security_mirror)
    loaded = _locked_suites(sources=sources, arch=arch, keyring=keyring or DEFAULT_KEYRING, say=say, locked=locked,
                            cache=cache, kept=kept)
    unverified = [ls.unverified for ls in loaded if ls.unverified]
    if unverified:
        raise AuditUnavailable("cannot export audit inputs from unverified stanzas: " + "; ".join(unverified),
                               hint="export where the whole Packages indexes are in the cache or reachable")
    closures: list[Closure] = []
    full = _close(loaded, sources, arch, locked.roots, exclude, say, closures)
    files, reduced = _kept_files(loaded, _read_names(loaded, closures[0].looked_up), cache, KeptInputs(dest))
    again = _close(reduced, sources, arch, locked.roots, exclude, quiet)
    if again != full or full.packages != locked.packages:
        raise AuditUnavailable("the kept stanzas do not re-derive the locked Debian closure",
                               hint="the lock's Debian side is not what its InRelease files give: run "
                               "`lockbuild lock --check --rederive`")
    _write_kept(dest, files)
    return sorted(files)


def _read_names(loaded: list[LoadedSuite], looked: set[str]) -> set[str]:
    """The names the solver looked up and every package providing one of them."""
    providing: set[str] = set()
    for ls in loaded:
        for e in ls.entries:
            if "Provides" in e and any(alt["name"] in looked for rel in _provides(e["Provides"]) for alt in rel):
                providing.add(e["Package"])
    return looked | providing


def _kept_files(loaded: list[LoadedSuite], wanted: set[str], cache: Cache,
                out: KeptInputs) -> tuple[dict[Path, bytes], list[LoadedSuite]]:
    """{path: bytes} to keep (each InRelease; a small index whole, a big one's ``wanted`` stanzas) and
    the suites as the kept files give them."""
    files: dict[Path, bytes] = {}
    reduced: list[LoadedSuite] = []
    for ls in loaded:
        assert ls.index is not None
        got = cache.get(ls.suite.inrelease_sha256)
        assert got is not None  # load_verified_suite put it there
        files[out.inrelease(ls.suite.inrelease_sha256)] = got.read_bytes()
        if ls.index.size <= KEEP_WHOLE_INDEX_MAX:
            whole = cache.get(ls.index.sha256, ls.index.size)
            assert whole is not None
            files[out.index(ls.index)] = whole.read_bytes()
            reduced.append(ls)
        else:
            stanzas = sorted((e for e in ls.entries if e["Package"] in wanted),
                             key=lambda e: (e["Package"], e["Version"], e["Filename"]))
            doc = {"index": ls.index.sha256, "size": ls.index.size, "suite": ls.suite.name, "path": ls.index.path,
                   "inrelease-sha256": ls.suite.inrelease_sha256, "stanzas": stanzas}
            files[out.stanzas(ls.index)] = (json.dumps(doc, indent=0, sort_keys=True) + "\n").encode()
            reduced.append(LoadedSuite(ls.suite, stanzas, ls.index))
    return files, reduced


def _write_kept(dest: Path, files: dict[Path, bytes]) -> None:
    """``files`` written into ``dest`` (unchanged ones left alone), every other file there removed."""
    from lockbuild.fsutil import atomic_write_bytes

    dest.mkdir(parents=True, exist_ok=True)
    for p in dest.iterdir():
        if p.is_file() and p not in files:
            p.unlink()
    for p, data in sorted(files.items()):
        if not p.is_file() or p.read_bytes() != data:
            atomic_write_bytes(p, data)


def _provides(text: str) -> list[list[dict]]:
    from debian import deb822

    return deb822.PkgRelation.parse_relations(text)  # type: ignore[return-value]
