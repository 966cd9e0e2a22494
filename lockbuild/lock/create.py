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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from lockbuild import __version__
from lockbuild.errors import LockbuildError, LockFileError, PythonVersionError, ResolveError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.model import cache_model_tree
from lockbuild.fsutil import sha256_bytes
from lockbuild.lock.environment import (  # noqa: F401  (build_rules ... check_yanked: re-exported)
    LockInputs,
    Resolved,
    build_rules,
    check_hash_pins,
    check_yanked,
    default_omit,
    resolve_for,
)
from lockbuild.lockfile.codec import DEFAULT_CODEC, compressor_version
from lockbuild.lockfile.io import read_lock
from lockbuild.lockfile.model import (
    LOCK_VERSION,
    Lock,
    ModelFile,
    ModelLock,
    PythonChoice,
    PythonLock,
    Runtime,
    Target,
)
from lockbuild.model.intake import ModelSource, fetch_model
from lockbuild.model.metadata import ModelInfo, keras_major, read_model, requirement
from lockbuild.progress import Notify
from lockbuild.resolve import runtime
from lockbuild.resolve.interpreter import bound_artifacts
from lockbuild.spec import Spec

NONROOT_UID = 65532
# Bumped when the default [build] rules change, so `lock --check` reports existing locks stale.
# 2: every wheel's pruned paths listed in the lock (python.packages[].pruned, lock/pruned.py).
BUILD_RULES_VERSION = 2


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
    """Now, to the second; in a `lock --upgrade` run, the "now" uv's head start used (resolve/headstart.py)."""
    from lockbuild.resolve.headstart import process_now

    return process_now() or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def runtime_env(spec: Spec, info: ModelInfo, wheels_by_name: dict[str, str]) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/home/nonroot"}
    if "tf-keras" in wheels_by_name and keras_major(info.requirements, info.saved_format) == 2:
        env["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras must mean Keras 2 for a Keras 2 model on TF >= 2.16
    env.update(dict(spec.env))
    return env


def read_previous(path: Path, *, upgrade: bool, notes: list[str]) -> Lock | None:
    """The lock a re-lock starts from, or None when there is none. An unreadable one is refused, since
    re-resolving now would silently move the cutoff and the Debian side; under --upgrade it is
    replaced (with a note)."""
    if not path.exists():
        return None
    try:
        return read_lock(path)
    except LockbuildError as e:
        if not upgrade:
            raise LockFileError(
                f"the existing lock cannot be used: {e.message}", where=e.where or str(path),
                hint="nothing was written. `lockbuild lock --upgrade` re-resolves everything at today's "
                f"date (new cutoff, new Debian state); or restore {path.name} from version control",
            ) from None
        notes.append(f"--upgrade: replacing the unreadable lock ({e.message})")
        return None


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
    finally:
        source.cleanup()
    if previous is not None:
        result.notes += unknown_upgrade_names(previous, upgrade_packages)
    if result.pruned_files is None:  # reused: count from the (cached) file lists
        from lockbuild.lock import pruned

        try:
            result.pruned_files = pruned.lock_counts(result.lock, cache)
        except LockbuildError as e:
            result.notes.append(f"pruned files not counted: {e.message}")
    return result


def unknown_upgrade_names(previous: Lock, upgrade_packages: tuple[str, ...]) -> list[str]:
    """A note for each --upgrade-package name that is neither a Python nor a Debian package of the lock."""
    known = {w.name for w in previous.python.packages} | {d.name for d in previous.debian.packages}
    return [f"--upgrade-package {n}: neither a Python nor a Debian package of the previous lock"
            for n in upgrade_packages if canonicalize_name(n) not in known and n not in known]


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


def _make_lock(spec: Spec, source: ModelSource, info: ModelInfo, *, previous: Lock | None, upgrade: bool,
               cache: Cache, notify: Notify, upgrade_packages: tuple[str, ...] = (),
               kept: Path | None = None) -> LockResult:
    inputs = input_digests(spec, source, info)
    if previous is not None and not upgrade and not upgrade_packages and previous.inputs_digest == combined_digest(
            inputs):
        return LockResult(previous, reused=True)
    notes: list[str] = list(info.notes)
    for path, reason in info.rewrites:
        notes.append(f"model file {path}: {reason}; the lock, the cache and the image's model layer carry it without "
                     "them (index credentials come from ~/.netrc or $NETRC)")
    x = _lock_inputs(spec, source, info, previous=previous, upgrade=upgrade, cache=cache, notify=notify,
                     upgrade_packages=upgrade_packages, kept=kept)
    choice, r, python_choice = _first_resolving(x)
    notes += _interpreter_notes(choice, r, x, python_choice)
    notes += [f"mapped: {m.logged} -> {m.locked or '(dropped)'} ({m.reason})" for m in r.mapped]
    notes += [f"variant: {c.kept} kept, {c.dropped} dropped ({c.reason})" for c in r.settled.choices]
    notes += r.notes
    return LockResult(_lock_of(choice, r, x, inputs, python_choice), reused=False, notes=notes,
                      pruned_files=r.pruned_files)


def _lock_inputs(spec: Spec, source: ModelSource, info: ModelInfo, *, previous: Lock | None, upgrade: bool,
                 cache: Cache, notify: Notify, upgrade_packages: tuple[str, ...], kept: Path | None) -> LockInputs:
    """The re-lock's policy: the cutoff (the spec's; else the previous lock's unless something may move;
    else now), the previous pins as uv preferences (kept unless the inputs exclude them, or --upgrade
    [-package]), and whether a Debian package name moves the Debian archive state (all suites) to today's."""
    debian_names = {d.name for d in previous.debian.packages} if previous is not None else set()
    upgrade_debian = any(n in debian_names for n in upgrade_packages)
    upgrade_names = {canonicalize_name(n) for n in upgrade_packages if n not in debian_names}
    if spec.exclude_newer:
        exclude_newer = spec.exclude_newer
    elif previous is not None and not upgrade and not upgrade_names:
        exclude_newer = previous.python.exclude_newer
    else:
        exclude_newer = now_utc()
    preferences = ({w.name: w.version for w in previous.python.packages if w.name not in upgrade_names}
                   if previous is not None and not upgrade else None)
    return LockInputs(spec=spec, source=source, info=info, previous=previous, upgrade=upgrade, cache=cache,
                      notify=notify, exclude_newer=exclude_newer, upgrade_debian=upgrade_debian,
                      preferences=preferences, kept=kept)


def _first_resolving(x: LockInputs) -> tuple[runtime.SuiteChoice, Resolved, PythonChoice | None]:
    """The first interpreter candidate whose whole environment resolves; when lock chose it itself,
    the recorded choice (refused for a model with code bound to its logged interpreter)."""
    spec, info = x.spec, x.info
    choices, automatic, bound = interpreter_candidates(spec, x.source, info)
    tried: list[str] = []
    for choice in choices:
        try:
            r = resolve_for(choice, x)
            break
        except ResolveError as e:
            if not automatic:
                raise
            why = e.message.strip().splitlines()
            tried.append(f"{choice.python_minor} ({choice.codename}): {why[-1] if len(why) > 1 else why[0]}"[:500])
            x.notify(f"Python {choice.python_minor} does not resolve the environment; trying the next interpreter")
    else:
        raise PythonVersionError(
            f"the model was logged with Python {info.python_version}, which Debian does not ship, and none of "
            "Debian's interpreters resolves its whole environment:\n  - " + "\n  - ".join(tried),
            hint=f"pin versions that publish wheels for {' or '.join(c.python_minor for c in choices)} in "
            "[python] requirements, or re-log the model under one of them")
    if bound:
        raise refuse_bound(spec, info, bound, choice.python_minor)
    if not automatic:
        return choice, r, None
    return choice, r, PythonChoice(
        requested=".".join(info.python_version.split(".")[:2]), chosen=choice.python_minor, tried=tuple(tried),
        reason=(f"the model logged Python {info.python_version}; Debian ships "
                + ", ".join(f"{m} ({c})" for m, c in runtime.SUITES.items())
                + f"; {choice.python_minor} is the nearest for which the whole environment resolves"
                + (f" ({', '.join(t.split(' ', 1)[0] for t in tried)} did not: see tried)" if tried else "")
                + "; the model carries no Python code bound to its interpreter (no code_paths, no custom "
                "pyfunc, no pickled functions), so its files load on " + choice.python_minor))


def _interpreter_notes(choice: runtime.SuiteChoice, r: Resolved, x: LockInputs,
                       python_choice: PythonChoice | None) -> list[str]:
    """Which interpreter the image runs against what the model logged, and the wheel platform when uv
    does not know the target glibc's own level."""
    spec, info, python_exact = x.spec, x.info, r.python_exact
    logged_minor = ".".join(info.python_version.split(".")[:2])
    notes: list[str] = []
    if python_choice is not None:
        notes.append(f"interpreter: the model logged Python {info.python_version}, which Debian does not ship; "
                     f"the image runs {python_exact} ({choice.interpreter_package}, debian:{r.codename}), the "
                     "nearest Debian interpreter for which the whole environment resolves"
                     + "".join(f"; {t}" for t in python_choice.tried))
    elif spec.python and logged_minor and spec.python != logged_minor:
        notes.append(f"the spec's [target] python = \"{spec.python}\" ({spec.path.name}) overrides the Python "
                     f"the model logged ({info.python_version}): the image runs {python_exact}")
    elif info.python_version and info.python_version != python_exact:
        notes.append(f"the model logged Python {info.python_version}; the image runs {python_exact} "
                     f"({choice.interpreter_package} {r.interp.version}): same minor, different patch")
    glibc, wheel_platform = r.glibc, r.wheel_platform
    if wheel_platform != runtime.wheel_platform(glibc, runtime.debian_arch(spec.platform)):
        notes.append(f"wheel platform: glibc {glibc} would be {runtime.wheel_platform(glibc, spec.platform)}, which "
                     f"this uv does not accept; resolving for {wheel_platform}, the highest level it knows below "
                     f"it (such wheels run on glibc {glibc})")
    return notes


def _lock_of(choice: runtime.SuiteChoice, r: Resolved, x: LockInputs, inputs: dict[str, str],
             python_choice: PythonChoice | None) -> Lock:
    """The Lock the resolution gives."""
    spec, source, info = x.spec, x.source, x.info
    v = Version(r.python_exact)
    return Lock(
        tool_version=__version__, inputs_digest=combined_digest(inputs), inputs=tuple(sorted(inputs.items())),
        created=r.created, image_name=spec.image_name, labels=spec.labels, compression=spec.compression,
        compressor=compressor_version(spec.compression), compression_level=DEFAULT_CODEC[spec.compression][1],
        target=Target(
            platform=spec.platform, python=r.python_exact, python_abi=f"cp{v.major}{v.minor}",
            wheel_platform=r.wheel_platform, glibc=r.glibc, base=f"debian:{r.codename}",
            interpreter_package=choice.interpreter_package, interpreter_deb_version=r.interp.version,
            python_requested=spec.python or "", python_choice=python_choice,
        ),
        model=ModelLock(
            uri=source.uri, resolved_uri=source.resolved_uri, name=source.name, version=source.version,
            run_id=source.run_id, flavors=info.flavors, loader_module=info.loader_module,
            mlflow_version=info.mlflow_version, python_version=info.python_version,
            keras_version=info.keras_version, saved_format=info.saved_format,
            requirements=info.requirements, tree_digest=info.tree_digest,
            files=tuple(ModelFile(p, s, h) for p, s, h in info.files), rewritten=info.rewrites,
        ),
        runtime=Runtime(
            serving=spec.serving, mlflow_version=info.mlflow_version, server=r.server,
            port=spec.port, workers=spec.workers, user=NONROOT_UID,
            env=tuple(sorted(runtime_env(spec, info, {w.name: w.version for w in r.wheels}).items())),
        ),
        python=PythonLock(exclude_newer=x.exclude_newer, index_url=r.index_url, requirements=tuple(r.reqs),
                          packages=tuple(r.wheels), omitted=tuple(sorted(r.omit)),
                          extra_index_urls=info.extra_index_urls, constraints=info.constraints,
                          variants=r.settled.choices, mapped=r.mapped, cutoff_exempt=r.exempt),
        debian=r.deb_lock,
        build=r.build,
    )


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
        return requirement(line)  # parsed once per distinct line (a requirements file may repeat one)
    except InvalidRequirement:
        return None
