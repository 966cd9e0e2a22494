"""`lockbuild cache gc`: keep what the given locks need, free the rest (share/gc.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lockbuild.cli.common import JsonOpt, emit_json, err, out

cache_app = typer.Typer(help="The local layer/download cache and the shared registry cache.\n\n"
                        "Example: [bold]lockbuild cache gc --lock lockbuild.lock --dry-run[/]", no_args_is_help=True)


@cache_app.command()
def gc(
    locks: Annotated[list[Path], typer.Option("--lock", "-l", help="a lock whose inputs and layers to keep "
                                              "(repeatable; at least one)")],
    registry: Annotated[str | None, typer.Option(
        "--registry", envvar="LOCKBUILD_CACHE_REGISTRY", show_envvar=False,
        help="also delete this shared cache's tags the locks do not use (HOST/REPO)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="report what would be freed; change nothing")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Free what the given locks do not need from the local cache (and the shared cache's tags).

    Kept: the locks' wheels, .debs, model files and layers.
    Freed: other blobs (indexes too: `lockbuild lock` fetches them again), other layer records,
    temp files older than an hour. Run it between builds.

    Example: [bold]lockbuild cache gc --lock examples/keras3/lockbuild.lock --registry reg/lockbuild-cache[/]
    """
    from lockbuild.errors import LockFileError
    from lockbuild.fetch.cache import Cache
    from lockbuild.lockfile.io import loads
    from lockbuild.share.gc import gc_local, gc_registry

    if not locks:
        raise LockFileError("name at least one --lock whose cache entries to keep",
                            hint="e.g. lockbuild cache gc --lock lockbuild.lock (gc never empties the cache blindly)")
    parsed = []
    for p in locks:
        try:
            data = p.read_bytes()
        except OSError as e:
            raise LockFileError(f"cannot read the lock {p}: {e.strerror}", hint="check the path") from None
        parsed.append((loads(data.decode("utf-8"), str(p)), data))
    result: dict[str, object] = {"local": gc_local(Cache(), parsed, dry_run=dry_run)}
    if registry:
        result["registry"] = gc_registry(registry, parsed, dry_run=dry_run)
    if as_json:
        emit_json(result)
        return
    local = result["local"]
    assert isinstance(local, dict)
    f, k = local["freed"], local["kept"]
    verb = "would free" if dry_run else "freed"
    err.print(f"[green]{verb}[/] {f['blobs']} blobs ({f['blob_bytes'] / 1e6:.1f} MB), {f['layer_records']} layer "
              f"records, {f['tmp']} temp entries ({f['tmp_bytes'] / 1e6:.1f} MB); kept {k['blobs']} blobs "
              f"({k['blob_bytes'] / 1e6:.1f} MB), {k['layer_records']} layers")
    if registry:
        reg = result["registry"]
        assert isinstance(reg, dict)
        err.print(f"[green]{'would delete' if dry_run else 'deleted'}[/] {len(reg['deleted_tags'])} cache tags in "
                  f"{reg['registry']}; kept {reg['kept_tags']}")
    out.print(f"{f['blob_bytes']}")


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
