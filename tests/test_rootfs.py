"""Rootfs assembly: hand-built .debs (offline: paths, merged-/usr, metadata, safety) and the
real bookworm closure (network: it runs Python in a chroot, as root and as uid 65532)."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lockbuild.assemble.paths import member_path
from lockbuild.assemble.rootfs import assemble_rootfs
from lockbuild.errors import BuildError
from lockbuild.fetch import download
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.debs import deb_items
from lockbuild.lockfile.model import Deb, DebianLock
from lockbuild.resolve import debian as D
from tests.conftest_services import need_root, need_tool, unavailable


# -- hand-built .debs ------------------------------------------------------------------------
@dataclass(frozen=True)
class E:
    """One data.tar entry: kind is file, dir, sym or link (hard link)."""

    kind: str
    path: str
    data: bytes = b""
    mode: int = 0o644
    target: str = ""


def _tar_xz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return lzma.compress(buf.getvalue())


def _info(name: str, kind: str, size: int = 0, mode: int = 0o644, target: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
               "link": tarfile.LNKTYPE}[kind]
    ti.size, ti.mode, ti.linkname = size, mode, target
    return ti


def ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_deb(where: Path, name: str, entries: list[E], *, version: str = "1.0", arch: str = "amd64",
             md5sums: bool = True) -> tuple[Deb, Path]:
    """A .deb built by hand (so members dpkg-deb would refuse, like '../x', are possible)."""
    data = []
    for e in entries:
        size = len(e.data) if e.kind == "file" else 0
        data.append((_info(e.path, e.kind, size, e.mode, e.target), e.data if e.kind == "file" else None))
    control = (f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: t <t@t.invalid>\n"
               f"Description: test {name}\n multi-line\n").encode()
    ctl = [(_info("./", "dir", mode=0o755), None), (_info("./control", "file", len(control)), control)]
    if md5sums:
        sums = "".join(f"{hashlib.md5(e.data).hexdigest()}  {e.path.removeprefix('./')}\n"
                       for e in entries if e.kind == "file").encode()
        ctl.append((_info("./md5sums", "file", len(sums)), sums))
    blob = ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz(ctl)), ("data.tar.xz", _tar_xz(data))])
    path = where / f"{name}_{version}_{arch}.deb"
    path.write_bytes(blob)
    deb = Deb(name=name, version=version, architecture=arch, suite="bookworm",
              filename=f"pool/main/{name[0]}/{name}/{path.name}", size=len(blob),
              sha256="sha256:" + hashlib.sha256(blob).hexdigest(), source=name)
    return deb, path


def manifest(root: Path) -> list[tuple[str, ...]]:
    """Every entry of a tree: path, type, mode, content hash or link target (byte-sorted)."""
    out: list[tuple[str, ...]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "l", os.readlink(p)))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, "d", oct(st.st_mode)))
            else:
                out.append((rel, "f", oct(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest()))
    return sorted(out, key=lambda t: t[0].encode())


TOOL = b"#!/bin/sh\necho tool\n"


@pytest.fixture
def fake_debs(tmp_path: Path) -> list[tuple[Deb, Path]]:
    src = tmp_path / "debs"
    src.mkdir()
    return [
        make_deb(src, "tool", [
            E("dir", "./"), E("dir", "./bin"), E("file", "./bin/tool", TOOL, 0o4755),
            E("sym", "./bin/tool2", target="tool"),
            E("dir", "./usr/bin"), E("link", "./usr/bin/tool-hardlink", target="./bin/tool"),
            E("dir", "./etc"), E("file", "./etc/tool.conf", b"x=1\n", 0o600),
            E("dir", "./usr/share/doc/tool"), E("file", "./usr/share/doc/tool/copyright", b"GPL\n"),
            E("file", "./usr/share/doc/tool/changelog.Debian.gz", b"zz"),
            E("file", "./usr/share/man/man1/tool.1.gz", b"zz"),
            E("file", "./usr/share/locale/de/LC_MESSAGES/tool.mo", b"mo"),
            E("file", "./usr/share/lintian/overrides/tool", b"lint"),
            E("link", "./usr/share/tool-data", target="./usr/share/doc/tool/changelog.Debian.gz"),
        ]),
        make_deb(src, "python3.11", [E("file", "./usr/bin/python3.11", b"\x7fELF fake", 0o755)]),
        make_deb(src, "ca-certificates", [
            E("file", "./usr/share/ca-certificates/mozilla/B.crt", b"-----B-----\n"),
            E("file", "./usr/share/ca-certificates/mozilla/A.crt", b"-----A-----"),  # no final newline
            E("file", "./usr/share/ca-certificates/extra/Z.crt", b"-----Z-----\n"),
        ], arch="all"),
        make_deb(src, "libdoc", [E("sym", "./usr/share/doc/libdoc", target="tool")], md5sums=False),
    ]


def test_member_paths() -> None:
    assert member_path("./bin/ls", "p") == "usr/bin/ls"
    assert member_path("./lib64/ld-linux-x86-64.so.2", "p") == "usr/lib64/ld-linux-x86-64.so.2"
    assert member_path("./usr/lib/x", "p") == "usr/lib/x"
    assert member_path("./", "p") is None
    assert member_path("./libexec/x", "p") == "libexec/x"
    for bad in ("/etc/passwd", "./../etc/passwd", "./usr/../../x", "usr/lib/.."):
        with pytest.raises(BuildError):
            member_path(bad, "p")


def test_fake_rootfs_layout(fake_debs: list[tuple[Deb, Path]], tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    warnings = assemble_rootfs(fake_debs, dest)
    assert any("ldconfig" in w for w in warnings)  # no libc-bin in this set
    for top in ("bin", "sbin", "lib", "lib64"):
        assert os.readlink(dest / top) == f"usr/{top}"
    tool = dest / "usr/bin/tool"
    assert tool.read_bytes() == TOOL and stat.S_IMODE(tool.lstat().st_mode) == 0o755  # setuid dropped
    assert os.readlink(dest / "usr/bin/tool2") == "tool"
    hard = dest / "usr/bin/tool-hardlink"
    assert hard.read_bytes() == TOOL and hard.stat().st_nlink == 1 and tool.stat().st_nlink == 1
    assert (dest / "usr/share/tool-data").read_bytes() == b"zz"  # hard link to a dropped file: a copy
    assert stat.S_IMODE((dest / "etc/tool.conf").stat().st_mode) == 0o644
    assert (dest / "usr/share/doc/tool/copyright").read_bytes() == b"GPL\n"
    assert os.readlink(dest / "usr/share/doc/libdoc") == "tool"
    for gone in ("usr/share/doc/tool/changelog.Debian.gz", "usr/share/man", "usr/share/locale",
                 "usr/share/lintian"):
        assert not os.path.lexists(dest / gone), gone

    status = dest / "var/lib/dpkg/status.d"
    assert sorted(p.name for p in status.iterdir()) == [
        "ca-certificates", "ca-certificates.md5sums", "libdoc", "python3.11", "python3.11.md5sums",
        "tool", "tool.md5sums"]
    text = (status / "tool").read_text()
    assert text.startswith("Package: tool\nStatus: install ok installed\nVersion: 1.0\n")
    assert "Description: test tool\n multi-line\n" in text
    sums = (status / "tool.md5sums").read_text().splitlines()
    assert f"{hashlib.md5(TOOL).hexdigest()}  usr/bin/tool" in sums
    assert not any("changelog" in s or "man1" in s or "/locale/" in s for s in sums)
    assert all((dest / s.split("  ", 1)[1]).is_file() for s in sums)

    assert (dest / "etc/passwd").read_text().splitlines()[-1] == \
        "nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin"
    assert "nonroot:x:65532:" in (dest / "etc/group").read_text()
    for d in ("tmp", "home/nonroot"):
        assert stat.S_IMODE((dest / d).stat().st_mode) == 0o1777
    assert (dest / "etc/ssl/certs/ca-certificates.crt").read_bytes() == \
        b"-----Z-----\n-----A-----\n-----B-----\n"  # byte-sorted paths: extra/ before mozilla/
    assert os.readlink(dest / "usr/bin/python3") == "python3.11"
    assert not (dest / "etc/os-release").exists()  # no base-files: not invented


def test_merged_usr_links_shipped_by_base_files(tmp_path: Path) -> None:
    """trixie's base-files ships ./bin -> usr/bin itself; arm64 gets a shipped lib64 link too."""
    debs = [make_deb(tmp_path, "base-files", [E("sym", "./bin", target="usr/bin"),
                                              E("sym", "./lib64", target="usr/lib64"),
                                              E("dir", "./usr/bin"), E("file", "./usr/bin/x", b"x", 0o755)],
                     arch="arm64")]
    assemble_rootfs(debs, tmp_path / "r")
    assert os.readlink(tmp_path / "r/bin") == "usr/bin" and os.readlink(tmp_path / "r/lib64") == "usr/lib64"
    assert (tmp_path / "r/bin/x").is_file()


def test_openssl_cafile_link(tmp_path: Path) -> None:
    """bullseye's openssl ships no /usr/lib/ssl/cert.pem: point it at the bundle like bookworm's does."""
    debs = [make_deb(tmp_path, "openssl", [E("dir", "./usr/lib/ssl/certs")]),
            make_deb(tmp_path, "ca-certificates", [E("file", "./usr/share/ca-certificates/a/x.crt", b"x\n")])]
    assemble_rootfs(debs, tmp_path / "r")
    assert os.readlink(tmp_path / "r/usr/lib/ssl/cert.pem") == "/etc/ssl/certs/ca-certificates.crt"


def test_fake_rootfs_is_deterministic(fake_debs: list[tuple[Deb, Path]], tmp_path: Path) -> None:
    assemble_rootfs(fake_debs, tmp_path / "a")
    assemble_rootfs(list(reversed(fake_debs)), tmp_path / "b")
    assert manifest(tmp_path / "a") == manifest(tmp_path / "b")


def test_custom_user_and_arm64(tmp_path: Path) -> None:
    debs = [make_deb(tmp_path, "x", [E("file", "./lib64/y", b"y")], arch="arm64")]
    assemble_rootfs(debs, tmp_path / "r", uid=1000, user="app")
    assert not os.path.lexists(tmp_path / "r/lib64")  # lib64 -> usr/lib64 only on amd64
    assert (tmp_path / "r/usr/lib64/y").is_file()
    assert "app:x:1000:1000:app:/home/app:" in (tmp_path / "r/etc/passwd").read_text()


@pytest.mark.parametrize("member", ["./../escape", "./usr/../../escape", "/etc/escape"])
def test_unsafe_member_path_is_rejected(tmp_path: Path, member: str) -> None:
    debs = [make_deb(tmp_path, "evil", [E("file", "./usr/ok", b"ok"), E("file", member, b"pwned")])]
    with pytest.raises(BuildError) as e:
        assemble_rootfs(debs, tmp_path / "rootfs")
    assert "evil" in e.value.message and member in e.value.message
    assert not (tmp_path / "escape").exists()


def test_no_write_through_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    debs = [
        make_deb(tmp_path, "a-link", [E("sym", "./usr/lib/plugins", target=str(outside))]),
        make_deb(tmp_path, "b-payload", [E("file", "./usr/lib/plugins/evil.so", b"pwned")]),
    ]
    with pytest.raises(BuildError) as e:
        assemble_rootfs(debs, tmp_path / "rootfs")
    assert "b-payload" in e.value.message and "usr/lib/plugins/evil.so" in e.value.message
    assert "symlink /usr/lib/plugins (a-link)" in e.value.message
    assert list(outside.iterdir()) == []


def test_file_over_symlink_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "victim"
    outside.write_text("safe")
    debs = [make_deb(tmp_path, "a", [E("sym", "./etc/x", target=str(outside))]),
            make_deb(tmp_path, "b", [E("file", "./etc/x", b"pwned")])]
    with pytest.raises(BuildError, match="already written by a"):
        assemble_rootfs(debs, tmp_path / "rootfs")
    assert outside.read_text() == "safe"


def test_conflicting_files(tmp_path: Path) -> None:
    same = [make_deb(tmp_path, n, [E("file", "./usr/share/common/x", b"same")]) for n in ("p", "q")]
    assemble_rootfs(same, tmp_path / "ok")  # identical content in two packages is fine
    debs = [make_deb(tmp_path, "p2", [E("file", "./bin/x", b"one")]),
            make_deb(tmp_path, "q2", [E("file", "./usr/bin/x", b"two")])]  # same path after usrmerge
    with pytest.raises(BuildError, match=r"q2: /usr/bin/x .*already written by p2"):
        assemble_rootfs(debs, tmp_path / "bad")


def test_refuses_non_empty_dest_and_mixed_arches(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x").write_text("x")
    debs = [make_deb(tmp_path, "x", [E("file", "./usr/x", b"x")])]
    with pytest.raises(BuildError, match="not empty"):
        assemble_rootfs(debs, tmp_path / "full")
    debs.append(make_deb(tmp_path, "y", [E("file", "./usr/y", b"y")], arch="arm64"))
    with pytest.raises(BuildError, match="one architecture"):
        assemble_rootfs(debs, tmp_path / "mixed")


def test_corrupt_deb(tmp_path: Path) -> None:
    deb, path = make_deb(tmp_path, "x", [E("file", "./usr/x", b"x")])
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BuildError, match="x_1.0"):
        assemble_rootfs([(deb, path)], tmp_path / "r")


# -- the real bookworm closure ---------------------------------------------------------------
@dataclass
class Built:
    lock: DebianLock
    debs: list[tuple[Deb, Path]]
    dest: Path
    warnings: list[str]
    seconds: float


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> Built:
    env = os.environ.get("LOCKBUILD_CACHE")
    cache = Cache(Path(env) if env else Path("/tmp/lockbuild-test-cache"))
    lock = D.resolve_debian("bookworm", "amd64", D.default_roots("python3.11"), cache)
    paths = download.fetch_all(cache, deb_items(lock), jobs=4)
    debs = [(d, paths[d.sha256]) for d in lock.packages]
    dest = tmp_path_factory.mktemp("bookworm") / "rootfs"
    t0 = time.monotonic()
    warnings = assemble_rootfs(debs, dest)
    return Built(lock, debs, dest, warnings, time.monotonic() - t0)


def _size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.network
def test_bookworm_rootfs(bookworm: Built, capsys: pytest.CaptureFixture[str]) -> None:
    dest = bookworm.dest
    assert bookworm.warnings == []
    assert (dest / "usr/bin/python3.11").is_file() and os.readlink(dest / "usr/bin/python3") == "python3.11"
    assert os.readlink(dest / "bin") == "usr/bin" and os.readlink(dest / "lib64") == "usr/lib64"
    assert (dest / "lib64/ld-linux-x86-64.so.2").exists()
    status = dest / "var/lib/dpkg/status.d"
    for d in bookworm.lock.packages:
        text = (status / d.name).read_text()
        assert f"Package: {d.name}\nStatus: install ok installed\n" in text
        assert f"\nVersion: {d.version}\n" in text
    assert (dest / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 100_000
    assert os.path.realpath(dest / "usr/lib/ssl/cert.pem").endswith("/etc/ssl/certs/ca-certificates.crt")
    assert (dest / "etc/ld.so.cache").stat().st_size > 0
    assert not (dest / "var/cache/ldconfig/aux-cache").exists()
    assert "ID=debian" in (dest / "etc/os-release").read_text()
    assert (dest / "usr/share/zoneinfo/Europe/Paris").is_file() and (dest / "etc/services").is_file()
    assert not list((dest / "usr/share/doc").glob("*/changelog*"))
    with capsys.disabled():
        print(f"\n  bookworm rootfs: {len(bookworm.debs)} packages, "
              f"{sum(d.size for d, _ in bookworm.debs) / 1e6:.1f} MB .debs -> {_size(dest) / 1e6:.1f} MB "
              f"unpacked, assembled in {bookworm.seconds:.1f} s")


@pytest.mark.network
def test_bookworm_md5sums_match_the_tree(bookworm: Built) -> None:
    checked = 0
    for sums in (bookworm.dest / "var/lib/dpkg/status.d").glob("*.md5sums"):
        for line in sums.read_text().splitlines():
            digest, path = line.split("  ", 1)
            assert hashlib.md5((bookworm.dest / path).read_bytes()).hexdigest() == digest, path
            checked += 1
    assert checked > 1000


@pytest.mark.network
def test_bookworm_rootfs_is_reproducible(bookworm: Built, tmp_path: Path) -> None:
    again = tmp_path / "rootfs"
    assemble_rootfs(list(reversed(bookworm.debs)), again)
    assert (again / "etc/ld.so.cache").read_bytes() == (bookworm.dest / "etc/ld.so.cache").read_bytes()
    assert manifest(again) == manifest(bookworm.dest)


@pytest.fixture
def chroot_dev_null(bookworm: Built) -> Iterator[Path]:
    """A /dev/null inside the rootfs for the test (a container runtime mounts /dev)."""
    need_root("chroot")
    need_tool("chroot")
    node = bookworm.dest / "dev/null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(node, 0o666)
    try:
        yield bookworm.dest
    finally:
        node.unlink()


PROBE = """
import ctypes.util, json, os, pwd, sqlite3, ssl, tempfile, zoneinfo, datetime
ctx = ssl.create_default_context()
with tempfile.NamedTemporaryFile(dir=os.environ.get("PROBE_DIR", "/tmp")) as f:
    f.write(b"ok")
print(json.dumps({
    "ssl": ctypes.util.find_library("ssl"), "stdcxx": ctypes.util.find_library("stdc++"),
    "gomp": ctypes.util.find_library("gomp"), "cas": ctx.cert_store_stats()["x509_ca"],
    "tz": str(datetime.datetime(2026, 7, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")).utcoffset()),
    "sqlite": sqlite3.sqlite_version, "uid": os.getuid(), "user": pwd.getpwuid(os.getuid()).pw_name,
}))
"""


def _probe(dest: Path, *chroot_args: str, env: dict[str, str] | None = None) -> dict:
    import json

    cmd = [shutil.which("chroot") or "chroot", *chroot_args, str(dest), "/usr/bin/python3", "-c", PROBE]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={"LC_ALL": "C.UTF-8", **(env or {})},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.network
def test_bookworm_python_runs_in_chroot(chroot_dev_null: Path) -> None:
    got = _probe(chroot_dev_null)
    assert got["ssl"] == "libssl.so.3" and got["stdcxx"] == "libstdc++.so.6" and got["gomp"] == "libgomp.so.1"
    assert got["cas"] > 100 and got["tz"] == "2:00:00" and got["uid"] == 0 and got["user"] == "root"


@pytest.mark.network
def test_bookworm_python_runs_as_nonroot(chroot_dev_null: Path) -> None:
    got = _probe(chroot_dev_null, "--userspec=65532:65532")
    assert got["uid"] == 65532 and got["user"] == "nonroot" and got["ssl"] == "libssl.so.3"
    got = _probe(chroot_dev_null, "--userspec=65532:65532", env={"PROBE_DIR": "/home/nonroot"})
    assert got["uid"] == 65532


# -- non-root builds: the same rootfs, or a refusal ------------------------------------------
NOBODY = 65534
ASSEMBLE = """
import json, sys
from pathlib import Path
from lockbuild.assemble.rootfs import assemble_rootfs
from lockbuild.errors import BuildError
from lockbuild.lockfile.model import Deb
args = json.loads(sys.argv[1])
debs = [(Deb(**d), Path(p)) for d, p in args["debs"]]
try:
    print(json.dumps({"warnings": assemble_rootfs(debs, Path(args["dest"]))}))
except BuildError as e:
    print(json.dumps({"error": str(e)}))
"""


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the unprivileged user owns (pytest's tmp_path is private to root)."""
    import tempfile

    need_root("switching to an unprivileged user")
    need_tool("setpriv")
    d = Path(tempfile.mkdtemp(prefix="lockbuild-nobody-", dir="/var/tmp"))
    os.chown(d, NOBODY, NOBODY)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _assemble_as_nobody(built: Built, dest: Path, path_env: str, env: dict[str, str] | None = None) -> dict:
    import json
    import sys
    from dataclasses import asdict

    # The unprivileged user reads its own copies: the cache may sit under /root (CI: ~/.cache/lockbuild), 0700.
    debs = dest.parent / "debs"
    debs.mkdir(exist_ok=True)
    copies = []
    for d, p in built.debs:
        copy = debs / p.name
        shutil.copyfile(p, copy)
        copies.append((asdict(d), str(copy)))
    args = json.dumps({"dest": str(dest), "debs": copies})
    proc = subprocess.run([str(shutil.which("setpriv")), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-c", ASSEMBLE, args], capture_output=True, text=True,
                          env={"PATH": path_env, "HOME": str(dest.parent), "PYTHONDONTWRITEBYTECODE": "1",
                               **(env or {})},
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.network
def test_nonroot_rootfs_is_identical_to_the_root_one(bookworm: Built, nobody_dir: Path) -> None:
    """A non-root build gets the same /etc/ld.so.cache as the root build, never an image silently
    lacking it."""
    dest = nobody_dir / "rootfs"
    result = _assemble_as_nobody(bookworm, dest, "/usr/sbin:/usr/bin:/sbin:/bin")
    if "error" in result and "user namespace" in result["error"]:
        unavailable(f"no unprivileged user namespaces here: {result['error']}")
    assert result == {"warnings": []}
    # A fresh root build of the same debs: the module's shared rootfs is changed by other tests
    # (the chroot test runs Python in it, another adds packages).
    as_root = nobody_dir / "rootfs-root"
    assert assemble_rootfs(bookworm.debs, as_root) == []
    assert (dest / "etc/ld.so.cache").read_bytes() == (as_root / "etc/ld.so.cache").read_bytes()
    assert manifest(dest) == manifest(as_root)


@pytest.mark.network
def test_nonroot_without_user_namespaces(bookworm: Built, nobody_dir: Path) -> None:
    """No way to run ldconfig (here: no `unshare` on PATH): /etc/ld.so.cache is written in Python, the
    same bytes as the root build's; forced to the real ldconfig, a clear BuildError, not a different image."""
    empty = nobody_dir / "empty-path"
    empty.mkdir()
    assert _assemble_as_nobody(bookworm, nobody_dir / "rootfs", str(empty)) == {"warnings": []}
    assert (nobody_dir / "rootfs/etc/ld.so.cache").read_bytes() == (bookworm.dest / "etc/ld.so.cache").read_bytes()
    result = _assemble_as_nobody(bookworm, nobody_dir / "rootfs-real", str(empty), {"LOCKBUILD_LDCONFIG": "real"})
    assert "cannot build /etc/ld.so.cache as a non-root user" in result.get("error", ""), result


# -- the scratch place the shared rootfs is staged in (fsutil.scratch_dir) -------------------------
def test_scratch_dirs_left_by_dead_builds_are_swept_and_live_ones_kept(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from lockbuild import fsutil

    monkeypatch.setenv("LOCKBUILD_SCRATCH", str(tmp_path / "scratch"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / "scratch" / f"{fsutil.SCRATCH_PREFIX}{dead.pid}-abc"
    live = tmp_path / "scratch" / f"{fsutil.SCRATCH_PREFIX}{os.getpid()}-def"
    other = tmp_path / "scratch" / "not-ours"
    for d in (left / "r/usr", live, other):
        d.mkdir(parents=True)
    new = fsutil.scratch_dir(tmp_path / "fallback")
    assert new.parent == tmp_path / "scratch" and new.name.startswith(f"{fsutil.SCRATCH_PREFIX}{os.getpid()}-")
    assert not left.exists() and live.exists() and other.exists()


def test_scratch_falls_back_beside_the_cache_without_a_roomy_tmpfs(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lockbuild import fsutil

    monkeypatch.delenv("LOCKBUILD_SCRATCH", raising=False)
    monkeypatch.setattr(fsutil, "SHM", tmp_path / "no-shm")  # e.g. a chroot without /dev/shm
    assert fsutil.scratch_dir(tmp_path / "fallback").parent == tmp_path / "fallback"
    (tmp_path / "small").mkdir()
    monkeypatch.setattr(fsutil, "SHM", tmp_path / "small")
    monkeypatch.setattr(fsutil, "SHM_FREE", 1 << 62)  # a container's 64 MiB /dev/shm: too small
    assert fsutil.scratch_dir(tmp_path / "fallback").parent == tmp_path / "fallback"


@pytest.mark.network
def test_a_full_scratch_place_is_a_clear_error_and_leaves_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A scratch place that fills up while the rootfs is staged (a small tmpfs) stops the build
    naming the place and LOCKBUILD_SCRATCH, and leaves no half-staged rootfs behind."""
    from lockbuild.assemble import bytecode
    from lockbuild.lockfile.io import read_lock

    need_root("mounting a 1 MiB tmpfs")
    lock = read_lock(Path(__file__).parent.parent / "examples/keras3/lockbuild.lock")
    env = os.environ.get("LOCKBUILD_CACHE")
    cache = Cache(Path(env) if env else Path("/tmp/lockbuild-test-cache"))
    blobs = download.fetch_all(cache, deb_items(lock.debian), jobs=4)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tiny)], check=True)
    try:
        monkeypatch.setenv("LOCKBUILD_SCRATCH", str(tiny))
        monkeypatch.setattr(bytecode, "_ROOTS", {})  # nothing staged by earlier tests in this process
        with pytest.raises(BuildError, match="no space left staging the Debian rootfs") as e:
            bytecode.staged_rootfs(lock, blobs, tmp_path)
        assert "LOCKBUILD_SCRATCH" in (e.value.hint or "") and str(tiny) in e.value.message
        assert not list(tiny.iterdir())
    finally:
        subprocess.run(["umount", str(tiny)], check=False)
