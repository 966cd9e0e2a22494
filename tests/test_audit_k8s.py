"""Kubernetes manifests: valid against the Kubernetes OpenAPI schema (kubernetes-validate, strict, offline),
pinned by digest, hardened, sized from [deploy], deterministic."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from lockbuild.audit import k8s, read_locked
from lockbuild.cli import app
from lockbuild.errors import LockbuildError, SpecError

DATA = Path(__file__).parent / "data"
LOCK = DATA / "keras3.lock"
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"myacr.azurecr.io/models/keras3@{DIGEST}"
K8S_VERSIONS = ("1.30.0", "1.33.0")  # AKS-supported minors shipped with kubernetes-validate


@pytest.fixture(scope="module")
def locked():  # type: ignore[no-untyped-def]
    return read_locked(LOCK)


def render(locked, deploy: dict[str, Any] | None = None, image: str = IMAGE) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    text = k8s.render(k8s.manifests(locked.lock, locked.digest, image, deploy))
    return list(yaml.safe_load_all(text))


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(docs[0]["spec"]["template"]["spec"])


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod(docs)["containers"][0]["env"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schema(locked, version: str) -> None:  # type: ignore[no-untyped-def]
    docs = render(locked, {"replicas": 2, "cpu-request": "500m", "cpu-limit": "2", "memory-request": "3Gi",
                           "memory-limit": "4Gi", "namespace": "models"})
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)  # raises on any schema error or unknown field


def test_pinned_by_digest_and_tag_only_refused(locked) -> None:  # type: ignore[no-untyped-def]
    assert pod(render(locked))["containers"][0]["image"] == IMAGE
    assert pod(render(locked, image=f"myacr.azurecr.io/keras3:v1@{DIGEST}"))["containers"][0]["image"].endswith(DIGEST)
    for bad in ("myacr.azurecr.io/keras3:v1", "keras3", f"Upper/Case@{DIGEST}", "repo@sha256:short"):
        with pytest.raises(LockbuildError) as e:
            render(locked, image=bad)
        assert e.value.hint


def test_security_context_and_writable_dirs(locked) -> None:  # type: ignore[no-untyped-def]
    spec = pod(render(locked))
    c = spec["containers"][0]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532 and sc["runAsGroup"] == 65532
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/tmp": "tmp", "/home/nonroot": "home"}
    assert {v["name"]: "emptyDir" in v for v in spec["volumes"]} == {"tmp": True, "home": True}
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}


def test_port_and_probes(locked) -> None:  # type: ignore[no-untyped-def]
    docs = render(locked)
    c = pod(docs)["containers"][0]
    port = locked.lock.runtime.port
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert env(docs)["PORT"] == str(port)
    assert c["readinessProbe"]["httpGet"]["path"] in ("/ping", "/health")
    assert c["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert c["livenessProbe"]["initialDelaySeconds"] >= 60
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # TensorFlow loads slowly
    assert docs[1]["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize(("limit", "workers"), [("500m", 1), ("1", 1), ("1500m", 2), ("2", 2), ("3.5", 4)])
def test_workers_follow_the_cpu_limit(locked, limit: str, workers: int) -> None:  # type: ignore[no-untyped-def]
    docs = render(locked, {"cpu-request": "250m", "cpu-limit": limit})
    assert env(docs)["MLFLOW_MODELS_WORKERS"] == str(workers)
    assert pod(docs)["containers"][0]["resources"]["limits"]["cpu"] == limit


def test_resources_default_and_limit_follows_request(locked) -> None:  # type: ignore[no-untyped-def]
    res = pod(render(locked))["containers"][0]["resources"]
    assert res == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    res = pod(render(locked, {"memory-request": "6Gi"}))["containers"][0]["resources"]
    assert res["limits"]["memory"] == "6Gi"


@pytest.mark.parametrize("deploy", [{"cpu-request": "2", "cpu-limit": "1"}, {"memory-request": "4Gi",
                                    "memory-limit": "1Gi"}, {"cpu-limit": "lots"}, {"memory-request": "2GB"}])
def test_bad_deploy_values_are_spec_errors(locked, deploy: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecError) as e:
        render(locked, deploy)
    assert e.value.hint


@pytest.mark.parametrize(("q", "value"), [("500m", Decimal("0.5")), ("2Gi", Decimal(2**31)), ("1e3", Decimal(1000)),
                                          ("1.5", Decimal("1.5")), ("128974848", Decimal(128974848))])
def test_quantities(q: str, value: Decimal) -> None:
    assert k8s.quantity(q, "x") == value


def test_labels_annotations_and_namespace(locked) -> None:  # type: ignore[no-untyped-def]
    docs = render(locked, {"namespace": "models"})
    for d in docs:
        assert d["metadata"]["namespace"] == "models"
        assert d["metadata"]["annotations"]["lockbuild.dev/lock-digest"] == locked.digest
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "lockbuild"
    template = docs[0]["spec"]["template"]["metadata"]
    assert template["annotations"]["lockbuild.dev/lock-digest"] == locked.digest  # a new lock rolls the pods
    assert docs[0]["spec"]["selector"]["matchLabels"].items() <= template["labels"].items()


def test_yaml_is_deterministic_and_alias_free(locked) -> None:  # type: ignore[no-untyped-def]
    a = k8s.render(k8s.manifests(locked.lock, locked.digest, IMAGE, {"cpu-limit": "2"}))
    b = k8s.render(k8s.manifests(locked.lock, locked.digest, IMAGE, {"cpu-limit": "2"}))
    assert a == b and "&id" not in a and "*id" not in a


def test_command_reads_deploy_from_the_spec(tmp_path: Path) -> None:
    (tmp_path / "lockbuild.toml").write_text(
        '[model]\nuri = "./model"\n\n[deploy]\ncpu-request = "1"\ncpu-limit = "3"\nmemory-limit = "6Gi"\n')
    (tmp_path / "lockbuild.lock").write_text(LOCK.read_text())
    out = tmp_path / "deploy.yaml"
    result = CliRunner().invoke(app, ["k8s", "--spec", str(tmp_path), "--image-digest", DIGEST, "-o", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert env(docs)["MLFLOW_MODELS_WORKERS"] == "3"
    assert pod(docs)["containers"][0]["image"] == f"lockbuild-example/keras3@{DIGEST}"
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSIONS[-1], strict=True)
    tag_only = CliRunner().invoke(app, ["k8s", "--spec", str(tmp_path), "--image", "acr.io/keras3:v1"])
    assert isinstance(tag_only.exception, LockbuildError) and "digest" in tag_only.exception.message


# -- the build Job (lockbuild k8s --build-job) -----------------------------------------------------------

BUILDER = f"myacr.azurecr.io/lockbuild-builder@{DIGEST}"


def _walk(obj: Any) -> Any:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_build_job_is_unprivileged_and_valid(tmp_path: Path, version: str) -> None:
    from tests.test_share_cache import make_key

    (tmp_path / "lockbuild.toml").write_text('[model]\nuri = "./model"\n')
    (tmp_path / "lockbuild.lock").write_text(LOCK.read_text())
    _, pub = make_key(tmp_path / "ci.pem")
    out = tmp_path / "job.yaml"
    result = CliRunner().invoke(app, [
        "k8s", "--spec", str(tmp_path), "--build-job", "--builder-image", BUILDER,
        "--push", "myacr.azurecr.io/models/keras3:v1", "--registry-secret", "acr-push",
        "--cache-registry", "myacr.azurecr.io/lockbuild-cache", "--cache-key-secret", "cache-key",
        "--cache-trust", str(pub), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)
    config_map, job = docs
    assert config_map["data"]["lockbuild.lock"] == LOCK.read_text()
    assert config_map["data"]["trust-0.pub.pem"] == pub.read_text()
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"] == BUILDER and spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 65532
    sec = c["securityContext"]
    assert sec["readOnlyRootFilesystem"] and not sec["allowPrivilegeEscalation"] and not sec["privileged"]
    assert sec["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    keys = {k for k, _ in _walk(job)}
    assert "hostPath" not in keys and "hostNetwork" not in keys and "hostPID" not in keys
    assert not any("docker.sock" in str(v) for _, v in _walk(job))
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["registry-auth"]["secret"]["secretName"] == "acr-push"  # credentials only from a Secret
    assert volumes["cache-key"]["secret"]["secretName"] == "cache-key"
    assert "emptyDir" in volumes["scratch"]
    assert c["args"][:2] == ["image", "--lock"] and "--cache-trust" in c["args"] and "--cache-key" in c["args"]
    assert {e["name"]: e["value"] for e in c["env"]}["DOCKER_CONFIG"] == "/work/docker"
    assert "BEGIN PRIVATE KEY" not in out.read_text()  # the signing key stays in its Secret


def test_build_job_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "lockbuild.toml").write_text('[model]\nuri = "./model"\n')
    (tmp_path / "lockbuild.lock").write_text(LOCK.read_text())
    base = ["k8s", "--spec", str(tmp_path), "--build-job", "-o", str(tmp_path / "j.yaml")]
    for extra, words in ((["--push", "r.io/a:v1"], "builder-image"),
                         (["--builder-image", "r.io/b:latest", "--push", "r.io/a:v1"], "digest"),
                         (["--builder-image", BUILDER, "--push", "r.io/a:v1", "--registry-secret", "Bad_Name"],
                          "Kubernetes object name"),
                         (["--builder-image", BUILDER, "--push", "r.io/a:v1", "--cache-trust", str(LOCK),
                           "--cache-registry", "r.io/cache"], "public key"),
                         (["--builder-image", BUILDER, "--push", "r.io/a:v1", "--cache-key-secret", "k"],
                          "--cache-registry")):
        r = CliRunner().invoke(app, base + extra)
        assert isinstance(r.exception, LockbuildError), (extra, r.output)
        assert words in r.exception.message, (extra, r.exception.message)
        assert not (tmp_path / "j.yaml").exists()
