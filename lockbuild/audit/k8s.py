"""Kubernetes Deployment + Service for the image, pinned by digest, hardened for AKS.

The container runs MLflow's scoring server as the image's non-root user (65532) with a read-only
root filesystem; measured on the TensorFlow example: TensorFlow (absl) needs a writable temp dir
(it refuses to import without one), and Keras and MLflow write small files under $HOME
(``~/.keras/keras.json``, ``~/.config/mlflow/telemetry.json``), so /tmp and /home/nonroot are
emptyDirs. Workers follow the CPU limit (ceil of cores, at least 1), never the node's core count.
Output is deterministic YAML in a fixed key order.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

from lockbuild.errors import LockbuildError, SpecError
from lockbuild.lockfile.model import Lock

DEFAULTS = {"replicas": 1, "cpu-request": "1", "memory-request": "2Gi"}
HOME = "/home/nonroot"
ANNOTATION = "lockbuild.dev"
_REF = re.compile(r"^(?P<repo>[a-z0-9][a-z0-9._/:-]*?)(?::(?P<tag>[\w][\w.-]{0,127}))?"
                  r"@(?P<digest>sha256:[0-9a-f]{64})$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10**3),
            "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12), "P": Decimal(10**15),
            "E": Decimal(10**18)}
_QUANTITY = re.compile(r"^(?P<num>[+]?(?:\d+\.?\d*|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")


# -- inputs -------------------------------------------------------------------------------------------


def pinned_image(ref: str) -> str:
    """``REPO[:TAG]@sha256:<hex>`` as given; a tag-only reference is refused (it can move)."""
    ref = ref.strip()
    if "@" not in ref:
        raise LockbuildError(f"image reference {ref!r} is not pinned by digest",
                             hint="pass REPO@sha256:<digest> (the digest `lockbuild image --push` printed), "
                                  "or --image-digest sha256:... to use the lock's image name")
    if not _REF.match(ref):
        raise LockbuildError(f"not an image reference pinned by digest: {ref!r}",
                             hint="use lowercase REPO@sha256:<64 hex>, e.g. myacr.azurecr.io/churn@sha256:…")
    return ref


def quantity(value: str, key: str) -> Decimal:
    """A Kubernetes resource quantity ('500m', '2', '2Gi', '1e3') as a number of base units."""
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise SpecError(f"[deploy] {key} = {value!r} is not a Kubernetes quantity",
                        hint="use e.g. cpu \"500m\" or \"2\", memory \"512Mi\" or \"4Gi\"")
    try:
        num = Decimal(m["num"])
    except InvalidOperation:
        raise SpecError(f"[deploy] {key} = {value!r} is not a number", hint="use e.g. \"2\" or \"4Gi\"") from None
    suffix = m["suffix"] or ""
    if suffix in _BINARY:
        return num * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return num * Decimal(10) ** int(suffix[1:])
    return num * _DECIMAL[suffix]


def workers_for(cpu_limit: str) -> int:
    """Uvicorn/gunicorn workers for a CPU limit: ceil of the cores, at least 1."""
    return max(1, math.ceil(quantity(cpu_limit, "cpu-limit")))


def resources(deploy: dict[str, Any]) -> dict[str, dict[str, str]]:
    """requests/limits from [deploy]; a missing limit equals its request (Guaranteed QoS by default)."""
    cpu_req = str(deploy.get("cpu-request", DEFAULTS["cpu-request"]))
    mem_req = str(deploy.get("memory-request", DEFAULTS["memory-request"]))
    cpu_lim = str(deploy.get("cpu-limit", cpu_req))
    mem_lim = str(deploy.get("memory-limit", mem_req))
    for kind, req, lim in (("cpu", cpu_req, cpu_lim), ("memory", mem_req, mem_lim)):
        if quantity(req, f"{kind}-request") > quantity(lim, f"{kind}-limit"):
            raise SpecError(f"[deploy] {kind}-request {req} is larger than {kind}-limit {lim}",
                            hint="Kubernetes rejects a request above its limit: lower the request or raise the limit")
    return {"requests": {"cpu": cpu_req, "memory": mem_req}, "limits": {"cpu": cpu_lim, "memory": mem_lim}}


def app_name(lock: Lock) -> str:
    """A DNS-1123 label from the image name's last segment ('acme/churn-model' -> 'churn-model')."""
    slug = re.sub(r"[^a-z0-9-]+", "-", lock.image_name.rsplit("/", 1)[-1].lower()).strip("-")
    return (slug or "model")[:63].rstrip("-") or "model"


# -- the objects ---------------------------------------------------------------------------------------


def labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/managed-by": "lockbuild"}


def lock_annotations(lock: Lock, lock_digest: str, image: str) -> dict[str, str]:
    notes = {f"{ANNOTATION}/lock-digest": lock_digest, f"{ANNOTATION}/inputs-digest": lock.inputs_digest,
             f"{ANNOTATION}/image": image, f"{ANNOTATION}/model-uri": lock.model.resolved_uri,
             f"{ANNOTATION}/mlflow-version": lock.runtime.mlflow_version}
    if lock.model.version:
        notes[f"{ANNOTATION}/model-version"] = lock.model.version
    return notes


def metadata(name: str, namespace: str | None, notes: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = labels(name)
    meta["annotations"] = dict(notes)
    return meta


def _http_get(path: str) -> dict[str, Any]:
    return {"path": path, "port": "http"}


def probes() -> dict[str, Any]:
    """Startup gives a slow model (TensorFlow: ~1 min) up to 10 min; liveness is lenient once up."""
    return {
        "startupProbe": {"httpGet": _http_get("/ping"), "periodSeconds": 5, "timeoutSeconds": 5,
                         "failureThreshold": 120},
        "readinessProbe": {"httpGet": _http_get("/health"), "periodSeconds": 10, "timeoutSeconds": 5,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": _http_get("/ping"), "initialDelaySeconds": 120, "periodSeconds": 20,
                          "timeoutSeconds": 10, "failureThreshold": 6},
    }


def container_security(uid: int) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def env(lock: Lock, workers: int) -> list[dict[str, str]]:
    return [
        {"name": "PORT", "value": str(lock.runtime.port)},
        {"name": "HOST", "value": "0.0.0.0"},
        {"name": "MLFLOW_MODELS_WORKERS", "value": str(workers)},
        {"name": "HOME", "value": HOME},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    ]


def container(lock: Lock, image: str, res: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "name": "model",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": lock.runtime.port, "protocol": "TCP"}],
        "env": env(lock, workers_for(res["limits"]["cpu"])),
        "resources": res,
        **probes(),
        "securityContext": container_security(lock.runtime.user),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": HOME}],
    }


def pod_spec(lock: Lock, image: str, res: dict[str, dict[str, str]]) -> dict[str, Any]:
    os_name, _, arch = lock.target.platform.partition("/")
    uid = lock.runtime.user
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # no *_PORT env from Services: the launcher reads MLFLOW_PORT
        "nodeSelector": {"kubernetes.io/os": os_name, "kubernetes.io/arch": arch},
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [container(lock, image, res)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "home", "emptyDir": {"sizeLimit": "256Mi"}}],
    }


def deployment(lock: Lock, lock_digest: str, image: str, deploy: dict[str, Any]) -> dict[str, Any]:
    name = app_name(lock)
    notes = lock_annotations(lock, lock_digest, image)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, deploy.get("namespace"), notes),
        "spec": {
            "replicas": int(deploy.get("replicas", DEFAULTS["replicas"])),
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(name), "annotations": dict(notes)},
                "spec": pod_spec(lock, image, resources(deploy)),
            },
        },
    }


def service(lock: Lock, lock_digest: str, image: str, deploy: dict[str, Any]) -> dict[str, Any]:
    name = app_name(lock)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, deploy.get("namespace"), lock_annotations(lock, lock_digest, image)),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": lock.runtime.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def manifests(lock: Lock, lock_digest: str, image: str, deploy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    deploy = deploy or {}
    image = pinned_image(image)
    return [deployment(lock, lock_digest, image, deploy), service(lock, lock_digest, image, deploy)]


def render(docs: list[dict[str, Any]]) -> str:
    header = "# Generated by `lockbuild k8s` from lockbuild.lock; regenerate instead of editing.\n"
    return header + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, explicit_start=True,
                                       width=1000, allow_unicode=True)


# -- the build Job: `lockbuild image` as an unprivileged cluster Job ----------------------------------
#
# The builder image (scripts/builder-image.sh) runs `python -m lockbuild` as uid 65532. The Job gives it
# a read-only root, no capabilities, no privilege escalation, no service-account token, no hostPath and
# no Docker socket: only an emptyDir scratch (/scratch: HOME, the local cache, temp files), the lock in a
# ConfigMap, the registry credentials from a kubernetes.io/dockerconfigjson Secret (DOCKER_CONFIG), and
# for the shared cache the signing key from a Secret and the trusted public keys from the ConfigMap.

BUILDER_UID = 65532
SCRATCH = "/scratch"


def _secret_name(value: str, what: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", value):
        raise LockbuildError(f"{what} {value!r} is not a Kubernetes object name",
                             hint="use lowercase letters, digits, '-' and '.', e.g. acr-push")
    return value


def build_job(lock: Lock, lock_digest: str, lock_text: str, *, builder_image: str, push: str,
              registry_secret: str, cache_registry: str | None = None, cache_key_secret: str | None = None,
              trust_keys: dict[str, str] | None = None, namespace: str | None = None,
              scratch_size: str = "20Gi") -> list[dict[str, Any]]:
    """A ConfigMap (the lock, trusted public keys) and a Job that builds and pushes the image."""
    builder_image = pinned_image(builder_image)
    _secret_name(registry_secret, "--registry-secret")
    if cache_key_secret:
        _secret_name(cache_key_secret, "--cache-key-secret")
    trust_keys = trust_keys or {}
    name = (app_name(lock) + "-build")[:63].rstrip("-")
    notes = {f"{ANNOTATION}/lock-digest": lock_digest, f"{ANNOTATION}/inputs-digest": lock.inputs_digest,
             f"{ANNOTATION}/push": push}
    job_labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "image-build",
                  "app.kubernetes.io/managed-by": "lockbuild"}
    meta = {"name": name, **({"namespace": namespace} if namespace else {}), "labels": job_labels,
            "annotations": dict(notes)}
    data = {"lockbuild.lock": lock_text, **{f"trust-{i}.pub.pem": pem for i, pem in enumerate(trust_keys.values())}}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": dict(meta), "data": data}
    args, mounts, volumes = _build_args(name, push, registry_secret, cache_registry, cache_key_secret,
                                        len(trust_keys), scratch_size)
    container = {
        "name": "build", "image": builder_image, "imagePullPolicy": "IfNotPresent", "args": args,
        "env": [{"name": "HOME", "value": SCRATCH}, {"name": "TMPDIR", "value": SCRATCH},
                {"name": "LOCKBUILD_CACHE", "value": f"{SCRATCH}/cache"},
                {"name": "LOCKBUILD_KEY_FILE", "value": f"{SCRATCH}/record.key"},
                {"name": "DOCKER_CONFIG", "value": "/work/docker"}],
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
        "securityContext": {**container_security(BUILDER_UID), "privileged": False},
        "volumeMounts": mounts,
    }
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "nodeSelector": {"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
        "securityContext": {"runAsNonRoot": True, "runAsUser": BUILDER_UID, "runAsGroup": BUILDER_UID,
                            "fsGroup": BUILDER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
           "spec": {"backoffLimit": 1, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 86400,
                    "template": {"metadata": {"labels": job_labels, "annotations": dict(notes)}, "spec": pod}}}
    return [config_map, job]


def _build_args(name: str, push: str, registry_secret: str, cache_registry: str | None,
                cache_key_secret: str | None, n_trust: int,
                scratch_size: str) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The builder's `lockbuild image` arguments, its volume mounts and the pod's volumes."""
    args = ["image", "--lock", "/work/lock/lockbuild.lock", "--push", push, "--json"]
    mounts: list[dict[str, Any]] = [{"name": "scratch", "mountPath": SCRATCH},
                                    {"name": "lock", "mountPath": "/work/lock", "readOnly": True},
                                    {"name": "registry-auth", "mountPath": "/work/docker", "readOnly": True}]
    volumes: list[dict[str, Any]] = [
        {"name": "scratch", "emptyDir": {"sizeLimit": scratch_size}},
        {"name": "lock", "configMap": {"name": name}},
        {"name": "registry-auth", "secret": {"secretName": registry_secret,
                                             "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
    ]
    if cache_registry:
        args += ["--cache-registry", cache_registry]
        for i in range(n_trust):
            args += ["--cache-trust", f"/work/lock/trust-{i}.pub.pem"]
        if cache_key_secret:
            args += ["--cache-key", "/work/cache-key/cache.pem"]
            mounts.append({"name": "cache-key", "mountPath": "/work/cache-key", "readOnly": True})
            volumes.append({"name": "cache-key", "secret": {"secretName": cache_key_secret, "defaultMode": 0o400,
                                                            "items": [{"key": "cache.pem", "path": "cache.pem"}]}})
    return args, mounts, volumes
