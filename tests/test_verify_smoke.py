"""verify catches tampering; smoke proves a real container serves (tiny real model, real engine)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tiny_project import run_lockbuild

pytestmark = pytest.mark.network

Mutate = Callable[[tarfile.TarInfo, bytes | None], tuple[tarfile.TarInfo, bytes | None] | None]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _write_blob(layout: Path, data: bytes) -> str:
    digest = _sha(data)
    _blob(layout, digest).write_bytes(data)
    return digest


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def repack(layout: Path, layer_name: str | None, mutate: Mutate | None = None,
           extra_layer: list[tuple[tarfile.TarInfo, bytes | None]] | None = None,
           append: list[tuple[tarfile.TarInfo, bytes | None]] | None = None) -> None:
    """Rewrite an OCI layout consistently (digests, diff_ids, manifest, index) after a change, the way
    an attacker with write access to a registry would: only the file contents tell the lie."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    for i, desc in enumerate(manifest["layers"]):
        if desc.get("annotations", {}).get("lockbuild.layer.name") != layer_name or mutate is None:
            continue
        entries = []
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(layout, desc["digest"]).read_bytes()))) as tar:
            for m in tar:
                data = tar.extractfile(m).read() if m.isreg() else None  # type: ignore[union-attr]
                out = mutate(m, data)
                if out is not None:
                    entries.append(out)
        raw = _tar(entries + (append or []))
        blob = gzip.compress(raw, compresslevel=1, mtime=0)  # an attacker needs no level 9; 5x faster
        desc.update(digest=_write_blob(layout, blob), size=len(blob))
        config["rootfs"]["diff_ids"][i] = _sha(raw)
    if extra_layer is not None:
        raw = _tar(extra_layer)
        blob = gzip.compress(raw, compresslevel=1, mtime=0)  # an attacker needs no level 9; 5x faster
        manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                   "digest": _write_blob(layout, blob), "size": len(blob)})
        config["rootfs"]["diff_ids"].append(_sha(raw))
        config["history"].append({"created_by": "tamper"})
    cfg = json.dumps(config).encode()
    manifest["config"].update(digest=_write_blob(layout, cfg), size=len(cfg))
    man = json.dumps(manifest).encode()
    index["manifests"][0].update(digest=_write_blob(layout, man), size=len(man))
    (layout / "index.json").write_text(json.dumps(index))


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _flip_in(path_suffix: str) -> Mutate:
    def mutate(m: tarfile.TarInfo, data: bytes | None) -> tuple[tarfile.TarInfo, bytes | None]:
        if data is not None and m.name.endswith(path_suffix):
            data = bytes([data[0] ^ 0x01]) + data[1:]
        return m, data
    return mutate


@pytest.fixture()
def layout_copy(tiny_project: dict, tmp_path: Path) -> Path:
    dest = tmp_path / "oci"
    shutil.copytree(tiny_project["dir"] / "out" / "oci", dest)
    return dest


def verify_json(project: dict, image: str | Path, ok: bool = True) -> dict:
    proc = run_lockbuild("verify", str(image), "--json", cwd=project["dir"], ok=ok)
    if not ok:
        assert proc.returncode == 13, proc.stderr
    return json.loads(proc.stdout)


def test_verify_passes_on_a_fresh_layout_and_archive(tiny_project: dict) -> None:
    for image in ("out/oci", "out/image.tar"):
        report = verify_json(tiny_project, image)
        assert report["ok"]
        assert report["checked"]["layers"] == len(tiny_project["image"]["layers"])
        assert [layer["expected"] for layer in report["layers"]] == [
            layer["diff_id"] for layer in tiny_project["image"]["layers"]]


def test_verify_catches_a_flipped_byte_in_a_layer_blob(tiny_project: dict, layout_copy: Path) -> None:
    manifest_digest = json.loads((layout_copy / "index.json").read_text())["manifests"][0]["digest"]
    layer = json.loads(_blob(layout_copy, manifest_digest).read_bytes())["layers"][-1]
    blob = _blob(layout_copy, layer["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    report = verify_json(tiny_project, layout_copy, ok=False)
    assert any(f["check"] == "digests" for f in report["findings"])


def test_verify_catches_one_edited_byte_in_a_python_file_even_when_repacked(tiny_project: dict,
                                                                            layout_copy: Path) -> None:
    repack(layout_copy, "python", _flip_in("dist-packages/click/core.py"))
    report = verify_json(tiny_project, layout_copy, ok=False)
    hits = [f for f in report["findings"] if f["path"].endswith("dist-packages/click/core.py")]
    assert hits and hits[0]["check"] == "layer" and hits[0]["expected"] != hits[0]["actual"]
    assert hits[0]["source"].startswith("wheel click-")


def test_verify_catches_an_edited_debian_file(tiny_project: dict, layout_copy: Path) -> None:
    repack(layout_copy, "debian", _flip_in("usr/lib/python3.11/json/__init__.py"))
    report = verify_json(tiny_project, layout_copy, ok=False)
    hits = [f for f in report["findings"] if f["check"] == "layer" and f["path"].endswith("json/__init__.py")]
    assert hits and hits[0]["source"].startswith("deb libpython3.11-stdlib_")


def test_verify_catches_a_stray_distribution(tiny_project: dict, layout_copy: Path) -> None:
    site = "usr/local/lib/python3.11/dist-packages"
    repack(layout_copy, None, extra_layer=[
        _file(f"{site}/evil-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: evil\nVersion: 1.0\n\n"),
        _file(f"{site}/evil-1.0.dist-info/RECORD", b""),
        _file(f"{site}/evil.py", b"import os\n"),
    ])
    report = verify_json(tiny_project, layout_copy, ok=False)
    extra = {f["path"] for f in report["findings"] if f["check"] == "layer" and "extra" in f["message"]}
    assert {f"/{site}/evil.py", f"/{site}/evil-1.0.dist-info/METADATA"} <= extra


def test_verify_catches_a_swapped_model_file(tiny_project: dict, layout_copy: Path) -> None:
    def swap(m: tarfile.TarInfo, data: bytes | None) -> tuple[tarfile.TarInfo, bytes | None]:
        if m.name.endswith("opt/ml/model/input_example.json"):
            data = b'{"columns": ["a", "b"], "data": [[9, 9]]}'
            m.size = len(data)
        return m, data
    repack(layout_copy, "model", swap)
    report = verify_json(tiny_project, layout_copy, ok=False)
    hits = [f for f in report["findings"] if f["check"] == "layer"]
    assert [f["path"] for f in hits] == ["/opt/ml/model/input_example.json"]
    assert hits[0]["source"].startswith("model file input_example.json")


def test_verify_against_another_lock_fails_on_config_and_config_layer(tiny_project: dict, tmp_path: Path) -> None:
    import dataclasses

    from lockbuild.lockfile.io import dumps, read_lock

    lock = read_lock(tiny_project["dir"] / "lockbuild.lock")
    other = tmp_path / "other.lock"
    other.write_text(dumps(dataclasses.replace(lock, runtime=dataclasses.replace(lock.runtime, port=8081))))
    proc = run_lockbuild("verify", "out/oci", "--lock", str(other), "--json", cwd=tiny_project["dir"], ok=False)
    report = json.loads(proc.stdout)
    paths = {f["path"] for f in report["findings"]}
    assert {"config.ExposedPorts", "config.Labels.io.lockbuild.lock.digest", "/opt/lockbuild/runtime.json",
            "/opt/lockbuild/lockbuild.lock"} <= paths


@pytest.mark.docker
def test_smoke_serves_real_predictions_and_removes_the_container(tiny_project: dict, docker_engine) -> None:  # type: ignore[no-untyped-def]
    before = {c.id for c in docker_engine.containers.list(all=True)}
    proc = run_lockbuild("smoke", "out/image.tar", "--json", cwd=tiny_project["dir"])
    report = json.loads(proc.stdout)
    assert report["ok"] and report["status"] == 200
    assert report["predictions"] == [[2.0, 4.0], [3.0, 5.0]]
    assert report["version"] == "3.17.2"
    assert {c.id for c in docker_engine.containers.list(all=True)} - before == set()  # its container is gone


@pytest.mark.docker
def test_smoke_reports_wrong_predictions_with_the_log_tail(tiny_project: dict, tmp_path: Path,
                                                           docker_engine) -> None:  # type: ignore[no-untyped-def]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"predictions": [[2.0, 4.0], [3.0, 6.0]]}))
    proc = run_lockbuild("smoke", "out/image.tar", "--expected", str(wrong), cwd=tiny_project["dir"], ok=False)
    assert proc.returncode == 14
    assert "predictions differ" in proc.stderr


@pytest.mark.docker
def test_verify_reads_an_image_from_the_engine(tiny_project: dict, docker_engine) -> None:  # type: ignore[no-untyped-def]
    with open(tiny_project["dir"] / "out" / "image.tar", "rb") as f:
        loaded = docker_engine.images.load(f)
    ref = loaded[0].tags[0]
    report = verify_json(tiny_project, f"docker-daemon:{ref}")
    assert report["ok"]


@pytest.mark.docker
def test_the_debian_runtime_runs_python_as_nonroot_with_ssl_sqlite_and_ld_cache(tiny_project: dict,
                                                                               docker_engine) -> None:  # type: ignore[no-untyped-def]
    with open(tiny_project["dir"] / "out" / "image.tar", "rb") as f:
        ref = docker_engine.images.load(f)[0].tags[0]
    code = ("import os, ssl, sqlite3, ctypes.util, zoneinfo, urllib.request; "
            "cas = ssl.create_default_context().cert_store_stats()['x509_ca']; "
            "print(os.getuid(), ctypes.util.find_library('ssl'), cas > 100, "
            "zoneinfo.ZoneInfo('Europe/Paris').key, sqlite3.sqlite_version_info >= (3, 0))")
    out = docker_engine.containers.run(ref, entrypoint=["/usr/bin/python3", "-c", code], network_mode="host",
                                       remove=True).decode()
    uid, lib, cas, tz, sqlite = out.split()
    assert uid == "65532" and lib.startswith("libssl.so") and cas == "True" and tz == "Europe/Paris"
    assert sqlite == "True"
