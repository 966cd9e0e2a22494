"""One interpreter candidate's whole environment: Debian, then Python through uv, then the settled,
checked and pruned wheels (`resolve_for`). lock/create.py tries the candidates and writes the Lock.

uv's target (exact Python, wheel platform) comes from the Debian side, so Python would wait for
Debian. When the previous lock names the same interpreter on the same base, uv starts at once on
the previous lock's target (`_Early`), while Debian resolves; its result is used only when the
request it answered is the one Debian's result gives (`PythonRequest` equality: every input of
the resolution, the target included), otherwise it is discarded and uv runs again. Speculation
changes when uv runs, never what the lock says.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import canonicalize_name

from lockbuild.errors import AuditUnavailable, RequirementsError, ResolveError, SpecError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.model import cache_model_files
from lockbuild.lockfile.model import BuildRules, Deb, DebianLock, Lock, Mapped, Wheel
from lockbuild.lockfile.prune import DEFAULT_OMIT, DEFAULT_PRUNE
from lockbuild.model.intake import ModelSource
from lockbuild.model.metadata import ModelInfo
from lockbuild.progress import Notify
from lockbuild.resolve import platform_map, runtime
from lockbuild.resolve.python import (
    BundledWheel,
    model_requirements,
    resolve_python,
    runtime_requirements,
    serving_server,
)
from lockbuild.resolve.uv import PythonTarget, UvReport, target_tags, uv_platform
from lockbuild.spec import Spec

if TYPE_CHECKING:  # imported where used: they load httpx and the Debian parser, while uv already runs
    from lockbuild.resolve.overlap import Settled


@dataclass(frozen=True)
class LockInputs:
    """What every candidate's resolution reads: the spec, the model, the previous lock and the
    re-lock's policy (cutoff, preferences, what may move)."""

    spec: Spec
    source: ModelSource
    info: ModelInfo
    previous: Lock | None
    upgrade: bool
    cache: Cache
    notify: Notify
    exclude_newer: str
    upgrade_debian: bool = False
    preferences: dict[str, str] | None = None
    kept: Path | None = None


@dataclass
class Resolved:
    """Everything one interpreter candidate resolved to (`resolve_for`)."""

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
    settled: Settled
    omit: set[str]
    build: BuildRules
    pruned_files: dict[str, int]
    mapped: tuple[Mapped, ...]
    exempt: tuple[str, ...]  # names whose index gives no upload times (the cutoff did not apply)
    notes: list[str]


@dataclass(frozen=True)
class PythonRequest:
    """Every input of one uv resolution; two equal requests resolve alike."""

    logged: tuple[str, ...]  # the model's requirements, mapped for the target
    mapped: tuple[Mapped, ...]
    cuda: bool
    reqs: tuple[str, ...]  # logged + the serving runtime + the spec's
    constraints: tuple[str, ...]
    target: PythonTarget
    index_url: str
    exclude_newer: str
    extra_index_urls: tuple[str, ...]
    bundled: tuple[BundledWheel, ...]
    epoch: int  # SOURCE_DATE_EPOCH of sdist builds: the lock's created time
    preferences: tuple[tuple[str, str], ...] | None

    def resolve(self, cache: Cache, notify: Notify, report: UvReport, extra: list[str] | None = None,
                overrides: list[str] | None = None) -> list[Wheel]:
        return resolve_python(list(self.reqs) + (extra or []), list(self.constraints), target=self.target,
                              index_url=self.index_url, exclude_newer=self.exclude_newer,
                              extra_index_urls=self.extra_index_urls, bundled=self.bundled, cache=cache,
                              epoch=self.epoch, notify=notify, overrides=overrides,
                              preferences=dict(self.preferences) if self.preferences is not None else None,
                              report=report)


def created_time(exclude_newer: str, debian_lock: DebianLock) -> str:
    """The image's created time: the newest input cutoff, so it is a function of the lock."""
    times = [datetime.fromisoformat(exclude_newer.replace("Z", "+00:00"))]
    for s in debian_lock.suites:
        times.append(parsedate_to_datetime(s.date).astimezone(UTC))
    return max(times).strftime("%Y-%m-%dT%H:%M:%SZ")


def index_url_of(spec: Spec, info: ModelInfo) -> str:
    """The spec's [python] index-url; else the model's --index-url line; else the spec's default."""
    if "index-url" not in (spec.raw.get("python") or {}) and info.index_url:
        return info.index_url
    return spec.index_url


def python_request(x: LockInputs, python_exact: str, wheel_platform: str, created: str,
                   flask: bool = False) -> PythonRequest:
    """What uv resolves for this target: the model's requirements mapped for it, the serving runtime
    (``flask``: an older MLflow 2's Flask scoring server), the spec's lines."""
    spec, info = x.spec, x.info
    cuda = platform_map.spec_asks_for_cuda(spec.requirements)
    logged = model_requirements(info.requirements, serving=spec.serving, exclude=spec.exclude)
    logged, mapped = platform_map.map_requirements(logged, platform=spec.platform, python=python_exact, cuda=cuda)
    reqs = logged + runtime_requirements(spec.serving, info.mlflow_version, flask=flask) + list(spec.requirements)
    files = {p: (size, sha) for p, size, sha in info.files}
    bundled = tuple(BundledWheel(path=p, local=x.source.path / p, size=files[p][0], sha256=files[p][1])
                    for p in info.bundled_wheels)
    epoch = int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    return PythonRequest(
        logged=tuple(logged), mapped=mapped, cuda=cuda, reqs=tuple(reqs), constraints=tuple(info.constraints),
        target=PythonTarget(python=python_exact, wheel_platform=wheel_platform),
        index_url=index_url_of(spec, info), exclude_newer=x.exclude_newer, extra_index_urls=info.extra_index_urls,
        bundled=bundled, epoch=epoch,
        preferences=tuple(sorted(x.preferences.items())) if x.preferences is not None else None)


class _Early:
    """uv started on a predicted request while Debian resolves (see the module docstring)."""

    def __init__(self, request: PythonRequest, cache: Cache, notify: Notify) -> None:
        self.request, self.report = request, UvReport()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockbuild-uv")
        self._future: Future[list[Wheel]] = self._pool.submit(request.resolve, cache, notify, self.report)

    def take(self, request: PythonRequest) -> tuple[list[Wheel], UvReport] | None:
        """The early result when it answered exactly ``request`` (its error too); else None."""
        if request != self.request:
            return None
        return self._future.result(), self.report

    def close(self) -> None:
        self._pool.shutdown(wait=True)  # a discarded run finishes (its temporary directory is its own)


def _start_early(choice: runtime.SuiteChoice, x: LockInputs, codename: str) -> _Early | None:
    """uv on the previous lock's target, when it names this interpreter on this base and platform."""
    p = x.previous
    if (p is None or p.target.interpreter_package != choice.interpreter_package
            or p.target.base != f"debian:{codename}" or p.target.platform != x.spec.platform):
        return None
    request = python_request(x, p.target.python, p.target.wheel_platform, created_time(x.exclude_newer, p.debian))
    return _Early(request, x.cache, x.notify)


def resolve_for(choice: runtime.SuiteChoice, x: LockInputs) -> Resolved:
    """Debian, then Python, for one interpreter: the whole environment or a ResolveError."""
    notes: list[str] = []
    codename = x.spec.base.split(":", 1)[1] if x.spec.base else choice.codename
    arch = runtime.debian_arch(x.spec.platform)
    early = _start_early(choice, x, codename)
    try:
        deb_lock = _debian_for(choice, x, codename, arch, notes)
        by_name = {d.name: d for d in deb_lock.packages}
        if choice.interpreter_package not in by_name:
            raise ResolveError(f"debian:{codename} has no {choice.interpreter_package}")
        interp = by_name[choice.interpreter_package]
        python_exact = runtime.python_version_from_deb(interp.version)
        glibc = runtime.glibc_from_deb(by_name["libc6"].version)
        wheel_platform = uv_platform(runtime.wheel_platform(glibc, arch))
        created = created_time(x.exclude_newer, deb_lock)
        request = python_request(x, python_exact, wheel_platform, created)
        wheels, request, server, report, settled = _python_for(request, x, early, created)
    finally:
        if early is not None:
            early.close()
    wheels, omit, build, pruned_files = _checked_wheels(wheels, request, report, x, notes)
    return Resolved(codename=codename, deb_lock=deb_lock, interp=interp, python_exact=python_exact, glibc=glibc,
                    wheel_platform=wheel_platform, created=created, index_url=request.index_url, server=server,
                    reqs=list(request.reqs) + settled.extra_requirements, wheels=wheels, settled=settled,
                    omit=omit, build=build, pruned_files=pruned_files, mapped=request.mapped,
                    exempt=tuple(sorted(set(report.exempt))), notes=notes)


def _debian_for(choice: runtime.SuiteChoice, x: LockInputs, codename: str, arch: str, notes: list[str]) -> DebianLock:
    """The previous lock's Debian side when its roots and target are unchanged; new roots closed over
    the archive state it pins (the live archive when that state is not available); else the live
    archive (a first lock, --upgrade, a Debian --upgrade-package, another base)."""
    from lockbuild.resolve import debian

    spec, previous = x.spec, x.previous
    roots = tuple(sorted(set(debian.default_roots(choice.interpreter_package)) | set(spec.debian_packages)))
    live = dict(mirror=spec.mirror, security_mirror=spec.security_mirror, keyring=spec.keyrings or None)
    same_base = (previous is not None and not x.upgrade and not x.upgrade_debian
                 and previous.target.base == f"debian:{codename}" and previous.target.platform == spec.platform)
    if not same_base or previous is None:
        x.notify(f"resolving Debian {codename}/{arch}")
        return debian.resolve_debian(codename, arch, roots, x.cache, **live)  # type: ignore[arg-type]
    if previous.debian.roots == roots:
        return previous.debian
    # other roots: close them over the archive state the lock pins, so nothing else moves
    x.notify(f"resolving Debian {codename}/{arch} at the locked InRelease files")
    subset: list[str] = []  # kept stanzas are enough to audit a closure, never to close new roots
    try:
        deb_lock = debian.resolve_debian(codename, arch, roots, x.cache, locked=previous.debian, kept=x.kept,
                                         notes=subset, **live)  # type: ignore[arg-type]
        if subset:
            raise AuditUnavailable("; ".join(subset))
        return deb_lock
    except (AuditUnavailable, ResolveError) as e:
        if isinstance(e, ResolveError) and not subset:  # a real resolution error of the new roots
            raise
        notes.append(f"the locked Debian archive state is not available ({e.message}); resolved against "
                     "the live archive instead")
        return debian.resolve_debian(codename, arch, roots, x.cache, **live)  # type: ignore[arg-type]


def _python_for(request: PythonRequest, x: LockInputs, early: _Early | None,
                created: str) -> tuple[list[Wheel], PythonRequest, str, UvReport, Settled]:
    """uv for the request (the early result when it answered it), the Flask runtime for an older
    MLflow 2, then overlapping distributions settled."""
    from lockbuild.resolve import overlap

    t = request.target
    x.notify(f"resolving Python {t.python} for {t.wheel_platform} with uv")
    if request.index_url != x.spec.index_url:
        x.notify(f"index {request.index_url} (from the model's requirements)")
    # file lists (overlaps, pruning) read a bundled wheel from the cache, like any other wheel
    cache_model_files(x.source.path, [(b.path, b.sha256) for b in request.bundled], x.cache)
    if early is not None and x.previous is not None:  # while uv runs: what settling and pruning will read
        from lockbuild.lock import pruned

        overlap.prefetch_listings(x.previous.python.packages, x.cache, x.previous.target.python)
        pruned.prefetch(x.previous.python.packages, build_rules(x.spec), x.cache)
    taken = early.take(request) if early is not None else None
    wheels, report = taken if taken is not None else (None, UvReport())
    if wheels is None:
        wheels = request.resolve(x.cache, x.notify, report)
    server = serving_server(wheels)
    if server is None:  # an older MLflow 2 whose scoring server is a Flask app
        request = python_request(x, t.python, t.wheel_platform, created, flask=True)
        wheels = request.resolve(x.cache, x.notify, report)
        server = serving_server(wheels) or "gunicorn"
    final = request

    def re_resolve(extra: list[str], overrides: list[str]) -> list[Wheel]:
        return final.resolve(x.cache, x.notify, report, extra=extra, overrides=overrides)

    spec = x.spec
    settled = overlap.settle(wheels, re_resolve, cache=x.cache,
                             origins=overlap.origins(list(request.logged), list(spec.requirements), request.mapped),
                             spec_variants=spec.variants, spec_where=str(spec.path), notify=x.notify,
                             tags=target_tags(t), platform=t.wheel_platform, python=t.python)
    return settled.wheels, request, server, report, settled


def _checked_wheels(wheels: list[Wheel], request: PythonRequest, report: UvReport, x: LockInputs,
                    notes: list[str]) -> tuple[list[Wheel], set[str], BuildRules, dict[str, int]]:
    """The settled wheels checked (CUDA, --hash pins, yanked), the omitted ones dropped, the rest with
    their pruned lists: (wheels, omitted names, [build] rules, files pruned per distribution)."""
    from lockbuild.lock import pruned

    spec = x.spec
    platform_map.cuda_guard(wheels, cuda=request.cuda, platform=spec.platform)
    check_hash_pins(wheels, x.info, notes)
    wheels = check_yanked(wheels, report, spec)
    if report.exempt:
        notes.append(f"the index gives no upload times for {', '.join(sorted(set(report.exempt)))}: the "
                     f"exclude-newer cutoff ({x.exclude_newer}) does not apply to them; their files are pinned by "
                     "sha256")
    omit: set[str] = {canonicalize_name(n) for n in spec.omit}
    unknown = sorted(omit - {w.name for w in wheels})
    if unknown:
        raise SpecError(f"[python] omit names {', '.join(unknown)}, which the resolution does not contain",
                        where=str(spec.path), hint="remove it from [python] omit")
    omit |= default_omit(spec, {w.name for w in wheels})
    wheels = [w for w in wheels if w.name not in omit]
    wheels, build, pruned_files = pruned.with_pruned(wheels, build_rules(spec), x.cache, x.notify)
    return wheels, omit, build, pruned_files


def build_rules(spec: Spec) -> BuildRules:
    """The spec's [build] table with the documented defaults expanded (lockfile/prune.py)."""
    prune = (DEFAULT_PRUNE if spec.prune_defaults else ()) + tuple(g for g in spec.prune if g not in DEFAULT_PRUNE)
    return BuildRules(bytecode="unchecked-hash" if spec.bytecode else "none", prune=prune, keep=spec.keep)


def default_omit(spec: Spec, resolved: set[str]) -> set[str]:
    """DEFAULT_OMIT names that were resolved and that the spec does not ask for by name."""
    import re

    if not spec.prune_defaults:
        return set()
    wanted = set()
    for line in spec.requirements:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if m:
            wanted.add(canonicalize_name(m.group(1)))
    return {n for n in DEFAULT_OMIT if n in resolved and n not in wanted}


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
