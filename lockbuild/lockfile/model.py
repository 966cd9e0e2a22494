"""Lock data types: plain frozen data, no I/O. Only lockbuild.lockfile.io knows the file format.

Every ``sha256`` field holds ``sha256:<hex>`` (lockbuild.digest); the file stores bare hex."""

from __future__ import annotations

from dataclasses import dataclass, field

LOCK_VERSION = 1


@dataclass(frozen=True)
class Sdist:
    """A source distribution on the index, pinned by sha256 (for a package published only as an sdist)."""

    filename: str
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Wheel:
    """One Python distribution, pinned to the single wheel for the target.

    ``source`` says where the wheel's bytes come from: "" the index (``url``); "sdist" built by
    lockbuild from ``sdist`` in an isolated env of the locked ``build_requires`` (normalised, so the
    sha256 is reproducible); "model" a wheel bundled in the model at ``path``
    (mlflow.models.add_libraries_to_model)."""

    name: str  # normalized (PEP 503)
    version: str
    filename: str
    url: str
    size: int
    sha256: str
    source: str = ""
    path: str = ""  # source == "model": the wheel's path inside the model
    sdist: Sdist | None = None  # source == "sdist"
    build_backend: str = ""  # source == "sdist": PEP 517 backend, e.g. setuptools.build_meta:__legacy__
    build_requires: tuple[Wheel, ...] = ()  # source == "sdist": the locked isolated build env
    source_date_epoch: int = 0  # source == "sdist": SOURCE_DATE_EPOCH of the build
    # What [build] prune/keep remove from this wheel, site-packages-relative as its RECORD names the
    # files; "d/" stands for every file of the wheel below d (lockfile/prune.py pruned_paths,
    # PrunedSet). Meaningful only when the lock's BuildRules.pruned_listed is set.
    pruned: tuple[str, ...] = ()
    yanked: str = ""  # the index marks this release yanked (the reason, or "yanked"); allowed by the spec


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
    signed_by: tuple[str, ...] = ()  # primary-key fingerprints of the good InRelease signatures


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
    # model files lockbuild rewrote before locking them: (path, what was removed). ``files`` holds the
    # rewritten bytes' size and sha256; the cache and the image's model layer hold those bytes.
    rewritten: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PythonChoice:
    """The interpreter `lock` chose for a logged Python minor Debian does not ship (3.10, 3.12, ...):
    the nearest Debian interpreter for which the whole lock resolves (resolve/runtime.py candidates)."""

    requested: str  # the minor the model logged, e.g. 3.12
    chosen: str  # the minor of the image's interpreter, e.g. 3.11
    reason: str  # why, in words: what Debian ships, what was tried and failed, why no artifact binds
    tried: tuple[str, ...] = ()  # "3.9: <why it did not resolve>", nearer candidates that failed


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
    python_requested: str = ""  # the spec's [target] python when it chose one (a deliberate override)
    python_choice: PythonChoice | None = None  # lock chose the interpreter (the logged minor is not Debian's)


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
class VariantChoice:
    """Two distributions that write the same files, settled at lock time: every requirement on
    `dropped` resolves to `kept` (uv override `<dropped> ; sys_platform == 'never'`)."""

    dropped: str  # normalized name, never installed
    kept: str  # normalized name, installed in its place
    reason: str  # why, in words (the spec's [python] variants, or the evidence the default used)
    paths: int = 0  # how many install paths the two share (0: chosen in the spec, not observed)
    example: str = ""  # one shared image path, e.g. usr/local/lib/python3.11/dist-packages/tensorflow/__init__.py


@dataclass(frozen=True)
class Mapped:
    """A logged requirement line rewritten for the target before resolution (resolve/platform_map.py):
    a macOS/Windows/GPU distribution replaced by its linux CPU equivalent, or dropped."""

    logged: str  # the line as the model logged it
    locked: str  # the line given to the resolver instead ("" = dropped)
    reason: str


@dataclass(frozen=True)
class PythonLock:
    exclude_newer: str  # RFC 3339, recorded so re-resolution is reproducible
    index_url: str  # credentials never recorded (they come from netrc at fetch time)
    requirements: tuple[str, ...]  # the inputs given to the resolver
    packages: tuple[Wheel, ...] = ()
    omitted: tuple[str, ...] = ()  # resolved but deliberately left out ([python] omit)
    extra_index_urls: tuple[str, ...] = ()  # the model's --extra-index-url lines, credentials stripped
    constraints: tuple[str, ...] = ()  # the model's -c constraints given to the resolver
    variants: tuple[VariantChoice, ...] = ()  # overlapping distributions settled at lock time
    # names whose index gives no upload times (PEP 503 HTML): exclude_newer did not apply to them
    cutoff_exempt: tuple[str, ...] = ()
    mapped: tuple[Mapped, ...] = ()  # logged lines of another platform, mapped before resolution


@dataclass(frozen=True)
class DebianLock:
    suites: tuple[Suite, ...]
    roots: tuple[str, ...]  # requested packages
    packages: tuple[Deb, ...] = ()


@dataclass(frozen=True)
class BuildRules:
    """What the builder does to wheel contents beyond installing them ([build] in the lock).

    The defaults (no bytecode, nothing pruned) are what locks written before this table meant,
    so an old lock still builds the image it always described."""

    bytecode: str = "none"  # "unchecked-hash": PEP 552 .pyc compiled by the target interpreter
    prune: tuple[str, ...] = ()  # globs, relative to site-packages, of wheel files left out
    keep: tuple[str, ...] = ()  # globs exempt from prune
    # True: every wheel's pruned paths are listed in the lock (Wheel.pruned, () = nothing pruned),
    # and the builder removes exactly those. False (locks written before the lists): the builder
    # applies prune/keep to each wheel's files itself.
    pruned_listed: bool = False


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
    build: BuildRules = field(default=BuildRules())
    compression: str = "gzip"  # [image] compression: layers of the OCI layout and registry pushes
    compressor: str = ""  # [image] compressor: the pinned library, e.g. "isal 1.9.1"; "" in older locks
    # [image] compression-level; 0 only in pre-release locks, which image and verify refuse (lockfile/codec.py)
    compression_level: int = 0
    version: int = LOCK_VERSION

    def epoch(self) -> int:
        from datetime import datetime

        return int(datetime.fromisoformat(self.created.replace("Z", "+00:00")).timestamp())
