"""The Debian archive's chain of trust: signed suites -> verified Packages indexes.

Per suite (``<codename>``, ``-updates``, ``-security``):

1. ``InRelease`` is fetched fresh and verified with ``gpgv`` against the Debian archive
   keyring (inrelease.py); only the text gpgv reports as signed is parsed.
2. The signed Release must name the expected suite (Codename) and, if it has one, its
   ``Valid-Until`` must lie in the future (no replay of an old, vulnerable archive state).
3. ``main/binary-<arch>/Packages.xz`` (or ``.gz``) is fetched by hash and checked against the
   sha256 and size in the signed Release *before* it is decompressed or parsed.
4. Every chosen .deb carries the ``SHA256`` from that verified index into the lock (closure.py);
   the builder's downloads are checked against it.

For ``lock --check --rederive``, ``pinned_inrelease`` finds the exact InRelease a lock recorded
(by sha256) so it can be verified again: from the cache, the audit inputs kept beside the lock
(``lockbuild.lock.d/debian/``, see ``KeptInputs``), the live archive, or a snapshot archive
(``LOCKBUILD_SNAPSHOT_URL``, e.g. https://snapshot.debian.org). The solver lives in closure.py;
debian.py composes both.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lockbuild.digest import from_hex, to_hex
from lockbuild.errors import AuditUnavailable, FetchError, IntegrityError, ResolveError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import sha256_bytes
from lockbuild.lockfile.model import Suite
from lockbuild.progress import Notify
from lockbuild.resolve.inrelease import check_inrelease

if TYPE_CHECKING:  # httpx and python-debian load when the archive is read: `lock` starts uv first
    import httpx
    from debian import deb822

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SUPPORTED_CODENAMES = ("bullseye", "bookworm", "trixie")
COMPONENT = "main"

# Fields kept from Packages indexes (the rest, e.g. Description, is dropped before caching).
INDEX_FIELDS = (
    "Package", "Version", "Architecture", "Source", "Priority", "Multi-Arch",
    "Pre-Depends", "Depends", "Provides", "Conflicts", "Breaks", "Filename", "Size", "SHA256",
)
INDEX_CACHE_NS = "debian-index"
INDEX_FORMAT = 2  # bump when the cached reduced-index layout changes
# Audit inputs kept beside a lock (lockbuild.lock.d/debian/): a Packages index up to this size is kept
# whole (its signed sha256 is checked again); a bigger one only as the stanzas the closure read.
KEEP_WHOLE_INDEX_MAX = 512 * 1024
SNAPSHOT_ENV = "LOCKBUILD_SNAPSHOT_URL"  # e.g. https://snapshot.debian.org (unset: not used)


def snapshot_base() -> str:
    return os.environ.get(SNAPSHOT_ENV, "").strip().rstrip("/")


def snapshot_dists(locked: Suite, base: str = "https://snapshot.debian.org") -> str:
    return f"{base}/archive/{locked.snapshot_archive}/{locked.snapshot}/dists/{locked.name}"


@dataclass(frozen=True)
class KeptInputs:
    """The audit inputs kept beside a lock: `<lock>.d/debian/` holds, named by sha256,
    ``<hex>.InRelease`` (the signed files), ``<hex>.Packages.xz|.gz`` (a small index, whole) and
    ``<hex>.stanzas.json`` (a big index's stanzas the closure reads; <hex> is the WHOLE index's
    signed sha256). Everything read from here is checked like a download: by its sha256, and the
    InRelease by its signature; stanzas can be checked against the signed index only where the
    whole index is reachable (cache, archive, snapshot) — the audit says when it could not."""

    root: Path  # lockbuild.lock.d/debian

    @classmethod
    def beside(cls, lock_path: Path) -> KeptInputs:
        return cls(lock_path.with_name(lock_path.name + ".d") / "debian")

    def inrelease(self, sha256: str) -> Path:
        return self.root / f"{to_hex(sha256)}.InRelease"

    def index(self, f: IndexFile) -> Path:
        return self.root / f"{to_hex(f.sha256)}.{f.path.rsplit('/', 1)[-1]}"

    def stanzas(self, f: IndexFile) -> Path:
        return self.root / f"{to_hex(f.sha256)}.stanzas.json"

    def read_stanzas(self, f: IndexFile) -> list[dict[str, str]] | None:
        p = self.stanzas(f)
        if not p.is_file():
            return None
        try:
            doc = json.loads(p.read_bytes())
            ok = (doc.get("index") == f.sha256 and int(doc.get("size", -1)) == f.size
                  and isinstance(doc.get("stanzas"), list))
        except (ValueError, AttributeError, TypeError):
            ok = False
        if not ok:
            raise IntegrityError(f"{p}: not the stanzas of {f.path} ({f.sha256})",
                                 hint="re-export the audit inputs with `lockbuild export audit-inputs`")
        keep, pin = set(INDEX_FIELDS), ("Package", "Version", "Filename", "Size", "SHA256")
        entries = [{k: str(v) for k, v in e.items() if k in keep} for e in doc["stanzas"] if isinstance(e, dict)]
        if len(entries) != len(doc["stanzas"]) or not all(all(k in e for k in pin) and e["Size"].isdigit()
                                                          for e in entries):
            raise IntegrityError(f"{p}: a stanza lacks one of {', '.join(pin)} (or its Size is not a number)",
                                 hint="re-export the audit inputs with `lockbuild export audit-inputs`")
        return entries


# -- suites ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteSource:
    """Where one suite lives: its name, archive root and snapshot.debian.org archive."""

    name: str  # bookworm-security
    archive: str  # http://deb.debian.org/debian-security
    snapshot_archive: str  # debian-security

    @property
    def dists(self) -> str:
        return f"{self.archive}/dists/{self.name}"


def suite_sources(codename: str, mirror: str, security_mirror: str) -> list[SuiteSource]:
    """The three suites of a release, base first (ties in version go to the earliest)."""
    if codename not in SUPPORTED_CODENAMES:
        raise ResolveError(
            f"unsupported Debian suite {codename!r}",
            hint=f"supported suites: {', '.join(SUPPORTED_CODENAMES)}",
        )
    mirror, security_mirror = mirror.rstrip("/"), security_mirror.rstrip("/")
    return [
        SuiteSource(codename, mirror, "debian"),
        SuiteSource(f"{codename}-updates", mirror, "debian"),
        SuiteSource(f"{codename}-security", security_mirror, "debian-security"),
    ]


# -- Release and Packages indexes -----------------------------------------------------------------
def rfc2822(value: str, label: str) -> datetime:
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        raise IntegrityError(f"{label}: unreadable date {value!r} in the signed Release") from None


def snapshot_timestamp(date: str) -> str:
    """Release Date (RFC 2822) -> snapshot.debian.org timestamp, e.g. 20260711T101637Z."""
    return rfc2822(date, "Release").strftime("%Y%m%dT%H%M%SZ")


def parse_release(text: bytes, src: SuiteSource, now: datetime | None = None) -> deb822.Release:
    """Parse signed Release text and check it describes `src` and has not expired."""
    from debian import deb822

    release = deb822.Release(text)
    label = src.name
    if release.get("Codename") != src.name:
        raise IntegrityError(
            f"{label}: the signed Release is for {release.get('Codename')!r}, not {src.name!r}",
            hint="the mirror serves another suite under this name (misconfigured mirror or a downgrade "
            "attempt); use another mirror",
        )
    if "Date" not in release:
        raise IntegrityError(f"{label}: the signed Release has no Date field")
    until = release.get("Valid-Until")
    now = now or datetime.now(UTC)
    if until and rfc2822(until, label) < now:
        raise IntegrityError(
            f"{label}: the signed Release expired at {until} (Valid-Until)",
            hint="the mirror serves a stale copy (possible replay of an old archive state); "
            "retry later or use another mirror",
        )
    return release


# -- Packages indexes ------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexFile:
    path: str  # main/binary-amd64/Packages.xz, relative to dists/<suite>/
    sha256: str
    size: int


def index_file(release: deb822.Release, arch: str, label: str) -> IndexFile:
    """The Packages.xz (else .gz) entry of the signed Release for main/binary-<arch>."""
    entries = {e["name"]: e for e in release.get("SHA256", [])}
    for ext in (".xz", ".gz"):
        e = entries.get(f"{COMPONENT}/binary-{arch}/Packages{ext}")
        if e:
            return IndexFile(e["name"], from_hex(e["sha256"], f"{label}: Release {e['name']}"), int(e["size"]))
    raise ResolveError(
        f"{label}: the signed Release lists no {COMPONENT}/binary-{arch}/Packages.xz or .gz",
        hint=f"is {arch} built for {label}? Architectures: {release.get('Architectures', '?')}",
    )


def _by_hash_url(src: SuiteSource, f: IndexFile) -> str:
    return f"{src.dists}/{f.path.rsplit('/', 1)[0]}/by-hash/SHA256/{to_hex(f.sha256)}"


def fetch_index(http: httpx.Client, cache: Cache, src: SuiteSource, f: IndexFile, by_hash: bool,
                kept: KeptInputs | None = None, snapshot: str = "") -> Path:
    """The verified compressed index from the cache, or the kept audit inputs, or downloaded (archive,
    then the snapshot archive's dists/ URL when given) and checked against the Release."""
    from lockbuild.fetch import download

    cached = cache.get(f.sha256, f.size)
    if cached is not None:
        return cached
    if kept is not None and (p := kept.index(f)).is_file():
        kept_bytes = p.read_bytes()
        if sha256_bytes(kept_bytes) == f.sha256 and len(kept_bytes) == f.size:
            cache.put_bytes(kept_bytes, f.sha256)
            return cache.path(f.sha256)
    urls = (([_by_hash_url(src, f)] if by_hash else []) + [f"{src.dists}/{f.path}"]
            + ([f"{snapshot}/{f.path}"] if snapshot else []))
    data, url, last = None, "", None
    for url in urls:
        try:
            data = download.fetch_bytes(url, http=http)
            break
        except FetchError as e:
            last = e
    if data is None:
        assert last is not None
        raise last
    digest = sha256_bytes(data)
    if digest != f.sha256 or len(data) != f.size:
        raise IntegrityError(
            f"{src.name}: {url} does not match the signed Release (expected {f.sha256}, "
            f"{f.size} bytes; got {digest}, {len(data)} bytes)",
            hint="the mirror serves a tampered or half-synced index; retry later or use another mirror",
        )
    cache.put_bytes(data, f.sha256)
    return cache.path(f.sha256)


def _decompress(path: Path) -> bytes:
    data = path.read_bytes()
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.decompress(data)
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    raise IntegrityError(f"{path}: not an xz or gzip Packages index")


def parse_packages(raw: bytes, label: str = "Packages") -> list[dict[str, str]]:
    """Paragraphs of a Packages file, reduced to INDEX_FIELDS; entries without a pin are dropped.

    python-debian's strict PackageFile parser (2-3x faster than deb822 on 63k paragraphs).
    """
    from debian.debian_support import PackageFile, ParseError

    keep = set(INDEX_FIELDS)
    out = []
    try:
        for fields in PackageFile(label, io.BytesIO(raw)):
            entry = {k: v for k, v in fields if k in keep}
            if all(k in entry for k in ("Package", "Version", "Filename", "Size", "SHA256")):
                out.append(entry)
    except ParseError as e:
        raise ResolveError(f"{label}: malformed Packages index: {e}",
                           hint="the signed index itself is malformed; report it to the archive") from None
    return out


def load_index(cache: Cache, path: Path, sha256: str, label: str = "Packages") -> list[dict[str, str]]:
    """Parsed entries of a verified index, memoised in the cache by the index's sha256."""
    key = f"{sha256}-v{INDEX_FORMAT}"
    meta = cache.meta_get(INDEX_CACHE_NS, key)
    if meta and (blob := cache.get(from_hex(meta["blob"]))) is not None:
        return json.loads(blob.read_bytes())
    entries = parse_packages(_decompress(path), label)
    blob_sha = cache.put_bytes(json.dumps(entries, separators=(",", ":")).encode())
    cache.meta_put(INDEX_CACHE_NS, key, {"blob": to_hex(blob_sha), "format": INDEX_FORMAT, "packages": len(entries)})
    return entries


@dataclass(frozen=True)
class LoadedSuite:
    suite: Suite
    entries: list[dict[str, str]]
    index: IndexFile | None = None  # the signed Packages index the entries come from
    unverified: str = ""  # entries are kept stanzas the signed index could not be checked against: why


@dataclass(frozen=True)
class VerifiedSuite:
    """A suite's InRelease, signature and Release checked: the Suite row and its Packages index's pin."""

    suite: Suite
    index: IndexFile
    by_hash: bool


def verify_suite(cache: Cache, src: SuiteSource, arch: str, keyring: Path | Sequence[Path], inrelease: bytes,
                 now: datetime | None = None) -> VerifiedSuite:
    sig = check_inrelease(inrelease, keyring, src.name)
    release = parse_release(sig.text, src, now)
    inrelease_sha = cache.put_bytes(inrelease)  # only verified bytes enter the cache (kept for audits)
    f = index_file(release, arch, src.name)
    by_hash = release.get("Acquire-By-Hash", "").strip().lower() == "yes"
    suite = Suite(
        name=src.name, archive=src.archive, date=release["Date"], inrelease_sha256=inrelease_sha,
        snapshot=snapshot_timestamp(release["Date"]), snapshot_archive=src.snapshot_archive,
        signed_by=sig.signers,
    )
    return VerifiedSuite(suite, f, by_hash)


def load_entries(http: httpx.Client, cache: Cache, src: SuiteSource, v: VerifiedSuite, say: Notify,
                 kept: KeptInputs | None = None, snapshot: str = "") -> LoadedSuite:
    """The verified suite's Packages index, fetched (or re-checked in the cache, the kept audit inputs or
    the snapshot archive) and parsed; kept stanzas only where the signed index itself is unreachable."""
    f = v.index
    unverified = ""
    try:
        path = fetch_index(http, cache, src, f, v.by_hash, kept, snapshot)
        entries = load_index(cache, path, f.sha256, f"{src.name} {f.path}")
    except FetchError as e:
        stanzas = kept.read_stanzas(f) if kept is not None else None
        if stanzas is None or kept is None:
            raise
        entries = stanzas
        unverified = (f"{src.name}: {len(entries)} kept stanzas of {f.path} ({kept.stanzas(f).name}) were used; "
                      f"the signed index ({f.sha256}) itself is not reachable ({e.message}), so they are "
                      f"trusted as the commit that carries them")
    say(f"{src.name}: InRelease verified (Date {v.suite.date}), {f.path} {f.size / 1e6:.1f} MB, "
        f"{len(entries)} packages")
    return LoadedSuite(v.suite, entries, f, unverified)


def load_verified_suite(http: httpx.Client, cache: Cache, src: SuiteSource, arch: str,
                         keyring: Path | Sequence[Path], say: Notify, inrelease: bytes,
                         now: datetime | None = None, kept: KeptInputs | None = None,
                         snapshot: str = "") -> LoadedSuite:
    return load_entries(http, cache, src, verify_suite(cache, src, arch, keyring, inrelease, now), say,
                        kept, snapshot)


# -- re-derivation (lock --check --rederive) ------------------------------------------------------
def pinned_inrelease(http: httpx.Client, cache: Cache, src: SuiteSource, locked: Suite,
                     kept: KeptInputs | None = None) -> bytes:
    """The exact InRelease the lock recorded: from the cache, the kept audit inputs, the live archive
    if it still serves those bytes, or the snapshot archive (LOCKBUILD_SNAPSHOT_URL); else say exactly
    which file is missing and how to get it."""
    from lockbuild.fetch import download

    cached = cache.get(locked.inrelease_sha256)
    if cached is not None:
        return cached.read_bytes()
    tried = ["the cache"]
    if kept is not None:
        p = kept.inrelease(locked.inrelease_sha256)
        if p.is_file() and sha256_bytes(data := p.read_bytes()) == locked.inrelease_sha256:
            return data
        tried.append(f"{p} ({'other bytes' if p.is_file() else 'absent'})")
    urls = [(f"{src.dists}/InRelease", "the live archive")]
    if snapshot_base():
        urls.append((f"{snapshot_dists(locked, snapshot_base())}/InRelease", "the snapshot archive"))
    for url, what in urls:
        try:
            live = download.fetch_bytes(url, http=http)
        except FetchError as e:
            tried.append(f"{what} ({e.message})")
            continue
        if sha256_bytes(live) == locked.inrelease_sha256:
            return live
        tried.append(f"{what} (serves another one now, {sha256_bytes(live)})")
    snap = f"{snapshot_dists(locked)}/InRelease"
    raise AuditUnavailable(
        f"{src.name}: the InRelease the lock recorded ({locked.inrelease_sha256}, Date {locked.date}) is "
        f"missing; tried: {'; '.join(tried)}",
        hint=f"it is {snap} . Either run `lockbuild export audit-inputs` where `lockbuild lock` ran and commit "
        f"the {KeptInputs.beside(Path('lockbuild.lock')).root.parent.name}/ directory beside the lock, or set "
        f"{SNAPSHOT_ENV}=https://snapshot.debian.org (or a mirror of it), or save that file as "
        f"lockbuild.lock.d/debian/{to_hex(locked.inrelease_sha256)}.InRelease",
    )
