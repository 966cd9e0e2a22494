"""Command line: parse, call one stage function, render (rich on stderr, --json on stdout).

Only this module knows about terminals and exit codes; stages raise LockbuildError.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from lockbuild import __version__
from lockbuild.errors import LockbuildError, StaleLock

app = typer.Typer(
    name="lockbuild",
    help="Turn an MLflow model into a locked, bit-for-bit reproducible OCI image, and prove it serves.\n\n"
    "Daily use:  lockbuild lock && lockbuild image",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
export_app = typer.Typer(help="Export parts of the lock in other formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="lockbuild.toml (or its directory)")]
LockOpt = Annotated[Path | None, typer.Option("--lock", "-l", help="lockbuild.lock (default: beside the spec)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable result on stdout")]


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _lock_path(spec_path: Path, lock: Path | None) -> Path:
    if lock is not None:
        return lock
    base = spec_path if spec_path.is_dir() else spec_path.parent
    return base / "lockbuild.lock"


@app.command()
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
    finally:
        source.cleanup()
    from packaging.version import Version

    v = Version(info.python_version) if info.python_version else None
    text = render_spec(model, tracking_uri=tracking_uri, python=f"{v.major}.{v.minor}" if v else None, name=name)
    parse_spec(text, path.resolve())  # what we write must load
    atomic_write_text(path, text)
    if as_json:
        emit_json({"spec": str(path), "model": model, "python": info.python_version,
                   "mlflow_version": info.mlflow_version, "flavors": list(info.flavors)})
    else:
        err.print(f"[green]wrote[/] {path}: model {model} (MLflow {info.mlflow_version}, "
                  f"Python {info.python_version}, flavors {', '.join(info.flavors)})")


@app.command()
def lock(
    spec: SpecOpt = Path("lockbuild.toml"),
    lock_file: LockOpt = None,
    check: Annotated[bool, typer.Option("--check", help="exit 1 with the reason if the lock is stale")] = False,
    upgrade: Annotated[bool, typer.Option("--upgrade", help="re-resolve everything (Python and Debian)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Resolve and pin everything the image needs into lockbuild.lock.

    Example: [bold]lockbuild lock[/]   ·   CI: [bold]lockbuild lock --check[/]
    """
    from lockbuild.fetch.cache import Cache
    from lockbuild.lock.create import explain_stale, make_lock
    from lockbuild.lock.io import dumps, read_lock, write_lock
    from lockbuild.spec import load_spec

    s = load_spec(spec)
    path = _lock_path(s.path, lock_file)
    if check:
        current = read_lock(path)
        reasons = explain_stale(s, current)
        text = path.read_text(encoding="utf-8")
        if dumps(current) != text:
            reasons.append(f"{path.name} was edited by hand (it does not render back to the same bytes)")
        if as_json:
            emit_json({"lock": str(path), "fresh": not reasons, "reasons": reasons})
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
            err.print(f"[yellow]note[/] ignoring the existing lock: {e.message}")
    with err.status("locking…") as status:
        result = make_lock(s, previous=previous, upgrade=upgrade, cache=Cache(),
                           notify=lambda m: status.update(m))
    changed = write_lock(result.lock, path)
    for note in result.notes:
        err.print(f"[yellow]note[/] {note}")
    lk = result.lock
    summary = {
        "lock": str(path), "changed": changed, "reused": result.reused, "inputs_digest": lk.inputs_digest,
        "python": lk.target.python, "base": lk.target.base, "wheel_platform": lk.target.wheel_platform,
        "python_packages": len(lk.python.packages), "debian_packages": len(lk.debian.packages),
        "model": lk.model.resolved_uri, "notes": result.notes,
    }
    if as_json:
        emit_json(summary)
    else:
        state = "unchanged" if not changed else "written"
        err.print(f"[green]{state}[/] {path}: Python {lk.target.python} on {lk.target.base} "
                  f"({len(lk.debian.packages)} .debs), {len(lk.python.packages)} wheels for "
                  f"{lk.target.wheel_platform}, model {lk.model.resolved_uri}")


@export_app.command("pylock")
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
    from lockbuild.lock.io import read_lock
    from lockbuild.lock.pylock import to_pylock

    if not re.fullmatch(r"pylock(\.[^.]+)?\.toml", output.name):
        raise SpecError(f"PEP 751 requires the file name pylock.toml or pylock.<name>.toml, not {output.name}")
    lk = read_lock(_lock_path(spec, lock_file))
    atomic_write_text(output, to_pylock(lk))
    err.print(f"[green]wrote[/] {output} ({len(lk.python.packages)} packages)")


@app.command()
def version() -> None:
    """Print lockbuild's version."""
    out.print(__version__)


def main() -> None:
    try:
        app()
    except LockbuildError as e:
        if "--json" in sys.argv:
            emit_json(e.to_dict())
        where = f" [dim]({escape(e.where)})[/]" if e.where else ""
        err.print(f"[bold red]{e.kind}:[/] {escape(e.message)}{where}")
        if e.hint:
            err.print(f"[cyan]hint:[/] {escape(e.hint)}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: nothing was left half-written")
        sys.exit(130)
