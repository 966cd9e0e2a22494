"""What every command shares: the two consoles (rich on stderr, the one --json document on stdout), the
option types, where the lock lives, the build progress display. Only lockbuild/cli/ knows about
terminals and exit codes; stages raise LockbuildError."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

SpecOpt = Annotated[Path, typer.Option("--spec", "-s", help="lockbuild.toml (or its directory)")]
LockOpt = Annotated[Path | None, typer.Option("--lock", "-l", help="lockbuild.lock (default: beside the spec)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable result on stdout")]


class _State:
    emitted = False  # a --json document was written: main() must not write a second one for an error


state = _State()


def emit_json(obj: Any) -> None:
    """One JSON document per run on stdout (a failing command's report already says why)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    state.emitted = True


def lock_path(spec_path: Path, lock: Path | None) -> Path:
    """--lock, else lockbuild.lock beside the spec (a file or its directory)."""
    if lock is not None:
        return lock
    base = spec_path if spec_path.is_dir() else spec_path.parent
    return base / "lockbuild.lock"


def spec_file(spec: Path) -> Path:
    return spec / "lockbuild.toml" if spec.is_dir() else spec


def load_json_file(p: Path, what: str) -> Any:
    from lockbuild.errors import SpecError

    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"{what} file {p} does not exist", hint="fix [smoke] in lockbuild.toml") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"{what} file {p} is not JSON: {e}") from None


def progress_reporter(enabled: bool):  # type: ignore[no-untyped-def]
    """A build's ``progress.Report`` drawing rich progress on stderr: every event of ``progress.EVENTS``."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                        console=err, transient=False, disable=not enabled)
    tasks: dict[str, Any] = {}

    def report(event: str, data: dict) -> None:
        if event == "plan":
            err.print(f"layers: {data['layers']} ({data['cached']} cached"
                      + (f"; building {', '.join(data['todo'])})" if data["todo"] else ")"))
        elif event == "fetch-start":
            tasks["fetch"] = progress.add_task(f"fetch {data['items']} artifacts", total=data["bytes"])
        elif event == "fetch-progress" and "fetch" in tasks:
            progress.update(tasks["fetch"], completed=data["done"])
        elif event == "fetch-done" and "fetch" in tasks:
            progress.update(tasks["fetch"], completed=progress.tasks[tasks["fetch"]].total)
        elif event == "sdist-build":
            err.print(f"building {escape(data['name'])} {escape(data['version'])} from its locked sdist")
        elif event == "layer-start":
            tasks[data["name"]] = progress.add_task(f"layer {data['name']}", total=None)
        elif event == "warning":
            err.print(f"[yellow]warning[/] {escape(data['message'])}")
        elif event == "layer-done":
            progress.update(tasks[data["name"]], total=data["size"], completed=data["size"])

    return progress, report

