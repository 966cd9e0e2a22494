"""Network settings every HTTP client of lockbuild shares (downloads, the Debian archive, registries)."""

from __future__ import annotations

import os
import time

from lockbuild import __version__

USER_AGENT = f"lockbuild/{__version__}"
RETRIES = int(os.environ.get("LOCKBUILD_RETRIES", "4"))  # attempts per request, transient errors only
BACKOFF = float(os.environ.get("LOCKBUILD_BACKOFF", "1"))  # seconds before the 2nd attempt; doubles, at most 8


def backoff(attempt: int) -> None:
    """Wait before retry number ``attempt`` (0 = the wait after the first failure): one policy for
    downloads, index fetches and registry calls (1, 2, 4 s by default: a registry answering 429
    needs seconds, a flaky mirror no more)."""
    time.sleep(min(BACKOFF * 2.0**attempt, 8.0))
