"""Debian resolution: runtime table, closure logic, signed-suite verification, real bookworm.

Offline tests serve a hand-made archive (signed with a throwaway key) from 127.0.0.1; the
`network` tests resolve the real bookworm suites from deb.debian.org.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import lzma
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lockbuild.errors import IntegrityError, PythonVersionError, ResolveError
from lockbuild.fetch import download
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.debs import deb_items
from lockbuild.lockfile.model import DebianLock
from lockbuild.resolve import debian as D
from lockbuild.resolve.archive import DEFAULT_KEYRING, parse_packages
from lockbuild.resolve.closure import DEFAULT_EXCLUDE, Candidate, Closure, merge_suites
from lockbuild.resolve.runtime import (
    choose_suite,
    debian_arch,
    glibc_from_deb,
    python_version_from_deb,
    wheel_platform,
)
from tests.conftest_services import need_tool, unavailable

DATE = "Sat, 11 Jul 2026 10:16:37 UTC"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# -- runtime table ---------------------------------------------------------------------------
def test_choose_suite_table() -> None:
    assert choose_suite("3.11").codename == "bookworm"
    assert choose_suite("3.11.4").interpreter_package == "python3.11"
    assert choose_suite("3.9").codename == "bullseye"
    assert choose_suite("3.13").codename == "trixie"


def test_python_310_is_a_clear_error() -> None:
    with pytest.raises(PythonVersionError) as e:
        choose_suite("3.10.12")
    msg = str(e.value)
    assert "3.10.12" in msg and "3.9" in msg and "3.11" in msg and "3.13" in msg
    assert e.value.hint and '[target] python = "3.11"' in e.value.hint and "lockbuild.toml" in e.value.hint


def test_version_helpers() -> None:
    assert wheel_platform("2.36", "amd64") == "x86_64-manylinux_2_36"
    assert wheel_platform("2.36", "arm64") == "aarch64-manylinux_2_36"
    assert wheel_platform("2.41", "linux/arm64") == "aarch64-manylinux_2_41"
    assert python_version_from_deb("3.11.2-6+deb12u6") == "3.11.2"
    assert python_version_from_deb("3.13.5-2") == "3.13.5"
    assert glibc_from_deb("2.36-9+deb12u13") == "2.36"
    assert glibc_from_deb("1:2.41-12") == "2.41"
    assert debian_arch("linux/amd64") == "amd64"


def test_unknown_arch_and_suite(tmp_path: Path) -> None:
    with pytest.raises(ResolveError) as e:
        D.resolve_debian("bookworm", "linux/s390x", ["python3.11"], Cache(tmp_path))
    assert "linux/amd64" in (e.value.hint or "") and "linux/arm64" in (e.value.hint or "")
    with pytest.raises(ResolveError) as e:
        D.resolve_debian("sid", "amd64", ["python3.11"], Cache(tmp_path))
    assert "bookworm" in (e.value.hint or "")
    with pytest.raises(ResolveError):
        wheel_platform("2.36", "riscv64")


def test_default_roots() -> None:
    roots = D.default_roots("python3.11")
    assert roots[0] == "python3.11" and "ca-certificates" in roots and "libssl3" in roots
    assert "libssl1.1" in D.default_roots("python3.9")


# -- closure logic (hand-written indexes, no network) ----------------------------------------
def para(name: str, version: str = "1.0", **fields: str) -> str:
    lines = [f"Package: {name}", f"Version: {version}", "Architecture: amd64",
             f"Filename: pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb", "Size: 100",
             f"SHA256: {hashlib.sha256(f'{name}{version}'.encode()).hexdigest()}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def index(*paras: str) -> list[dict[str, str]]:
    return parse_packages("\n".join(paras).encode())


def close(roots: list[str], main: list[str], security: tuple[str, ...] = (),
          exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> dict[str, Candidate]:
    merged = merge_suites([("bookworm", index(*main)), ("bookworm-security", index(*security))])
    cl = Closure(merged, "amd64", ["bookworm", "bookworm-security"], exclude)
    for r in roots:
        cl.add_root(r)
    return {c.name: c for c in cl.run()}


def test_depends_and_predepends_not_recommends() -> None:
    got = close(["app"], [
        para("app", Pre_Depends="pre", Depends="lib (>= 1.0)", Recommends="rec", Suggests="sug"),
        para("pre"), para("lib", "1.2"), para("rec"), para("sug"),
    ])
    assert sorted(got) == ["app", "lib", "pre"]


def test_alternatives_first_satisfiable_prefers_selected() -> None:
    main = [para("app", Depends="missing | alt1 | alt2"), para("alt1"), para("alt2")]
    assert sorted(close(["app"], main)) == ["alt1", "app"]
    # alt2 already chosen by an earlier root: it satisfies "missing | alt1 | alt2"
    assert sorted(close(["alt2", "app"], main)) == ["alt2", "app"]
    # version constraints decide satisfiability of an alternative
    main = [para("app", Depends="alt1 (>= 2) | alt2"), para("alt1", "1.0"), para("alt2")]
    assert sorted(close(["app"], main)) == ["alt2", "app"]


@pytest.mark.parametrize("rel,ok", [
    ("lib (<< 2.0)", True), ("lib (<< 1.5)", False), ("lib (<= 1.5)", True), ("lib (= 1.5)", True),
    ("lib (= 1.5-1)", False), ("lib (>= 1.5)", True), ("lib (>= 1.5.1)", False), ("lib (>> 1.4~rc1)", True),
    ("lib (>> 1.5)", False), ("lib:any (>= 1.0)", True), ("lib:amd64", True),
])
def test_version_constraints(rel: str, ok: bool) -> None:
    main = [para("app", Depends=rel), para("lib", "1.5")]
    if ok:
        assert "lib" in close(["app"], main)
    else:
        with pytest.raises(ResolveError) as e:
            close(["app"], main)
        assert "lib 1.5 (bookworm)" in e.value.message
        assert "roots -> app -> " in (e.value.hint or "")


def test_foreign_arch_qualifier_falls_through() -> None:
    got = close(["app"], [para("app", Depends="lib:i386 | lib2"), para("lib"), para("lib2")])
    assert sorted(got) == ["app", "lib2"]


def test_virtual_packages_and_versioned_provides() -> None:
    main = [
        para("app", Depends="mta, abi (>= 2)"),
        para("exim", Provides="mta", Priority="optional"),
        para("postfix", Provides="mta", Priority="important"),
        para("abi-old", Provides="abi"),  # unversioned Provides never satisfies a versioned dependency
        para("abi-new", Provides="abi (= 2.1)"),
    ]
    got = close(["app"], main)
    assert sorted(got) == ["abi-new", "app", "postfix"]
    # a provider selected earlier wins over the priority choice
    assert sorted(close(["exim", "app"], main)) == ["abi-new", "app", "exim"]


def test_unknown_package_names_who_wanted_it() -> None:
    with pytest.raises(ResolveError) as e:
        close(["app"], [para("app", Depends="mid"), para("mid", Depends="libfoo")])
    assert "libfoo (wanted by mid)" in e.value.message
    assert "roots -> app -> mid -> libfoo" in (e.value.hint or "")


def test_unsatisfiable_version_shows_chain() -> None:
    with pytest.raises(ResolveError) as e:
        close(["app"], [para("app", Depends="mid"), para("mid", Depends="libc6 (>= 2.38)"),
                        para("libc6", "2.36-9")])
    assert "libc6 (>= 2.38)" in e.value.message and "2.36-9" in e.value.message
    assert "roots -> app -> mid -> libc6 (>= 2.38)" in (e.value.hint or "")


def test_highest_version_across_suites_wins() -> None:
    main = [para("app", Depends="lib"), para("lib", "1.0-1"), para("same", "2.0")]
    security = (para("lib", "1.0-1+deb12u1"), para("same", "2.0"), para("old", "0.1"))
    got = close(["app", "same"], main, security)
    assert got["lib"].version == "1.0-1+deb12u1" and got["lib"].suite == "bookworm-security"
    assert got["same"].suite == "bookworm"  # equal versions stay with the base suite


def test_maintainer_script_exclusions() -> None:
    main = [para("ca-certificates", Depends="openssl, debconf (>= 0.5) | debconf-2.0"), para("openssl"),
            para("debconf", Provides="debconf-2.0"), para("rl", Depends="dpkg (>= 1.15) | install-info"),
            para("dpkg", Depends="tar")]
    assert sorted(close(["ca-certificates", "rl"], main)) == ["ca-certificates", "openssl", "rl"]
    assert "debconf" in close(["debconf"], main)  # an explicit root is never excluded
    assert "debconf" in close(["ca-certificates"], main, exclude=())


def test_conflicts_between_selected_packages() -> None:
    with pytest.raises(ResolveError) as e:
        close(["a", "b"], [para("a", Conflicts="b (<< 2)"), para("b", "1.0")])
    assert "conflicts" in e.value.message
    assert sorted(close(["a", "b"], [para("a", Breaks="b (<< 1.0)"), para("b", "1.0")])) == ["a", "b"]


def test_closure_is_deterministic() -> None:
    main = [para("app", Depends="b | c, d"), para("b", Depends="e"), para("c"), para("d", Depends="e"),
            para("e")]
    first = [(c.name, c.version, c.suite) for c in close(["app"], main).values()]
    for _ in range(3):
        assert [(c.name, c.version, c.suite) for c in close(["app"], list(reversed(main))).values()] == first


# -- a signed archive on 127.0.0.1 ----------------------------------------------------------
@dataclass(frozen=True)
class Signer:
    keyring: Path
    sign: Callable[[bytes], bytes]


@pytest.fixture(scope="session")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    need_tool("gpg", "gpgv")
    home = tmp_path_factory.mktemp("gnupg")
    os.chmod(home, 0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                    "lockbuild test <test@lockbuild.invalid>", "ed25519", "sign", "never"],
                   env=env, check=True, capture_output=True)
    keyring = home / "test-keyring.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--export"], env=env, check=True, capture_output=True).stdout)

    def sign(text: bytes) -> bytes:
        return subprocess.run(["gpg", "--batch", "--clearsign"], input=text, env=env, check=True,
                              capture_output=True).stdout

    yield Signer(keyring, sign)
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("archive")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def build_deb(work: Path, name: str, version: str) -> bytes:
    """A tiny real .deb built with dpkg-deb."""
    tree = work / f"{name}_{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@t.invalid>\n"
        f"Description: test package {name}\n")
    (tree / "usr/share/doc" / name).mkdir(parents=True)
    (tree / "usr/share/doc" / name / "copyright").write_text(f"{name}: public domain\n")
    out = work / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    return out.read_bytes()


@dataclass
class Archive:
    root: Path  # local directory served at url
    url: str
    signer: Signer

    @property
    def mirror(self) -> str:
        return f"{self.url}/debian"

    @property
    def security(self) -> str:
        return f"{self.url}/debian-security"

    def add_deb(self, archive: str, name: str, version: str, **fields: str) -> str:
        """Put a real .deb into the pool; return its Packages paragraph."""
        data = build_deb(self.root / "build", name, version)
        filename = f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb"
        (self.root / archive / filename).parent.mkdir(parents=True, exist_ok=True)
        (self.root / archive / filename).write_bytes(data)
        lines = [f"Package: {name}", f"Version: {version}", "Architecture: amd64", f"Filename: {filename}",
                 f"Size: {len(data)}", f"SHA256: {hashlib.sha256(data).hexdigest()}"]
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
        return "\n".join(lines) + "\n"

    def add_suite(self, archive: str, suite: str, paras: list[str], *, codename: str | None = None,
                  extra: str = "", by_hash: bool = False) -> Path:
        dists = self.root / archive / "dists" / suite
        (dists / "main/binary-amd64").mkdir(parents=True, exist_ok=True)
        xz = lzma.compress("\n".join(paras).encode())
        digest = hashlib.sha256(xz).hexdigest()
        (dists / "main/binary-amd64/Packages.xz").write_bytes(xz)
        if by_hash:
            (dists / "main/binary-amd64/by-hash/SHA256").mkdir(parents=True)
            (dists / "main/binary-amd64/by-hash/SHA256" / digest).write_bytes(xz)
        release = (f"Origin: lockbuild-test\nCodename: {codename or suite}\nDate: {DATE}\n{extra}"
                   f"Acquire-By-Hash: {'yes' if by_hash else 'no'}\nArchitectures: amd64\nComponents: main\n"
                   f"SHA256:\n {digest} {len(xz):>8} main/binary-amd64/Packages.xz\n")
        (dists / "InRelease").write_bytes(self.signer.sign(release.encode()))
        return dists

    def resolve(self, cache: Cache, roots: list[str] | None = None, **kw: object) -> DebianLock:
        kw.setdefault("keyring", self.signer.keyring)
        return D.resolve_debian("bookworm", "amd64", roots or ["hello"], cache, mirror=self.mirror,
                                security_mirror=self.security, **kw)  # type: ignore[arg-type]


@pytest.fixture
def archive(server: tuple[Path, str], signer: Signer, request: pytest.FixtureRequest) -> Archive:
    """bookworm: hello -> libfoo | libbar; bookworm-security: libfoo 1.0-1+deb12u1."""
    root = server[0] / request.node.name.replace("[", "_").replace("]", "_")
    root.mkdir()
    a = Archive(root, f"{server[1]}/{root.name}", signer)
    a.add_suite("debian", "bookworm", [
        a.add_deb("debian", "hello", "1.0-1", Depends="libfoo (>= 1.0) | libbar"),
        a.add_deb("debian", "libfoo", "1.0-1"),
        a.add_deb("debian", "libbar", "2.0-1"),
    ], by_hash=True)
    a.add_suite("debian", "bookworm-updates", [])
    a.add_suite("debian-security", "bookworm-security",
                [a.add_deb("debian-security", "libfoo", "1.0-1+deb12u1")])
    return a


def test_resolve_signed_local_archive(archive: Archive, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    lines: list[str] = []
    lock = archive.resolve(cache, progress=lines.append)
    assert [(d.name, d.version, d.suite) for d in lock.packages] == [
        ("hello", "1.0-1", "bookworm"), ("libfoo", "1.0-1+deb12u1", "bookworm-security")]
    assert lock.roots == ("hello",)
    s = {x.name: x for x in lock.suites}
    assert list(s) == ["bookworm", "bookworm-updates", "bookworm-security"]
    assert s["bookworm"].date == DATE and s["bookworm"].snapshot == "20260711T101637Z"
    assert s["bookworm-security"].archive == archive.security
    assert s["bookworm-security"].snapshot_archive == "debian-security"
    served = (archive.root / "debian/dists/bookworm/InRelease").read_bytes()
    assert s["bookworm"].inrelease_sha256 == "sha256:" + hashlib.sha256(served).hexdigest()
    assert cache.get(s["bookworm"].inrelease_sha256) is not None  # kept for later audits
    libfoo = lock.packages[1]
    assert libfoo.source == "libfoo" and DIGEST.match(libfoo.sha256) and libfoo.filename.startswith("pool/")
    assert len(lines) == 4 and "InRelease verified" in lines[0]

    items = deb_items(lock)
    assert items[1].urls == (
        f"{archive.security}/{libfoo.filename}",
        f"https://snapshot.debian.org/archive/debian-security/20260711T101637Z/{libfoo.filename}")
    assert items[1].sha256 == libfoo.sha256 and items[1].size == libfoo.size
    assert items[1].label == "deb libfoo_1.0-1+deb12u1"


def test_second_lock_refetches_only_inrelease(archive: Archive, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path / "cache")
    first = archive.resolve(cache)
    fetched: list[str] = []
    real = download.fetch_bytes

    def spy(url: str, **kw: object) -> bytes:
        fetched.append(url)
        return real(url, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(download, "fetch_bytes", spy)
    assert archive.resolve(cache) == first
    assert fetched and all(u.endswith("/InRelease") for u in fetched)


def test_unchanged_signed_indexes_reuse_the_closure_and_a_damaged_record_is_ignored(
        archive: Archive, tmp_path: Path) -> None:
    """The closure is memoised by the verified InRelease + Packages pins, roots, arch and solver source
    (a warm `lock --upgrade` on an unchanged archive): the same DebianLock, and a damaged record is
    resolved again, never trusted."""
    cache = Cache(tmp_path / "cache")
    first = archive.resolve(cache)
    lines: list[str] = []
    assert archive.resolve(cache, progress=lines.append) == first
    assert lines == ["debian closure: 2 packages (the same signed indexes and roots as before)"]
    for rec in (cache.root / "meta" / "debian-closure").iterdir():
        blob = cache.path("sha256:" + __import__("json").loads(rec.read_text())["blob"])
        blob.chmod(0o644)
        blob.write_bytes(blob.read_bytes().replace(b"hello", b"hellp"))
    lines.clear()
    assert archive.resolve(cache, progress=lines.append) == first
    assert any("InRelease verified" in ln for ln in lines)  # resolved again
    other = archive.resolve(cache, roots=["libfoo"])
    assert [d.name for d in other.packages] == ["libfoo"]


def test_tampered_inrelease_is_rejected(archive: Archive, tmp_path: Path) -> None:
    path = archive.root / "debian/dists/bookworm/InRelease"
    data = path.read_bytes()
    i = data.index(b"Origin: lockbuild-test") + len(b"Origin: ")
    tampered = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]  # flip a bit of the signed text
    path.write_bytes(tampered)
    cache = Cache(tmp_path / "cache")
    with pytest.raises(IntegrityError) as e:
        archive.resolve(cache)
    assert "bookworm: InRelease signature does not verify" in e.value.message and "BADSIG" in e.value.message
    assert cache.get("sha256:" + hashlib.sha256(tampered).hexdigest()) is None


def test_unknown_signing_key_is_rejected(archive: Archive, tmp_path: Path) -> None:
    if not DEFAULT_KEYRING.is_file():
        unavailable("debian-archive-keyring not installed: run scripts/install-deps.sh")
    with pytest.raises(IntegrityError, match="signature does not verify"):
        archive.resolve(Cache(tmp_path / "cache"), keyring=DEFAULT_KEYRING)


def test_unsigned_release_is_rejected(archive: Archive, tmp_path: Path) -> None:
    path = archive.root / "debian/dists/bookworm-updates/InRelease"
    text = path.read_bytes().split(b"\n\n", 1)[1].split(b"-----BEGIN PGP SIGNATURE", 1)[0]
    path.write_bytes(text)
    with pytest.raises(IntegrityError, match="not a clear-signed"):
        archive.resolve(Cache(tmp_path / "cache"))


def test_signed_release_for_another_suite_is_rejected(archive: Archive, tmp_path: Path) -> None:
    archive.add_suite("debian", "bookworm-updates", [], codename="bookworm")  # replayed base Release
    with pytest.raises(IntegrityError, match="is for 'bookworm', not 'bookworm-updates'"):
        archive.resolve(Cache(tmp_path / "cache"))


def test_expired_release_is_rejected(archive: Archive, tmp_path: Path) -> None:
    archive.add_suite("debian-security", "bookworm-security", [],
                      extra="Valid-Until: Mon, 01 Jan 2001 00:00:00 UTC\n")
    with pytest.raises(IntegrityError, match="expired"):
        archive.resolve(Cache(tmp_path / "cache"))


def test_tampered_packages_index_is_rejected(archive: Archive, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    path = archive.root / "debian-security/dists/bookworm-security/main/binary-amd64/Packages.xz"
    good = path.read_bytes()
    evil = lzma.compress(lzma.decompress(good).replace(b"Package: libfoo", b"Package: libevil"))
    path.write_bytes(evil)
    with pytest.raises(IntegrityError) as e:
        archive.resolve(cache)
    assert "bookworm-security" in e.value.message and "does not match the signed Release" in e.value.message
    assert cache.get("sha256:" + hashlib.sha256(evil).hexdigest()) is None
    assert cache.get("sha256:" + hashlib.sha256(good).hexdigest()) is None


def test_tampered_by_hash_index_is_rejected(archive: Archive, tmp_path: Path) -> None:
    by_hash = next((archive.root / "debian/dists/bookworm/main/binary-amd64/by-hash/SHA256").iterdir())
    by_hash.write_bytes(by_hash.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="by-hash"):
        archive.resolve(Cache(tmp_path / "cache"))


def test_tampered_deb_is_rejected_and_not_cached(archive: Archive, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    lock = archive.resolve(cache)
    hello = lock.packages[0]
    served = archive.root / "debian" / hello.filename
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    served.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="deb hello_1.0-1"):
        download.fetch_all(cache, deb_items(lock)[:1])
    assert cache.get(hello.sha256) is None
    assert not list(cache.tmpdir().glob(f"{hello.sha256.removeprefix('sha256:')}*"))


def test_locked_debs_download_through_the_cache(archive: Archive, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    lock = archive.resolve(cache)
    paths = download.fetch_all(cache, deb_items(lock))
    for d in lock.packages:
        assert "sha256:" + hashlib.sha256(paths[d.sha256].read_bytes()).hexdigest() == d.sha256


# -- the real bookworm archive --------------------------------------------------------------
@pytest.fixture(scope="session")
def net_cache() -> Cache:
    env = os.environ.get("LOCKBUILD_CACHE")
    return Cache(Path(env) if env else Path("/tmp/lockbuild-test-cache"))


@pytest.mark.network
def test_bookworm_default_closure(net_cache: Cache, capsys: pytest.CaptureFixture[str]) -> None:
    roots = D.default_roots("python3.11")
    t0 = time.monotonic()
    lock = D.resolve_debian("bookworm", "amd64", roots, net_cache, progress=print)
    t1 = time.monotonic()
    again = D.resolve_debian("bookworm", "amd64", roots, net_cache)
    t2 = time.monotonic()
    assert again == lock  # same indexes -> identical lock
    assert t2 - t1 < 15  # warm: InRelease refetched, indexes from the cache

    pkgs = {d.name: d for d in lock.packages}
    assert [d.name for d in lock.packages] == sorted(pkgs)
    assert re.match(r"^3\.11\.\d+-", pkgs["python3.11"].version)
    assert pkgs["libc6"].version.startswith("2.36-")
    assert {"libpython3.11-stdlib", "libssl3", "libstdc++6", "ca-certificates", "openssl", "tzdata",
            "base-files"} <= set(pkgs)
    assert not {"debconf", "dpkg", "perl-base", "tar"} & set(pkgs)
    for d in lock.packages:
        assert DIGEST.match(d.sha256), d
        assert d.size > 0 and d.filename.startswith("pool/") and d.architecture in ("amd64", "all")
        assert d.suite in ("bookworm", "bookworm-updates", "bookworm-security")
    assert [s.name for s in lock.suites] == ["bookworm", "bookworm-updates", "bookworm-security"]
    assert all(re.fullmatch(r"\d{8}T\d{6}Z", s.snapshot) for s in lock.suites)
    assert 20 < len(lock.packages) < 80
    with capsys.disabled():
        print(f"\n  bookworm closure: {len(lock.packages)} packages, "
              f"{sum(d.size for d in lock.packages) / 1e6:.1f} MB of .debs; resolve {t1 - t0:.1f} s, "
              f"warm {t2 - t1:.1f} s")
