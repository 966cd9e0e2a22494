"""Stable re-locks: a re-lock moves nothing it was not asked to move.

A tiny PEP 691 JSON index on 127.0.0.1 (python's http.server, real wheels with upload times, which
uv's exclude-newer needs) serves `lbpin`. Between two locks under the SAME cutoff a version with an
OLDER upload time appears (mirrors and proxies backfill): a fresh resolution would take it, a
re-lock without --upgrade keeps the pin and says that nothing moved; `--upgrade-package lbpin`
moves exactly that pin and says why. The rest of the environment comes from PyPI.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lockbuild.lockfile.io import read_lock
from tests.lockbuild_testing import make_project, run_cli, set_model_requirements, shared_cache

pytestmark = pytest.mark.network


def make_wheel(name: str, version: str) -> bytes:
    """A real pure-Python wheel (METADATA, WHEEL, RECORD) that uv can read and install."""
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: >=3.9\n").encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=(2026, 1, 1, 0, 0, 0))
            z.writestr(info, data)
    return buf.getvalue()


class LocalIndex:
    """A PEP 691 JSON simple index served from a directory; `add` publishes a version with an upload time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, list[dict]] = {}
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.respond(body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                self.respond(body=False)

            def respond(self, body: bool) -> None:
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                if len(parts) == 2 and parts[0] == "simple" and parts[1] in index.files:
                    data = json.dumps({"meta": {"api-version": "1.1"}, "name": parts[1],
                                       "files": index.files[parts[1]]}).encode()
                    ctype = "application/vnd.pypi.simple.v1+json"
                elif len(parts) == 2 and parts[0] == "files" and (index.root / parts[1]).is_file():
                    data, ctype = (index.root / parts[1]).read_bytes(), "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "max-age=0, must-revalidate")
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, name: str, version: str, uploaded: str) -> None:
        data = make_wheel(name, version)
        filename = f"{name}-{version}-py3-none-any.whl"
        (self.root / filename).write_bytes(data)
        self.files.setdefault(name, []).append({
            "filename": filename, "url": f"../../files/{filename}", "size": len(data),
            "hashes": {"sha256": hashlib.sha256(data).hexdigest()}, "upload-time": uploaded,
            "requires-python": ">=3.9"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def index(tmp_path: Path) -> Iterator[LocalIndex]:
    (tmp_path / "index").mkdir()
    idx = LocalIndex(tmp_path / "index")
    yield idx
    idx.close()


def pins(project: Path) -> dict[str, str]:
    return {w.name: w.version for w in read_lock(project / "lockbuild.lock").python.packages}


def test_changed_index_under_the_same_cutoff_moves_no_pin(index: LocalIndex, tmp_path: Path,
                                                          tmp_path_factory: pytest.TempPathFactory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKBUILD_CACHE", str(shared_cache(tmp_path_factory)))
    index.add("lbpin", "1.0", "2026-01-01T00:00:00Z")
    project = make_project(tmp_path / "p", '[model]\nuri = "model"\n')
    set_model_requirements(project / "model", ["mlflow==3.17.2", "lbpin", f"--extra-index-url {index.url}"])
    r = run_cli("lock", "--spec", str(project))
    assert r.code == 0, r.text
    first = pins(project)
    assert first["lbpin"] == "1.0"
    cutoff = read_lock(project / "lockbuild.lock").python.exclude_newer

    # the index backfills 1.1 with an upload time before the lock's cutoff
    index.add("lbpin", "1.1", "2026-02-01T00:00:00Z")
    fresh = Path(shutil.copytree(project, tmp_path / "fresh"))
    (fresh / "lockbuild.lock").unlink()
    (fresh / "lockbuild.toml").write_text(f'[model]\nuri = "model"\n[python]\nexclude-newer = "{cutoff}"\n')
    assert run_cli("lock", "--spec", str(fresh)).code == 0
    assert pins(fresh)["lbpin"] == "1.1"  # a from-scratch resolution at the same cutoff would move it

    # a model-only change: re-lock without --upgrade moves nothing
    (project / "model" / "extra.txt").write_text("a new model file\n")
    r = run_cli("lock", "--spec", str(project))
    assert r.code == 0, r.text
    assert "no pin moved" in r.text and "written" in r.text
    assert pins(project) == first
    assert read_lock(project / "lockbuild.lock").python.exclude_newer == cutoff

    # asked by name: exactly that pin moves (and the cutoff, to now), and the output says which and why
    r = run_cli("lock", "--upgrade-package", "lbpin", "--json", "--spec", str(project))
    assert r.code == 0, r.text
    moved = {m["name"]: m for m in r.json["moves"]}
    assert moved["lbpin"] == {"kind": "python", "name": "lbpin", "old": "1.0", "new": "1.1",
                              "why": "--upgrade-package lbpin"}
    assert set(moved) == {"lbpin", "exclude-newer"}
    after = pins(project)
    assert after["lbpin"] == "1.1"
    assert {n: v for n, v in after.items() if n != "lbpin"} == {n: v for n, v in first.items() if n != "lbpin"}

    # a Debian name moves the Debian archive state to today's, never a Python pin or the cutoff
    cutoff = read_lock(project / "lockbuild.lock").python.exclude_newer
    r = run_cli("lock", "--upgrade-package", "libssl3", "--json", "--spec", str(project))
    assert r.code == 0, r.text
    assert pins(project) == after and read_lock(project / "lockbuild.lock").python.exclude_newer == cutoff
    assert all(m["kind"] == "debian" and "--upgrade-package libssl3" in m["why"] for m in r.json["moves"])

    # a new Debian root is closed over the locked InRelease files: only additions, no pin moves
    before = read_lock(project / "lockbuild.lock").debian
    (project / "lockbuild.toml").write_text('[model]\nuri = "model"\n[target]\npackages = ["netcat-openbsd"]\n')
    r = run_cli("lock", "--json", "--spec", str(project))
    assert r.code == 0, r.text
    assert r.json["moves"] and all(m["kind"] == "debian" and m["old"] is None for m in r.json["moves"]), r.json
    after_deb = read_lock(project / "lockbuild.lock").debian
    assert after_deb.suites == before.suites
    old_debs = {d.name: d.version for d in before.packages}
    assert old_debs.items() <= {d.name: d.version for d in after_deb.packages}.items()
    assert pins(project) == after

def test_uv_started_early_is_used_only_for_the_target_debian_gives(tmp_path: Path,
                                                                  tmp_path_factory: pytest.TempPathFactory,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """lock starts uv on the previous lock's target while Debian resolves (lock/environment.py): the
    result is used when Debian gives that target; a previous lock naming another Python has its early
    run discarded and uv run again for the real target, with the same lock as a result."""
    from dataclasses import replace

    from lockbuild.fetch.cache import Cache
    from lockbuild.lock import environment
    from lockbuild.lock.create import make_lock
    from lockbuild.spec import load_spec

    monkeypatch.setenv("LOCKBUILD_CACHE", str(shared_cache(tmp_path_factory)))
    project = make_project(tmp_path / "p", '[model]\nuri = "model"\n')
    r = run_cli("lock", "--spec", str(project))
    assert r.code == 0, r.text
    previous, spec = read_lock(project / "lockbuild.lock"), load_spec(project)
    asked: list[str] = []
    real = environment.PythonRequest.resolve

    def spy(self: environment.PythonRequest, *args: object, **kwargs: object) -> object:
        asked.append(self.target.python)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(environment.PythonRequest, "resolve", spy)
    same = make_lock(spec, previous=previous, upgrade=True, cache=Cache())
    used = list(asked)
    assert set(used) == {previous.target.python}  # the early run, then any overlap re-resolution
    asked.clear()
    other = "3.11.1" if previous.target.python != "3.11.1" else "3.11.0"
    moved = make_lock(spec, previous=replace(previous, target=replace(previous.target, python=other)),
                      upgrade=True, cache=Cache())
    assert asked[0] == other and set(asked[1:]) == {previous.target.python}
    assert len(asked) == len(used) + 1  # the early run was discarded, uv ran again for Debian's target
    assert moved.lock.target == same.lock.target and moved.lock.python.packages == same.lock.python.packages


def test_upgrade_package_refused_with_check(tmp_path: Path) -> None:
    (tmp_path / "lockbuild.toml").write_text('[model]\nuri = "model"\n')
    r = run_cli("lock", "--check", "--upgrade-package", "numpy", "--spec", str(tmp_path))
    assert r.code == 3 and "--upgrade-package" in r.text



def test_moves_name_each_changed_pin_and_the_reason() -> None:
    """The move report alone (no resolution): versions, additions, removals, Debian and cutoff."""
    import dataclasses

    from lockbuild.lock.create import moves
    from tests.lockbuild_testing import EXAMPLES

    old = read_lock(EXAMPLES / "keras3" / "lockbuild.lock")
    pkgs = {w.name: w for w in old.python.packages}
    new_py = [dataclasses.replace(w, version="99.0") if w.name == "numpy" else w
              for w in old.python.packages if w.name != "six"]
    new_py.append(dataclasses.replace(pkgs["wheel"] if "wheel" in pkgs else pkgs["numpy"], name="lbextra",
                                      version="1.0"))
    new = dataclasses.replace(old, python=dataclasses.replace(
        old.python, packages=tuple(new_py), requirements=(*old.python.requirements, "numpy>=99")))
    got = {(m.kind, m.name): m for m in moves(old, new, upgrade=False)}
    assert str(got["python", "numpy"]).endswith("(the requirement 'numpy>=99' excludes "
                                                f"{pkgs['numpy'].version})")
    assert got["python", "lbextra"].old is None and got["python", "lbextra"].new == "1.0"
    if "six" in pkgs:
        assert got["python", "six"].new is None
    assert all(k[0] == "python" for k in got)
    got = moves(old, new, upgrade=False, upgrade_packages=("numpy",))
    assert next(m for m in got if m.name == "numpy").why == "--upgrade-package numpy"
    assert moves(old, old, upgrade=False) == []
