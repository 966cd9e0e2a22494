"""The `lock` stage: spec + model -> Lock. The only place that calls the resolvers.

Re-locking with unchanged inputs (spec, model tree, tool version) returns the previous lock
as it is: no resolution, identical bytes. Without --upgrade, a re-lock moves nothing it was not
asked to move: the exclude-newer cutoff and the Debian archive state (the locked InRelease files)
stay, and uv gets the previous Python pins as preferences, so only what the changed inputs require
moves (an index that changed under the same cutoff moves nothing). `--upgrade-package NAME` lets
NAME move (cutoff: now); `--upgrade` re-resolves everything. Every move is reported (`Move`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from lockbuild import __version__
from lockbuild.digest import short
from lockbuild.errors import AuditUnavailable, PythonVersionError, RequirementsError, ResolveError, SpecError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.model import cache_model_files, cache_model_tree
from lockbuild.fsutil import sha256_bytes
from lockbuild.lock import pruned
from lockbuild.lockfile.codec import DEFAULT_CODEC, compressor_version
from lockbuild.lockfile.model import (
    LOCK_VERSION,
    BuildRules,
    Deb,
    DebianLock,
    Lock,
    Mapped,
    ModelFile,
    ModelLock,
    PythonChoice,
    PythonLock,
    Runtime,
    Target,
    Wheel,
)
from lockbuild.lockfile.prune import DEFAULT_OMIT, DEFAULT_PRUNE
from lockbuild.model.intake import ModelSource, fetch_model
from lockbuild.model.metadata import ModelInfo, keras_major, read_model
from lockbuild.progress import Notify
from lockbuild.resolve import debian, overlap, platform_map, runtime
from lockbuild.resolve.interpreter import bound_artifacts
from lockbuild.resolve.python import (
    BundledWheel,
    model_requirements,
    resolve_python,
    runtime_requirements,
    serving_server,
)
from lockbuild.resolve.uv import PythonTarget, UvReport, target_tags, uv_platform
from lockbuild.spec import Spec

NONROOT_UID = 65532
# Bumped when the default [build] rules change, so `lock --check` reports existing locks stale.
# 2: every wheel's pruned paths listed in the lock (python.packages[].pruned, lock/pruned.py).
BUILD_RULES_VERSION = 2


def build_rules(spec: Spec) -> BuildRules:
    """The spec's [build] table with the documented defaults expanded (lockfile/prune.py)."""
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


@dataclass(frozen=True)
class Move:
    """One pin that a re-lock moved: what, from, to and why."""

    kind: str  # "python" | "debian" | "cutoff"
    name: str
    old: str | None  # None: added
    new: str | None  # None: removed
    why: str

    def __str__(self) -> str:
        if self.old is None:
            return f"{self.kind} {self.name}: added {self.new} ({self.why})"
        if self.new is None:
            return f"{self.kind} {self.name}: removed {self.old} ({self.why})"
        return f"{self.kind} {self.name}: {self.old} -> {self.new} ({self.why})"

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "name": self.name, "old": self.old, "new": self.new, "why": self.why}


@dataclass
class LockResult:
    lock: Lock
    reused: bool  # inputs unchanged: nothing was resolved
    notes: list[str] = field(default_factory=list)  # warnings worth showing (patch drift, ...)
    pruned_files: dict[str, int] | None = None  # {distribution: files pruned}; None: not counted (reused)
    moves: list[Move] = field(default_factory=list)  # pins that moved against the previous lock


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
        if len(v.release) < 2:  # "3" (YAML's integer 3) says no minor
            raise ValueError(info.python_version)
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
              notify: Notify = lambda _m: None, upgrade_packages: tuple[str, ...] = (),
              kept: Path | None = None) -> LockResult:
    source = fetch_model(spec.model_uri, tracking_uri=spec.tracking_uri, base_dir=spec.root)
    try:
        notify(f"model {source.resolved_uri}")
        info = read_model(source.path)
        result = _make_lock(spec, source, info, previous=previous, upgrade=upgrade, cache=cache, notify=notify,
                            upgrade_packages=upgrade_packages, kept=kept)
        if previous is not None and not result.reused:
            result.moves = moves(previous, result.lock, upgrade=upgrade, upgrade_packages=upgrade_packages)
        cache_model_tree(source.path, result.lock.model, cache)  # builds then need no model source
        return result
    finally:
        source.cleanup()


def interpreter_candidates(spec: Spec, source: ModelSource,
                           info: ModelInfo) -> tuple[list[runtime.SuiteChoice], bool, list[str]]:
    """The interpreters `lock` may use, in order; whether it chooses among them itself; and what in
    the model is bound to its logged interpreter (resolve/interpreter.py; only asked when choosing).

    The spec's [target] python or a logged minor Debian ships: exactly that one. A logged minor
    Debian does not ship (3.10, 3.12): Debian's interpreters, nearest first."""
    minor = python_minor(spec, info)
    if spec.python:
        return [runtime.choose_suite(minor, spec_file=spec.path.name, logged=info.python_version)], False, []
    if runtime.minor_of(minor) in runtime.SUITES:
        return [runtime.choose_suite(minor)], False, []
    return runtime.candidates(minor), True, bound_artifacts(source.path, info.files)


def refuse_bound(spec: Spec, info: ModelInfo, bound: list[str], resolves: str) -> PythonVersionError:
    """A model with Python code bound to a minor Debian does not ship: the fix names the nearest
    Debian interpreter for which its environment resolves (``resolves``)."""
    return PythonVersionError(
        f"the model was logged with Python {info.python_version}, which Debian does not ship "
        f"({', '.join(f'{m} ({c})' for m, c in runtime.SUITES.items())}), and it carries Python code bound to that "
        "interpreter: " + "; ".join(bound) + ". lockbuild does not move such a model to another interpreter on "
        "its own",
        where=str(spec.path),
        hint=f'set [target] python = "{resolves}" in {spec.path.name} to accept the risk ({resolves} is the nearest '
        "Debian interpreter for which its environment resolves) and prove the image with `lockbuild smoke`; or "
        f"re-log the model under Python {resolves}")


@dataclass
class _Resolved:
    """Everything one interpreter candidate resolved to (`_resolve_for`)."""

    codename: str
    deb_lock: DebianLock
    interp: Deb
    python_exact: str
    glibc: str
    wheel_platform: str
    created: str
    index_url: str
    server: str
    reqs: list[str]
    wheels: list[Wheel]
    settled: overlap.Settled
    omit: set[str]
    build: BuildRules
    pruned_files: dict[str, int]
    mapped: tuple[Mapped, ...]
    exempt: tuple[str, ...]  # names whose index gives no upload times (the cutoff did not apply)
    notes: list[str]


def _resolve_for(choice: runtime.SuiteChoice, spec: Spec, source: ModelSource, info: ModelInfo, *,
                 previous: Lock | None, upgrade: bool, cache: Cache, notify: Notify,
                 exclude_newer: str, upgrade_debian: bool = False, preferences: dict[str, str] | None = None,
                 kept: Path | None = None) -> _Resolved:
    """Debian, then Python, for one interpreter: the whole environment or a ResolveError."""
    notes: list[str] = []
    codename = spec.base.split(":", 1)[1] if spec.base else choice.codename
    arch = runtime.debian_arch(spec.platform)
    roots = tuple(sorted(set(debian.default_roots(choice.interpreter_package)) | set(spec.debian_packages)))
    keep_debian = (previous is not None and not upgrade and not upgrade_debian and previous.debian.roots == roots
                   and previous.target.base == f"debian:{codename}" and previous.target.platform == spec.platform)
    same_base = (previous is not None and not upgrade and not upgrade_debian
                 and previous.target.base == f"debian:{codename}"
                 and previous.target.platform == spec.platform)
    if keep_debian:
        assert previous is not None
        deb_lock = previous.debian
    elif same_base:  # other roots: close them over the archive state the lock pins, so nothing else moves
        assert previous is not None
        notify(f"resolving Debian {codename}/{arch} at the locked InRelease files")
        subset: list[str] = []  # kept stanzas are enough to audit a closure, never to close new roots
        try:
            deb_lock = debian.resolve_debian(codename, arch, roots, cache, mirror=spec.mirror,
                                             security_mirror=spec.security_mirror, keyring=spec.keyrings or None,
                                             locked=previous.debian, kept=kept, notes=subset)
            if subset:
                raise AuditUnavailable("; ".join(subset))
        except (AuditUnavailable, ResolveError) as e:
            if isinstance(e, ResolveError) and not subset:  # a real resolution error of the new roots
                raise
            notes.append(f"the locked Debian archive state is not available ({e.message}); resolved against "
                         "the live archive instead")
            deb_lock = debian.resolve_debian(codename, arch, roots, cache, mirror=spec.mirror,
                                             security_mirror=spec.security_mirror, keyring=spec.keyrings or None)
    else:
        notify(f"resolving Debian {codename}/{arch}")
        deb_lock = debian.resolve_debian(codename, arch, roots, cache, mirror=spec.mirror,
                                         security_mirror=spec.security_mirror, keyring=spec.keyrings or None)
    by_name = {d.name: d for d in deb_lock.packages}
    if choice.interpreter_package not in by_name:
        raise ResolveError(f"debian:{codename} has no {choice.interpreter_package}")
    interp = by_name[choice.interpreter_package]
    python_exact = runtime.python_version_from_deb(interp.version)
    glibc = runtime.glibc_from_deb(by_name["libc6"].version)
    wheel_platform = uv_platform(runtime.wheel_platform(glibc, arch))

    mlflow_version = info.mlflow_version
    cuda = platform_map.spec_asks_for_cuda(spec.requirements)
    logged = model_requirements(info.requirements, serving=spec.serving, exclude=spec.exclude)
    logged, mapped = platform_map.map_requirements(logged, platform=spec.platform, python=python_exact, cuda=cuda)
    reqs = logged + runtime_requirements(spec.serving, mlflow_version) + list(spec.requirements)
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
    uv_report = UvReport()
    resolve_kw = dict(target=py_target, index_url=index_url, exclude_newer=exclude_newer,
                      extra_index_urls=info.extra_index_urls, bundled=bundled, cache=cache, epoch=epoch, notify=notify,
                      preferences=preferences, report=uv_report)
    wheels = resolve_python(reqs, list(info.constraints), **resolve_kw)  # type: ignore[arg-type]
    server = serving_server(wheels)
    if server is None:  # an older MLflow 2 whose scoring server is a Flask app
        reqs = (logged + runtime_requirements(spec.serving, mlflow_version, flask=True) + list(spec.requirements))
        wheels = resolve_python(reqs, list(info.constraints), **resolve_kw)  # type: ignore[arg-type]
        server = serving_server(wheels) or "gunicorn"
    final_reqs = reqs

    def re_resolve(extra: list[str], overrides: list[str]) -> list[Wheel]:
        return resolve_python(final_reqs + extra, list(info.constraints), **resolve_kw,  # type: ignore[arg-type]
                              overrides=overrides)

    settled = overlap.settle(wheels, re_resolve, cache=cache,
                             origins=overlap.origins(logged, list(spec.requirements), mapped),
                             spec_variants=spec.variants, spec_where=str(spec.path), notify=notify,
                             tags=target_tags(py_target), platform=wheel_platform)
    wheels, reqs = settled.wheels, reqs + settled.extra_requirements
    platform_map.cuda_guard(wheels, cuda=cuda, platform=spec.platform)
    check_hash_pins(wheels, info, notes)
    wheels = check_yanked(wheels, uv_report, spec)
    if uv_report.exempt:
        notes.append(f"the index gives no upload times for {', '.join(sorted(set(uv_report.exempt)))}: the "
                     f"exclude-newer cutoff ({exclude_newer}) does not apply to them; their files are pinned by sha256")
    omit: set[str] = {canonicalize_name(n) for n in spec.omit}
    unknown = sorted(omit - {w.name for w in wheels})
    if unknown:
        raise SpecError(f"[python] omit names {', '.join(unknown)}, which the resolution does not contain",
                        where=str(spec.path), hint="remove it from [python] omit")
    omit |= default_omit(spec, {w.name for w in wheels})
    wheels = [w for w in wheels if w.name not in omit]
    wheels, build, pruned_files = pruned.with_pruned(wheels, build_rules(spec), cache, notify)
    return _Resolved(codename=codename, deb_lock=deb_lock, interp=interp, python_exact=python_exact, glibc=glibc,
                     wheel_platform=wheel_platform, created=created, index_url=index_url, server=server, reqs=reqs,
                     wheels=wheels, settled=settled, omit=omit, build=build, pruned_files=pruned_files,
                     mapped=mapped, exempt=tuple(sorted(set(uv_report.exempt))), notes=notes)


def _make_lock(spec: Spec, source: ModelSource, info: ModelInfo, *, previous: Lock | None, upgrade: bool,
               cache: Cache, notify: Notify, upgrade_packages: tuple[str, ...] = (),
               kept: Path | None = None) -> LockResult:
    inputs = input_digests(spec, source, info)
    digest = combined_digest(inputs)
    upgrade_names = {canonicalize_name(n) for n in upgrade_packages}
    # a Debian package name moves the Debian archive state (all suites) to today's; Python names move pins
    debian_names = {d.name for d in previous.debian.packages} if previous is not None else set()
    upgrade_debian = bool({n for n in upgrade_packages if n in debian_names})
    upgrade_names -= {canonicalize_name(n) for n in upgrade_packages if n in debian_names}
    if previous is not None and not upgrade and not upgrade_packages and previous.inputs_digest == digest:
        return LockResult(previous, reused=True)
    notes: list[str] = list(info.notes)
    for path, reason in info.rewrites:
        notes.append(f"model file {path}: {reason}; the lock, the cache and the image's model layer carry it without "
                     "them (index credentials come from ~/.netrc or $NETRC)")
    choices, automatic, bound = interpreter_candidates(spec, source, info)

    if spec.exclude_newer:
        exclude_newer = spec.exclude_newer
    elif previous is not None and not upgrade and not upgrade_names:
        exclude_newer = previous.python.exclude_newer
    else:
        exclude_newer = now_utc()
    # the previous pins as uv preferences: kept unless the inputs exclude them (or --upgrade[-package])
    preferences = ({w.name: w.version for w in previous.python.packages if w.name not in upgrade_names}
                   if previous is not None and not upgrade else None)

    tried: list[str] = []
    for choice in choices:
        try:
            r = _resolve_for(choice, spec, source, info, previous=previous, upgrade=upgrade, cache=cache,
                             notify=notify, exclude_newer=exclude_newer, upgrade_debian=upgrade_debian,
                             preferences=preferences, kept=kept)
            break
        except ResolveError as e:
            if not automatic:
                raise
            why = e.message.strip().splitlines()
            tried.append(f"{choice.python_minor} ({choice.codename}): {why[-1] if len(why) > 1 else why[0]}"[:500])
            notify(f"Python {choice.python_minor} does not resolve the environment; trying the next interpreter")
    else:
        raise PythonVersionError(
            f"the model was logged with Python {info.python_version}, which Debian does not ship, and none of "
            "Debian's interpreters resolves its whole environment:\n  - " + "\n  - ".join(tried),
            hint=f"pin versions that publish wheels for {' or '.join(c.python_minor for c in choices)} in "
            "[python] requirements, or re-log the model under one of them")
    if bound:
        raise refuse_bound(spec, info, bound, choice.python_minor)
    deb_lock, python_exact, glibc, interp = r.deb_lock, r.python_exact, r.glibc, r.interp
    wheel_platform = r.wheel_platform
    codename, created, server, wheels, reqs = r.codename, r.created, r.server, r.wheels, r.reqs
    settled, omit, build, pruned_files, index_url = r.settled, r.omit, r.build, r.pruned_files, r.index_url
    mapped, mlflow_version = r.mapped, info.mlflow_version
    python_choice = None
    logged_minor = ".".join(info.python_version.split(".")[:2])
    if automatic:
        python_choice = PythonChoice(
            requested=logged_minor, chosen=choice.python_minor, tried=tuple(tried),
            reason=(f"the model logged Python {info.python_version}; Debian ships "
                    + ", ".join(f"{m} ({c})" for m, c in runtime.SUITES.items())
                    + f"; {choice.python_minor} is the nearest for which the whole environment resolves"
                    + (f" ({', '.join(t.split(' ', 1)[0] for t in tried)} did not: see tried)" if tried else "")
                    + "; the model carries no Python code bound to its interpreter (no code_paths, no custom "
                    "pyfunc, no pickled functions), so its files load on " + choice.python_minor))
        notes.append(f"interpreter: the model logged Python {info.python_version}, which Debian does not ship; "
                     f"the image runs {python_exact} ({choice.interpreter_package}, debian:{codename}), the nearest "
                     "Debian interpreter for which the whole environment resolves"
                     + "".join(f"; {t}" for t in tried))
    elif spec.python and logged_minor and spec.python != logged_minor:
        notes.append(f"the spec's [target] python = \"{spec.python}\" ({spec.path.name}) overrides the Python "
                     f"the model logged ({info.python_version}): the image runs {python_exact}")
    elif info.python_version and info.python_version != python_exact:
        notes.append(f"the model logged Python {info.python_version}; the image runs {python_exact} "
                     f"({choice.interpreter_package} {interp.version}): same minor, different patch")
    if wheel_platform != runtime.wheel_platform(glibc, runtime.debian_arch(spec.platform)):
        notes.append(f"wheel platform: glibc {glibc} would be {runtime.wheel_platform(glibc, spec.platform)}, which "
                     f"this uv does not accept; resolving for {wheel_platform}, the highest level it knows below "
                     f"it (such wheels run on glibc {glibc})")
    for m in mapped:
        notes.append(f"mapped: {m.logged} -> {m.locked or '(dropped)'} ({m.reason})")
    for c in settled.choices:
        notes.append(f"variant: {c.kept} kept, {c.dropped} dropped ({c.reason})")
    notes += r.notes
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
            python_requested=spec.python or "", python_choice=python_choice,
        ),
        model=ModelLock(
            uri=source.uri, resolved_uri=source.resolved_uri, name=source.name, version=source.version,
            run_id=source.run_id, flavors=info.flavors, loader_module=info.loader_module,
            mlflow_version=info.mlflow_version, python_version=info.python_version,
            keras_version=info.keras_version, saved_format=info.saved_format,
            requirements=info.requirements, tree_digest=info.tree_digest,
            files=tuple(ModelFile(p, s, h) for p, s, h in info.files),
            rewritten=info.rewrites,
        ),
        runtime=Runtime(
            serving=spec.serving, mlflow_version=mlflow_version, server=server,
            port=spec.port, workers=spec.workers, user=NONROOT_UID,
            env=tuple(sorted(runtime_env(spec, info, versions).items())),
        ),
        python=PythonLock(exclude_newer=exclude_newer, index_url=index_url, requirements=tuple(reqs),
                          packages=tuple(wheels), omitted=tuple(sorted(omit)),
                          extra_index_urls=info.extra_index_urls, constraints=info.constraints,
                          variants=settled.choices, mapped=mapped, cutoff_exempt=r.exempt),
        debian=deb_lock,
        build=build,
    )
    return LockResult(lock, reused=False, notes=notes, pruned_files=pruned_files)


def moves(old: Lock, new: Lock, *, upgrade: bool, upgrade_packages: tuple[str, ...] = ()) -> list[Move]:
    """Every pin that differs between two locks, with the reason lockbuild let it move."""
    named = {canonicalize_name(n) for n in upgrade_packages}
    out: list[Move] = []
    if old.python.exclude_newer != new.python.exclude_newer:
        why = "--upgrade" if upgrade else ("--upgrade-package" if upgrade_packages else
                                           "[python] exclude-newer in the spec")
        out.append(Move("cutoff", "exclude-newer", old.python.exclude_newer, new.python.exclude_newer, why))
    reqs = [_requirement(r) for r in new.python.requirements]
    a = {w.name: w.version for w in old.python.packages}
    b = {w.name: w.version for w in new.python.packages}
    for name in sorted(set(a) | set(b)):
        if a.get(name) == b.get(name):
            continue
        if upgrade:
            why = "--upgrade"
        elif name in named:
            why = f"--upgrade-package {name}"
        elif name not in a:
            why = "a new requirement of the changed inputs"
        elif name not in b:
            why = "no longer required (or omitted) by the changed inputs"
        else:
            excluded = [str(r) for r in reqs if r is not None and canonicalize_name(r.name) == name
                        and r.specifier and not r.specifier.contains(a[name], prereleases=True)]
            why = (f"the requirement {excluded[0]!r} excludes {a[name]}" if excluded else
                   f"the resolver could not keep {a[name]} with the changed inputs")
        out.append(Move("python", name, a.get(name), b.get(name), why))
    da = {d.name: d.version for d in old.debian.packages}
    db = {d.name: d.version for d in new.debian.packages}
    same_state = [s.inrelease_sha256 for s in old.debian.suites] == [s.inrelease_sha256 for s in new.debian.suites]
    for name in sorted(set(da) | set(db)):
        if da.get(name) == db.get(name):
            continue
        debian_named = sorted(n for n in upgrade_packages if n in da)
        if upgrade:
            why = "--upgrade"
        elif debian_named:
            why = f"--upgrade-package {debian_named[0]}: the Debian archive state moved to today's"
        elif (old.target.base, old.target.platform) != (new.target.base, new.target.platform):
            why = f"the target changed ({old.target.base} {old.target.platform} -> {new.target.base} " \
                  f"{new.target.platform})"
        elif not same_state:
            why = "the locked Debian archive state was not available: resolved live"
        elif name not in da:
            why = "pulled in by a new Debian root"
        elif name not in db:
            why = "no longer needed by the Debian roots"
        else:
            why = "the changed Debian roots require it"
        out.append(Move("debian", name, da.get(name), db.get(name), why))
    return out


def _requirement(line: str) -> Requirement | None:
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


def check_hash_pins(wheels: list[Wheel], info: ModelInfo, notes: list[str]) -> None:
    """The model's ``--hash=`` pins hold: each pinned distribution's locked file (the wheel, or the sdist a
    wheel is built from) is one of the hashes the requirement allows; otherwise the lock is refused."""
    by_name = {w.name: w for w in wheels}
    for name, allowed in info.hash_pins:
        w = by_name.get(name)
        if w is None:
            notes.append(f"the model's --hash pins for {name} do not apply: {name} is not installed from the "
                         "index (the serving runtime, or dropped)")
            continue
        got = {w.sha256} | ({w.sdist.sha256} if w.sdist is not None else set())
        if not got & set(allowed):
            raise RequirementsError(
                f"the model's requirement on {name} pins --hash={', --hash='.join(allowed)}, but the resolved "
                f"{w.filename} has {w.sha256}", where=f"{info.env_source} ({name})",
                hint=f"the index serves other bytes for {name} {w.version} than the model was logged with: pin the "
                "version whose file has that hash, or re-log the model with the right hashes")


def check_yanked(wheels: list[Wheel], report: UvReport, spec: Spec) -> list[Wheel]:
    """A release the index marks yanked is refused unless [python] allow-yanked names it; then it is
    recorded with the reason (doctor repeats it)."""
    from dataclasses import replace

    yanked = report.yanked()
    out = []
    for w in wheels:
        hit = yanked.get(w.name)
        if hit is None or hit[0] != w.version:
            out.append(w)
            continue
        if w.name not in spec.allow_yanked:
            raise ResolveError(
                f"{w.name} {w.version} is yanked on the index (reason: {hit[1]})", where=str(spec.path),
                hint=f"pin another {w.name} version in [python] requirements, or accept it with [python] "
                f'allow-yanked = ["{w.name}"] (recorded in the lock; doctor names the reason)')
        out.append(replace(w, yanked=hit[1]))
    return out


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
