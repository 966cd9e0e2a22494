"""Verified downloads into the cache: mirrors in order, retries, resume, parallel, progress.

``fetch_all`` is the one entry point the builder uses: it takes (urls, sha256, size) items,
returns verified cache paths, and never leaves a partial entry in the cache.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import httpx

from lockbuild.digest import to_hex
from lockbuild.errors import FetchError, IntegrityError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import CHUNK, sha256_file
from lockbuild.net import RETRIES, USER_AGENT
from lockbuild.progress import Progress

TIMEOUT = httpx.Timeout(60.0, connect=15.0)



@dataclass(frozen=True)
class Item:
    urls: tuple[str, ...]
    sha256: str  # sha256:<hex>
    size: int | None = None
    label: str = ""


def netrc_path() -> Path | None:
    """Index credentials live in netrc (``$NETRC`` or ~/.netrc), never in the lock: the lock, the image,
    the pylock export and provenance carry URLs without userinfo."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    return path if path.is_file() else None


def client() -> httpx.Client:
    netrc = netrc_path()
    return httpx.Client(
        headers={"User-Agent": USER_AGENT}, timeout=TIMEOUT, follow_redirects=True, http2=False,
        auth=httpx.NetRCAuth(str(netrc)) if netrc else None,
    )


def _download_one(http: httpx.Client, cache: Cache, item: Item, progress: Progress | None) -> Path:
    cached = cache.get(item.sha256, item.size)
    if cached is not None:
        if progress and item.size:
            progress(item.size)
        return cached
    partial = cache.tmpdir() / f"{to_hex(item.sha256, item.label or 'download')}.partial"
    errors: list[str] = []
    with cache.lock(item.sha256):
        cached = cache.get(item.sha256, item.size)
        if cached is not None:
            return cached
        for url in item.urls:
            for attempt in range(RETRIES):
                try:
                    _stream_to(http, url, partial, progress)
                    break
                except (httpx.TransportError, httpx.HTTPStatusError) as e:
                    status = getattr(getattr(e, "response", None), "status_code", None)
                    errors.append(f"{url}: {e}")
                    if status is not None and status in (403, 404, 410):
                        break  # this mirror does not have it: try the next one
                    time.sleep(min(2**attempt, 8) * 0.25)
            else:
                continue
            if not partial.exists():
                continue
            digest, size = sha256_file(partial)
            if digest != item.sha256 or (item.size is not None and size != item.size):
                partial.unlink()
                errors.append(f"{url}: served {digest} ({size} bytes)")
                raise IntegrityError(
                    f"{item.label or url}: downloaded bytes do not match the lock "
                    f"(expected {item.sha256}, size {item.size}; got {digest}, size {size})",
                    hint="the mirror served different content; if the lock was edited by hand, "
                    "re-run `lockbuild lock --upgrade`",
                )
            cache._install(partial, digest)
            return cache.path(digest)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    raise FetchError(
        f"could not download {item.label or item.sha256} after {RETRIES} tries per source",
        hint="check the network / mirror; the cache holds no partial entry. Last errors: "
        + "; ".join(errors[-3:]),
    )


def _stream_to(http: httpx.Client, url: str, partial: Path, progress: Progress | None) -> None:
    """Append to `partial`, resuming with a Range request when bytes are already there."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as r:
        if r.status_code == 416:  # already complete
            return
        r.raise_for_status()
        mode = "ab" if (have and r.status_code == 206) else "wb"
        if mode == "wb" and have and progress:
            progress(-have)
        with open(partial, mode) as f:
            for chunk in r.iter_bytes(CHUNK):
                f.write(chunk)
                if progress:
                    progress(len(chunk))


def fetch_all(
    cache: Cache,
    items: Sequence[Item],
    *,
    jobs: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Fetch every item (cache first). Returns {sha256: verified path}.

    on_progress(done_bytes, total_bytes) is called from worker threads.
    """
    total = sum(i.size or 0 for i in items)
    done = 0

    def bump(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(done, total)

    out: dict[str, Path] = {}
    with client() as http, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futs = {pool.submit(_download_one, http, cache, it, bump): it for it in items}
        for fut in as_completed(futs):
            it = futs[fut]
            out[it.sha256] = fut.result()
    return out


def fetch_bytes(url: str, *, http: httpx.Client | None = None) -> bytes:
    """Small unverified GET (indexes whose hash is checked by the caller)."""
    own = http is None
    http = http or client()
    try:
        last: Exception | None = None
        for attempt in range(RETRIES):
            try:
                r = http.get(url)
                r.raise_for_status()
                return r.content
            except httpx.HTTPStatusError as e:
                if e.response.status_code in (403, 404, 410):
                    raise FetchError(f"{url}: HTTP {e.response.status_code}") from None
                last = e
            except httpx.TransportError as e:
                last = e
            time.sleep(min(2**attempt, 8) * 0.25)
        raise FetchError(f"could not fetch {url}: {last}", hint="check the network or the mirror URL")
    finally:
        if own:
            http.close()
