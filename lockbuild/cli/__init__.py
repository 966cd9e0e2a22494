"""lockbuild's command line: one Typer app, one module per command group, shared options in
common.py. Every command module registers its commands here; none imports this package back, so
there is no import circle.

  common.py  consoles, --json, option types, lock path, build progress
  lock.py    init, lock (--check, --rederive), export pylock
  image.py   image (publishers in lockbuild/publish/)
  proof.py   verify, smoke, doctor
  audit.py   sbom, provenance, diff, k8s
  sign.py    keygen, sign (and verify --key's signature step)
  cache.py   cache gc
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from lockbuild import __version__
from lockbuild.cli import audit, cache, image, lock, proof, sign
from lockbuild.cli.common import emit_json, err, out, state
from lockbuild.errors import LockbuildError

app = typer.Typer(
    name="lockbuild",
    help="Turn an MLflow model into a locked, bit-for-bit reproducible OCI image, and prove it serves.\n\n"
    "Example (daily use): [bold]lockbuild lock && lockbuild image --oci out/oci && lockbuild verify out/oci[/]"
    "\n\nEvery command has --help with an example; README.md has the whole tour.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
export_app = typer.Typer(
    help="Export parts of the lock in other formats, or the inputs its audit needs.\n\n"
    "Example: [bold]lockbuild export pylock -o pylock.toml[/]   ·   [bold]lockbuild export audit-inputs[/]",
    no_args_is_help=True)
app.add_typer(export_app, name="export")


lock.register(app, export_app)
image.register(app)
proof.register(app)
audit.register(app)
sign.register(app)
cache.register(app)


@app.command()
def version() -> None:
    """Print lockbuild's version.

    Example: [bold]lockbuild version[/]
    """
    out.print(__version__)


def main() -> None:
    try:
        app()
    except LockbuildError as e:
        if "--json" in sys.argv and not state.emitted:
            emit_json(e.to_dict())
        where = f" [dim]({escape(e.where)})[/]" if e.where else ""
        err.print(f"[bold red]{e.kind}:[/] {escape(e.message)}{where}")
        if e.hint:
            err.print(f"[cyan]hint:[/] {escape(e.hint)}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: nothing was left half-written")
        sys.exit(130)
    except OSError as e:  # disk full, permissions, ...: a clear line, never a traceback
        import errno

        if e.errno == errno.ENOSPC:
            err.print(f"[bold red]disk full:[/] {escape(str(e))}")
            err.print("[cyan]hint:[/] free space or point LOCKBUILD_CACHE at a larger disk; no partial output was kept")
            sys.exit(11)
        err.print(f"[bold red]os error:[/] {escape(str(e))}")
        sys.exit(2)
