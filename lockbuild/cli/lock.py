"""`lockbuild init`, `lock` (with --check and --check --rederive) and `export pylock`: the front half."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from lockbuild.cli.common import JsonOpt, LockOpt, SpecOpt, emit_json, err, lock_path
from lockbuild.errors import DoctorFailed, LockbuildError, StaleLock


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


def lock(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 with the reason if the lock is stale")] = False,
    upgrade: Annotated[bool, typer.Option(
        "--upgrade", help="re-resolve everything (Python and Debian) at today's date")] = False,
    upgrade_package: Annotated[list[str] | None, typer.Option(
        "--upgrade-package", "-P", metavar="NAME",
        help="let this Python distribution move to its newest version (cutoff: now), or, for a Debian "
        "package, the Debian archive state move to today's; every other pin stays. Repeatable")] = None,
    rederive: Annotated[bool, typer.Option(
        "--rederive", help="with --check: audit the lock by re-deriving it from the spec and model at its "
        "recorded cutoff and Debian InRelease files (from the cache, lockbuild.lock.d/ or the archive); "
        "exit 17 naming every field that differs")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Resolve and pin everything the image needs into lockbuild.lock.

    A re-lock moves nothing it was not asked to move: the previous lock's versions, cutoff and
    Debian archive state are kept unless the changed inputs require otherwise; every version that
    moved is printed with the reason. --upgrade / --upgrade-package move the rest.

    Example: [bold]lockbuild lock[/]   ·   CI: [bold]lockbuild lock --check[/]   ·   audit:
    [bold]lockbuild lock --check --rederive[/]   ·   [bold]lockbuild lock --upgrade-package numpy[/]
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.create import explain_stale, make_lock
    from lockbuild.lockfile.io import dumps, read_lock, write_lock
    from lockbuild.resolve.archive import KeptInputs
    from lockbuild.spec import load_spec

    s = load_spec(spec)
    path = lock_path(s.path, lock_file)
    upgrade_packages = tuple(upgrade_package or ())
    if upgrade_packages and (check or upgrade):
        from lockbuild.errors import SpecError

        raise SpecError("--upgrade-package moves named pins in a new lock: not with --check or --upgrade",
                        hint="run `lockbuild lock --upgrade-package NAME` (or `--upgrade` for everything)")
    if rederive and not check:
        from lockbuild.errors import SpecError

        raise SpecError("--rederive audits an existing lock and writes nothing: use it with --check",
                        hint="run `lockbuild lock --check --rederive`")
    if check:
        current = read_lock(path, verify_content=False)  # a hand edit is reported below as a reason
        reasons = explain_stale(s, current)
        from lockbuild.verify.doctor import doctor as run_doctor

        reasons += [f"doctor error [{f.rule}]: {f.message} (fix: {f.fix})"
                    for f in run_doctor(current, None) if f.severity == "error"]
        text = path.read_text(encoding="utf-8")
        if dumps(current) != text:
            reasons.append(f"{path.name} was edited by hand (it does not render back to the same bytes)")
        from lockbuild.lock import pruned

        with err.status("checking the pruned lists against the wheels' file lists…"):
            pruned_reasons, notes = pruned.check(current, Cache())
        reasons += pruned_reasons
        kept = KeptInputs.beside(path)
        if kept.root.is_dir() and not _kept_complete(kept, current):
            notes.append(f"{kept.root.parent.name}/ lacks InRelease files this lock pins: `lock --check --rederive` "
                         "may not run later; run `lockbuild export audit-inputs` and commit it")
        if not as_json:
            for note in notes:
                err.print(f"[yellow]note[/] {escape(note)}")
        if rederive and not reasons:
            _rederive_check(s, current, path, as_json)
            return
        if as_json:
            emit_json({"lock": str(path), "fresh": not reasons, "reasons": reasons, "notes": notes})
        if reasons:
            raise StaleLock(f"{path} is stale:\n  - " + "\n  - ".join(reasons),
                            hint="run `lockbuild lock` and commit the result")
        if not as_json:
            err.print(f"[green]fresh[/] {path} ({current.inputs_digest})")
        return
    previous = None
    if path.exists():
        try:
            previous = read_lock(path)
        except LockbuildError as e:
            if not upgrade:  # re-resolving now would silently move the cutoff and the Debian side
                from lockbuild.errors import LockFileError

                raise LockFileError(
                    f"the existing lock cannot be used: {e.message}", where=e.where or str(path),
                    hint="nothing was written. `lockbuild lock --upgrade` re-resolves everything at today's "
                    f"date (new cutoff, new Debian state); or restore {path.name} from version control",
                ) from None
            err.print(f"[yellow]note[/] --upgrade: replacing the unreadable lock ({escape(e.message)})")
    kept = KeptInputs.beside(path)
    with err.status("locking…") as status:
        result = make_lock(s, previous=previous, upgrade=upgrade, cache=Cache(),
                           notify=lambda m: status.update(escape(m)), upgrade_packages=upgrade_packages,
                           kept=kept.root if kept.root.is_dir() else None)
    for note in result.notes:
        err.print(f"[yellow]note[/] {escape(note)}")
    if upgrade_packages and previous is not None:
        known = {w.name for w in previous.python.packages}
        debs = {d.name for d in previous.debian.packages}
        from packaging.utils import canonicalize_name

        for n in upgrade_packages:
            if canonicalize_name(n) not in known and n not in debs:
                err.print(f"[yellow]note[/] --upgrade-package {escape(n)}: neither a Python nor a Debian package of "
                          "the previous lock")
    from lockbuild.verify.doctor import doctor as run_doctor
    from lockbuild.verify.finding import DOCTOR_KEYS

    findings = run_doctor(result.lock, None)
    for f in findings:
        rule = escape(f"[{f.rule}]")  # unescaped, Rich takes [rule-name] for a style and drops it
        err.print(f"[yellow]doctor {f.severity}[/] {rule} {escape(f.message)}; fix: {escape(f.fix)}")
    errors = [f for f in findings if f.severity == "error"]
    if errors:  # a lock that `lock` writes must build and serve: nothing is written
        raise DoctorFailed(f"the lock would not serve; {path} was not written: "
                           + "; ".join(f"[{f.rule}] {f.message}" for f in errors),
                           hint=errors[0].fix)
    changed = write_lock(result.lock, path)
    lk = result.lock
    kept_written: list[str] = []
    if kept.root.is_dir() and (previous is None or previous.debian.suites != lk.debian.suites
                               or previous.debian.roots != lk.debian.roots or not _kept_complete(kept, lk)):
        try:  # the lock is written and good; its audit inputs are a convenience beside it
            kept_written = [str(p) for p in _export_kept(s, lk, kept.root, status=None)]
        except LockbuildError as e:
            result.notes.append(f"the audit inputs in {kept.root.parent} were not refreshed: {e.message}")
            err.print(f"[yellow]note[/] {escape(result.notes[-1])}" + (f" ({escape(e.hint)})" if e.hint else ""))
    pruned_files = result.pruned_files
    if pruned_files is None:  # reused: count from the (cached) file lists
        from lockbuild.lock.pruned import lock_counts

        try:
            pruned_files = lock_counts(lk, Cache())
        except LockbuildError as e:
            err.print(f"[yellow]note[/] pruned files not counted: {escape(e.message)}")
    summary = {
        "lock": str(path), "changed": changed, "reused": result.reused, "inputs_digest": lk.inputs_digest,
        "python": lk.target.python, "base": lk.target.base, "wheel_platform": lk.target.wheel_platform,
        "python_packages": len(lk.python.packages), "debian_packages": len(lk.debian.packages),
        "model": lk.model.resolved_uri, "notes": result.notes,
        "moves": [m.to_dict() for m in result.moves], "audit_inputs": kept_written,
        "variants": [{"dropped": c.dropped, "kept": c.kept, "reason": c.reason, "paths": c.paths,
                      "example": c.example} for c in lk.python.variants],
        "python_choice": None if lk.target.python_choice is None else {
            "requested": lk.target.python_choice.requested, "chosen": lk.target.python_choice.chosen,
            "reason": lk.target.python_choice.reason, "tried": list(lk.target.python_choice.tried)},
        "mapped": [{"logged": m.logged, "locked": m.locked, "reason": m.reason} for m in lk.python.mapped],
        "doctor": [f.to_dict(DOCTOR_KEYS) for f in findings],
        "pruned": None if pruned_files is None else {
            "files": sum(pruned_files.values()),
            "wheels": {w.name: {"files": pruned_files.get(w.name, 0), "entries": len(w.pruned)}
                       for w in sorted(lk.python.packages, key=lambda w: w.name) if w.pruned}},
    }
    if result.reused:
        pc = lk.target.python_choice
        if pc is not None:
            err.print(f"[yellow]note[/] interpreter: Python {pc.chosen} for the model's {pc.requested} "
                      f"({escape(pc.reason)})")
        for mp in lk.python.mapped:
            err.print(f"[yellow]note[/] mapped: {escape(mp.logged)} -> {escape(mp.locked or '(dropped)')} "
                      f"({escape(mp.reason)})")
        for c in lk.python.variants:
            err.print(f"[yellow]note[/] variant: {c.kept} kept, {c.dropped} dropped ({escape(c.reason)})")
    if as_json:
        emit_json(summary)
    else:
        for m in result.moves:
            err.print(f"[cyan]moved[/] {escape(str(m))}")
        if previous is not None and not result.reused and not result.moves:
            err.print("no pin moved")
        if kept_written:
            err.print(f"audit inputs refreshed in {kept.root.parent} ({len(kept_written)} files)")
        state = "unchanged" if not changed else "written"
        err.print(f"[green]{state}[/] {path}: Python {lk.target.python} on {lk.target.base} "
                  f"({len(lk.debian.packages)} .debs), {len(lk.python.packages)} wheels for "
                  f"{lk.target.wheel_platform}, model {lk.model.resolved_uri}")
        if pruned_files:
            per = sorted(pruned_files.items(), key=lambda kv: (-kv[1], kv[0]))
            err.print(f"pruned {sum(pruned_files.values()):,} files from {len(per)} wheel(s) (\\[build] prune, "
                      "listed per wheel in the lock): " + ", ".join(f"{n} {c:,}" for n, c in per))


def _kept_complete(kept: Any, lk: Any) -> bool:
    return all(kept.inrelease(st.inrelease_sha256).is_file() for st in lk.debian.suites)


def _export_kept(s: Any, lk: Any, dest: Path, status: Any) -> list[Path]:
    """Write the Debian audit inputs of lock `lk` into `dest` (lockbuild.lock.d/debian)."""
    from lockbuild.fetch.cache import Cache
    from lockbuild.resolve.debian import export_audit_inputs

    return export_audit_inputs(lk.debian, lk.target.base.split(":", 1)[1], lk.target.platform, Cache(), dest,
                               mirror=s.mirror, security_mirror=s.security_mirror, keyring=s.keyrings or None,
                               kept=dest if dest.is_dir() else None,
                               progress=(lambda m: status.update(escape(m))) if status else None)


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
    from lockbuild.lockfile.io import read_lock
    from lockbuild.spec import load_spec

    s = load_spec(spec)
    path = lock_path(s.path, lock_file)
    lk = read_lock(path)
    dest = (output / "debian") if output is not None else path.with_name(path.name + ".d") / "debian"
    with err.status("keeping the audit inputs…") as status:
        files = _export_kept(s, lk, dest, status)
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
