"""InRelease signatures judged as apt judges them: expired and revoked keys, keys outside the
configured keyring, keyrings from the spec, signer fingerprints recorded in the lock.

Real keys generated with gpg in a throwaway GNUPGHOME; the signed text is a real Debian Release
(bookworm-updates, fetched from deb.debian.org and verified with debian-archive-keyring).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockbuild.errors import AuditUnavailable, IntegrityError, SpecError
from lockbuild.fetch import download
from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import DebianLock
from lockbuild.resolve import debian as D
from lockbuild.resolve.archive import DEFAULT_KEYRING, DEFAULT_MIRROR
from lockbuild.resolve.inrelease import check_inrelease, judge_signatures
from lockbuild.spec import parse_spec
from tests.conftest_services import need_tool, unavailable
from tests.test_debian_resolve import Archive, Signer, server, signer  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _gpg() -> None:
    need_tool("gpg", "gpgv")


class Key:
    """One generated key in its own GNUPGHOME."""

    def __init__(self, home: Path, uid: str, expire: str = "never") -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True)
        self.env = {**os.environ, "GNUPGHOME": str(home)}
        self.gpg("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", expire)
        out = self.gpg("--list-keys", "--with-colons").stdout.decode()
        self.fpr = next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))

    def gpg(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["gpg", "--batch", "--yes", *args], input=data, env=self.env, check=True,
                              capture_output=True)

    def sign(self, text: bytes) -> bytes:
        return self.gpg("--clearsign", data=text).stdout

    def keyring(self, path: Path, armor: bool = False) -> Path:
        path.write_bytes(self.gpg("--export", *(["--armor"] if armor else []), self.fpr).stdout)
        return path

    def revoke(self) -> None:
        rev = (self.home / "openpgp-revocs.d" / f"{self.fpr}.rev").read_text()
        self.gpg("--import", data=rev.replace(":-----BEGIN", "-----BEGIN").encode())

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, capture_output=True)


@pytest.fixture(scope="module")
def release_text() -> bytes:
    """The signed text of the real bookworm-updates Release (verified with Debian's keyring)."""
    if not DEFAULT_KEYRING.is_file():
        unavailable("debian-archive-keyring not installed: run scripts/install-deps.sh")
    try:
        data = download.fetch_bytes(f"{DEFAULT_MIRROR}/dists/bookworm-updates/InRelease")
    except Exception as e:  # noqa: BLE001
        unavailable(f"deb.debian.org unreachable: {e}")
    check = check_inrelease(data, DEFAULT_KEYRING, "bookworm-updates")
    assert check.signers and not check.refused
    return check.text


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[dict[str, Key]]:
    made: dict[str, Key] = {}
    yield made
    for k in made.values():
        k.close()


def test_real_inrelease_records_debian_signers() -> None:
    if not DEFAULT_KEYRING.is_file():
        unavailable("debian-archive-keyring not installed: run scripts/install-deps.sh")
    data = download.fetch_bytes(f"{DEFAULT_MIRROR}/dists/bookworm-updates/InRelease")
    check = check_inrelease(data, DEFAULT_KEYRING, "bookworm-updates")
    listing = subprocess.run(["gpg", "--show-keys", "--with-colons", str(DEFAULT_KEYRING)],
                             capture_output=True, check=True).stdout.decode()
    keyring_fprs = {ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:")}
    assert check.signers and set(check.signers) <= keyring_fprs


def test_expired_key_is_refused(release_text: bytes, keys: dict[str, Key], tmp_path: Path) -> None:
    keys["short"] = k = Key(tmp_path / "short", "short-lived <s@lockbuild.invalid>", "seconds=2")
    signed = k.sign(release_text)
    keyring = k.keyring(tmp_path / "short.gpg")
    assert check_inrelease(signed, keyring, "bookworm-updates").signers == (k.fpr,)  # still valid
    time.sleep(3)
    with pytest.raises(IntegrityError) as e:
        check_inrelease(signed, keyring, "bookworm-updates")
    assert "signature refused" in e.value.message and "made by an expired key" in e.value.message
    assert k.fpr in e.value.message and e.value.hint and "apt refuses" in e.value.hint


def test_revoked_key_is_refused(release_text: bytes, keys: dict[str, Key], tmp_path: Path) -> None:
    keys["rev"] = k = Key(tmp_path / "rev", "revoked <r@lockbuild.invalid>")
    signed = k.sign(release_text)
    k.revoke()
    with pytest.raises(IntegrityError, match="made by a revoked key"):
        check_inrelease(signed, k.keyring(tmp_path / "rev.gpg"), "bookworm-updates")


def test_key_outside_the_configured_keyring_is_refused(release_text: bytes, keys: dict[str, Key],
                                                       tmp_path: Path) -> None:
    keys["a"] = a = Key(tmp_path / "a", "a <a@lockbuild.invalid>")
    keys["b"] = b = Key(tmp_path / "b", "b <b@lockbuild.invalid>")
    with pytest.raises(IntegrityError, match="does not verify against"):
        check_inrelease(a.sign(release_text), b.keyring(tmp_path / "b.gpg"), "bookworm-updates")
    # the real Debian signature is refused too when the configured keyring is someone else's
    real = download.fetch_bytes(f"{DEFAULT_MIRROR}/dists/bookworm-updates/InRelease")
    with pytest.raises(IntegrityError, match="does not verify against"):
        check_inrelease(real, b.keyring(tmp_path / "b2.gpg"), "bookworm-updates")


def test_armored_keyring_and_keyring_lists(release_text: bytes, keys: dict[str, Key], tmp_path: Path) -> None:
    keys["a"] = a = Key(tmp_path / "a", "a <a@lockbuild.invalid>")
    keys["b"] = b = Key(tmp_path / "b", "b <b@lockbuild.invalid>")
    signed = a.sign(release_text)
    asc = a.keyring(tmp_path / "a.asc", armor=True)
    assert check_inrelease(signed, asc, "x").signers == (a.fpr,)
    assert check_inrelease(signed, [b.keyring(tmp_path / "b.gpg"), asc], "x").signers == (a.fpr,)
    armor = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n-----END PGP PUBLIC KEY BLOCK-----\n"
    (tmp_path / "junk.asc").write_text(armor)
    with pytest.raises(IntegrityError, match="holds no readable public key block"):
        check_inrelease(signed, tmp_path / "junk.asc", "x")


def test_resolution_records_signer_fingerprints(archive_fp: tuple[Archive, str], tmp_path: Path) -> None:
    archive, fpr = archive_fp
    lock = archive.resolve(Cache(tmp_path / "cache"))
    assert [s.signed_by for s in lock.suites] == [(fpr,)] * 3


def test_spec_keyring_paths(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys/a.gpg").write_bytes(b"x")
    spec = parse_spec('[model]\nuri = "m"\n[target]\nkeyring = "keys/a.gpg"\n', tmp_path / "lockbuild.toml")
    assert spec.keyrings == ((tmp_path / "keys/a.gpg").resolve(),)
    spec = parse_spec('[model]\nuri = "m"\n[target]\nkeyring = ["keys/a.gpg"]\n', tmp_path / "lockbuild.toml")
    assert len(spec.keyrings) == 1
    with pytest.raises(SpecError) as e:
        parse_spec('[model]\nuri = "m"\n[target]\nkeyring = "keys/missing.gpg"\n', tmp_path / "lockbuild.toml")
    assert "[target] keyring" in e.value.message and "missing.gpg" in e.value.message


@pytest.fixture
def archive_fp(server: tuple[Path, str], signer: Signer,  # noqa: F811
               request: pytest.FixtureRequest) -> tuple[Archive, str]:
    name = "fp-" + request.node.name.replace("[", "_").replace("]", "_")
    root = server[0] / name
    root.mkdir()
    a = Archive(root, f"{server[1]}/{name}", signer)
    a.add_suite("debian", "bookworm", [a.add_deb("debian", "hello", "1.0-1")])
    a.add_suite("debian", "bookworm-updates", [])
    a.add_suite("debian-security", "bookworm-security", [])
    listing = subprocess.run(["gpg", "--show-keys", "--with-colons", str(signer.keyring)],
                             capture_output=True, check=True).stdout.decode()
    return a, next(ln.split(":")[9] for ln in listing.splitlines() if ln.startswith("fpr:"))


# -- re-derivation from the locked InRelease files -----------------------------------------------
def _rederive(archive: Archive, lock: DebianLock, cache: Cache) -> DebianLock:
    return D.resolve_debian("bookworm", "amd64", list(lock.roots), cache, locked=lock, mirror=archive.mirror,
                            security_mirror=archive.security, keyring=archive.signer.keyring)


def test_rederive_debian_from_the_cache_after_the_archive_moved_on(archive_fp: tuple[Archive, str],
                                                                   tmp_path: Path) -> None:
    archive, _ = archive_fp
    cache = Cache(tmp_path / "cache")
    lock = archive.resolve(cache)
    shutil.rmtree(archive.root / "debian" / "dists")  # the mirror no longer serves that state
    assert _rederive(archive, lock, cache) == lock


def test_rederive_says_which_pinned_input_is_unavailable(archive_fp: tuple[Archive, str], tmp_path: Path) -> None:
    from lockbuild.errors import AuditUnavailable

    archive, _ = archive_fp
    cache = Cache(tmp_path / "cache")
    lock = archive.resolve(cache)
    # the InRelease is neither cached nor served any more
    archive.add_suite("debian", "bookworm", [archive.add_deb("debian", "hello", "2.0-1")])
    with pytest.raises(AuditUnavailable) as e:
        _rederive(archive, lock, Cache(tmp_path / "empty"))
    assert "bookworm: the InRelease the lock recorded" in e.value.message
    assert "tried: the cache; the live archive (serves another one now" in e.value.message
    assert e.value.hint and "snapshot.debian.org" in e.value.hint and e.value.exit_code == 18
    # the InRelease is cached but the Packages index it names is gone from cache and archive
    index = next(s for s in lock.suites if s.name == "bookworm")
    bare = Cache(tmp_path / "bare")
    bare.put_file(cache.path(index.inrelease_sha256))
    shutil.rmtree(archive.root / "debian" / "dists" / "bookworm" / "main")
    with pytest.raises(AuditUnavailable, match="Packages index the locked InRelease names is neither in the cache"):
        _rederive(archive, lock, bare)


def test_spec_keyring_is_used_by_lock(keys: dict[str, Key], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec whose keyring does not hold Debian's keys cannot lock the real archive."""
    from tests.lockbuild_testing import make_project, run_cli

    keys["other"] = k = Key(tmp_path / "other", "other <o@lockbuild.invalid>")
    project = make_project(tmp_path / "p", '[model]\nuri = "model"\n[target]\nkeyring = "keys/other.asc"\n')
    (project / "keys").mkdir()
    k.keyring(project / "keys" / "other.asc", armor=True)
    monkeypatch.setenv("LOCKBUILD_CACHE", str(tmp_path / "cache"))
    r = run_cli("lock", "--spec", str(project))
    assert r.code == 9, r.text
    assert "InRelease signature does not verify against" in r.text and "other.asc" in r.text
    assert not (project / "lockbuild.lock").exists()


def test_one_good_signature_among_worthless_ones_is_enough() -> None:
    """Debian signs with several keys; like apt, one good signature suffices when another key expired."""
    a, b = "A" * 40, "B" * 40
    status = [
        ["NEWSIG"], ["KEYEXPIRED", "1700000000"], ["EXPKEYSIG", a[-16:], "old", "key"],
        ["VALIDSIG", a, "2026-11-30", "1", "0", "4", "0", "22", "8", "01", a],
        ["NEWSIG"], ["GOODSIG", b[-16:], "new", "key"],
        ["VALIDSIG", b, "2026-11-30", "1", "0", "4", "0", "22", "8", "01", b],
        ["NEWSIG"], ["GOODSIG", "C" * 16, "sha1"],
        ["VALIDSIG", "C" * 40, "2026-11-30", "1", "0", "4", "0", "22", "2", "01", "C" * 40],
    ]
    good, refused = judge_signatures(status)
    assert good == [b]
    assert refused == [f"key {a}: made by an expired key (expired 2023-11-14 22:13 UTC)",
                       f"key {'C' * 40}: signature uses the weak digest SHA1"]


def test_rederive_reads_a_snapshot_archive_when_configured(archive_fp: tuple[Archive, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The live archive moved on and the cache is empty: LOCKBUILD_SNAPSHOT_URL (snapshot.debian.org's
    layout, /archive/<archive>/<timestamp>/dists/<suite>/) still has the pinned, signed state."""
    archive, _ = archive_fp
    lock = archive.resolve(Cache(tmp_path / "cache"))
    for s in lock.suites:
        src = archive.root / s.snapshot_archive / "dists" / s.name
        shutil.copytree(src, archive.root / "snap" / "archive" / s.snapshot_archive / s.snapshot / "dists" / s.name)
    for name in ("debian", "debian-security"):
        shutil.rmtree(archive.root / name / "dists")
    with pytest.raises(AuditUnavailable, match="tried: the cache; the live archive"):
        _rederive(archive, lock, Cache(tmp_path / "empty"))
    monkeypatch.setenv("LOCKBUILD_SNAPSHOT_URL", f"{archive.url}/snap/")
    assert _rederive(archive, lock, Cache(tmp_path / "empty2")) == lock


def test_kept_stanzas_rederive_alternatives_and_providers_offline(server: tuple[Path, str],  # noqa: F811
                                                                  signer: Signer, tmp_path: Path,  # noqa: F811
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """export_audit_inputs keeps, of an index too big to keep whole, every stanza the solver reads: both
    alternatives of a dependency, a virtual package's providers, and the same names in other suites;
    the closure re-derives from them alone, and an unrelated package is not kept."""
    from lockbuild.resolve import archive as A

    root = server[0] / "kept-stanzas"
    root.mkdir()
    a = Archive(root, f"{server[1]}/kept-stanzas", signer)
    a.add_suite("debian", "bookworm", [
        a.add_deb("debian", "hello", "1.0-1", Depends="libfoo (>= 1.0) | libbar, mail-transport-agent"),
        a.add_deb("debian", "libfoo", "1.0-1"),
        a.add_deb("debian", "libbar", "2.0-1"),
        a.add_deb("debian", "exim4", "4.96-1", Provides="mail-transport-agent", Priority="standard"),
        a.add_deb("debian", "postfix", "3.7-1", Provides="mail-transport-agent", Priority="optional"),
        a.add_deb("debian", "unrelated", "1.0-1"),
    ])
    a.add_suite("debian", "bookworm-updates", [])
    a.add_suite("debian-security", "bookworm-security", [a.add_deb("debian-security", "libfoo", "1.0-1+deb12u1")])
    cache = Cache(tmp_path / "cache")
    lock = a.resolve(cache)
    assert {d.name for d in lock.packages} == {"hello", "libfoo", "exim4"}
    monkeypatch.setattr(A, "KEEP_WHOLE_INDEX_MAX", 0)
    monkeypatch.setattr(D, "KEEP_WHOLE_INDEX_MAX", 0)
    kept = tmp_path / "lockbuild.lock.d" / "debian"
    D.export_audit_inputs(lock, "bookworm", "amd64", cache, kept, mirror=a.mirror, security_mirror=a.security,
                          keyring=a.signer.keyring)
    stanzas = [p for p in kept.iterdir() if p.name.endswith(".stanzas.json")]
    assert len(stanzas) == 3 and len([p for p in kept.iterdir() if p.suffix == ".InRelease"]) == 3
    docs = {d["suite"]: d for d in (json.loads(p.read_text()) for p in stanzas)}
    assert {e["Package"] for e in docs["bookworm"]["stanzas"]} == {"hello", "libfoo", "libbar", "exim4", "postfix"}
    assert [e["Version"] for e in docs["bookworm-security"]["stanzas"]] == ["1.0-1+deb12u1"]
    for name in ("debian", "debian-security"):
        shutil.rmtree(root / name / "dists")
    notes: list[str] = []
    again = D.resolve_debian("bookworm", "amd64", list(lock.roots), Cache(tmp_path / "empty"), locked=lock,
                             mirror=a.mirror, security_mirror=a.security, keyring=a.signer.keyring, kept=kept,
                             notes=notes)
    assert again == lock
    assert len(notes) == 3 and all("kept stanzas" in n for n in notes)
