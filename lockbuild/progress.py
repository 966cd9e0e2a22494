"""The two progress callbacks every stage takes, defined once. Stages call them; only the CLI draws
(rich bars and lines), so every stage runs the same without a terminal."""

from __future__ import annotations

from collections.abc import Callable

Notify = Callable[[str], None]  # one human-readable line per step ("resolving Debian bookworm/amd64")
Progress = Callable[[int], None]  # bytes done since the last call (downloads, uploads)


def quiet(_message: str) -> None:
    """A Notify that says nothing."""
