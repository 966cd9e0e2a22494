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
import functools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path

import httpx

from lockbuild import net
from lockbuild.digest import to_hex
from lockbuild.errors import FetchError, IntegrityError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import HashingStream
from lockbuild.net import USER_AGENT
from lockbuild.progress import Progress, Report, silent

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
            try:
                digest, size = net.retry(functools.partial(_attempt, http, url, partial, progress, errors, item.size),
                                         transient=_transient)
            except (httpx.TransportError, httpx.HTTPStatusError, _CutShort):
                continue  # this mirror failed every attempt, or does not have it: try the next one (a partial
                # body stays: the next mirror resumes it, and the whole is checked against the lock)
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
        f"could not download {item.label or item.sha256} after {net.RETRIES} tries per source",
        hint="check the network / mirror; the cache holds no partial entry. Last errors: "
        + "; ".join(errors[-3:]),
    )


GONE = (403, 404, 410)  # the source does not have it: another attempt would not help


class _CutShort(Exception):
    """A body that ended before the locked size: the next attempt resumes it with a Range request."""


def _transient(e: Exception) -> bool:
    """A failure another attempt at the same URL may not see (network, a body cut short, any HTTP
    error but ``GONE``)."""
    if isinstance(e, _CutShort):
        return True
    if isinstance(e, httpx.HTTPStatusError):
        return e.response.status_code not in GONE
    return isinstance(e, httpx.TransportError)


def _attempt(http: httpx.Client, url: str, partial: Path, progress: Progress | None,
             errors: list[str], expected_size: int | None) -> tuple[str, int]:
    """One try at ``url`` (``_stream_to``), its failure noted in ``errors``."""
    try:
        digest, size = _stream_to(http, url, partial, progress)
    except (httpx.TransportError, httpx.HTTPStatusError) as e:
        errors.append(f"{url}: {e}")
        raise
    if expected_size is not None and size < expected_size:
        errors.append(f"{url}: ended after {size} of {expected_size} bytes")
        raise _CutShort(url)
    return digest, size


def _stream_to(http: httpx.Client, url: str, partial: Path, progress: Progress | None) -> tuple[str, int]:
    """Append to `partial`, resuming with a Range request when bytes are already there; returns the
    sha256 (``sha256:<hex>``) and size of the whole file, hashed as it was written."""
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with http.stream("GET", url, headers=headers) as r:
        if r.status_code == 416:  # already complete
            done = HashingStream(None, resume=partial)
            return done.digest(), done.size
        r.raise_for_status()
        resume = bool(have and r.status_code == 206)
        if not resume and have and progress:
            progress(-have)
        with open(partial, "ab" if resume else "wb") as f:
            sink = HashingStream(f, resume=partial if resume else None)
            for chunk in r.iter_bytes():  # as it arrives: a dropped connection loses nothing received
                sink.write(chunk)
                if progress:
                    progress(len(chunk))
    return sink.digest(), sink.size


class Downloads:
    """Every item fetched (cache first) by ``jobs`` background threads, in the given order.
    ``path(item)`` waits for that item alone and returns its verified path, or raises its error.

    ``report`` gets ``fetch-start``, ``fetch-progress`` (from the worker threads) and, once every
    item is in, ``fetch-done`` (progress.py). The threads are daemons: an abandoned download never
    keeps the process from exiting.
    """

    def __init__(self, cache: Cache, items: Sequence[Item], *, jobs: int = 4, report: Report = silent) -> None:
        self.cache = cache
        unique = list({i.sha256: i for i in items}.values())
        self.futures: dict[str, Future[Path]] = {i.sha256: Future() for i in unique}
        self._todo = list(reversed(unique))
        self._mu = threading.Lock()
        self._total, self._done = sum(i.size or 0 for i in unique), 0
        self._report = report
        self._workers = max(1, min(jobs, len(unique)))
        self._http = client() if unique else None
        if unique:
            report("fetch-start", {"items": len(unique), "bytes": self._total})
        for n in range(self._workers if unique else 0):
            threading.Thread(target=self._work, name=f"lockbuild-download-{n}", daemon=True).start()

    def _bump(self, n: int) -> None:
        with self._mu:
            self._done += n
            done = self._done
        self._report("fetch-progress", {"done": done, "total": self._total})

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
            if all(f.exception() is None for f in self.futures.values()):
                self._report("fetch-done", {"items": len(self.futures)})

    def path(self, item: Item) -> Path:
        fut = self.futures.get(item.sha256)
        if fut is None:
            return fetch_all(self.cache, [item])[item.sha256]
        return fut.result()

    def wait(self) -> dict[str, Path]:
        """Every item's verified path, once all are done; the first failed item's error otherwise."""
        wait(list(self.futures.values()))
        return {sha: fut.result() for sha, fut in self.futures.items()}


def fetch_all(cache: Cache, items: Sequence[Item], *, jobs: int = 4, report: Report = silent) -> dict[str, Path]:
    """Fetch every item (cache first), reporting as ``Downloads`` does. Returns {sha256: verified path}."""
    return Downloads(cache, items, jobs=jobs, report=report).wait()


def fetch_bytes(url: str, *, http: httpx.Client | None = None) -> bytes:
    """Small unverified GET (indexes whose hash is checked by the caller)."""
    own = http is None
    http = http or client()

    def get() -> bytes:
        r = http.get(url)
        r.raise_for_status()
        return r.content

    try:
        return net.retry(get, transient=_transient)
    except httpx.HTTPStatusError as e:
        if e.response.status_code in GONE:
            raise FetchError(f"{url}: HTTP {e.response.status_code}") from None
        raise FetchError(f"could not fetch {url}: {e}", hint="check the network or the mirror URL") from None
    except httpx.TransportError as e:
        raise FetchError(f"could not fetch {url}: {e}", hint="check the network or the mirror URL") from None
    finally:
        if own:
            http.close()
