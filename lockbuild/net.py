"""Network settings every HTTP client of lockbuild shares (downloads, the Debian archive, registries)."""

from __future__ import annotations

import os

from lockbuild import __version__

USER_AGENT = f"lockbuild/{__version__}"
RETRIES = int(os.environ.get("LOCKBUILD_RETRIES", "4"))  # attempts per request, transient errors only
