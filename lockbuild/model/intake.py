"""Bring an MLflow model onto local disk through MLflow's own client.

Supported URIs: a local directory (relative to the spec), ``runs:/<run>/<path>``,
``models:/<name>/<version>`` and ``models:/<name>@<alias>``. Aliases are resolved to a
concrete version first, so the lock records what the alias pointed at.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lockbuild.errors import ModelError, TrackingServerError

_MODELS_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
_MODELS_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_RUNS = re.compile(r"^runs:/(?P<run>[0-9a-zA-Z]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class ModelSource:
    path: Path  # local directory holding MLmodel
    uri: str  # as given
    resolved_uri: str  # concrete (alias resolved)
    name: str = ""
    version: str = ""
    run_id: str = ""
    tmpdir: Path | None = None  # a download to remove when done

    def cleanup(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _quiet_mlflow_client() -> None:
    # Fail fast on an unreachable server instead of MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _client(tracking_uri: str | None):  # type: ignore[no-untyped-def]
    _quiet_mlflow_client()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _translate(e: Exception, uri: str, tracking_uri: str | None) -> Exception:
    from mlflow.exceptions import MlflowException

    text = str(e)
    server = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "(default ./mlruns)"
    if isinstance(e, MlflowException):
        code = getattr(e, "error_code", "")
        if "RESOURCE_DOES_NOT_EXIST" in code or "not found" in text.lower() or "does not exist" in text:
            return ModelError(
                f"model not found: {uri}: {text.splitlines()[0] if text else code}",
                hint="check the name, version or alias (`mlflow models` UI / MlflowClient().search_model_versions)"
                f" on tracking server {server}",
            )
        if "Max retries" in text or "Connection" in text or "API request to" in text:
            return TrackingServerError(
                f"cannot reach the MLflow tracking server {server}",
                hint="start it or fix [model] tracking-uri in lockbuild.toml / MLFLOW_TRACKING_URI",
            )
        return ModelError(f"MLflow could not fetch {uri}: {text.splitlines()[0] if text else code}")
    if isinstance(e, OSError | ConnectionError):
        return TrackingServerError(
            f"cannot reach the MLflow tracking server {server}: {e}",
            hint="start it or fix [model] tracking-uri in lockbuild.toml / MLFLOW_TRACKING_URI",
        )
    return ModelError(f"could not fetch {uri}: {e}")


def fetch_model(uri: str, *, tracking_uri: str | None, base_dir: Path) -> ModelSource:
    """Resolve `uri` to a local model directory. Caller must call .cleanup()."""
    if not re.match(r"^[a-z][a-z0-9+.-]*:/", uri) or uri.startswith("file:/"):
        local = Path(uri.removeprefix("file://").removeprefix("file:"))
        local = local if local.is_absolute() else (base_dir / local)
        local = local.resolve()
        if not (local / "MLmodel").is_file():
            raise ModelError(
                f"no MLflow model at {local} (no MLmodel file)",
                hint="point [model] uri at the directory that holds MLmodel",
            )
        return ModelSource(path=local, uri=uri, resolved_uri=uri)
    if not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        # MLflow's default tracking URI would create ./mlflow.db (MLflow 3) or ./mlruns in the user's
        # working directory and then report the run or model as missing: refuse before touching it.
        raise TrackingServerError(
            f"{uri} needs an MLflow tracking server, and none is configured",
            hint="set [model] tracking-uri in lockbuild.toml (e.g. http://127.0.0.1:5000) or MLFLOW_TRACKING_URI; "
            "for a model on disk, give its directory",
        )
    try:
        return _fetch_remote(uri, tracking_uri)
    except (ModelError, TrackingServerError):
        raise
    except Exception as e:  # MLflow raises many types; translate them to one message
        raise _translate(e, uri, tracking_uri) from None


def _fetch_remote(uri: str, tracking_uri: str | None) -> ModelSource:
    client = _client(tracking_uri)
    name = version = run_id = ""
    if m := _MODELS_ALIAS.match(uri):
        name = m["name"]
        try:
            mv = client.get_model_version_by_alias(name, m["alias"])
        except Exception as e:
            err = _translate(e, uri, tracking_uri)
            no_such_model = "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", ""))
            if isinstance(err, ModelError) and not isinstance(err, TrackingServerError) and not no_such_model:
                raise ModelError(
                    f"alias @{m['alias']} is not set on registered model {name!r}",
                    hint=f"set it (MlflowClient().set_registered_model_alias({name!r}, {m['alias']!r}, VERSION))"
                    " or use models:/NAME/VERSION",
                ) from None
            raise err from None
        version, run_id = str(mv.version), mv.run_id or ""
        resolved = f"models:/{name}/{version}"
        download = client.get_model_version_download_uri(name, version)
    elif m := _MODELS_VERSION.match(uri):
        name, version = m["name"], m["version"]
        mv = client.get_model_version(name, version)
        run_id = mv.run_id or ""
        resolved = f"models:/{name}/{version}"
        download = client.get_model_version_download_uri(name, version)
    elif m := _RUNS.match(uri):
        run_id = m["run"]
        resolved = download = uri.rstrip("/")
    else:
        raise ModelError(
            f"unsupported model URI {uri!r}",
            hint="use a local directory, runs:/<run>/<path>, models:/<name>/<version> or models:/<name>@<alias>",
        )
    from mlflow.artifacts import download_artifacts

    tmp = Path(tempfile.mkdtemp(prefix="lockbuild-model-"))
    try:
        # Not models:/ itself: MLflow resolves that against its default registry (./mlflow.db in MLflow 3),
        # whatever tracking/registry URI is passed. The version's download URI is plain artifact storage.
        local = Path(download_artifacts(artifact_uri=download, dst_path=str(tmp), tracking_uri=tracking_uri))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (local / "MLmodel").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"{resolved} holds no MLmodel file", hint="point at the model's artifact path")
    return ModelSource(path=local, uri=uri, resolved_uri=resolved, name=name, version=version,
                       run_id=run_id, tmpdir=tmp)
