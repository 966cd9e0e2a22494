"""CycloneDX SBOM from a real lock: schema-valid (CycloneDX 1.6 strict JSON schema), complete, deterministic."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from pathlib import Path

import pytest
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL
from typer.testing import CliRunner

from lockbuild.audit import read_locked, sbom
from lockbuild.cli import app
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import sha256_bytes
from lockbuild.lockfile.model import Lock, Wheel

DATA = Path(__file__).parent / "data"
LOCK = DATA / "keras3.lock"
IMAGE = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def locked():  # type: ignore[no-untyped-def]
    return read_locked(LOCK)


@pytest.fixture(scope="module")
def doc(locked) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(sbom.sbom_json(locked.lock, locked.digest, image_digest=IMAGE))


def by_ref(doc: dict) -> dict[str, dict]:
    return {c["bom-ref"]: c for c in doc["components"]}


def prop(component: dict, name: str) -> str | None:
    return next((p["value"] for p in component.get("properties", []) if p["name"] == f"lockbuild:{name}"), None)


def test_sbom_validates_against_the_cyclonedx_1_6_schema(locked) -> None:  # type: ignore[no-untyped-def]
    for digest in (IMAGE, None):
        text = sbom.sbom_json(locked.lock, locked.digest, image_digest=digest)
        assert JsonStrictValidator(sbom.SCHEMA_VERSION).validate_str(text) is None
        assert sbom.validate(text) is None
    assert json.loads(text)["specVersion"] == "1.6"


def test_sbom_is_deterministic_and_clock_free(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    again = sbom.sbom_json(locked.lock, locked.digest, image_digest=IMAGE)
    assert again == sbom.sbom_json(locked.lock, locked.digest, image_digest=IMAGE)
    assert json.loads(again) == doc
    serial = doc["serialNumber"]
    assert serial.startswith("urn:uuid:") and uuid.UUID(serial[9:]).version == 5
    assert doc["metadata"]["timestamp"].startswith(locked.lock.created.removesuffix("Z"))
    other = json.loads(sbom.sbom_json(locked.lock, "sha256:" + "0" * 64, image_digest=IMAGE))
    assert other["serialNumber"] != serial  # derived from the lock digest


def test_every_deb_is_listed_with_purl_hash_source_and_url(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    comps = by_ref(doc)
    lock: Lock = locked.lock
    assert lock.debian.packages
    for d in lock.debian.packages:
        ref = f"pkg:deb/debian/{d.name}@{d.version}?arch={d.architecture}&distro=debian-bookworm"
        purl = PackageURL.from_string(ref).to_string()
        c = comps[purl]
        assert c["purl"] == purl and c["version"] == d.version
        assert c["hashes"] == [{"alg": "SHA-256", "content": d.sha256.removeprefix("sha256:")}]
        assert prop(c, "deb:source") == (d.source or None)
        urls = [r["url"] for r in c["externalReferences"]]
        assert urls[0].endswith(d.filename) and any("snapshot.debian.org" in u for u in urls)


def test_the_interpreter_is_marked(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    t = locked.lock.target
    interp = [c for c in doc["components"] if prop(c, "role") == "interpreter"]
    assert len(interp) == 1
    assert interp[0]["name"] == t.interpreter_package and interp[0]["version"] == t.interpreter_deb_version
    assert prop(interp[0], "python.version") == t.python


def test_every_wheel_is_listed_with_purl_hash_and_distribution_url(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    comps = by_ref(doc)
    for w in locked.lock.python.packages:
        c = comps[f"pkg:pypi/{w.name}@{w.version}"]
        assert c["hashes"] == [{"alg": "SHA-256", "content": w.sha256.removeprefix("sha256:")}]
        assert c["externalReferences"] == [{"type": "distribution", "url": w.url}]
        assert "licenses" not in c  # no cache given: no licenses, never guessed


def test_model_component_has_type_digest_and_files(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    m = locked.lock.model
    model = by_ref(doc)[sbom.MODEL_REF]
    assert model["type"] == "machine-learning-model"
    assert prop(model, "model:tree-digest") == m.tree_digest
    assert prop(model, "model:resolved-uri") == m.resolved_uri
    files = {f["name"]: f["hashes"][0]["content"] for f in model["components"]}
    assert files == {f.path: f.sha256.removeprefix("sha256:") for f in m.files}


def test_metadata_component_is_the_image_and_depends_on_everything(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    image = doc["metadata"]["component"]
    assert image["type"] == "container" and image["name"] == locked.lock.image_name
    assert image["version"] == IMAGE and image["hashes"][0]["content"] == IMAGE.split(":")[1]
    assert PackageURL.from_string(image["purl"]).type == "oci"
    edges = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert set(edges[sbom.IMAGE_REF]) == {c["bom-ref"] for c in doc["components"]}
    assert all(not deps for ref, deps in edges.items() if ref != sbom.IMAGE_REF)  # no invented edges
    props = {p["name"]: p["value"] for p in doc["metadata"]["properties"]}
    assert props["lockbuild:lock.digest"] == locked.digest
    assert doc["metadata"]["tools"]["components"][0]["name"] == "lockbuild"


# -- licenses from cached wheels ---------------------------------------------------------------------


def fake_wheel(name: str, headers: list[tuple[str, str]]) -> bytes:
    meta = "Metadata-Version: 2.4\n" + f"Name: {name}\nVersion: 1.0\n" + "".join(f"{k}: {v}\n" for k, v in headers)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
        z.writestr(f"{name}/__init__.py", "")
    return buf.getvalue()


def cached_wheel(cache: Cache, name: str, headers: list[tuple[str, str]]) -> Wheel:
    data = fake_wheel(name, headers)
    cache.put_bytes(data)
    return Wheel(name=name, version="1.0", filename=f"{name}-1.0-py3-none-any.whl",
                 url=f"https://files.example/{name}-1.0-py3-none-any.whl", size=len(data), sha256=sha256_bytes(data))


@pytest.mark.parametrize(("headers", "expected"), [
    ([("License-Expression", "Apache-2.0 OR MIT")],
     [{"expression": "Apache-2.0 OR MIT", "acknowledgement": "declared"}]),
    ([("License", "MIT")], [{"license": {"id": "MIT", "acknowledgement": "declared"}}]),
    ([("License", "Copyright (c) 2020\n  long text"), ("Classifier", "License :: OSI Approved :: BSD License")],
     [{"license": {"name": "BSD License", "acknowledgement": "declared"}}]),
    ([("Classifier", "Programming Language :: Python")], None),
])
def test_wheel_licenses_come_from_cached_metadata(tmp_path: Path, headers, expected) -> None:  # type: ignore[no-untyped-def]
    cache = Cache(tmp_path / "cache")
    w = cached_wheel(cache, "demo", headers)
    comp = json.loads(sbom.render(sbom_bom_with(cache, w)))["components"]
    demo = next(c for c in comp if c["name"] == "demo")
    assert demo.get("licenses") == expected
    assert cache.meta_get(sbom.LICENSE_META, w.sha256) is not None  # memoised: later runs skip the re-hash


def sbom_bom_with(cache: Cache, wheel: Wheel):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    lock = read_locked(LOCK).lock
    lock = replace(lock, python=replace(lock.python, packages=(wheel,)))
    return sbom.build_bom(lock, "sha256:" + "1" * 64, cache=cache)


def test_uncached_wheel_gets_no_license(tmp_path: Path, locked) -> None:  # type: ignore[no-untyped-def]
    w = locked.lock.python.packages[0]
    assert sbom.wheel_licenses(w, Cache(tmp_path / "empty")) is None


# -- command ------------------------------------------------------------------------------------------


def test_sbom_command_writes_the_file_and_reports_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKBUILD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sbom.cdx.json"
    result = CliRunner().invoke(app, ["sbom", "--lock", str(LOCK), "-o", str(out), "--image-digest", IMAGE[7:],
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["image_digest"] == IMAGE and summary["sbom"] == str(out)
    assert sbom.validate(out.read_text()) is None
    assert not list(tmp_path.glob(".sbom.cdx.json.*"))  # atomic: no temp file left behind
