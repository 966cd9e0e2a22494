"""Source-only dependencies: a locked sdist built into a wheel, hermetically and reproducibly.

One function builds, for both stages: `lock` (which then records the wheel's sha256) and `image`
(which rebuilds when the built wheel is not in the cache, and refuses a different result).

Hermetic: the build runs ``python -I -S`` (no host site-packages, no user site, no PYTHON* env)
with only the locked build requirements on its path (installed from verified wheels, never from
the network), HTTP(S) proxies pointing at a closed port, ``CC``/``CXX`` set to ``false`` (no host
compiler: lockbuild builds pure-Python sdists only, see docs/lock.md), umask 022, TZ=UTC,
PYTHONHASHSEED=0 and SOURCE_DATE_EPOCH from the lock. The wheel is then normalised: entries
sorted (``.dist-info`` last), RECORD regenerated, fixed timestamps, modes 0644/0755, ZIP_STORED,
so its bytes do not depend on the host's umask, time zone, zlib or cache.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from installer.records import Hash, RecordEntry

from lockbuild.errors import IntegrityError, SourceBuildError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.download import Item, fetch_all
from lockbuild.fsutil import escapes, record_hash, sha256_file
from lockbuild.lockfile.model import Wheel

DEFAULT_BACKEND = "setuptools.build_meta:__legacy__"  # PEP 517's fallback for a setup.py-only sdist
DEFAULT_REQUIRES = ("setuptools>=40.8.0",)
ZIP_EPOCH_MIN = 315532800  # 1980-01-01: the earliest time a zip entry can hold

_DRIVER = r'''
import importlib, json, os, site, sys
mode, site_dir, src, out, backend, backend_path = sys.argv[1:7]
site.addsitedir(site_dir)  # processes .pth files (setuptools' distutils hack) of the locked build env
if backend_path:
    sys.path[:0] = [os.path.join(src, p) for p in json.loads(backend_path)]
os.chdir(src)
sys.path.insert(0, src)  # setup.py may import modules next to it, as pip's frontends allow
mod, _, attr = backend.partition(":")
b = importlib.import_module(mod)
for part in filter(None, attr.split(".")):
    b = getattr(b, part)
if mode == "requires":
    hook = getattr(b, "get_requires_for_build_wheel", None)
    result = list(hook({})) if hook else []
else:
    result = b.build_wheel(out, {})
with open(os.path.join(out, "result.json"), "w") as f:
    json.dump(result, f)
'''


class MissingBuildRequires(SourceBuildError):
    """The backend asked for build requirements the locked build env does not have."""

    def __init__(self, name: str, requires: list[str]) -> None:
        super().__init__(f"{name}: the build backend asks for {', '.join(requires)}, not in the locked build env")
        self.requires = requires


def find_interpreter(python: str, label: str = "a source-only dependency") -> str:
    """A host interpreter of the target's minor version (pure-Python wheels only depend on that)."""
    minor = ".".join(python.split(".")[:2])
    if f"{sys.version_info.major}.{sys.version_info.minor}" == minor:
        return sys.executable
    found = shutil.which(f"python{minor}")
    if found:  # a shim (pyenv) may exist without the version behind it: ask the interpreter itself
        probe = subprocess.run([found, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if probe.returncode == 0 and probe.stdout.strip() == minor:
            return found
    raise SourceBuildError(
        f"building {label} from its sdist for Python {minor} needs a python{minor} interpreter on this host",
        hint=f"install python{minor} (or run lockbuild under Python {minor}), or pin a version that publishes "
        "a wheel",
    )


def read_build_system(sdist: Path) -> tuple[list[str], str, list[str]]:
    """(requires, build-backend, backend-path) from the sdist's pyproject.toml, with PEP 517's defaults."""
    import tomllib

    text = None
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as zf:
            names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/pyproject.toml")]
            text = zf.read(names[0]).decode() if names else None
    else:
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/pyproject.toml"):
                    f = tf.extractfile(m)
                    text = f.read().decode() if f else None
                    break
    bs = (tomllib.loads(text).get("build-system") or {}) if text else {}
    if "build-backend" not in bs:
        return list(bs.get("requires", DEFAULT_REQUIRES)), DEFAULT_BACKEND, []
    return list(bs.get("requires", [])), str(bs["build-backend"]), list(bs.get("backend-path", []))


def _extract(sdist: Path, dest: Path) -> Path:
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as zf:
            for n in zf.namelist():
                if escapes(n):
                    raise SourceBuildError(f"{sdist.name}: unsafe member {n!r}")
            zf.extractall(dest)
    else:
        with tarfile.open(sdist) as tf:
            tf.extractall(dest, filter="data")
    tops = [p for p in dest.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise SourceBuildError(f"{sdist.name}: expected one top-level directory, found {len(tops)}")
    return tops[0]


def _install_env(wheels: list[tuple[Wheel, Path]], env: Path, python: str) -> Path:
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    site_dir = env / "site"
    dest = SchemeDictionaryDestination(
        {"purelib": str(site_dir), "platlib": str(site_dir), "headers": str(env / "include"),
         "scripts": str(env / "bin"), "data": str(env)},
        interpreter=python, script_kind="posix", bytecode_optimization_levels=(),
    )
    for w, path in sorted(wheels, key=lambda t: t[0].name):
        named = env.parent / w.filename
        os.symlink(path, named)
        with WheelFile.open(named) as source:
            install(source, dest, additional_metadata={"INSTALLER": b"lockbuild\n"})
    return site_dir


def _env(work: Path, epoch: int) -> dict[str, str]:
    closed = "http://127.0.0.1:9"  # discard port: any network use by the backend fails at once
    (work / "home").mkdir(exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    return {
        "PATH": "/usr/bin:/bin", "HOME": str(work / "home"), "TMPDIR": str(work / "tmp"),
        "SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "CC": "false", "CXX": "false",
        "PIP_NO_INDEX": "1", "http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed, "ALL_PROXY": closed, "no_proxy": "", "NO_PROXY": "",
    }


def _run(python: str, work: Path, mode: str, site_dir: Path, src: Path, out: Path, backend: str,
         backend_path: list[str], epoch: int, label: str) -> object:
    out.mkdir(exist_ok=True)
    driver = work / "lockbuild_pep517_driver.py"
    driver.write_text(_DRIVER)
    proc = subprocess.run(
        [python, "-I", "-S", str(driver), mode, str(site_dir), str(src), str(out), backend,
         json.dumps(backend_path) if backend_path else ""],
        cwd=src, env=_env(work, epoch), capture_output=True, text=True, umask=0o022, timeout=900,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        log = (proc.stdout + "\n" + proc.stderr).strip()
        tail = [ln for ln in log.splitlines() if ln.strip()][-1:] or ["(no output)"]
        compiler = any(s in log for s in ("'false'", "unable to execute", "gcc", "Python.h", "cc1"))
        if compiler:
            raise SourceBuildError(
                f"{label} needs a C/C++ compiler to build from its sdist; lockbuild builds only pure-Python "
                f"sdists (last line: {tail[0][:200]})",
                hint=f"pin a version of {label.split()[0]} that publishes a wheel for the target, or exclude it "
                "with [python] exclude",
            )
        raise SourceBuildError(
            f"building {label} from its sdist failed: {tail[0][:300]}",
            hint=f"pin a version of {label.split()[0]} that publishes a wheel, or exclude it with [python] exclude",
        )
    return json.loads((out / "result.json").read_text())


def normalise_wheel(src: Path, dest: Path, epoch: int) -> None:
    """Rewrite a wheel so its bytes depend only on its file contents and ``epoch``."""
    with zipfile.ZipFile(src) as zf:
        entries = {i.filename: (zf.read(i), bool((i.external_attr >> 16) & 0o111))
                   for i in zf.infolist() if not i.is_dir()}
    records = [n for n in entries if n.count("/") == 1 and n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        raise SourceBuildError(f"{src.name}: the built wheel has {len(records)} RECORD files, expected one")
    record = records[0]
    rows = []
    for name in sorted(n for n in entries if n != record):
        data = entries[name][0]
        rows.append(RecordEntry(name, Hash.parse(record_hash(hashlib.sha256(data).digest())), len(data)).to_row())
    rows.append(RecordEntry(record, None, None).to_row())  # RECORD itself last, as wheel tools write it
    text = io.StringIO()
    csv.writer(text, delimiter=",", quotechar='"', lineterminator="\n").writerows(rows)  # installer's dialect
    entries[record] = (text.getvalue().encode(), False)
    date = time.gmtime(max(epoch, ZIP_EPOCH_MIN))[:6]

    def order(name: str) -> tuple[bool, bool, str]:
        top = name.split("/", 1)[0]
        return top.endswith(".dist-info"), name == record, name

    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
        for name in sorted(entries, key=order):
            data, executable = entries[name]
            zi = zipfile.ZipInfo(name, date_time=date)  # type: ignore[arg-type]
            zi.compress_type = zipfile.ZIP_STORED
            zi.create_system = 3
            zi.external_attr = (0o100755 if executable else 0o100644) << 16
            out.writestr(zi, data)
    os.replace(tmp, dest)


def build_wheel(*, name: str, version: str, sdist: Path, build_env: list[tuple[Wheel, Path]], backend: str,
                python: str, epoch: int, workdir: Path) -> Path:
    """Build ``sdist`` into a normalised wheel under ``workdir``; return its path.

    Raises MissingBuildRequires when the backend's dynamic requirements are not in ``build_env``
    (the lock stage then locks them too and builds again)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    label = f"{name} {version}"
    interp = find_interpreter(python, label)
    workdir.mkdir(parents=True, exist_ok=True)
    _requires, _backend, backend_path = read_build_system(sdist)
    (workdir / "src").mkdir()
    src = _extract(sdist, workdir / "src")
    env_dir = workdir / "env"
    env_dir.mkdir()
    site_dir = _install_env(build_env, env_dir, interp)
    dynamic = _run(interp, workdir, "requires", site_dir, src, workdir / "req", backend, backend_path, epoch, label)
    have = {w.name: w.version for w, _ in build_env}
    missing = []
    for r in dynamic if isinstance(dynamic, list) else []:
        req = Requirement(str(r))
        v = have.get(canonicalize_name(req.name))
        if v is None or not req.specifier.contains(v, prereleases=True):
            missing.append(str(r))
    if missing:
        raise MissingBuildRequires(label, missing)
    out = workdir / "out"
    filename = _run(interp, workdir, "wheel", site_dir, src, out, backend, backend_path, epoch, label)
    built = out / str(filename)
    wname, _wver, _build, tags = parse_wheel_filename(built.name)
    if canonicalize_name(wname) != canonicalize_name(name):
        raise SourceBuildError(f"{label}: the sdist built a wheel for {wname}, not {name}")
    if any(t.platform != "any" or t.abi != "none" for t in tags):
        raise SourceBuildError(
            f"{label} builds a platform-specific wheel ({built.name}); lockbuild builds only pure-Python sdists",
            hint=f"pin a version of {name} that publishes a wheel for the target, or exclude it",
        )
    final = workdir / "final"
    final.mkdir()
    normalise_wheel(built, final / built.name, epoch)
    return final / built.name


def ensure_built(w: Wheel, cache: Cache, *, python: str, jobs: int = 4) -> Path:
    """The verified built wheel of a locked source-only package: from the cache, or rebuilt from the
    locked sdist and build requirements. A rebuild that gives other bytes than the lock names is refused."""
    cached = cache.get(w.sha256, w.size)
    if cached is not None:
        return cached
    assert w.sdist is not None
    sd = w.sdist
    items = [Item(urls=(sd.url,), sha256=sd.sha256, size=sd.size, label=sd.filename)]
    items += [Item(urls=(b.url,), sha256=b.sha256, size=b.size, label=b.filename) for b in w.build_requires]
    blobs = fetch_all(cache, items, jobs=jobs)
    work = Path(tempfile.mkdtemp(prefix=f"sdist-{w.name}-", dir=cache.tmpdir()))
    try:
        sdist = work / sd.filename
        os.symlink(blobs[sd.sha256], sdist)
        built = build_wheel(name=w.name, version=w.version, sdist=sdist,
                            build_env=[(b, blobs[b.sha256]) for b in w.build_requires], backend=w.build_backend,
                            python=python, epoch=w.source_date_epoch, workdir=work / "build")
        digest, size = sha256_file(built)
        if digest != w.sha256 or size != w.size or built.name != w.filename:
            raise IntegrityError(
                f"{w.name} {w.version}: rebuilding the locked sdist {sd.filename} gave {built.name} {digest} "
                f"({size} bytes), but the lock pins {w.filename} {w.sha256} ({w.size} bytes)",
                hint="the build is not reproducible on this host; run `lockbuild lock --upgrade` here to re-pin it, "
                "or build where the lock was made",
            )
        cache.put_file(built, expected_sha256=w.sha256)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = cache.get(w.sha256, w.size)
    assert path is not None
    return path
