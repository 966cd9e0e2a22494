"""MLflow model intake: local directories, runs:/ and models:/ URIs against a real `mlflow server`,
and what the model says about itself (MLmodel, requirements with -r/-c, conda.yaml fallback)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockbuild.digest import check
from lockbuild.errors import ModelError, TrackingServerError
from lockbuild.model.intake import ModelSource, fetch_model
from lockbuild.model.metadata import keras_major, parse_requirements, read_model
from tests.lockbuild_testing import KERAS3_MODEL, LEGACY_MODEL, copy_model
from tests.mlflow_server import Registered, closed_port, register_model_dir

KERAS3_REQS = ("mlflow==3.17.2", "cloudpickle==3.1.3", "tensorflow-cpu==2.21.0", "keras==3.15.1", "numpy==2.4.6")


@pytest.fixture()
def model_copy(tmp_path: Path) -> Path:
    return copy_model(KERAS3_MODEL, tmp_path / "model")


@pytest.fixture(scope="module")
def registered(mlflow_server: str) -> Registered:
    """The Keras 3 example as version 1 of `intake-keras3`, alias @champion."""
    return register_model_dir(mlflow_server, KERAS3_MODEL, "intake-keras3")


@pytest.fixture()
def fetched() -> Iterator[list[ModelSource]]:
    sources: list[ModelSource] = []
    yield sources
    for s in sources:
        s.cleanup()


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


# -- local directories -------------------------------------------------------------------------
def test_local_directory_is_relative_to_the_spec_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    copy_model(KERAS3_MODEL, project / "models" / "churn")
    monkeypatch.chdir(tmp_path)  # somewhere else
    src = fetch_model("models/churn", tracking_uri=None, base_dir=project)
    assert src.path == (project / "models" / "churn").resolve()
    assert src.resolved_uri == "models/churn" and src.tmpdir is None
    src.cleanup()
    assert (project / "models" / "churn" / "MLmodel").is_file()  # a local model is never removed


def test_absolute_path_and_file_uri_are_local(model_copy: Path) -> None:
    assert fetch_model(str(model_copy), tracking_uri=None, base_dir=Path("/")).path == model_copy
    assert fetch_model(f"file://{model_copy}", tracking_uri=None, base_dir=Path("/")).path == model_copy


def test_directory_without_mlmodel_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "requirements.txt").write_text("numpy\n")
    with pytest.raises(ModelError) as e:
        fetch_model("model", tracking_uri=None, base_dir=tmp_path)
    assert "no MLmodel file" in e.value.message and str(tmp_path / "model") in e.value.message
    assert e.value.exit_code == 4 and not isinstance(e.value, TrackingServerError)
    with pytest.raises(ModelError):
        fetch_model("does-not-exist", tracking_uri=None, base_dir=tmp_path)


# -- what the model says about itself -----------------------------------------------------------
def test_keras3_example_metadata() -> None:
    info = read_model(KERAS3_MODEL)
    assert info.flavors == ("python_function", "tensorflow")
    assert info.loader_module == "mlflow.tensorflow"
    assert (info.mlflow_version, info.python_version) == ("3.17.2", "3.11.7")
    assert info.requirements == KERAS3_REQS and info.constraints == ()
    assert info.env_source == "requirements.txt"
    assert info.saved_format == "keras" and keras_major(info.requirements, info.saved_format) == 3
    assert info.input_example == "serving_input_example.json"
    paths = [f[0] for f in info.files]
    assert paths == sorted(paths) and "data/model.keras" in paths and "MLmodel" in paths
    assert all(check(sha) == sha for _, _, sha in info.files)  # sha256:<hex>, the one in-memory form
    assert info.tree_digest == read_model(KERAS3_MODEL).tree_digest  # a function of the bytes


def test_legacy_savedmodel_example_is_keras_2() -> None:
    info = read_model(LEGACY_MODEL)
    assert info.mlflow_version.startswith("2.") and info.saved_format == "savedmodel"
    assert keras_major(info.requirements, info.saved_format) == 2
    assert any(r.startswith("tensorflow-cpu==2.15") for r in info.requirements)


def test_tree_digest_changes_with_one_byte(model_copy: Path) -> None:
    before = read_model(model_copy).tree_digest
    data = bytearray((model_copy / "data" / "model.keras").read_bytes())
    data[100] ^= 1
    (model_copy / "data" / "model.keras").write_bytes(bytes(data))
    assert read_model(model_copy).tree_digest != before


def test_requirements_includes_and_constraints_are_expanded(model_copy: Path) -> None:
    (model_copy / "requirements.txt").write_text(
        "# logged by hand\n"
        "--index-url https://example.invalid/simple\n"
        "mlflow==3.17.2\n"
        "-r extra/serving.txt\n"
        "-c constraints.txt\n"
        "numpy==2.4.6  # pinned\n"
    )
    (model_copy / "extra").mkdir()
    (model_copy / "extra" / "serving.txt").write_text("keras==3.15.1\n--requirement=more.txt\n")
    (model_copy / "extra" / "more.txt").write_text("cloudpickle==3.1.3\n-r serving.txt\n")  # a cycle
    (model_copy / "constraints.txt").write_text("protobuf<7\n-r extra/pins.txt\n")
    (model_copy / "extra" / "pins.txt").write_text("h5py<4\n")
    info = read_model(model_copy)
    assert info.requirements == ("mlflow==3.17.2", "keras==3.15.1", "cloudpickle==3.1.3", "numpy==2.4.6")
    assert info.constraints == ("protobuf<7", "h5py<4")


def test_constraints_txt_beside_the_model_is_used(model_copy: Path) -> None:
    (model_copy / "constraints.txt").write_text("protobuf<7\n")
    assert read_model(model_copy).constraints == ("protobuf<7",)


def test_missing_included_file_is_a_model_error(model_copy: Path) -> None:
    (model_copy / "requirements.txt").write_text("numpy\n-r missing.txt\n")
    with pytest.raises(ModelError) as e:
        parse_requirements(model_copy / "requirements.txt")
    assert "missing.txt is referenced but missing" in e.value.message


def test_conda_yaml_is_the_fallback_environment(model_copy: Path) -> None:
    (model_copy / "requirements.txt").unlink()
    info = read_model(model_copy)
    assert info.env_source == "conda.yaml"
    assert info.requirements == KERAS3_REQS and info.python_version == "3.11.7"


def test_model_without_any_environment_file_is_a_model_error(model_copy: Path) -> None:
    for name in ("requirements.txt", "conda.yaml", "python_env.yaml"):
        (model_copy / name).unlink()
    with pytest.raises(ModelError) as e:
        read_model(model_copy)
    assert "logged no environment" in e.value.message
    assert "[python]" in (e.value.hint or "")


def test_model_that_does_not_say_its_python_is_a_model_error(model_copy: Path) -> None:
    (model_copy / "python_env.yaml").unlink()
    (model_copy / "conda.yaml").unlink()
    mlmodel = model_copy / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("    python_version: 3.11.7\n", ""))
    with pytest.raises(ModelError) as e:
        read_model(model_copy)
    assert "which Python" in e.value.message and '[target] python = "3.X"' in (e.value.hint or "")


def test_model_without_python_function_flavor_cannot_be_served(model_copy: Path) -> None:
    (model_copy / "MLmodel").write_text("flavors:\n  tensorflow:\n    data: data\nmlflow_version: 3.17.2\n")
    with pytest.raises(ModelError) as e:
        read_model(model_copy)
    assert "python_function" in e.value.message


def test_mlmodel_that_is_not_yaml_is_a_model_error(model_copy: Path) -> None:
    (model_copy / "MLmodel").write_text("flavors: [unclosed\n")
    with pytest.raises(ModelError) as e:
        read_model(model_copy)
    assert "cannot parse MLmodel" in e.value.message


# -- the tracking server -------------------------------------------------------------------------
def test_runs_uri_downloads_the_run_artifact(mlflow_server: str, registered: Registered,
                                             fetched: list[ModelSource]) -> None:
    uri = f"runs:/{registered.run_id}/model"
    src = fetch_model(uri, tracking_uri=mlflow_server, base_dir=Path("/"))
    fetched.append(src)
    assert (src.uri, src.resolved_uri, src.run_id) == (uri, uri, registered.run_id)
    assert same_tree(src.path, KERAS3_MODEL)
    assert read_model(src.path).requirements == KERAS3_REQS
    src.cleanup()
    assert src.tmpdir is not None and not src.tmpdir.exists()  # the download is removed


def test_models_version_uri_downloads_that_version(mlflow_server: str, registered: Registered,
                                                   fetched: list[ModelSource]) -> None:
    uri = f"models:/{registered.name}/{registered.version}"
    src = fetch_model(uri, tracking_uri=mlflow_server, base_dir=Path("/"))
    fetched.append(src)
    assert src.resolved_uri == uri
    assert (src.name, src.version, src.run_id) == (registered.name, registered.version, registered.run_id)
    assert same_tree(src.path, KERAS3_MODEL)


def test_models_alias_resolves_to_the_concrete_version(mlflow_server: str, registered: Registered,
                                                       fetched: list[ModelSource]) -> None:
    src = fetch_model(f"models:/{registered.name}@champion", tracking_uri=mlflow_server, base_dir=Path("/"))
    fetched.append(src)
    assert src.uri == f"models:/{registered.name}@champion"
    assert src.resolved_uri == f"models:/{registered.name}/{registered.version}"
    assert src.version == registered.version and src.run_id == registered.run_id
    assert same_tree(src.path, KERAS3_MODEL)


def test_tracking_uri_comes_from_the_environment_when_the_spec_has_none(
        mlflow_server: str, registered: Registered, fetched: list[ModelSource],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    src = fetch_model(f"models:/{registered.name}@champion", tracking_uri=None, base_dir=Path("/"))
    fetched.append(src)
    assert src.resolved_uri == f"models:/{registered.name}/{registered.version}"


def test_alias_that_is_not_set_is_a_clear_model_error(mlflow_server: str, registered: Registered) -> None:
    with pytest.raises(ModelError) as e:
        fetch_model(f"models:/{registered.name}@staging", tracking_uri=mlflow_server, base_dir=Path("/"))
    assert type(e.value) is ModelError
    assert f"alias @staging is not set on registered model '{registered.name}'" in e.value.message
    assert "set_registered_model_alias" in (e.value.hint or "")


@pytest.mark.parametrize("uri", ["models:/no-such-model/1", "models:/no-such-model@champion"])
def test_model_name_that_does_not_exist_is_a_model_error(mlflow_server: str, uri: str) -> None:
    with pytest.raises(ModelError) as e:
        fetch_model(uri, tracking_uri=mlflow_server, base_dir=Path("/"))
    assert type(e.value) is ModelError and e.value.exit_code == 4
    assert f"model not found: {uri}" in e.value.message and "no-such-model" in e.value.message
    assert mlflow_server in (e.value.hint or "")


def test_version_that_does_not_exist_is_a_model_error(mlflow_server: str, registered: Registered) -> None:
    with pytest.raises(ModelError) as e:
        fetch_model(f"models:/{registered.name}/99", tracking_uri=mlflow_server, base_dir=Path("/"))
    assert type(e.value) is ModelError and "model not found" in e.value.message


def test_run_that_does_not_exist_is_a_model_error(mlflow_server: str) -> None:
    with pytest.raises(ModelError) as e:
        fetch_model("runs:/0123456789abcdef0123456789abcdef/model", tracking_uri=mlflow_server, base_dir=Path("/"))
    assert type(e.value) is ModelError and "0123456789abcdef0123456789abcdef" in e.value.message


def test_run_artifact_path_without_a_model_is_a_model_error(mlflow_server: str, registered: Registered) -> None:
    with pytest.raises(ModelError) as e:
        fetch_model(f"runs:/{registered.run_id}/model/data", tracking_uri=mlflow_server, base_dir=Path("/"))
    assert "holds no MLmodel file" in e.value.message


def test_unsupported_uri_scheme_is_a_model_error(mlflow_server: str) -> None:
    with pytest.raises(ModelError) as e:
        fetch_model("s3://bucket/model", tracking_uri=mlflow_server, base_dir=Path("/"))
    assert "unsupported model URI" in e.value.message and "models:/<name>@<alias>" in (e.value.hint or "")


def test_unreachable_tracking_server_fails_fast_with_its_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)  # lockbuild's own defaults, not the caller's
    import mlflow.artifacts
    import mlflow.tracking  # noqa: F401  (the clock below times the requests, not the imports)

    server = f"http://127.0.0.1:{closed_port()}"
    for uri in ("models:/churn@champion", "models:/churn/1", "runs:/0123456789abcdef/model"):
        start = time.monotonic()
        with pytest.raises(TrackingServerError) as e:
            fetch_model(uri, tracking_uri=server, base_dir=Path("/"))
        assert time.monotonic() - start < 30, uri
        assert server in e.value.message and "tracking-uri" in (e.value.hint or "")
        assert e.value.exit_code == 5 != ModelError.exit_code


def test_downloaded_model_is_removed_on_cleanup_even_when_unreadable(
        mlflow_server: str, tmp_path: Path, fetched: list[ModelSource]) -> None:
    broken = copy_model(KERAS3_MODEL, tmp_path / "broken")
    for name in ("requirements.txt", "conda.yaml", "python_env.yaml"):
        (broken / name).unlink()
    reg = register_model_dir(mlflow_server, broken, "intake-no-env")
    src = fetch_model(f"models:/{reg.name}@champion", tracking_uri=mlflow_server, base_dir=Path("/"))
    fetched.append(src)
    with pytest.raises(ModelError) as e:
        read_model(src.path)
    assert "logged no environment" in e.value.message
    src.cleanup()
    assert src.tmpdir is not None and not src.tmpdir.exists()
    shutil.rmtree(broken)


# -- hardening: no files in the user's directory, no reads outside the model ---------------------
@pytest.mark.parametrize("uri", ["runs:/0123abcd/model", "models:/churn/1", "models:/churn@champion"])
def test_remote_uri_without_tracking_server_writes_nothing_in_cwd(
        uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrackingServerError) as e:
        fetch_model(uri, tracking_uri=None, base_dir=tmp_path)
    assert "needs an MLflow tracking server" in e.value.message and "tracking-uri" in (e.value.hint or "")
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/


@pytest.mark.parametrize("kind", ["etc-passwd", "parent-outside", "dir-link", "dangling", "mlmodel-out"])
def test_symlinks_out_of_the_model_are_refused(kind: str, model_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the model\n")
    if kind == "etc-passwd":
        (model_copy / "data" / "passwd").symlink_to("/etc/passwd")
    elif kind == "parent-outside":
        (model_copy / "extra.txt").symlink_to("../outside/secret.txt")
    elif kind == "dir-link":
        (model_copy / "more").symlink_to(outside, target_is_directory=True)
    elif kind == "dangling":
        (model_copy / "gone.txt").symlink_to("nowhere.txt")
    else:
        (outside / "MLmodel").write_bytes((model_copy / "MLmodel").read_bytes())
        (model_copy / "MLmodel").unlink()
        (model_copy / "MLmodel").symlink_to(outside / "MLmodel")
    with pytest.raises(ModelError) as e:
        read_model(model_copy)
    assert "symlink" in e.value.message and e.value.hint


def test_symlink_inside_the_model_is_read_as_its_file(model_copy: Path) -> None:
    before = read_model(model_copy)
    (model_copy / "requirements-copy.txt").symlink_to("requirements.txt")
    after = dict((p, h) for p, _, h in read_model(model_copy).files)
    assert after["requirements-copy.txt"] == after["requirements.txt"]
    assert len(after) == len(before.files) + 1


def test_requirements_include_out_of_the_model_is_refused(model_copy: Path, tmp_path: Path) -> None:
    (tmp_path / "evil.txt").write_text("numpy\n")
    req = model_copy / "requirements.txt"
    req.write_text(req.read_text() + "\n-r ../evil.txt\n")
    with pytest.raises(ModelError, match="outside the model directory"):
        read_model(model_copy)
