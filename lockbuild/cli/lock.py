"""`lockbuild init`, `lock` (with --check and --check --rederive) and `export pylock`: the front half."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from lockbuild.cli.common import JsonOpt, LockOpt, SpecOpt, emit_json, err, lock_path
from lockbuild.errors import DoctorFailed, StaleLock


def init(
    model: Annotated[str, typer.Option("--model", "-m", help="dir, runs:/…, models:/name/ver, models:/name@alias")],
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking server")] = None,
    spec: SpecOpt = Path("lockbuild.toml"),
    name: Annotated[str | None, typer.Option(help="image name")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing spec")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write lockbuild.toml from the model's own metadata.

    Example: [bold]lockbuild init --model models:/churn@champion --tracking-uri http://127.0.0.1:5000[/]
    """
    from lockbuild.errors import SpecError
    from lockbuild.fsutil import atomic_write_text
    from lockbuild.model.intake import fetch_model
    from lockbuild.model.metadata import read_model
    from lockbuild.spec import parse_spec, render_spec

    path = spec / "lockbuild.toml" if spec.is_dir() else spec
    if path.exists() and not force:
        raise SpecError(f"{path} already exists", hint="pass --force to overwrite it")
    source = fetch_model(model, tracking_uri=tracking_uri, base_dir=path.resolve().parent)
    try:
        info = read_model(source.path)
        python, note, warning = _init_python(info, source.path)
    finally:
        source.cleanup()
    text = render_spec(model, tracking_uri=tracking_uri, python=python, name=name, python_note=note)
    parse_spec(text, path.resolve())  # what we write must load
    atomic_write_text(path, text)
    if as_json:
        emit_json({"spec": str(path), "model": model, "python": info.python_version,
                   "mlflow_version": info.mlflow_version, "flavors": list(info.flavors),
                   "target_python": python, "warnings": [warning] if warning else []})
    else:
        err.print(f"[green]wrote[/] {path}: model {model} (MLflow {info.mlflow_version}, "
                  f"Python {info.python_version}, flavors {', '.join(info.flavors)})")
        if note and not warning:
            err.print(f"[yellow]note[/] {escape(' '.join(note.splitlines()))}")
    if warning:
        err.print(f"[yellow]warning[/] {escape(warning)}")


def _init_python(info: Any, model_dir: Path) -> tuple[str | None, str | None, str | None]:
    """What `init` writes for [target] python: (value, comment instead of a value, warning).

    Never a value `lock` refuses: the logged minor only when Debian ships it; otherwise no value
    (lock chooses the nearest Debian interpreter) and a comment saying so, or, when the model
    carries Python code bound to its interpreter, a warning naming lock's refusal and its fix."""
    from lockbuild.errors import PythonVersionError
    from lockbuild.resolve import runtime
    from lockbuild.resolve.interpreter import bound_artifacts

    try:
        minor = runtime.minor_of(info.python_version)
    except PythonVersionError:
        return None, f"the model's Python version {info.python_version!r} is unreadable: set python = \"3.X\"", None
    if minor in runtime.SUITES:
        return minor, None, None
    try:
        near = [c.python_minor for c in runtime.candidates(minor)]
    except PythonVersionError as e:
        return None, None, e.message
    shipped = ", ".join(runtime.SUITES)
    note = (f"python: the model logged {info.python_version}; Debian ships {shipped}. Unset, `lockbuild lock`\n"
            f"uses the nearest ({' or '.join(near[:2])}) for which the whole environment resolves and records why.")
    bound = bound_artifacts(model_dir, info.files)
    if bound:
        return None, note, (f"the model was logged with Python {info.python_version}, which Debian does not ship "
                            f"({shipped}), and carries Python code bound to it ({'; '.join(bound)}): `lockbuild lock` "
                            f'will refuse to move it on its own. Re-log it under Python {" or ".join(near[:2])}, or '
                            f'set [target] python = "{near[0]}" in the spec to accept the risk (then prove it with '
                            "`lockbuild smoke`)")
    return None, note, None


CheckOpt = Annotated[bool, typer.Option("--check", help="exit 1 with the reason if the lock is stale")]
UpgradeOpt = Annotated[bool, typer.Option(
    "--upgrade", help="re-resolve everything (Python and Debian) at today's date")]
UpgradePackageOpt = Annotated[list[str] | None, typer.Option(
    "--upgrade-package", "-P", metavar="NAME",
    help="let this Python distribution move to its newest version (cutoff: now), or, for a Debian "
    "package, the Debian archive state move to today's; every other pin stays. Repeatable")]
RederiveOpt = Annotated[bool, typer.Option(
    "--rederive", help="with --check: audit the lock by re-deriving it from the spec and model at its "
    "recorded cutoff and Debian InRelease files (from the cache, lockbuild.lock.d/ or the archive); "
    "exit 17 naming every field that differs")]


def lock(spec: SpecOpt = Path("lockbuild.toml"), lock_file: LockOpt = None, check: CheckOpt = False,
         upgrade: UpgradeOpt = False, upgrade_package: UpgradePackageOpt = None, rederive: RederiveOpt = False,
         as_json: JsonOpt = False) -> None:
    """Resolve and pin everything the image needs into lockbuild.lock.

    A re-lock moves nothing it was not asked to move: the previous lock's versions, cutoff and
    Debian archive state are kept unless the changed inputs require otherwise; every version that
    moved is printed with the reason. --upgrade / --upgrade-package move the rest.

    Example: [bold]lockbuild lock[/]   ·   CI: [bold]lockbuild lock --check[/]   ·   audit:
    [bold]lockbuild lock --check --rederive[/]   ·   [bold]lockbuild lock --upgrade-package numpy[/]
    """
    from lockbuild.spec import load_spec

    upgrade_packages = tuple(upgrade_package or ())
    _check_flags(check=check, upgrade=upgrade, upgrade_packages=upgrade_packages, rederive=rederive)
    s = load_spec(spec)
    path = lock_path(s.path, lock_file)
    if check:
        _check(s, path, rederive=rederive, as_json=as_json)
    else:
        _lock(s, path, upgrade=upgrade, upgrade_packages=upgrade_packages, as_json=as_json)


def _check_flags(*, check: bool, upgrade: bool, upgrade_packages: tuple[str, ...], rederive: bool) -> None:
    from lockbuild.errors import SpecError

    if upgrade_packages and (check or upgrade):
        raise SpecError("--upgrade-package moves named pins in a new lock: not with --check or --upgrade",
                        hint="run `lockbuild lock --upgrade-package NAME` (or `--upgrade` for everything)")
    if rederive and not check:
        raise SpecError("--rederive audits an existing lock and writes nothing: use it with --check",
                        hint="run `lockbuild lock --check --rederive`")


def _check(s: Any, path: Path, *, rederive: bool, as_json: bool) -> None:
    """`lock --check`: the lock stage's stale reasons plus doctor's errors; then --rederive, if asked."""
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.check import check_lock
    from lockbuild.verify.doctor import doctor as run_doctor

    with err.status("checking the lock…") as status:
        result = check_lock(s, path, Cache(), notify=lambda m: status.update(escape(m)))
    reasons = result.reasons + [f"doctor error [{f.rule}]: {f.message} (fix: {f.fix})"
                                for f in run_doctor(result.lock, None) if f.severity == "error"]
    if not as_json:
        _print_notes(result.notes)
    if rederive and not reasons:
        _rederive_check(s, result.lock, path, as_json)
        return
    if as_json:
        emit_json({"lock": str(path), "fresh": not reasons, "reasons": reasons, "notes": result.notes})
    if reasons:
        raise StaleLock(f"{path} is stale:\n  - " + "\n  - ".join(reasons),
                        hint="run `lockbuild lock` and commit the result")
    if not as_json:
        err.print(f"[green]fresh[/] {path} ({result.lock.inputs_digest})")


def _lock(s: Any, path: Path, *, upgrade: bool, upgrade_packages: tuple[str, ...], as_json: bool) -> None:
    """`lock`: make the lock, refuse it if doctor finds an error, write it and its kept audit inputs."""
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.create import make_lock, read_previous
    from lockbuild.lock.keep import refresh_kept
    from lockbuild.lockfile.io import write_lock
    from lockbuild.resolve.archive import KeptInputs

    early: list[str] = []
    previous = read_previous(path, upgrade=upgrade, notes=early)
    _print_notes(early)
    kept = KeptInputs.beside(path).root
    with err.status("locking…") as status:
        result = make_lock(s, previous=previous, upgrade=upgrade, cache=Cache(),
                           notify=lambda m: status.update(escape(m)), upgrade_packages=upgrade_packages,
                           kept=kept if kept.is_dir() else None)
    _print_notes(result.notes)
    result.notes[:0] = early
    findings = _doctor_gate(result.lock, path)
    changed = write_lock(result.lock, path)
    n_notes = len(result.notes)
    kept_written = [str(p) for p in refresh_kept(s, previous, result.lock, path, Cache(), result.notes)]
    _print_notes(result.notes[n_notes:])
    if as_json:
        emit_json(_summary(result, path, changed=changed, findings=findings, kept_written=kept_written))
    else:
        _render_lock(result, path, previous=previous, changed=changed, kept_written=kept_written)


def _print_notes(notes: list[str]) -> None:
    for note in notes:
        err.print(f"[yellow]note[/] {escape(note)}")


def _doctor_gate(lk: Any, path: Path) -> list[Any]:
    """Doctor's findings on the new lock, printed; an error refuses it (a lock `lock` writes must
    build and serve: nothing is written)."""
    from lockbuild.verify.doctor import doctor as run_doctor

    findings = run_doctor(lk, None)
    for f in findings:
        rule = escape(f"[{f.rule}]")  # unescaped, Rich takes [rule-name] for a style and drops it
        err.print(f"[yellow]doctor {f.severity}[/] {rule} {escape(f.message)}; fix: {escape(f.fix)}")
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise DoctorFailed(f"the lock would not serve; {path} was not written: "
                           + "; ".join(f"[{f.rule}] {f.message}" for f in errors),
                           hint=errors[0].fix)
    return findings


def _summary(result: Any, path: Path, *, changed: bool, findings: list[Any],
             kept_written: list[str]) -> dict[str, Any]:
    """`lock --json`."""
    from lockbuild.resolve import headstart
    from lockbuild.verify.finding import DOCTOR_KEYS

    lk, pruned_files, pc = result.lock, result.pruned_files, result.lock.target.python_choice
    return {
        "lock": str(path), "changed": changed, "reused": result.reused, "inputs_digest": lk.inputs_digest,
        "python": lk.target.python, "base": lk.target.base, "wheel_platform": lk.target.wheel_platform,
        "python_packages": len(lk.python.packages), "debian_packages": len(lk.debian.packages),
        "model": lk.model.resolved_uri, "notes": result.notes, "uv_head_start": headstart.outcome(),
        "moves": [m.to_dict() for m in result.moves], "audit_inputs": kept_written,
        "variants": [{"dropped": c.dropped, "kept": c.kept, "reason": c.reason, "paths": c.paths,
                      "example": c.example} for c in lk.python.variants],
        "python_choice": None if pc is None else {
            "requested": pc.requested, "chosen": pc.chosen, "reason": pc.reason, "tried": list(pc.tried)},
        "mapped": [{"logged": m.logged, "locked": m.locked, "reason": m.reason} for m in lk.python.mapped],
        "doctor": [f.to_dict(DOCTOR_KEYS) for f in findings],
        "pruned": None if pruned_files is None else {
            "files": sum(pruned_files.values()),
            "wheels": {w.name: {"files": pruned_files.get(w.name, 0), "entries": len(w.pruned)}
                       for w in sorted(lk.python.packages, key=lambda w: w.name) if w.pruned}},
    }


def _render_lock(result: Any, path: Path, *, previous: Any, changed: bool, kept_written: list[str]) -> None:
    """`lock` on the terminal: what a reused lock records, the moves, the one-line result."""
    lk = result.lock
    if result.reused:  # a new lock said these in its notes while it was made
        _print_notes(_recorded_choices(lk))
    for m in result.moves:
        err.print(f"[cyan]moved[/] {escape(str(m))}")
    if previous is not None and not result.reused and not result.moves:
        err.print("no pin moved")
    if kept_written:
        err.print(f"audit inputs refreshed in {path.with_name(path.name + '.d')} ({len(kept_written)} files)")
    state = "unchanged" if not changed else "written"
    err.print(f"[green]{state}[/] {path}: Python {lk.target.python} on {lk.target.base} "
              f"({len(lk.debian.packages)} .debs), {len(lk.python.packages)} wheels for "
              f"{lk.target.wheel_platform}, model {lk.model.resolved_uri}")
    if result.pruned_files:
        per = sorted(result.pruned_files.items(), key=lambda kv: (-kv[1], kv[0]))
        err.print(f"pruned {sum(result.pruned_files.values()):,} files from {len(per)} wheel(s) (\\[build] prune, "
                  "listed per wheel in the lock): " + ", ".join(f"{n} {c:,}" for n, c in per))


def _recorded_choices(lk: Any) -> list[str]:
    """The interpreter, mapping and variant decisions a lock records, as notes."""
    pc = lk.target.python_choice
    notes = [] if pc is None else [f"interpreter: Python {pc.chosen} for the model's {pc.requested} ({pc.reason})"]
    notes += [f"mapped: {mp.logged} -> {mp.locked or '(dropped)'} ({mp.reason})" for mp in lk.python.mapped]
    notes += [f"variant: {c.kept} kept, {c.dropped} dropped ({c.reason})" for c in lk.python.variants]
    return notes


def _rederive_check(s: Any, current: Any, path: Path, as_json: bool) -> None:
    """`lock --check --rederive`: derive the lock again at its pins and compare field by field."""
    from lockbuild.errors import LockMismatch
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.audit import rederive as audit
    from lockbuild.resolve.archive import KeptInputs

    kept = KeptInputs.beside(path).root
    notes: list[str] = []
    with err.status("re-deriving the lock…") as status:
        diffs = audit(s, current, Cache(), notify=lambda m: status.update(escape(m)),
                      kept=kept if kept.is_dir() else None, notes=notes)
    if not as_json:
        for note in notes:
            err.print(f"[yellow]note[/] {escape(note)}")
    if as_json:
        emit_json({"lock": str(path), "fresh": True, "rederived": True, "genuine": not diffs,
                   "differences": [d.to_dict() for d in diffs], "notes": notes})
    if diffs:
        shown = [str(d) for d in diffs[:20]] + ([f"… and {len(diffs) - 20} more"] if len(diffs) > 20 else [])
        raise LockMismatch(
            f"{path} does not re-derive from its spec and model ({len(diffs)} field(s) differ):\n  - "
            + "\n  - ".join(shown),
            hint="the lock was edited (its content header recomputed) or made by another tool: do not build from "
            "it; restore it from version control or re-create it with `lockbuild lock --upgrade`")
    if not as_json:
        err.print(f"[green]genuine[/] {path}: every field re-derives from the spec and model at its pins "
                  f"(cutoff {current.python.exclude_newer}, {len(current.debian.suites)} signed InRelease files)")


def export_pylock(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="pylock.toml or pylock.<name>.toml")] = Path(
        "pylock.toml"),
) -> None:
    """Write the Python part of the lock as a PEP 751 pylock.toml.

    Example: [bold]lockbuild export pylock -o pylock.toml && uv pip install -r pylock.toml --target site[/]
    """
    import re

    from lockbuild.errors import SpecError
    from lockbuild.fsutil import atomic_write_text
    from lockbuild.lockfile.io import read_lock
    from lockbuild.lockfile.pylock import to_pylock

    if not re.fullmatch(r"pylock(\.[^.]+)?\.toml", output.name):
        raise SpecError(f"PEP 751 requires the file name pylock.toml or pylock.<name>.toml, not {output.name}")
    lk = read_lock(lock_path(spec, lock_file))
    atomic_write_text(output, to_pylock(lk))
    err.print(f"[green]wrote[/] {output} ({len(lk.python.packages)} packages)")


def export_audit_inputs(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="directory (default: lockbuild.lock.d/ beside the lock)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Keep what `lock --check --rederive` needs beside the lock, so the audit runs later anywhere.

    Writes lockbuild.lock.d/debian/: the signed InRelease files the lock pins, small Packages
    indexes whole, and of a big index only the stanzas the closure reads (docs/lock.md). Commit the
    directory with the lock; once it exists, `lockbuild lock` keeps it up to date.

    Example: [bold]lockbuild export audit-inputs && git add lockbuild.lock.d[/]
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.keep import export_kept
    from lockbuild.lockfile.io import read_lock
    from lockbuild.spec import load_spec

    s = load_spec(spec)
    path = lock_path(s.path, lock_file)
    lk = read_lock(path)
    dest = (output / "debian") if output is not None else path.with_name(path.name + ".d") / "debian"
    with err.status("keeping the audit inputs…") as status:
        files = export_kept(s, lk, dest, Cache(), notify=lambda m: status.update(escape(m)))
    size = sum(p.stat().st_size for p in files)
    if as_json:
        emit_json({"lock": str(path), "directory": str(dest.parent), "files": [str(p) for p in files],
                   "bytes": size})
    else:
        err.print(f"[green]wrote[/] {dest.parent}/ ({len(files)} files, {size / 1e3:,.0f} kB): "
                  f"`lockbuild lock --check --rederive` now needs no cache")


def register(app: typer.Typer, export_app: typer.Typer) -> None:
    app.command()(init)
    app.command()(lock)
    export_app.command("pylock")(export_pylock)
    export_app.command("audit-inputs")(export_audit_inputs)
