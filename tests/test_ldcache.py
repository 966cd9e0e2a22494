"""/etc/ld.so.cache written in Python (assemble/ldcache.py) against the real thing: the rootfs's own
static ldconfig (glibc 2.36) run with ``ldconfig -r`` on the same tree must give the same bytes and
leave the same tree (soname links made, stale ones removed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lockbuild.assemble import ldcache
from lockbuild.assemble.rootfs import assemble_rootfs
from tests.conftest_services import need_root
from tests.test_rootfs import Built, bookworm, manifest  # noqa: F401 (bookworm: the real closure, a fixture)


def real_ldconfig(root: Path) -> bytes:
    need_root("ldconfig -r chroots")
    proc = subprocess.run([str(root / "usr/sbin/ldconfig"), "-r", str(root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    aux = root / "var/cache/ldconfig/aux-cache"
    if aux.exists():
        aux.unlink()
    return (root / "etc/ld.so.cache").read_bytes()


def test_libcmp_orders_like_glibc() -> None:
    c = ldcache.libcmp
    assert c(b"libfoo.so.10", b"libfoo.so.9") > 0 and c(b"libfoo.so.9", b"libfoo.so.10") < 0
    assert c(b"libfoo.so.1", b"libfoo.so.1") == 0 and c(b"libfoo.so.01", b"libfoo.so.1") == 0
    assert c(b"liba.so", b"libb.so") < 0 and c(b"libfoo.so", b"libfoo.so.1") < 0
    assert c(b"lib1", b"liba") > 0 and c(b"liba", b"lib1") < 0  # digits sort after other characters


@pytest.mark.network
def test_pure_cache_is_byte_identical_to_ldconfig(bookworm: Built, tmp_path: Path) -> None:  # noqa: F811
    """The example's Debian closure, as assembled (the build already used the pure writer): the real
    ldconfig on the same tree writes the very same file and changes nothing else."""
    root = tmp_path / "rootfs"
    shutil.copytree(bookworm.dest, root, symlinks=True)
    ours = (root / "etc/ld.so.cache").read_bytes()
    assert ours[:20] == b"glibc-ld.so.cache1.1" and b"release version 2.36" in ours
    assert ldcache.ld_so_cache(root, links=False) == ours
    before = manifest(root)
    assert real_ldconfig(root) == ours
    assert manifest(root) == before


@pytest.mark.network
def test_links_and_odd_trees_match_ldconfig(bookworm: Built, tmp_path: Path) -> None:  # noqa: F811
    """Missing soname links, a stale link, an older and a newer copy of a library, a library in a
    directory named by a conf include, a duplicate directory: both writers agree on bytes and tree."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(bookworm.dest, a, symlinks=True)
    lib = a / "usr/lib/x86_64-linux-gnu"
    libz = sorted(lib.glob("libz.so.1.*"))[0]
    (lib / "libz.so.1").unlink()  # ldconfig makes the soname link again
    os.symlink("libgone.so.3.0", lib / "libgone.so.3")  # stale: removed
    local = a / "usr/local/lib/extra"
    local.mkdir(parents=True)
    shutil.copy(libz, local / "libz.so.1.9.99")  # a newer copy of a library, in another directory
    shutil.copy(libz, local / "libz.so.1.0.0")  # and an older one beside it
    (a / "etc/ld.so.conf.d/zz-extra.conf").write_text("# extra\n/usr/local/lib/extra/  \n/usr/lib/x86_64-linux-gnu\n")
    (a / "var/cache/ldconfig").exists() and shutil.rmtree(a / "var/cache/ldconfig")
    shutil.copytree(a, b, symlinks=True)

    want = real_ldconfig(a)
    ldcache.write_ld_so_cache(b, "amd64")
    assert (b / "etc/ld.so.cache").read_bytes() == want
    assert manifest(b) == manifest(a)
    assert os.readlink(b / "usr/lib/x86_64-linux-gnu/libz.so.1") == libz.name
    assert not os.path.lexists(b / "usr/lib/x86_64-linux-gnu/libgone.so.3")


def test_unsupported_trees_fall_back(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3").mkdir(parents=True)
    (root / "usr/sbin/ldconfig").write_bytes(b"\0ldconfig (Test GLIBC 2.36-1) stable release version 2.36\0")
    with pytest.raises(ldcache.LdCacheUnsupported, match="glibc-hwcaps"):
        ldcache.ld_so_cache(root)
    with pytest.raises(ldcache.LdCacheUnsupported, match="arm64"):
        ldcache.ld_so_cache(root, "arm64")
    # another glibc's ldconfig may write another layout (bullseye's 2.31 writes the compat format)
    (root / "usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3").rmdir()
    (root / "usr/sbin/ldconfig").write_bytes(b"\0ldconfig (Debian GLIBC 2.31-13) stable release version 2.31\0")
    with pytest.raises(ldcache.LdCacheUnsupported, match="2.31"):
        ldcache.ld_so_cache(root)


@pytest.mark.network
def test_assemble_as_root_with_the_pure_writer_matches_the_real_one(bookworm: Built, tmp_path: Path,  # noqa: F811
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole rootfs assembled with the real ldconfig (LOCKBUILD_LDCONFIG=real) is the same tree."""
    need_root("ldconfig -r chroots")
    monkeypatch.setenv("LOCKBUILD_LDCONFIG", "real")
    real = tmp_path / "real"
    assert assemble_rootfs(bookworm.debs, real) == []
    assert manifest(real) == manifest(bookworm.dest)
