"""SLSA v1 provenance: parsed strictly by the in-toto attestation protobuf bindings, complete, deterministic."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from typer.testing import CliRunner

from lockbuild import __version__
from lockbuild.audit import provenance, read_locked
from lockbuild.cli import app
from lockbuild.fetch.cache import Cache
from lockbuild.oci.image import Image
from lockbuild.oci.layout import write_oci_layout

DATA = Path(__file__).parent / "data"
LOCK = DATA / "keras3.lock"
IMAGE = "sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def locked():  # type: ignore[no-untyped-def]
    return read_locked(LOCK)


@pytest.fixture(scope="module")
def doc(locked) -> dict:  # type: ignore[no-untyped-def]
    return provenance.statement(locked.lock, locked.digest, IMAGE)


def test_statement_and_predicate_parse_strictly(doc: dict) -> None:
    text = provenance.render(doc)
    pb = json_format.Parse(text, statement_pb2.Statement())  # unknown fields are errors
    Statement.copy_from_pb(pb).validate()
    predicate = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance())
    assert predicate.run_details.builder.id == f"https://lockbuild.dev/builder@{__version__}"
    for rd in predicate.build_definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(rd).validate()
        assert len(rd.digest["sha256"]) == 64


def test_statement_header_and_subject(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    assert doc["_type"] == "https://in-toto.io/Statement/v1"
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    assert doc["subject"] == [{"name": locked.lock.image_name, "digest": {"sha256": IMAGE[7:]}}]
    build = doc["predicate"]["buildDefinition"]
    assert build["buildType"].startswith("https://lockbuild.dev/")
    assert build["externalParameters"]["lockDigest"] == locked.digest
    assert build["externalParameters"]["spec"] == "lockbuild.toml"


def test_resolved_dependencies_cover_every_fetched_artifact(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    lock = locked.lock
    deps = doc["predicate"]["buildDefinition"]["resolvedDependencies"]
    by_digest = {"sha256:" + d["digest"]["sha256"]: d for d in deps}
    assert deps[0]["name"] == "lockbuild.lock" and deps[0]["digest"]["sha256"] == locked.digest[7:]
    for w in lock.python.packages:
        assert by_digest[w.sha256]["uri"] == w.url
    suites = {s.name: s for s in lock.debian.suites}
    for d in lock.debian.packages:
        entry = by_digest[d.sha256]
        assert entry["uri"] == f"{suites[d.suite].archive}/{d.filename}"
        assert entry["annotations"]["snapshot"].startswith("https://snapshot.debian.org/archive/")
    for s in lock.debian.suites:
        assert by_digest[s.inrelease_sha256]["uri"].endswith(f"/dists/{s.name}/InRelease")
    for f in lock.model.files:
        assert by_digest[f.sha256]["name"] == f"model/{f.path}"
    expected = 1 + len(lock.debian.suites) + len(lock.debian.packages) + len(lock.python.packages) \
        + len(lock.model.files)
    assert len(deps) == expected


def test_run_details_are_deterministic(locked, doc: dict) -> None:  # type: ignore[no-untyped-def]
    meta = doc["predicate"]["runDetails"]["metadata"]
    assert meta["startedOn"] == meta["finishedOn"] == locked.lock.created
    assert meta["invocationId"].startswith("urn:uuid:")
    again = provenance.statement(locked.lock, locked.digest, IMAGE)
    assert provenance.render(again) == provenance.render(doc)
    other = provenance.statement(locked.lock, locked.digest, "sha256:" + "ef" * 32)
    assert other["predicate"]["runDetails"]["metadata"]["invocationId"] != meta["invocationId"]


@pytest.mark.parametrize(("uri", "expected"), [
    ("models:/churn/3", "models:/churn/3/MLmodel"),
    ("runs:/abc/model", "runs:/abc/model/MLmodel"),
    ("/srv/models/a b", "file:///srv/models/a%20b/MLmodel"),
    ("./model", None),
])
def test_model_file_uris(locked, uri: str, expected: str | None) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    model = replace(locked.lock.model, resolved_uri=uri)
    assert provenance.model_file_uri(model, "MLmodel") == expected


# -- command ------------------------------------------------------------------------------------------


def test_command_reads_the_digest_from_an_oci_layout(tmp_path: Path, tiny_image: Callable[..., Image]) -> None:
    cache = Cache(tmp_path / "cache")
    img = tiny_image(cache, tmp_path / "stage")
    write_oci_layout(img, tmp_path / "oci", cache, ref_name="v1")
    out = tmp_path / "provenance.intoto.json"
    result = CliRunner().invoke(app, ["provenance", "--lock", str(LOCK), "--image", str(tmp_path / "oci"),
                                      "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["subject"][0]["digest"]["sha256"] == img.manifest_digest[7:]
    assert json.loads(result.stdout)["subject"] == written["subject"]


def test_command_needs_a_digest(tmp_path: Path) -> None:
    from lockbuild.errors import LockbuildError

    result = CliRunner().invoke(app, ["provenance", "--lock", str(LOCK), "-o", str(tmp_path / "p.json")])
    assert isinstance(result.exception, LockbuildError) and "digest" in result.exception.message
    bad = CliRunner().invoke(app, ["provenance", "--lock", str(LOCK), "--image-digest", "sha256:nothex"])
    assert isinstance(bad.exception, LockbuildError) and bad.exception.hint
    assert not (tmp_path / "p.json").exists()
