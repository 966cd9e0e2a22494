"""The layer writer: same tree in, same bytes out, whatever the host did to the staging tree."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import time
import tracemalloc
from pathlib import Path

import pytest

from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache
from lockbuild.oci.compress import LAYER_MEDIA_TYPE
from lockbuild.oci.layercache import Layer
from lockbuild.oci.tar import write_layer
from tests.conftest_services import need_root

pytest_plugins = ["tests.conftest_services"]

MTIME = 1795564800
LONG = "d/" + "x" * 120 + ".txt"  # > 100 bytes: needs a PAX path record


def make_tree(root: Path, *, reverse: bool, file_mtime: float) -> None:
    """Files, dirs, symlinks, a hard link, exec bits, a 1777 dir, a long and a non-ASCII name.

    ``reverse`` creates everything in the opposite order, so directory listing order differs.
    """
    files = {
        "usr/bin/tool": ("#!/bin/sh\necho tool\n", 0o750),
        "usr/lib/data.bin": ("x" * 5000, 0o600),
        "etc/conf": ("k=v\n", 0o664),
        "a-b/sibling": ("sorts between a and a/\n", 0o644),
        "a/child": ("child\n", 0o644),
        "unicodé/naïve.txt": ("utf-8 names\n", 0o644),
        LONG: ("long\n", 0o644),
    }
    items = sorted(files.items(), reverse=reverse)
    for rel, (text, mode) in items:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chmod(p, mode)
    (root / "empty").mkdir()
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "etc", 0o700)
    os.symlink("tool", root / "usr/bin/alias")
    os.symlink("/nowhere/dangling", root / "usr/lib/dangling")
    os.link(root / "usr/bin/tool", root / "usr/bin/hardlinked")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (file_mtime, file_mtime), follow_symlinks=False)


def build(tmp: Path, *, umask: int, tz: str, reverse: bool, file_mtime: float,
          monkeypatch: pytest.MonkeyPatch) -> tuple[Layer, bytes]:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    old = os.umask(umask)
    try:
        make_tree(tmp / "root", reverse=reverse, file_mtime=file_mtime)
        cache = Cache(tmp / "cache")
        layer = write_layer(cache, tmp / "root", mtime=MTIME)
    finally:
        os.umask(old)
    return layer, layer.path(cache).read_bytes()


def test_layer_is_byte_identical_across_umask_mtimes_tz_order_and_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, a_bytes = build(tmp_path / "a", umask=0o022, tz="UTC", reverse=False, file_mtime=1e9,
                       monkeypatch=monkeypatch)
    b, b_bytes = build(tmp_path / "b", umask=0o077, tz="Asia/Kolkata", reverse=True,
                       file_mtime=1.7e9 + 0.123456, monkeypatch=monkeypatch)
    time.tzset()
    assert a == b
    assert a_bytes == b_bytes
    assert a.media_type == LAYER_MEDIA_TYPE


@pytest.fixture()
def built(tmp_path: Path) -> tuple[Cache, Layer]:
    make_tree(tmp_path / "root", reverse=False, file_mtime=1e9)
    cache = Cache(tmp_path / "cache")
    return cache, write_layer(cache, tmp_path / "root", mtime=MTIME)


def members(cache: Cache, layer: Layer) -> list[tarfile.TarInfo]:
    with tarfile.open(layer.path(cache), "r:gz") as tar:
        return tar.getmembers()


def test_entries_follow_the_recipe(built: tuple[Cache, Layer]) -> None:
    cache, layer = built
    ms = members(cache, layer)
    names = [m.name for m in ms]
    assert names == sorted(names, key=str.encode), "byte-sorted"
    assert len(names) == len(set(names)), "no duplicates"
    assert not any(n.startswith(("./", "/")) for n in names)
    for m in ms:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", MTIME)
        assert set(m.pax_headers) <= {"path", "linkpath"}, f"{m.name}: {m.pax_headers}"
    by = {m.name: m for m in ms}
    assert by["usr/bin/tool"].mode == 0o755 and by["usr/lib/data.bin"].mode == 0o644
    assert by["etc"].mode == 0o755 and by["etc/conf"].mode == 0o644
    assert by["tmp"].mode == 0o1777 and by["empty"].isdir()
    assert by["usr/bin/alias"].issym() and by["usr/bin/alias"].linkname == "tool"
    assert by["usr/bin/alias"].mode == 0o777
    assert by["usr/lib/dangling"].linkname == "/nowhere/dangling"
    assert by["usr/bin/hardlinked"].isreg() and by["usr/bin/hardlinked"].size == by["usr/bin/tool"].size
    assert LONG in by and "unicodé/naïve.txt" in by
    assert names.index("a") < names.index("a-b") < names.index("a/child"), "parents first, bytes order"


def test_directories_are_written_with_a_trailing_slash(built: tuple[Cache, Layer]) -> None:
    cache, layer = built
    with gzip.open(layer.path(cache)) as f:
        raw = f.read()
    assert b"usr/bin/\x00" in raw and b"tmp/\x00" in raw


def test_digests_name_the_gzip_blob_and_the_uncompressed_tar(built: tuple[Cache, Layer]) -> None:
    cache, layer = built
    blob = layer.path(cache).read_bytes()
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.size == len(blob)
    assert layer.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    import zlib_ng

    assert layer.compressor.startswith(f"gzip level 1 (zlib-ng {zlib_ng.__version__} ")  # the pinned wheel's zlib-ng


def test_gzip_header_has_no_name_no_time_and_a_fixed_os_byte(built: tuple[Cache, Layer]) -> None:
    cache, layer = built
    header = layer.path(cache).read_bytes()[:10]
    magic, method, flags, mtime, os_byte = header[:2], header[2], header[3], header[4:8], header[9]
    assert (magic, method, flags, mtime, os_byte) == (b"\x1f\x8b", 8, 0, b"\0\0\0\0", 255)


def test_hard_links_inside_and_outside_the_tree_give_the_same_bytes(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    for root in (linked, copied):
        root.mkdir()
        (root / "one").write_text("same\n")
    os.link(linked / "one", linked / "two")
    (copied / "two").write_text("same\n")
    assert write_layer(cache, linked, mtime=MTIME) == write_layer(cache, copied, mtime=MTIME)


@pytest.mark.parametrize("kind", ["fifo", "char-device"])
def test_special_files_are_a_build_error(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(root / "dev" / "pipe")
    else:
        need_root("mknod of a device")
        os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(BuildError) as err:
        write_layer(Cache(tmp_path / "cache"), root, mtime=MTIME)
    assert err.value.hint and "staging tree" in err.value.hint
    assert not list((tmp_path / "cache" / "tmp").iterdir()), "no partial blob left behind"


def test_exclude_drops_paths_and_whole_subtrees(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "keep").mkdir(parents=True)
    (root / "keep" / "a.py").write_text("a")
    (root / "keep" / "a.pyc").write_text("cache")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_text("x")
    cache = Cache(tmp_path / "cache")
    layer = write_layer(cache, root, mtime=MTIME,
                        exclude=lambda rel: rel.endswith(".pyc") or rel == "__pycache__")
    assert [m.name for m in members(cache, layer)] == ["keep", "keep/a.py"]


def test_owners_override_uid_gid_for_named_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "home" / "nonroot").mkdir(parents=True)
    cache = Cache(tmp_path / "cache")
    layer = write_layer(cache, root, mtime=MTIME, owners={"home/nonroot": (65532, 65532)})
    ids = {m.name: (m.uid, m.gid) for m in members(cache, layer)}
    assert ids == {"home": (0, 0), "home/nonroot": (65532, 65532)}


def test_missing_staging_dir_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError):
        write_layer(Cache(tmp_path / "cache"), tmp_path / "nope", mtime=MTIME)


def test_memory_stays_small_for_a_large_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "big.bin", "wb") as f:
        for i in range(48):  # 48 MiB, partly compressible
            f.write(os.urandom(1 << 19) + bytes([i]) * (1 << 19))
    tracemalloc.start()
    try:
        layer = write_layer(Cache(tmp_path / "cache"), root, mtime=MTIME)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert layer.size > 24 << 20
    assert peak < 8 << 20, f"peak Python allocation {peak / 2**20:.1f} MiB"
