"""The `lock` stage: spec + model -> Lock. The only place that calls the resolvers.

Re-locking with unchanged inputs (spec, model tree, tool version) returns the previous lock
as it is: no resolution, identical bytes. Without --upgrade, the Debian side and the
exclude-newer cutoff stay as locked even when other inputs change.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from packaging.utils import canonicalize_name
from packaging.version import Version

from lockbuild import __version__
from lockbuild.assemble.prune import DEFAULT_OMIT, DEFAULT_PRUNE
from lockbuild.digest import short
from lockbuild.errors import PythonVersionError, SpecError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.model import cache_model_files, cache_model_tree
from lockbuild.fsutil import sha256_bytes
from lockbuild.lock import pruned
from lockbuild.lock.model import (
    LOCK_VERSION,
    BuildRules,
    DebianLock,
    Lock,
    ModelFile,
    ModelLock,
    PythonLock,
    Runtime,
    Target,
    Wheel,
)
from lockbuild.model.intake import ModelSource, fetch_model
from lockbuild.model.metadata import ModelInfo, keras_major, read_model
from lockbuild.oci.compress import DEFAULT_CODEC, compressor_version
from lockbuild.progress import Notify
from lockbuild.resolve import debian, overlap, runtime
from lockbuild.resolve.python import (
    BundledWheel,
    model_requirements,
    resolve_python,
    runtime_requirements,
    serving_server,
)
from lockbuild.resolve.uv import PythonTarget, target_tags
from lockbuild.spec import Spec

NONROOT_UID = 65532
# Bumped when the default [build] rules change, so `lock --check` reports existing locks stale.
# 2: every wheel's pruned paths listed in the lock (python.packages[].pruned, lock/pruned.py).
BUILD_RULES_VERSION = 2


def build_rules(spec: Spec) -> BuildRules:
    """The spec's [build] table with the documented defaults expanded (assemble/prune.py)."""
    prune = (DEFAULT_PRUNE if spec.prune_defaults else ()) + tuple(g for g in spec.prune if g not in DEFAULT_PRUNE)
    return BuildRules(bytecode="unchecked-hash" if spec.bytecode else "none", prune=prune, keep=spec.keep)


def default_omit(spec: Spec, resolved: set[str]) -> set[str]:
    """DEFAULT_OMIT names that were resolved and that the spec does not ask for by name."""
    if not spec.prune_defaults:
        return set()
    wanted = set()
    for line in spec.requirements:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if m:
            wanted.add(canonicalize_name(m.group(1)))
    return {n for n in DEFAULT_OMIT if n in resolved and n not in wanted}


@dataclass
class LockResult:
    lock: Lock
    reused: bool  # inputs unchanged: nothing was resolved
    notes: list[str] = field(default_factory=list)  # warnings worth showing (patch drift, ...)
    pruned_files: dict[str, int] | None = None  # {distribution: files pruned}; None: not counted (reused)


def _digest(obj: object) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def input_digests(spec: Spec, source: ModelSource, info: ModelInfo) -> dict[str, str]:
    return {
        "spec": _digest(spec.raw),
        "model": _digest({"resolved-uri": source.resolved_uri, "tree": info.tree_digest}),
        "tool": _digest({"lockbuild": __version__, "lock-format": LOCK_VERSION, "build-rules": BUILD_RULES_VERSION}),
    }


def combined_digest(inputs: dict[str, str]) -> str:
    return _digest(inputs)


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def python_minor(spec: Spec, info: ModelInfo) -> str:
    if spec.python:
        return spec.python
    try:
        v = Version(info.python_version)
    except Exception:
        raise PythonVersionError(
            f"the model logged an unreadable Python version {info.python_version!r}",
            hint='set [target] python = "3.X" in lockbuild.toml',
        ) from None
    return f"{v.major}.{v.minor}"


def created_time(exclude_newer: str, debian_lock: DebianLock) -> str:
    """The image's created time: the newest input cutoff, so it is a function of the lock."""
    times = [datetime.fromisoformat(exclude_newer.replace("Z", "+00:00"))]
    for s in debian_lock.suites:
        times.append(parsedate_to_datetime(s.date).astimezone(UTC))
    return max(times).strftime("%Y-%m-%dT%H:%M:%SZ")


def runtime_env(spec: Spec, info: ModelInfo, wheels_by_name: dict[str, str]) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/home/nonroot"}
    if "tf-keras" in wheels_by_name and keras_major(info.requirements, info.saved_format) == 2:
        env["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras must mean Keras 2 for a Keras 2 model on TF >= 2.16
    env.update(dict(spec.env))
    return env


def make_lock(spec: Spec, *, previous: Lock | None, upgrade: bool, cache: Cache,
              notify: Notify = lambda _m: None) -> LockResult:
    source = fetch_model(spec.model_uri, tracking_uri=spec.tracking_uri, base_dir=spec.root)
    try:
        notify(f"model {source.resolved_uri}")
        info = read_model(source.path)
        result = _make_lock(spec, source, info, previous=previous, upgrade=upgrade, cache=cache, notify=notify)
        cache_model_tree(source.path, result.lock.model, cache)  # builds then need no model source
        return result
    finally:
        source.cleanup()


def _make_lock(spec: Spec, source: ModelSource, info: ModelInfo, *, previous: Lock | None, upgrade: bool,
               cache: Cache, notify: Notify) -> LockResult:
    inputs = input_digests(spec, source, info)
    digest = combined_digest(inputs)
    if previous is not None and not upgrade and previous.inputs_digest == digest:
        return LockResult(previous, reused=True)
    notes: list[str] = []

    minor = python_minor(spec, info)
    choice = runtime.choose_suite(minor, spec_file=spec.path.name if spec.python else None,
                                  logged=info.python_version)
    codename = spec.base.split(":", 1)[1] if spec.base else choice.codename
    arch = runtime.debian_arch(spec.platform)
    roots = tuple(sorted(set(debian.default_roots(choice.interpreter_package)) | set(spec.debian_packages)))
    keep_debian = (previous is not None and not upgrade and previous.debian.roots == roots
                   and previous.target.base == f"debian:{codename}" and previous.target.platform == spec.platform)
    if keep_debian:
        assert previous is not None
        deb_lock = previous.debian
    else:
        notify(f"resolving Debian {codename}/{arch}")
        deb_lock = debian.resolve_debian(codename, arch, roots, cache, mirror=spec.mirror,
                                         security_mirror=spec.security_mirror, keyring=spec.keyrings or None)
    by_name = {d.name: d for d in deb_lock.packages}
    interp = by_name[choice.interpreter_package]
    python_exact = runtime.python_version_from_deb(interp.version)
    glibc = runtime.glibc_from_deb(by_name["libc6"].version)
    wheel_platform = runtime.wheel_platform(glibc, arch)
    logged_minor = ".".join(info.python_version.split(".")[:2])
    if spec.python and logged_minor and spec.python != logged_minor:
        notes.append(f"the spec's [target] python = \"{spec.python}\" ({spec.path.name}) overrides the Python "
                     f"the model logged ({info.python_version}): the image runs {python_exact}")
    elif info.python_version and info.python_version != python_exact:
        notes.append(f"the model logged Python {info.python_version}; the image runs {python_exact} "
                     f"({choice.interpreter_package} {interp.version}): same minor, different patch")

    if spec.exclude_newer:
        exclude_newer = spec.exclude_newer
    elif previous is not None and not upgrade:
        exclude_newer = previous.python.exclude_newer
    else:
        exclude_newer = now_utc()

    mlflow_version = info.mlflow_version
    reqs = (model_requirements(info.requirements, serving=spec.serving, exclude=spec.exclude)
            + runtime_requirements(spec.serving, mlflow_version) + list(spec.requirements))
    notify(f"resolving Python {python_exact} for {wheel_platform} with uv")
    py_target = PythonTarget(python=python_exact, wheel_platform=wheel_platform)
    index_url = spec.index_url
    if "index-url" not in (spec.raw.get("python") or {}) and info.index_url:
        index_url = info.index_url  # the model's --index-url line, when the spec does not choose one
        notify(f"index {index_url} (from the model's requirements)")
    files = {p: (size, sha) for p, size, sha in info.files}
    bundled = tuple(BundledWheel(path=p, local=source.path / p, size=files[p][0], sha256=files[p][1])
                    for p in info.bundled_wheels)
    # file lists (overlaps, pruning) read a bundled wheel from the cache, like any other wheel
    cache_model_files(source.path, [(b.path, b.sha256) for b in bundled], cache)
    created = created_time(exclude_newer, deb_lock)
    epoch = int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    resolve_kw = dict(target=py_target, index_url=index_url, exclude_newer=exclude_newer,
                      extra_index_urls=info.extra_index_urls, bundled=bundled, cache=cache, epoch=epoch, notify=notify)
    wheels = resolve_python(reqs, list(info.constraints), **resolve_kw)  # type: ignore[arg-type]
    server = serving_server(wheels)
    if server is None:  # an older MLflow 2 whose scoring server is a Flask app
        reqs = (model_requirements(info.requirements, serving=spec.serving, exclude=spec.exclude)
                + runtime_requirements(spec.serving, mlflow_version, flask=True) + list(spec.requirements))
        wheels = resolve_python(reqs, list(info.constraints), **resolve_kw)  # type: ignore[arg-type]
        server = serving_server(wheels) or "gunicorn"
    final_reqs = reqs

    def re_resolve(extra: list[str], overrides: list[str]) -> list[Wheel]:
        return resolve_python(final_reqs + extra, list(info.constraints), **resolve_kw,  # type: ignore[arg-type]
                              overrides=overrides)

    settled = overlap.settle(wheels, re_resolve, cache=cache,
                             model_requirements=list(info.requirements) + list(spec.requirements),
                             spec_variants=spec.variants, spec_where=str(spec.path), notify=notify,
                             tags=target_tags(py_target), platform=wheel_platform)
    wheels, reqs = settled.wheels, reqs + settled.extra_requirements
    for c in settled.choices:
        notes.append(f"variant: {c.kept} kept, {c.dropped} dropped ({c.reason})")
    omit: set[str] = {canonicalize_name(n) for n in spec.omit}
    unknown = sorted(omit - {w.name for w in wheels})
    if unknown:
        raise SpecError(f"[python] omit names {', '.join(unknown)}, which the resolution does not contain",
                        where=str(spec.path), hint="remove it from [python] omit")
    omit |= default_omit(spec, {w.name for w in wheels})
    wheels = [w for w in wheels if w.name not in omit]
    wheels, build, pruned_files = pruned.with_pruned(wheels, build_rules(spec), cache, notify)
    versions = {w.name: w.version for w in wheels}
    v = Version(python_exact)
    lock = Lock(
        tool_version=__version__,
        inputs_digest=digest,
        inputs=tuple(sorted(inputs.items())),
        created=created,
        image_name=spec.image_name,
        labels=spec.labels,
        compression=spec.compression,
        compressor=compressor_version(spec.compression),
        compression_level=DEFAULT_CODEC[spec.compression][1],
        target=Target(
            platform=spec.platform, python=python_exact, python_abi=f"cp{v.major}{v.minor}",
            wheel_platform=wheel_platform, glibc=glibc, base=f"debian:{codename}",
            interpreter_package=choice.interpreter_package, interpreter_deb_version=interp.version,
            python_requested=spec.python or "",
        ),
        model=ModelLock(
            uri=source.uri, resolved_uri=source.resolved_uri, name=source.name, version=source.version,
            run_id=source.run_id, flavors=info.flavors, loader_module=info.loader_module,
            mlflow_version=info.mlflow_version, python_version=info.python_version,
            keras_version=info.keras_version, saved_format=info.saved_format,
            requirements=info.requirements, tree_digest=info.tree_digest,
            files=tuple(ModelFile(p, s, h) for p, s, h in info.files),
        ),
        runtime=Runtime(
            serving=spec.serving, mlflow_version=mlflow_version, server=server,
            port=spec.port, workers=spec.workers, user=NONROOT_UID,
            env=tuple(sorted(runtime_env(spec, info, versions).items())),
        ),
        python=PythonLock(exclude_newer=exclude_newer, index_url=index_url, requirements=tuple(reqs),
                          packages=tuple(wheels), omitted=tuple(sorted(omit)),
                          extra_index_urls=info.extra_index_urls, constraints=info.constraints,
                          variants=settled.choices),
        debian=deb_lock,
        build=build,
    )
    return LockResult(lock, reused=False, notes=notes, pruned_files=pruned_files)


def explain_stale(spec: Spec, lock: Lock) -> list[str]:
    """Why `lock` no longer matches its inputs: one line per changed input, [] when fresh."""
    source = fetch_model(spec.model_uri, tracking_uri=spec.tracking_uri, base_dir=spec.root)
    try:
        info = read_model(source.path)
        now = input_digests(spec, source, info)
    finally:
        source.cleanup()
    then = dict(lock.inputs)
    reasons: list[str] = []
    if now["spec"] != then.get("spec"):
        reasons.append(f"spec edited: {spec.path.name} differs from the one the lock was made from")
    if now["model"] != then.get("model"):
        if source.resolved_uri != lock.model.resolved_uri:
            reasons.append(f"model moved: {lock.model.uri} now resolves to {source.resolved_uri} "
                           f"(the lock has {lock.model.resolved_uri})")
        old = {f.path: f.sha256 for f in lock.model.files}
        new = {p: h for p, _, h in info.files}
        for p in sorted(set(old) | set(new)):
            if p not in new:
                reasons.append(f"model file removed: {p}")
            elif p not in old:
                reasons.append(f"model file added: {p}")
            elif old[p] != new[p]:
                reasons.append(f"model file changed: {p} (sha256 {short(old[p])}… -> {short(new[p])}…)")
        if len(reasons) == 0 or (source.resolved_uri == lock.model.resolved_uri and not any(
                r.startswith("model file") for r in reasons)):
            reasons.append("model changed")
    if now["tool"] != then.get("tool"):
        if lock.tool_version != __version__:
            reasons.append(f"lockbuild changed: the lock was written by {lock.tool_version}, this is {__version__}")
        else:
            reasons.append(f"lockbuild {__version__} now writes locks differently (lock format {LOCK_VERSION}, "
                           f"default build rules version {BUILD_RULES_VERSION}) than when this lock was written")
    return reasons
