"""Debian resolution: signed suites -> verified Packages indexes -> a pinned .deb closure.

Chain of trust, per suite (``<codename>``, ``-updates``, ``-security``):

1. ``InRelease`` is fetched fresh and verified with ``gpgv`` against the Debian archive
   keyring; only the text gpgv reports as signed is parsed (never the file around it).
2. The signed Release must name the expected suite (Codename) and, if it has one, its
   ``Valid-Until`` must lie in the future (no replay of an old, vulnerable archive state).
3. ``main/binary-<arch>/Packages.xz`` (or ``.gz``) is fetched by hash and checked against the
   sha256 and size in the signed Release *before* it is decompressed or parsed.
4. Every chosen .deb carries the ``SHA256`` from that verified index into the lock; the
   builder's downloads are checked against it.

The closure follows Pre-Depends and Depends only (not Recommends/Suggests), like
``apt-get install --no-install-recommends``, over the merge of the three suites where the
highest version of each package wins. Maintainer scripts never run; see assemble/rootfs.py.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import subprocess
import tempfile
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cached_property
from pathlib import Path
from typing import cast

import httpx
from debian import deb822
from debian.debian_support import PackageFile, ParseError, Version, version_compare

from lockbuild.errors import AuditUnavailable, FetchError, IntegrityError, ResolveError
from lockbuild.fetch import download
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.debs import SNAPSHOT_ROOT, deb_items  # noqa: F401  (re-exported)
from lockbuild.fsutil import sha256_bytes
from lockbuild.lock.model import Deb, DebianLock, Suite
from lockbuild.progress import Notify, quiet
from lockbuild.resolve.runtime import debian_arch

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

# Package-manager machinery whose only consumers are maintainer scripts and dpkg triggers, which
# lockbuild never runs: a dependency naming one of them (alone or as an alternative) counts as
# satisfied. debconf: ca-certificates' and tzdata's config/postinst questions; dpkg | install-info:
# readline-common's info-page trigger (drags in dpkg, tar, libselinux1, libacl1, libpcre2, libmd0,
# libzstd1). Explicit roots are never excluded. See docs/debian.md.
DEFAULT_EXCLUDE = ("debconf", "debconf-2.0", "dpkg", "install-info")

PRIORITY_RANK = {"required": 0, "important": 1, "standard": 2, "optional": 3, "extra": 4}


Relation = list[dict]  # one comma-separated item: alternatives as parsed by python-debian


# -- suites and signatures -----------------------------------------------------------------------
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


def _gpg_status(stdout: bytes) -> list[list[str]]:
    lines = stdout.decode("utf-8", "replace").splitlines()
    return [ln.split()[1:] for ln in lines if ln.startswith("[GNUPG:] ") and len(ln.split()) > 1]


# OpenPGP hash algorithms apt refuses in Release signatures (MD5, SHA1, RIPEMD160).
WEAK_HASH_ALGOS = {"1": "MD5", "2": "SHA1", "3": "RIPEMD160"}
# gpgv outcomes that make a signature worthless for apt (the signature maths may still check out:
# gpgv then also prints VALIDSIG, so VALIDSIG alone proves nothing).
_WORTHLESS = {
    "EXPKEYSIG": "made by an expired key",
    "REVKEYSIG": "made by a revoked key",
    "EXPSIG": "expired signature",
    "BADSIG": "bad signature",
}


@dataclass(frozen=True)
class SignatureCheck:
    """gpgv's verdict on one clear-signed InRelease."""

    text: bytes  # the signed Release text (only what the signature covers)
    signers: tuple[str, ...]  # primary-key fingerprints of the good signatures, sorted
    refused: tuple[str, ...]  # one reason per worthless signature ("key 1234…: made by an expired key")


def _signature_groups(status: list[list[str]]) -> list[list[list[str]]]:
    groups: list[list[list[str]]] = []
    for s in status:
        if s[0] == "NEWSIG" or not groups:
            groups.append([])
        if s[0] != "NEWSIG":
            groups[-1].append(s)
    return groups


def judge_signatures(status: list[list[str]]) -> tuple[list[str], list[str]]:
    """(good signer fingerprints, reasons for refused signatures) from gpgv's status lines, as apt
    judges them: a signature counts only with GOODSIG *and* VALIDSIG and a strong hash; EXPKEYSIG
    (expired key), REVKEYSIG (revoked key), EXPSIG and BADSIG never count; signatures by keys outside
    the keyring (ERRSIG/NO_PUBKEY) are ignored."""
    good: list[str] = []
    refused: list[str] = []
    for group in _signature_groups(status):
        kinds = {s[0]: s for s in group}
        validsig = kinds.get("VALIDSIG")
        # VALIDSIG <fpr> <date> <ts> <expire-ts> <version> <reserved> <pk-algo> <hash-algo> <class> <primary-fpr>
        primary = (validsig[10] if len(validsig) > 10 else validsig[1]).upper() if validsig else ""
        for kind, why in _WORTHLESS.items():
            if kind in kinds:
                keyid = kinds[kind][1] if len(kinds[kind]) > 1 else "?"
                if kind == "EXPKEYSIG" and "KEYEXPIRED" in kinds and len(kinds["KEYEXPIRED"]) > 1:
                    ts = kinds["KEYEXPIRED"][1]
                    if ts.isdigit():
                        why += f" (expired {datetime.fromtimestamp(int(ts), UTC):%Y-%m-%d %H:%M UTC})"
                refused.append(f"key {primary or keyid}: {why}")
                break
        else:
            if "GOODSIG" in kinds and validsig:
                algo = validsig[8] if len(validsig) > 8 else ""
                if algo in WEAK_HASH_ALGOS:
                    refused.append(f"key {primary}: signature uses the weak digest {WEAK_HASH_ALGOS[algo]}")
                else:
                    good.append(primary)
    return sorted(set(good)), refused


def _keyring_files(keyrings: Path | Sequence[Path], tmp: Path) -> list[Path]:
    """Keyrings as gpgv reads them: binary ones as they are, ASCII-armored ones (.asc) dearmored."""
    paths = [keyrings] if isinstance(keyrings, Path) else list(keyrings)
    out = []
    for i, kr in enumerate(paths):
        if not kr.is_file():
            raise IntegrityError(
                f"OpenPGP keyring {kr} not found",
                hint="install it with `apt-get install debian-archive-keyring`, or fix [target] keyring "
                "in lockbuild.toml",
            )
        data = kr.read_bytes()
        if data.lstrip().startswith(b"-----BEGIN PGP"):
            out.append(_dearmor(data, kr, tmp / f"keyring-{i}.gpg"))
        else:
            out.append(kr.resolve())
    return out


def _dearmor(data: bytes, where: Path, dest: Path) -> Path:
    import base64
    import binascii

    data = data.replace(b"\r\n", b"\n")
    blobs = []
    for m in re.finditer(rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----",
                         data, re.S):
        body = m.group(1).split(b"\n\n", 1)[-1] if b"\n\n" in m.group(1) else m.group(1)
        lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith(b"=")]
        try:
            blobs.append(base64.b64decode(b"".join(lines), validate=True))
        except binascii.Error:
            blobs = []
            break
    if not blobs:
        raise IntegrityError(f"OpenPGP keyring {where} is ASCII-armored but holds no readable public key block",
                             hint="export it again with `gpg --export --armor FINGERPRINT`, or use a binary "
                             "keyring (`gpg --export`)")
    dest.write_bytes(b"".join(blobs))
    return dest


def check_inrelease(data: bytes, keyrings: Path | Sequence[Path], label: str) -> SignatureCheck:
    """Verify a clear-signed InRelease with gpgv against `keyrings`, judged as apt judges it.

    At least one good signature (GOODSIG + VALIDSIG, strong hash) by a key in the keyrings is
    required; a signature by an expired or revoked key, an expired signature, a weak hash or a
    BADSIG is refused. Signatures by keys outside the keyrings are ignored.
    """
    if not data.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----"):
        raise IntegrityError(
            f"{label}: InRelease is not a clear-signed OpenPGP message",
            hint="the mirror served something else (captive portal? proxy error page?); check the mirror URL",
        )
    names = ", ".join(str(k) for k in ([keyrings] if isinstance(keyrings, Path) else keyrings))
    with tempfile.TemporaryDirectory(prefix="lockbuild-gpgv-") as tmp:
        signed, out = Path(tmp, "InRelease"), Path(tmp, "Release")
        signed.write_bytes(data)
        cmd = ["gpgv", "--homedir", tmp, "--status-fd", "1"]
        for kr in _keyring_files(keyrings, Path(tmp)):
            cmd += ["--keyring", str(kr)]
        cmd += ["--output", str(out), str(signed)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
        except FileNotFoundError:
            raise IntegrityError("gpgv is not installed: InRelease signatures cannot be checked",
                                 hint="install it with `apt-get install gpgv`") from None
        status = _gpg_status(proc.stdout)
        good, refused = judge_signatures(status)
        bad = [s for s in status if s[0] == "BADSIG"]
        if bad or not good or not out.is_file():
            if refused and not bad:
                detail = "; ".join(refused)
                raise IntegrityError(
                    f"{label}: InRelease signature refused: {detail} (keyring {names})",
                    hint="apt refuses such signatures too; if the archive rotated its keys, update "
                    "debian-archive-keyring (or [target] keyring); otherwise the mirror serves a stale or "
                    "forged index: use another mirror",
                )
            detail = "; ".join(" ".join(s[:2]) for s in status if s[0] in ("BADSIG", "ERRSIG", "NO_PUBKEY"))
            raise IntegrityError(
                f"{label}: InRelease signature does not verify against {names}"
                + (f" ({detail})" if detail else ""),
                hint="the index may be tampered with or the mirror is broken; do not use it. If the archive "
                "rotated its keys, update debian-archive-keyring (or [target] keyring in lockbuild.toml)",
            )
        return SignatureCheck(out.read_bytes(), tuple(good), tuple(refused))


def verify_inrelease(data: bytes, keyring: Path | Sequence[Path], label: str) -> bytes:
    """Verify a clear-signed InRelease (see check_inrelease); return only the signed text."""
    return check_inrelease(data, keyring, label).text


def _rfc2822(value: str, label: str) -> datetime:
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        raise IntegrityError(f"{label}: unreadable date {value!r} in the signed Release") from None


def snapshot_timestamp(date: str) -> str:
    """Release Date (RFC 2822) -> snapshot.debian.org timestamp, e.g. 20260711T101637Z."""
    return _rfc2822(date, "Release").strftime("%Y%m%dT%H%M%SZ")


def parse_release(text: bytes, src: SuiteSource, now: datetime | None = None) -> deb822.Release:
    """Parse signed Release text and check it describes `src` and has not expired."""
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
    if until and _rfc2822(until, label) < now:
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
            return IndexFile(e["name"], e["sha256"].lower(), int(e["size"]))
    raise ResolveError(
        f"{label}: the signed Release lists no {COMPONENT}/binary-{arch}/Packages.xz or .gz",
        hint=f"is {arch} built for {label}? Architectures: {release.get('Architectures', '?')}",
    )


def _by_hash_url(src: SuiteSource, f: IndexFile) -> str:
    return f"{src.dists}/{f.path.rsplit('/', 1)[0]}/by-hash/SHA256/{f.sha256}"


def fetch_index(http: httpx.Client, cache: Cache, src: SuiteSource, f: IndexFile, by_hash: bool) -> Path:
    """The verified compressed index from the cache, or downloaded and checked against the Release."""
    cached = cache.get(f.sha256, f.size)
    if cached is not None:
        return cached
    urls = ([_by_hash_url(src, f)] if by_hash else []) + [f"{src.dists}/{f.path}"]
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
            f"{src.name}: {url} does not match the signed Release (expected sha256:{f.sha256}, "
            f"{f.size} bytes; got sha256:{digest}, {len(data)} bytes)",
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
    if meta and (blob := cache.get(meta["blob"])) is not None:
        return json.loads(blob.read_bytes())
    entries = parse_packages(_decompress(path), label)
    blob_sha = cache.put_bytes(json.dumps(entries, separators=(",", ":")).encode())
    cache.meta_put(INDEX_CACHE_NS, key, {"blob": blob_sha, "format": INDEX_FORMAT, "packages": len(entries)})
    return entries


@dataclass(frozen=True)
class LoadedSuite:
    suite: Suite
    entries: list[dict[str, str]]


def load_suite(http: httpx.Client, cache: Cache, src: SuiteSource, arch: str,
               keyring: Path | Sequence[Path], say: Notify) -> LoadedSuite:
    """Fetch and verify one suite's InRelease and Packages index."""
    inrelease = download.fetch_bytes(f"{src.dists}/InRelease", http=http)
    return _load_verified_suite(http, cache, src, arch, keyring, say, inrelease)


def _load_verified_suite(http: httpx.Client, cache: Cache, src: SuiteSource, arch: str,
                         keyring: Path | Sequence[Path], say: Notify, inrelease: bytes,
                         now: datetime | None = None) -> LoadedSuite:
    sig = check_inrelease(inrelease, keyring, src.name)
    release = parse_release(sig.text, src, now)
    inrelease_sha = cache.put_bytes(inrelease)  # only verified bytes enter the cache (kept for audits)
    f = index_file(release, arch, src.name)
    by_hash = release.get("Acquire-By-Hash", "").strip().lower() == "yes"
    path = fetch_index(http, cache, src, f, by_hash)
    entries = load_index(cache, path, f.sha256, f"{src.name} {f.path}")
    say(f"{src.name}: InRelease verified (Date {release['Date']}), {f.path} {f.size / 1e6:.1f} MB, "
        f"{len(entries)} packages")
    suite = Suite(
        name=src.name, archive=src.archive, date=release["Date"], inrelease_sha256=inrelease_sha,
        snapshot=snapshot_timestamp(release["Date"]), snapshot_archive=src.snapshot_archive,
        signed_by=sig.signers,
    )
    return LoadedSuite(suite, entries)


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
            sha256=self.entry["SHA256"].lower(), source=source,
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
) -> DebianLock:
    """Lock the Pre-Depends/Depends closure of `roots` from the signed suites of `codename`.

    `roots` are Debian relations ("python3.11", "libssl3 (>= 3.0.9)"). `exclude` names packages
    never pulled in by a dependency (a dependency naming one is treated as satisfied; roots are
    never excluded). `progress` gets one line per verified suite and one for the closure.
    """
    arch = debian_arch(arch)
    say: Notify = progress or quiet
    sources = suite_sources(codename, mirror, security_mirror)
    keyring = keyring or DEFAULT_KEYRING
    with download.client() as http:
        loaded = [load_suite(http, cache, src, arch, keyring, say) for src in sources]
    return _close(loaded, sources, arch, roots, exclude, say)


def _close(loaded: Sequence[LoadedSuite], sources: Sequence[SuiteSource], arch: str, roots: Sequence[str],
           exclude: Sequence[str], say: Notify) -> DebianLock:
    index = merge_suites([(ls.suite.name, ls.entries) for ls in loaded])
    closure = Closure(index, arch, [s.name for s in sources], exclude)
    for root in roots:
        closure.add_root(root)
    chosen = closure.run()
    debs = tuple(c.to_deb(arch) for c in chosen)
    say(f"debian closure: {len(debs)} packages, {sum(d.size for d in debs) / 1e6:.1f} MB of .debs"
        + (f" (excluded: {', '.join(sorted(closure.skipped))})" if closure.skipped else ""))
    return DebianLock(suites=tuple(ls.suite for ls in loaded), roots=tuple(roots), packages=debs)


# -- re-derivation (lock --check --rederive) -------------------------------------------------
def _pinned_inrelease(http: httpx.Client, cache: Cache, src: SuiteSource, locked: Suite) -> bytes:
    """The exact InRelease the lock recorded: from the cache, else from the live archive if it still
    serves those bytes. snapshot.debian.org is not used (often unreachable); say so when neither has it."""
    cached = cache.get(locked.inrelease_sha256)
    if cached is not None:
        return cached.read_bytes()
    live: bytes | None = None
    try:
        live = download.fetch_bytes(f"{src.dists}/InRelease", http=http)
        why = f"the live archive now serves another one (sha256:{sha256_bytes(live)})"
    except FetchError as e:
        why = f"the live archive is unreachable ({e.message})"
    if live is None or sha256_bytes(live) != locked.inrelease_sha256:
        raise AuditUnavailable(
            f"{src.name}: the InRelease the lock recorded (sha256:{locked.inrelease_sha256}, Date {locked.date}) "
            f"is not in the cache and {why}",
            hint="re-derive where `lockbuild lock` ran (its LOCKBUILD_CACHE keeps every verified InRelease), or "
            f"from a cache holding https://snapshot.debian.org/archive/{locked.snapshot_archive}/{locked.snapshot}/"
            f"dists/{src.name}/InRelease (stored by its sha256)",
        )
    return live


def rederive_debian(
    locked: DebianLock,
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
) -> DebianLock:
    """The Debian side re-derived from the signed InRelease files the lock names (by sha256).

    Each InRelease is re-verified (signature, keyring, Codename; Valid-Until is judged at its own
    Date, since the lock pins a past archive state) and every Packages index is re-checked against
    it, from the cache or the live archive's by-hash store. The closure is then recomputed.
    """
    arch = debian_arch(arch)
    say: Notify = progress or (lambda _msg: None)
    sources = suite_sources(codename, mirror, security_mirror)
    by_name = {s.name: s for s in locked.suites}
    keyring = keyring or DEFAULT_KEYRING
    loaded = []
    with download.client() as http:
        for src in sources:
            suite = by_name.get(src.name)
            if suite is None:
                raise AuditUnavailable(
                    f"the lock records no Debian suite {src.name} (it has: {', '.join(by_name) or 'none'})",
                    hint="the lock does not belong to this spec: re-create it with `lockbuild lock --upgrade`")
            inrelease = _pinned_inrelease(http, cache, src, suite)
            when = _rfc2822(suite.date, src.name)
            try:
                loaded.append(_load_verified_suite(http, cache, src, arch, keyring, say, inrelease, now=when))
            except FetchError as e:
                raise AuditUnavailable(
                    f"{src.name}: a Packages index the locked InRelease names is neither in the cache nor on the "
                    f"live archive ({e.message})",
                    hint="re-derive where `lockbuild lock` ran (its LOCKBUILD_CACHE keeps the index), or from a "
                    f"cache holding it from https://snapshot.debian.org/archive/{suite.snapshot_archive}/"
                    f"{suite.snapshot}/",
                ) from None
    return _close(loaded, sources, arch, roots, exclude, say)
