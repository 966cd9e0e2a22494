"""Where a locked .deb can be fetched from: its suite's archive, then Debian's snapshot archive.

Lives in fetch/ (not resolve/) because the builder needs it and the builder never resolves.
"""

from __future__ import annotations

from lockbuild.errors import LockFileError
from lockbuild.fetch import download
from lockbuild.lockfile.model import DebianLock

SNAPSHOT_ROOT = "https://snapshot.debian.org/archive"


def deb_items(lock: DebianLock) -> list[download.Item]:
    """Download items for every locked .deb: its suite's archive first, then snapshot.debian.org."""
    suites = {s.name: s for s in lock.suites}
    items = []
    for d in lock.packages:
        s = suites.get(d.suite)
        if s is None:
            raise LockFileError(
                f"deb {d.name}_{d.version} names suite {d.suite!r}, which the lock does not list",
                hint="re-run `lockbuild lock` to regenerate the lock",
            )
        snapshot = f"{SNAPSHOT_ROOT}/{s.snapshot_archive}/{s.snapshot}/{d.filename}"
        urls = (f"{s.archive}/{d.filename}", snapshot)
        label = f"deb {d.name}_{d.version}"
        items.append(download.Item(urls=urls, sha256=d.sha256, size=d.size, label=label))
    return items
