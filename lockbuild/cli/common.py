"""What every command shares: the two consoles (rich on stderr, the one --json document on stdout), the
option types, where the lock lives, the build progress display. Only lockbuild/cli/ knows about
terminals and exit codes; stages raise LockbuildError."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from lockbuild.lockfile.io import LockFile

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


def read_lock_file(spec_path: Path, lock: Path | None) -> LockFile:
    """The command's lock, read once: parsed lock, bytes and digest from the same read."""
    from lockbuild.lockfile.io import read_lockfile

    return read_lockfile(lock_path(spec_path, lock))


def tracking_uri(lf: LockFile) -> str | None:
    """Where the lock's MLflow model is read again when the cache lacks its files: the spec beside the
    lock (`[model] tracking-uri`), else None ($MLFLOW_TRACKING_URI). Read here, by the CLI, and passed
    down: the builder reads only the lock, and a tracking URI may carry credentials, so it is never
    written into the lock. A spec that does not load is no reason to refuse a build from the lock
    alone: it gives no tracking URI (`lock --check` is where a broken spec is reported)."""
    beside = lf.dir / "lockbuild.toml"
    if not beside.is_file():
        return None
    from lockbuild.errors import SpecError
    from lockbuild.spec import load_spec

    try:
        return load_spec(beside).tracking_uri
    except SpecError:
        return None


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

