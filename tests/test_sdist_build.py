"""Source-only dependencies: a package published only as an sdist (docopt 0.6.2, from PyPI) is built at
lock time in an isolated env of hash-locked build requirements, and `image` rebuilds it bit for bit
(other cache, umask and time zone) or refuses a different result."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from lockbuild.errors import IntegrityError, ResolveError, SourceBuildError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.sdist import build_wheel, ensure_built, normalise_wheel
from lockbuild.lockfile.io import wheel_from_dict, wheel_to_dict
from lockbuild.lockfile.model import Wheel
from lockbuild.resolve.python import resolve_python
from lockbuild.resolve.uv import PythonTarget

pytestmark = [pytest.mark.network]

TARGET = PythonTarget(python="3.11.2", wheel_platform="x86_64-manylinux_2_36")
CUTOFF = "2026-11-01T00:00:00Z"
EPOCH = 1796000000


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Wheel], Cache]:
    cache = Cache(tmp_path_factory.mktemp("cache-a"))
    notes: list[str] = []
    wheels = resolve_python(["docopt==0.6.2", "six"], [], target=TARGET, index_url="https://pypi.org/simple",
                            exclude_newer=CUTOFF, cache=cache, epoch=EPOCH, notify=notes.append)
    assert any("docopt" in n and "sdist" in n for n in notes), notes
    return wheels, cache


def _docopt(wheels: list[Wheel]) -> Wheel:
    return next(w for w in wheels if w.name == "docopt")


def test_only_the_source_only_package_is_built_everything_else_stays_a_wheel(locked: tuple[list[Wheel], Cache]) -> None:
    wheels, _ = locked
    d = _docopt(wheels)
    assert d.source == "sdist" and d.filename == "docopt-0.6.2-py2.py3-none-any.whl" and d.url == ""
    assert d.sdist is not None and d.sdist.filename == "docopt-0.6.2.tar.gz"
    assert d.sdist.sha256 == "sha256:49b3a825280bd66b3aa83585ef59c4a8c82f2c8a522dbe754a8bc8d08c85c491"
    assert d.build_backend == "setuptools.build_meta:__legacy__" and d.source_date_epoch == EPOCH
    assert [b.name for b in d.build_requires] == ["setuptools"]
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", b.sha256) and b.url.startswith("https://")
               for b in d.build_requires)
    six = next(w for w in wheels if w.name == "six")
    assert six.source == "" and six.url.endswith(".whl") and six.sdist is None
    assert wheel_from_dict(wheel_to_dict(d)) == d  # the lock round-trips every field


def test_built_wheel_is_normalised(locked: tuple[list[Wheel], Cache]) -> None:
    wheels, cache = locked
    d = _docopt(wheels)
    path = cache.get(d.sha256, d.size)
    assert path is not None
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names[-1].endswith(".dist-info/RECORD")
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    assert {i.date_time for i in infos} == {time.gmtime(EPOCH)[:6]}
    assert {(i.external_attr >> 16) & 0o7777 for i in infos} <= {0o644, 0o755}
    body = [n for n in names if ".dist-info/" not in n]
    assert body == sorted(body)


def test_rebuild_with_other_cache_umask_and_tz_gives_the_same_wheel(locked: tuple[list[Wheel], Cache],
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    wheels, _ = locked
    d = _docopt(wheels)
    other = Cache(tmp_path / "cache-b")  # nothing in it: sdist, setuptools and the build all happen again
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    monkeypatch.setenv("LC_ALL", "C")
    time.tzset()
    old = os.umask(0o077)
    try:
        path = ensure_built(d, other, python=TARGET.python)
    finally:
        os.umask(old)
        monkeypatch.delenv("TZ")
        time.tzset()
    assert path == other.path(d.sha256)
    assert other.has(d.sdist.sha256)  # type: ignore[union-attr]


def test_rebuild_refuses_a_lock_that_pins_other_bytes(locked: tuple[list[Wheel], Cache], tmp_path: Path) -> None:
    d = _docopt(locked[0])
    forged = dataclasses.replace(d, sha256="sha256:" + "0" * 64)
    with pytest.raises(IntegrityError) as e:
        ensure_built(forged, Cache(tmp_path / "cache-c"), python=TARGET.python)
    assert "rebuilding the locked sdist docopt-0.6.2.tar.gz" in e.value.message and "0" * 64 in e.value.message
    other_epoch = dataclasses.replace(d, source_date_epoch=d.source_date_epoch + 86400)  # a hand-edited epoch
    with pytest.raises(IntegrityError):
        ensure_built(other_epoch, Cache(tmp_path / "cache-d"), python=TARGET.python)


def test_a_tampered_sdist_is_refused_before_building(locked: tuple[list[Wheel], Cache], tmp_path: Path) -> None:
    d = _docopt(locked[0])
    assert d.sdist is not None
    wrong = dataclasses.replace(d, sdist=dataclasses.replace(d.sdist, sha256="sha256:" + "1" * 64))
    with pytest.raises(IntegrityError):
        ensure_built(wrong, Cache(tmp_path / "cache-e"), python=TARGET.python)


def _c_extension_sdist(dest: Path) -> Path:
    """A user's own sdist with a C extension (as `python -m build --sdist` would make it)."""
    files = {
        "cext-1.0/setup.py": b"from setuptools import Extension, setup\n"
                             b"setup(name='cext', version='1.0', ext_modules=[Extension('cext', ['cext.c'])])\n",
        "cext-1.0/cext.c": b"#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, \"cext\"};\n"
                           b"PyMODINIT_FUNC PyInit_cext(void) { return PyModule_Create(&m); }\n",
        "cext-1.0/PKG-INFO": b"Metadata-Version: 2.1\nName: cext\nVersion: 1.0\n",
    }
    path = dest / "cext-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_an_sdist_that_needs_a_compiler_fails_naming_the_package(locked: tuple[list[Wheel], Cache],
                                                                 tmp_path: Path) -> None:
    wheels, cache = locked
    setuptools = _docopt(wheels).build_requires[0]
    env = [(setuptools, cache.path(setuptools.sha256))]
    with pytest.raises(SourceBuildError) as e:
        build_wheel(name="cext", version="1.0", sdist=_c_extension_sdist(tmp_path), build_env=env,
                    backend="setuptools.build_meta:__legacy__", python=TARGET.python, epoch=EPOCH,
                    workdir=tmp_path / "w")
    assert "cext 1.0 needs a C/C++ compiler" in e.value.message and e.value.exit_code == 22
    assert "\n" not in e.value.message


def test_normalising_does_not_depend_on_entry_order_or_times(tmp_path: Path) -> None:
    def wheel(path: Path, order: list[str], when: tuple[int, ...], mode: int) -> Path:
        files = {"pkg/__init__.py": b"x = 1\n", "pkg/b.py": b"", "pkg-1.0.dist-info/METADATA": b"Name: pkg\n",
                 "pkg-1.0.dist-info/RECORD": b"whatever\n", "pkg-1.0.dist-info/WHEEL": b"Root-Is-Purelib: true\n"}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in order:
                zi = zipfile.ZipInfo(name, date_time=when)  # type: ignore[arg-type]
                zi.external_attr = mode << 16
                zf.writestr(zi, files[name])
        return path

    names = ["pkg/__init__.py", "pkg/b.py", "pkg-1.0.dist-info/METADATA", "pkg-1.0.dist-info/RECORD",
             "pkg-1.0.dist-info/WHEEL"]
    a = wheel(tmp_path / "a.whl", names, (2020, 1, 2, 3, 4, 6), 0o100600)
    b = wheel(tmp_path / "b.whl", list(reversed(names)), (2024, 5, 6, 7, 8, 10), 0o100664)
    normalise_wheel(a, tmp_path / "a-n.whl", EPOCH)
    normalise_wheel(b, tmp_path / "b-n.whl", EPOCH)
    assert (tmp_path / "a-n.whl").read_bytes() == (tmp_path / "b-n.whl").read_bytes()
    with zipfile.ZipFile(tmp_path / "a-n.whl") as zf:
        record = zf.read("pkg-1.0.dist-info/RECORD").decode()
    assert record.splitlines()[-1] == "pkg-1.0.dist-info/RECORD,," and "pkg/b.py,sha256=" in record


def test_a_package_without_wheel_or_sdist_still_fails_with_uvs_reason() -> None:
    with pytest.raises(ResolveError) as e:
        resolve_python(["this-package-does-not-exist-lockbuild==1.0"], [], target=TARGET,
                       index_url="https://pypi.org/simple", exclude_newer=CUTOFF)
    assert "this-package-does-not-exist-lockbuild" in e.value.message


def test_the_build_has_no_network_and_no_host_site_packages(locked: tuple[list[Wheel], Cache], tmp_path: Path) -> None:
    """A setup.py that reaches for the network, or for a package only the host has, fails the build."""
    wheels, cache = locked
    setuptools = _docopt(wheels).build_requires[0]
    env = [(setuptools, cache.path(setuptools.sha256))]
    for name, body in (("netpkg", b"import urllib.request\nurllib.request.urlopen('https://pypi.org/simple/', "
                                  b"timeout=10)\n"),
                       ("hostpkg", b"import httpx\n")):  # httpx is installed where lockbuild runs
        sdist = tmp_path / f"{name}-1.0.tar.gz"
        with tarfile.open(sdist, "w:gz") as tf:
            for member, data in ((f"{name}-1.0/setup.py", body + f"from setuptools import setup\n"
                                  f"setup(name='{name}', version='1.0', py_modules=[])\n".encode()),
                                 (f"{name}-1.0/PKG-INFO", f"Metadata-Version: 2.1\nName: {name}\n".encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        with pytest.raises(SourceBuildError) as e:
            build_wheel(name=name, version="1.0", sdist=sdist, build_env=env,
                        backend="setuptools.build_meta:__legacy__", python=TARGET.python, epoch=EPOCH,
                        workdir=tmp_path / f"w-{name}")
        assert f"building {name} 1.0 from its sdist failed" in e.value.message, e.value.message
        assert ("URLError" in e.value.message or "Tunnel" in e.value.message or "refused" in e.value.message
                if name == "netpkg" else "No module named 'httpx'" in e.value.message), e.value.message


def test_a_target_python_the_host_lacks_fails_naming_package_and_interpreter(locked: tuple[list[Wheel], Cache],
                                                                             tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this host has: the first python3.9 on PATH is a shim without the version behind it
    (as pyenv leaves one), which the probe must not take for an interpreter."""
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3.9").write_text("#!/bin/sh\necho 'pyenv: python3.9: command not found' >&2\nexit 127\n")
    (shims / "python3.9").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
    d = _docopt(locked[0])
    with pytest.raises(SourceBuildError) as e:
        ensure_built(d, locked[1].__class__(tmp_path / "c"), python="3.9.2")
    assert e.value.message == ("building docopt 0.6.2 from its sdist for Python 3.9 needs a python3.9 interpreter "
                               "on this host")
