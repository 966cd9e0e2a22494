"""Verified downloads into the cache: mirrors in order, retries, resume, parallel, progress.

``Downloads`` starts every (urls, sha256, size) item at once on background threads and hands out
each verified cache path as soon as that item is done (the builder starts a layer when its own
inputs are in); ``fetch_all`` is the same, waiting for all. Each item is verified exactly once:
hashed while it streams in, or re-hashed when the cache already holds it. Never a partial entry
in the cache. A transient failure (HTTP error other than 403/404/410, a hang-up, a body cut short)
is retried, resuming with a Range request from what was received; a source that does not have the
file or serves other bytes is left for the next one (its bytes are never used), and only when no
source serves the locked bytes is it an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path

import httpx

from lockbuild.digest import to_hex
from lockbuild.errors import FetchError, IntegrityError
from lockbuild.fetch.cache import Cache
from lockbuild.net import RETRIES, USER_AGENT, backoff
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
        wrong: list[tuple[str, str, int]] = []  # (url, digest, size) of each source that served other bytes
        for url in item.urls:
            got: tuple[str, int] | None = None
            for attempt in range(RETRIES):
                try:
                    got = _stream_to(http, url, partial, progress)
                    if item.size is not None and got[1] < item.size:  # a body cut short: resume it
                        errors.append(f"{url}: ended after {got[1]} of {item.size} bytes")
                        got = None
                        backoff(attempt)
                        continue
                    break
                except (httpx.TransportError, httpx.HTTPStatusError) as e:
                    status = getattr(getattr(e, "response", None), "status_code", None)
                    errors.append(f"{url}: {e}")
                    if status is not None and status in (403, 404, 410):
                        break  # this mirror does not have it: try the next one
                    backoff(attempt)
            else:
                continue
            if not partial.exists() or got is None:
                continue
            digest, size = got
            if digest != item.sha256 or (item.size is not None and size != item.size):
                partial.unlink()  # never used: the next mirror may serve the locked bytes
                errors.append(f"{url}: served {digest} ({size} bytes)")
                wrong.append((url, digest, size))
                continue
            cache._install(partial, digest)
            return cache.path(digest)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    if wrong:
        url, digest, size = wrong[-1]
        raise IntegrityError(
            f"{item.label or url}: downloaded bytes do not match the lock "
            f"(expected {item.sha256}, size {item.size}; got {digest}, size {size}"
            + (f", from {len(wrong)} sources)" if len(wrong) > 1 else ")"),
            hint="the mirror served different content; if the lock was edited by hand, "
            "re-run `lockbuild lock --upgrade`",
        )
    raise FetchError(
        f"could not download {item.label or item.sha256} after {RETRIES} tries per source",
        hint="check the network / mirror; the cache holds no partial entry. Last errors: "
        + "; ".join(errors[-3:]),
    )


def _hash_file(path: Path) -> tuple[hashlib._Hash, int]:
    """The running sha256 of what is already in ``path``, and its size."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256"), f.tell()


def _stream_to(http: httpx.Client, url: str, partial: Path, progress: Progress | None) -> tuple[str, int]:
    """Append to `partial`, resuming with a Range request when bytes are already there; returns the
    sha256 (``sha256:<hex>``) and size of the whole file, hashed as it was written."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as r:
        if r.status_code == 416:  # already complete
            h, size = _hash_file(partial)
            return "sha256:" + h.hexdigest(), size
        r.raise_for_status()
        mode = "ab" if (have and r.status_code == 206) else "wb"
        if mode == "wb" and have and progress:
            progress(-have)
        h, size = _hash_file(partial) if mode == "ab" else (hashlib.sha256(), 0)
        with open(partial, mode) as f:
            for chunk in r.iter_bytes():  # as it arrives: a dropped connection loses nothing received
                f.write(chunk)
                h.update(chunk)
                size += len(chunk)
                if progress:
                    progress(len(chunk))
    return "sha256:" + h.hexdigest(), size


class Downloads:
    """Every item fetched (cache first) by ``jobs`` background threads, in the given order.
    ``path(item)`` waits for that item alone and returns its verified path, or raises its error.

    on_progress(done_bytes, total_bytes) and on_done() are called from the worker threads. The
    threads are daemons: an abandoned download never keeps the process from exiting.
    """

    def __init__(self, cache: Cache, items: Sequence[Item], *, jobs: int = 4,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_done: Callable[[], None] | None = None) -> None:
        self.cache = cache
        unique = list({i.sha256: i for i in items}.values())
        self.futures: dict[str, Future[Path]] = {i.sha256: Future() for i in unique}
        self._todo = list(reversed(unique))
        self._mu = threading.Lock()
        self._total, self._done = sum(i.size or 0 for i in unique), 0
        self._on_progress, self._on_done = on_progress, on_done
        self._workers = max(1, min(jobs, len(unique)))
        self._http = client() if unique else None
        for n in range(self._workers if unique else 0):
            threading.Thread(target=self._work, name=f"lockbuild-download-{n}", daemon=True).start()

    def _bump(self, n: int) -> None:
        with self._mu:
            self._done += n
            done = self._done
        if self._on_progress:
            self._on_progress(done, self._total)

    def _work(self) -> None:
        assert self._http is not None
        while True:
            with self._mu:
                item = self._todo.pop() if self._todo else None
            if item is None:
                break
            fut = self.futures[item.sha256]
            try:
                fut.set_result(_download_one(self._http, self.cache, item, self._bump))
            except BaseException as e:  # noqa: BLE001 - raised by path() to whoever needs the item
                fut.set_exception(e)
        with self._mu:
            self._workers -= 1
            last = self._workers == 0
        if last:
            self._http.close()
            if self._on_done and all(f.exception() is None for f in self.futures.values()):
                self._on_done()

    def path(self, item: Item) -> Path:
        fut = self.futures.get(item.sha256)
        if fut is None:
            return fetch_all(self.cache, [item])[item.sha256]
        return fut.result()

    def wait(self) -> dict[str, Path]:
        """Every item's verified path, once all are done; the first failed item's error otherwise."""
        wait(list(self.futures.values()))
        return {sha: fut.result() for sha, fut in self.futures.items()}


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
    return Downloads(cache, items, jobs=jobs, on_progress=on_progress).wait()


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
            backoff(attempt)
        raise FetchError(f"could not fetch {url}: {last}", hint="check the network or the mirror URL")
    finally:
        if own:
            http.close()
