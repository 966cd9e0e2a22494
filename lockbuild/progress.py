"""How stages tell the CLI what they are doing, defined once. Stages call these; only the CLI draws
(rich bars and lines, cli/common.py), so every stage runs the same without a terminal.

- ``Report``: the one progress-event type of a build (``image``, ``verify``'s derivation, the shared
  cache): an event name from ``EVENTS`` and its fields. The CLI renders every one of them.
- ``Notify``: one human-readable line per step of the lock stage ("resolving Debian bookworm/amd64").
- ``Progress``: bytes done since the last call, inside one transfer (downloads, uploads); a
  transfer's owner turns it into ``Report`` events (fetch/download.py: ``fetch-progress``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Report = Callable[[str, dict[str, Any]], None]
EVENTS: dict[str, tuple[str, ...]] = {  # event -> its fields
    "plan": ("layers", "cached", "todo"),  # what the build will do
    "fetch-start": ("items", "bytes"),  # downloads started (fetch/download.py)
    "fetch-progress": ("done", "total"),  # bytes verified so far, of all items
    "fetch-done": ("items",),  # every item is in the cache, verified
    "sdist-build": ("name", "version"),  # a locked sdist is being built into its wheel
    "layer-start": ("name",),
    "layer-done": ("name", "size", "diff_id"),
    "warning": ("message",),  # something the user should know; the build goes on
}
Notify = Callable[[str], None]
Progress = Callable[[int], None]


def silent(_event: str, _data: dict[str, Any]) -> None:
    """A Report that shows nothing."""


def quiet(_message: str) -> None:
    """A Notify that says nothing."""
