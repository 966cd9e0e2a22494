"""The builder: reads only the lock, checks every byte, refuses unsafe or conflicting wheels."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lockbuild.assemble import wheels as W
from lockbuild.errors import BuildError
from lockbuild.fetch.cache import Cache
from lockbuild.lockfile.model import Target, Wheel
from tests.tiny_project import run_lockbuild

TARGET = Target(platform="linux/amd64", python="3.11.2", python_abi="cp311", wheel_platform="x86_64-manylinux_2_36",
                glibc="2.36", base="debian:bookworm", interpreter_package="python3.11",
                interpreter_deb_version="3.11.2-6+deb12u9")


def make_wheel(tmp: Path, name: str, version: str, files: dict[str, bytes],
               compression: int = zipfile.ZIP_DEFLATED) -> tuple[Wheel, Path]:
    """A wheel as build backends write one: members deflated (or ``compression``), RECORD last."""
    filename = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    path = tmp / filename
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    contents[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for rel, data in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for rel, data in contents.items():
            zf.writestr(rel, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return Wheel(name=name, version=version, filename=filename, url="file://" + str(path), size=path.stat().st_size,
                 sha256="sha256:" + "0" * 64), path


def install_into(root: Path, pairs: list[tuple[Wheel, Path]], rules: object = None, py: object = None,
                 pruned: object = None) -> list:
    """Stream the wheels into a layer tar (the builder's path) and extract it into ``root``."""
    import io
    import tarfile

    from lockbuild.lockfile.prune import Rules
    from lockbuild.oci.tar import write_tar

    root.mkdir(parents=True, exist_ok=True)
    tree = W.wheel_tree(pairs, TARGET, rules or Rules(), py, spool_dir=root.parent,  # type: ignore[arg-type]
                        pruned=pruned)  # type: ignore[arg-type]
    buf = io.BytesIO()
    try:
        write_tar(buf, tree.nodes, mtime=1, exclude=None, owners=None)
    finally:
        tree.close()
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(root, filter="tar")
    return tree.contents


def test_two_distributions_writing_the_same_file_are_an_error_naming_both(tmp_path: Path) -> None:
    a = make_wheel(tmp_path, "tensorflow", "2.21.0", {"tensorflow/__init__.py": b"a"})
    b = make_wheel(tmp_path, "tensorflow-cpu", "2.21.0", {"tensorflow/__init__.py": b"b"})
    listings = [(w, W.install_paths(w, p, TARGET)) for w, p in (a, b)]
    conflicts = W.find_conflicts(listings)
    assert conflicts == [("usr/local/lib/python3.11/dist-packages/tensorflow/__init__.py", "tensorflow",
                          "tensorflow-cpu")]
    err = W.conflict_error(conflicts)
    assert "tensorflow and tensorflow-cpu" in err.message and "[python] variants" in (err.hint or "")


@pytest.mark.parametrize("member", ["../../etc/passwd", "/etc/passwd", "pkg/../../../x"])
def test_a_wheel_member_escaping_the_install_root_is_refused(tmp_path: Path, member: str) -> None:
    wheel, path = make_wheel(tmp_path, "evil", "1.0", {member: b"x"})
    with pytest.raises(BuildError, match="outside the install root"):
        W.install_paths(wheel, path, TARGET)


def test_wheels_install_into_debian_site_packages_with_the_image_interpreter(tmp_path: Path) -> None:
    wheel, path = make_wheel(tmp_path, "demo", "1.0", {"demo/__init__.py": b"X = 1\n",
                                                      "demo-1.0.data/scripts/demo-run": b"#!python\nprint(1)\n"})
    root = tmp_path / "root"
    install_into(root, [(wheel, path)])
    site = root / "usr/local/lib/python3.11/dist-packages"
    assert (site / "demo/__init__.py").read_text() == "X = 1\n"
    assert (site / "demo-1.0.dist-info/INSTALLER").read_text() == "lockbuild\n"
    assert (root / "usr/local/bin/demo-run").read_text().startswith("#!/usr/bin/python3.11")
    assert not list(root.rglob("*.pyc")), "no timestamped bytecode in the image"


def test_a_flipped_byte_in_the_cache_is_detected_and_the_entry_dropped(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    digest = cache.put_bytes(b"hello wheel")
    path = cache.path(digest)
    path.chmod(0o644)
    path.write_bytes(b"hellO wheel")
    assert cache.get(digest) is None
    assert not path.exists()


def test_the_builder_imports_nothing_from_the_resolvers() -> None:
    code = ("import sys, lockbuild.assemble.build, lockbuild.oci.layout, lockbuild.oci.registry, "
            "lockbuild.oci.docker_archive, lockbuild.oci.daemon; "
            "print([m for m in sys.modules if m.startswith('lockbuild.resolve') or m == 'uv'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _wrong_hash_project(tiny_project: dict, tmp_path: Path) -> tuple[Path, str]:
    lock_text = (tiny_project["dir"] / "lockbuild.lock").read_text()
    start = lock_text.index('name = "idna"')
    sha_at = lock_text.index('sha256 = "', start) + len('sha256 = "')
    (tmp_path / "lockbuild.toml").write_text((tiny_project["dir"] / "lockbuild.toml").read_text())
    (tmp_path / "model").symlink_to(tiny_project["dir"] / "model")
    return tmp_path, lock_text[:sha_at] + "0" * 64 + lock_text[sha_at + 64:]


@pytest.mark.network
def test_a_hand_edited_wheel_hash_is_refused_before_anything_is_fetched(tiny_project: dict, tmp_path: Path) -> None:
    work, bad = _wrong_hash_project(tiny_project, tmp_path)
    (work / "lockbuild.lock").write_text(bad)
    proc = run_lockbuild("image", "--oci", "out/oci", cwd=work, ok=False)
    assert proc.returncode == 8, proc.stderr
    assert "edited by hand" in proc.stderr
    assert not (work / "out").exists()


@pytest.mark.network
def test_a_wrong_wheel_hash_in_a_well_formed_lock_fails_the_download_and_writes_nothing(
        tiny_project: dict, tmp_path: Path) -> None:
    from lockbuild.lockfile.io import dumps, loads

    work, bad = _wrong_hash_project(tiny_project, tmp_path)
    (work / "lockbuild.lock").write_text(dumps(loads(bad, verify_content=False)))  # as a lying resolver would
    proc = run_lockbuild("image", "--oci", "out/oci", cwd=work, ok=False)
    assert proc.returncode == 9, proc.stderr
    assert "do not match the lock" in proc.stderr and "idna" in proc.stderr
    assert not (work / "out").exists()


@pytest.mark.network
def test_image_json_reports_layers_and_digest(tiny_project: dict) -> None:
    image = tiny_project["image"]
    names = [layer["name"] for layer in image["layers"]]
    assert names[0] == "debian" and names[-2:] == ["model", "config"]
    assert len(names) < 20
    again = json.loads(run_lockbuild("image", "--oci", "out/oci", "--json", cwd=tiny_project["dir"]).stdout)
    assert again["digest"] == image["digest"]
    assert all(layer["reused"] for layer in again["layers"])


def _rewritten(path: Path, folder: Path, edit: object) -> Path:
    """A copy of the wheel at ``path`` in ``folder`` with each member passed through ``edit(name, data)``."""
    folder.mkdir()
    out = folder / path.name
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, edit(info.filename, src.read(info)))  # type: ignore[operator]
    return out


def test_a_wheel_member_that_does_not_match_its_record_hash_stops_the_build(tmp_path: Path) -> None:
    """The binary distribution format requires installers to check RECORD: streamed members are
    hashed on their way into the tar; a wheel whose member was swapped after RECORD was written
    (RECORD well-formed, hash of the old bytes) is refused, naming the wheel and the member."""
    wheel, path = make_wheel(tmp_path, "demo", "1.0", {"demo/__init__.py": b"X = 1\n"})
    swapped = _rewritten(path, tmp_path / "swapped",
                         lambda name, data: b"X = 2\n" if name == "demo/__init__.py" else data)
    with pytest.raises(BuildError, match=r"demo/__init__\.py.*does not match its hash in the wheel's RECORD") as e:
        install_into(tmp_path / "root", [(wheel, swapped)])
    assert "demo-1.0-py3-none-any.whl" in e.value.message


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_BZIP2])
def test_members_install_the_same_bytes_however_the_wheel_compressed_them(tmp_path: Path, compression: int) -> None:
    """Deflated members are inflated by ISA-L (assemble/members.py), the rest by zipfile."""
    big = b"".join(b"line %d of a module\n" % i for i in range(200_000))  # several MiB: many reads
    files = {"demo/__init__.py": b"X = 1\n", "demo/big.py": big, "demo/empty.py": b""}
    wheel, path = make_wheel(tmp_path, "demo", "1.0", files, compression=compression)
    root = tmp_path / "root"
    install_into(root, [(wheel, path)])
    site = root / "usr/local/lib/python3.11/dist-packages"
    assert {rel: (site / rel).read_bytes() for rel in files} == files


def _member_data_offset(path: Path, name: str) -> tuple[int, int]:
    """(offset of the member's compressed bytes in the file, their length)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = path.read_bytes()
    n, extra = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    return info.header_offset + 30 + n + extra, info.compress_size


@pytest.mark.parametrize("where", ["first block header", "middle"])
def test_a_corrupt_deflate_stream_is_refused_naming_the_member(tmp_path: Path, where: str) -> None:
    """A member whose compressed bytes were damaged (the zip directory and RECORD intact) stops the
    build with a clear error, never a traceback from the inflater and never other bytes in the layer:
    an invalid block type makes ISA-L raise, damage further in makes the stream end early."""
    body = b"".join(b"value_%d = %d\n" % (i, i * i) for i in range(50_000))
    wheel, path = make_wheel(tmp_path, "demo", "1.0", {"demo/data.py": body})
    start, length = _member_data_offset(path, "demo/data.py")
    raw = bytearray(path.read_bytes())
    if where == "middle":
        for i in range(start + length // 3, start + length // 3 + 64):
            raw[i] ^= 0xA5
    else:
        raw[start] = 0xFF  # BFINAL=1, BTYPE=11: a reserved block type
    path.write_bytes(bytes(raw))
    with pytest.raises(BuildError, match=r"demo/data\.py") as e:
        install_into(tmp_path / "root", [(wheel, path)])
    assert "demo-1.0-py3-none-any.whl" in e.value.message


def test_a_local_header_naming_another_file_than_the_directory_is_refused(tmp_path: Path) -> None:
    """A crafted zip whose local header names another file than its central directory (the trick
    that makes two zip readers see two different wheels) is refused."""
    wheel, path = make_wheel(tmp_path, "demo", "1.0", {"demo/a.py": b"A = 1\n"})
    raw = path.read_bytes()
    first = raw.index(b"demo/a.py")  # the local header's copy comes first, the directory's last
    path.write_bytes(raw[:first] + b"demo/b.py" + raw[first + len(b"demo/a.py"):])
    with pytest.raises(BuildError, match=r"demo/a\.py|header"):
        install_into(tmp_path / "root", [(wheel, path)])


def test_a_member_hashed_with_another_algorithm_in_record_is_rehashed_as_sha256(tmp_path: Path) -> None:
    wheel, path = make_wheel(tmp_path, "demo", "1.0", {"demo/__init__.py": b"X = 1\n"})
    other = base64.urlsafe_b64encode(hashlib.sha512(b"X = 1\n").digest()).rstrip(b"=")

    def sha512_row(name: str, data: bytes) -> bytes:
        if not name.endswith("RECORD"):
            return data
        return b"\n".join(ln if not ln.startswith(b"demo/__init__.py,") else
                          b"demo/__init__.py,sha512=" + other + b",6" for ln in data.split(b"\n"))

    unhashed = _rewritten(path, tmp_path / "unhashed", sha512_row)
    root = tmp_path / "root"
    install_into(root, [(wheel, unhashed)])
    record = (root / "usr/local/lib/python3.11/dist-packages/demo-1.0.dist-info/RECORD").read_text()
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"X = 1\n").digest()).rstrip(b"=").decode()
    assert f"demo/__init__.py,sha256={digest},6" in record


def test_the_builder_prunes_exactly_the_locks_list_and_refuses_a_list_for_another_wheel(tmp_path: Path) -> None:
    """With per-wheel lists in the lock, the lists decide (not the rules); an entry the verified
    wheel does not have (a list edited by hand, or made for another wheel) stops the build."""
    import dataclasses

    from lockbuild.lockfile.io import read_lock
    from lockbuild.lockfile.prune import listed_pruning

    lock = read_lock(Path(__file__).parent.parent / "examples" / "keras3" / "lockbuild.lock")
    assert lock.build.pruned_listed
    wheel, path = make_wheel(tmp_path, "demo", "1.0", {"demo/__init__.py": b"X = 1\n",
                                                      "demo/tests/test_a.py": b"", "demo/extra.h": b""})
    listed = dataclasses.replace(wheel, pruned=("demo/extra.h",))  # not what DEFAULT_PRUNE would give
    pruned = listed_pruning(lock, {wheel.sha256: path})
    assert pruned is not None
    root = tmp_path / "root"
    install_into(root, [(listed, path)], pruned=pruned)
    site = root / "usr/local/lib/python3.11/dist-packages"
    assert not (site / "demo/extra.h").exists() and (site / "demo/tests/test_a.py").exists()
    with pytest.raises(BuildError, match=r"pruned lists 'demo/include/'.*not in demo-1\.0"):
        pruned(dataclasses.replace(wheel, pruned=("demo/include/",)))
    older = dataclasses.replace(lock, build=dataclasses.replace(lock.build, pruned_listed=False))
    assert listed_pruning(older, {}) is None  # a lock from before the lists: the rules decide


@pytest.mark.filterwarnings("ignore:Skip installing:RuntimeWarning")  # installer's own, for the __pycache__ member
def test_lock_time_and_build_time_see_the_paths_the_install_writes(tmp_path: Path) -> None:
    """One wheel-path mapper (lockfile/scheme.py): the lock stage's overlap listing, the builder's
    conflict listing and the files installer really writes agree, for every .data scheme, a
    foreign ``*.data`` directory (installed as is, into site-packages) and ``__pycache__``."""
    from lockbuild.resolve import overlap

    wheel, path = make_wheel(tmp_path, "demo", "1.0", {
        "demo/__init__.py": b"", "demo/__pycache__/x.pyc": b"stale", "other-2.0.data/purelib/o.py": b"",
        "demo-1.0.data/scripts/demo-run": b"#!/bin/sh\n", "demo-1.0.data/headers/demo.h": b"",
        "demo-1.0.data/data/share/demo/x.txt": b"", "demo-1.0.data/platlib/_demo.py": b""})
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    built = W.install_paths(wheel, path, TARGET)
    assert overlap.install_paths(wheel, names, TARGET.python) == built
    site = "usr/local/lib/python3.11/dist-packages"
    assert {"usr/local/bin/demo-run", "usr/local/include/python3.11/demo.h", "usr/local/share/demo/x.txt",
            f"{site}/_demo.py", f"{site}/other-2.0.data/purelib/o.py"} <= set(built)
    assert not any("__pycache__" in p for p in built)
    root = tmp_path / "root"
    install_into(root, [(wheel, path)])
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(built) <= written and written - set(built) == {
        f"{site}/demo-1.0.dist-info/INSTALLER"}  # installer's own file; RECORD is listed as a member
