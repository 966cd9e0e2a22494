"""Network settings every HTTP client of lockbuild shares (downloads, the Debian archive, registries)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from lockbuild import __version__

USER_AGENT = f"lockbuild/{__version__}"
RETRIES = int(os.environ.get("LOCKBUILD_RETRIES", "4"))  # attempts per request, transient errors only
T = TypeVar("T")
BACKOFF = float(os.environ.get("LOCKBUILD_BACKOFF", "1"))  # seconds before the 2nd attempt; doubles, at most 8


def backoff(attempt: int) -> None:
    """Wait before retry number ``attempt`` (0 = the wait after the first failure): one policy for
    downloads, index fetches and registry calls (1, 2, 4 s by default: a registry answering 429
    needs seconds, a flaky mirror no more)."""
    time.sleep(min(BACKOFF * 2.0**attempt, 8.0))


def retry(action: Callable[[], T], *, transient: Callable[[Exception], bool], attempts: int = RETRIES) -> T:
    """``action()``, run again after ``backoff`` while it raises an error ``transient`` accepts, at
    most ``attempts`` times in all; any other error, and the last one, propagates. The one retry
    loop of lockbuild: downloads (per mirror), index fetches and registry calls use it."""
    for attempt in range(attempts - 1):
        try:
            return action()
        except Exception as e:
            if not transient(e):
                raise
            backoff(attempt)
    return action()
