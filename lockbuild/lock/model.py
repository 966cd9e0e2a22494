"""Lock data types: plain frozen data, no I/O. Only lockbuild.lock.io knows the file format."""

from __future__ import annotations

from dataclasses import dataclass, field

LOCK_VERSION = 1


@dataclass(frozen=True)
class Wheel:
    """One Python distribution, pinned to the single wheel for the target."""

    name: str  # normalized (PEP 503)
    version: str
    filename: str
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Deb:
    """One Debian binary package, pinned by sha256."""

    name: str
    version: str
    architecture: str
    suite: str  # e.g. bookworm, bookworm-updates, bookworm-security
    filename: str  # path below the suite's archive root (pool/...)
    size: int
    sha256: str
    source: str = ""  # source package name (for SBOM)


@dataclass(frozen=True)
class Suite:
    """One Debian suite as seen at lock time, its signature verified."""

    name: str
    archive: str  # archive root URL, e.g. http://deb.debian.org/debian
    date: str  # InRelease Date, RFC 2822 as published
    inrelease_sha256: str
    snapshot: str  # snapshot.debian.org timestamp, e.g. 20261125T000000Z
    snapshot_archive: str  # "debian" or "debian-security" on snapshot.debian.org


@dataclass(frozen=True)
class ModelFile:
    path: str  # relative to the model root, posix
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelLock:
    uri: str  # as written in the spec
    resolved_uri: str  # concrete: models:/name/3, runs:/id/path or a local path
    name: str = ""
    version: str = ""
    run_id: str = ""
    flavors: tuple[str, ...] = ()
    loader_module: str = ""
    mlflow_version: str = ""  # as logged in MLmodel
    python_version: str = ""  # as logged (python_env.yaml / conda.yaml)
    keras_version: str = ""
    saved_format: str = ""  # "keras" (model.keras), "savedmodel" (dir), "" unknown
    requirements: tuple[str, ...] = ()  # as logged, after -r/-c expansion
    tree_digest: str = ""
    files: tuple[ModelFile, ...] = ()


@dataclass(frozen=True)
class Target:
    platform: str  # linux/amd64
    python: str  # exact interpreter version, e.g. 3.11.2
    python_abi: str  # cp311
    wheel_platform: str  # uv --python-platform, e.g. x86_64-manylinux_2_36
    glibc: str  # 2.36
    base: str  # debian:bookworm
    interpreter_package: str  # python3.11
    interpreter_deb_version: str  # 3.11.2-6+deb12u6


@dataclass(frozen=True)
class Runtime:
    """How the image serves: MLflow's scoring server."""

    serving: str  # "mlflow-skinny" | "mlflow"
    mlflow_version: str
    server: str  # "uvicorn" (MLflow >= 3) | "gunicorn" (MLflow 2)
    port: int
    workers: int
    user: int
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PythonLock:
    exclude_newer: str  # RFC 3339, recorded so re-resolution is reproducible
    index_url: str
    requirements: tuple[str, ...]  # the inputs given to the resolver
    packages: tuple[Wheel, ...] = ()
    omitted: tuple[str, ...] = ()  # resolved but deliberately left out ([python] omit)


@dataclass(frozen=True)
class DebianLock:
    suites: tuple[Suite, ...]
    roots: tuple[str, ...]  # requested packages
    packages: tuple[Deb, ...] = ()


@dataclass(frozen=True)
class Lock:
    tool_version: str
    inputs_digest: str  # sha256 over spec + model + tool version
    inputs: tuple[tuple[str, str], ...]  # component -> digest, for --check explanations
    created: str  # RFC 3339; the image's created time and the layer mtime
    image_name: str
    target: Target
    model: ModelLock
    runtime: Runtime
    python: PythonLock
    debian: DebianLock
    labels: tuple[tuple[str, str], ...] = field(default=())
    compression: str = "gzip"  # [image] compression: layers of the OCI layout and registry pushes
    compressor: str = ""  # [image] compressor: the pinned library, e.g. "isal 1.9.1"; "" in older locks
    version: int = LOCK_VERSION

    def epoch(self) -> int:
        from datetime import datetime

        return int(datetime.fromisoformat(self.created.replace("Z", "+00:00")).timestamp())
