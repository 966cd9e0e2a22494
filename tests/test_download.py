"""Verified downloads (fetch/download.py) against a real local HTTP server that honours Range:
each item verified once (hashed while it streams, including a resumed prefix), errors raised to
whoever needs the item, nothing unverified left in the cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockbuild.errors import FetchError, IntegrityError
from lockbuild.fetch.cache import Cache
from lockbuild.fetch.download import Downloads, Item, fetch_all


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """http.server plus ``Range: bytes=N-`` (206), as PyPI's and Debian's mirrors answer."""

    requests: list[str] = []

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).requests.append(f"{self.path} {self.headers.get('Range') or ''}".strip())
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        path = Path(self.translate_path(self.path))
        if not m or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        start = int(m.group(1))
        if start >= len(data):
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])


Served = tuple[str, Path, list[str]]  # base URL, the served directory, the requests seen


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """(base URL, served directory, the requests seen)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []
    handler = type("H", (_RangeHandler,), {"requests": requests})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", root, requests
    srv.shutdown()


def _item(base: str, root: Path, name: str, data: bytes) -> Item:
    (root / name).write_bytes(data)
    return Item(urls=(f"{base}/{name}",), sha256="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data),
                label=name)


def test_each_item_is_handed_out_when_done_and_a_bad_one_fails_alone(server: Served, tmp_path: Path) -> None:
    base, root, _ = server
    cache = Cache(tmp_path / "cache")
    good = _item(base, root, "good.bin", os.urandom(3 << 20))
    bad = _item(base, root, "bad.bin", b"the locked bytes")
    (root / "bad.bin").write_bytes(b"other bytes, same path")  # the mirror now serves something else
    missing = Item(urls=(f"{base}/nope.bin",), sha256="sha256:" + "1" * 64, size=3, label="nope.bin")
    done: list[int] = []
    d = Downloads(cache, [good, bad, missing, good], jobs=3,
                  report=lambda e, data: done.append(data["done"]) if e == "fetch-progress" else None)
    assert d.path(good).read_bytes() == (root / "good.bin").read_bytes()
    with pytest.raises(IntegrityError, match="bad.bin: downloaded bytes do not match the lock"):
        d.path(bad)
    with pytest.raises(FetchError, match="nope.bin"):
        d.path(missing)
    assert cache.get(bad.sha256) is None and not cache.has(missing.sha256)
    assert not list(cache.tmpdir().iterdir()), "no partial download left behind"
    with pytest.raises(IntegrityError):
        fetch_all(cache, [good, bad])  # fetch_all: every item, the first failure raised


def test_a_resumed_download_hashes_the_prefix_already_on_disk(server: Served, tmp_path: Path) -> None:
    base, root, requests = server
    cache = Cache(tmp_path / "cache")
    data = os.urandom(2 << 20)
    item = _item(base, root, "big.bin", data)
    partial = cache.tmpdir() / f"{item.sha256.removeprefix('sha256:')}.partial"
    partial.write_bytes(data[:1 << 20])  # an interrupted earlier run
    path = fetch_all(cache, [item])[item.sha256]
    assert path.read_bytes() == data
    assert f"/big.bin bytes={1 << 20}-" in requests


def test_a_resumed_download_whose_prefix_on_disk_is_wrong_is_refused(server: Served,
                                                                    tmp_path: Path) -> None:
    """The prefix from an earlier run is part of what is verified: a tampered partial file (the rest
    served correctly by Range) never becomes a cache entry."""
    base, root, requests = server
    cache = Cache(tmp_path / "cache")
    data = os.urandom(2 << 20)
    item = _item(base, root, "big.bin", data)
    partial = cache.tmpdir() / f"{item.sha256.removeprefix('sha256:')}.partial"
    partial.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(IntegrityError, match="big.bin"):
        fetch_all(cache, [item])
    assert cache.get(item.sha256) is None and not partial.exists()


# -- retries, resume and mirror fallback against a misbehaving server ------------------------------


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files``; each path first plays its ``script`` of misbehaviours, one per request:
    ("status", 503) an HTTP error; ("close",) hang up before answering; ("drop", n) promise the
    whole (remaining) body, send n bytes and hang up; ("short", n) a complete answer of only the
    first n bytes; ("other", data) other bytes. Then it answers correctly, honouring Range."""

    files: dict[str, bytes] = {}
    script: dict[str, list[tuple]] = {}
    requests: list[str] = []
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        rng = self.headers.get("Range") or ""
        type(self).requests.append(f"{self.path} {rng}".strip())
        data = self.files.get(self.path)
        step = self.script.get(self.path, []).pop(0) if self.script.get(self.path) else ("ok",)
        if data is None or step[0] == "status":
            return self._answer(step[1] if step[0] == "status" else 404, b"")
        if step[0] == "close":
            self.close_connection = True
            return self.connection.shutdown(socket.SHUT_RDWR)
        if step[0] == "other":
            return self._answer(200, step[1])
        m = re.fullmatch(r"bytes=(\d+)-", rng)
        start = int(m.group(1)) if m else 0
        body = data[start:]
        if step[0] == "short":
            return self._answer(200, data[:step[1]])
        self.send_response(206 if m else 200)
        self.send_header("Content-Length", str(len(body)))
        if m:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if step[0] == "drop":
            self.wfile.write(body[:step[1]])
            self.wfile.flush()
            self.close_connection = True
            return self.connection.shutdown(socket.SHUT_RDWR)
        self.wfile.write(body)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Flaky:
    """One misbehaving server: ``serve(name, data, *script) -> Item``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[str] = []
        handler = type("H", (_FlakyHandler,), {"files": self.files, "script": self.script,
                                               "requests": self.requests})
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def serve(self, name: str, data: bytes, *script: tuple) -> str:
        self.files[f"/{name}"] = data
        self.script[f"/{name}"] = list(script)
        return f"{self.base}/{name}"

    def seen(self, name: str) -> list[str]:
        return [r for r in self.requests if r.split(" ")[0] == f"/{name}"]


@pytest.fixture()
def flaky(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Flaky]]:
    """``flaky()`` starts another misbehaving server (a mirror); retries wait 10 ms, not seconds."""
    from lockbuild import net

    monkeypatch.setattr(net, "BACKOFF", 0.01)
    servers: list[Flaky] = []

    def start() -> Flaky:
        servers.append(Flaky())
        return servers[-1]

    yield start
    for s in servers:
        s.srv.shutdown()
        s.srv.server_close()


def _locked(data: bytes, *urls: str, name: str = "w.whl") -> Item:
    return Item(urls=urls, sha256="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data), label=name)


def _fetch(tmp_path: Path, item: Item) -> bytes:
    cache = Cache(tmp_path / "cache")
    path = fetch_all(cache, [item])[item.sha256]
    assert not list(cache.tmpdir().iterdir()), "no partial download left behind"
    return path.read_bytes()


def _nothing_cached(tmp_path: Path, item: Item) -> None:
    cache = Cache(tmp_path / "cache")
    assert not cache.has(item.sha256) and not list(cache.tmpdir().iterdir())
    assert not [p for p in (cache.root / "blobs").rglob("*") if p.is_file()], "no other bytes entered the cache"


def test_a_server_error_is_retried_until_the_download_succeeds(flaky: Callable[[], Flaky], tmp_path: Path) -> None:
    from lockbuild import net

    s = flaky()
    data = os.urandom(300_000)
    item = _locked(data, s.serve("w.whl", data, *[("status", 503)] * (net.RETRIES - 1)))
    assert _fetch(tmp_path, item) == data
    assert len(s.seen("w.whl")) == net.RETRIES  # every failure retried, the last attempt served


def test_a_hang_up_before_the_answer_is_retried(flaky: Callable[[], Flaky], tmp_path: Path) -> None:
    s = flaky()
    data = os.urandom(100_000)
    item = _locked(data, s.serve("w.whl", data, ("close",), ("close",)))
    assert _fetch(tmp_path, item) == data
    assert len(s.seen("w.whl")) == 3


def test_a_connection_dropped_mid_body_resumes_where_it_stopped(flaky: Callable[[], Flaky], tmp_path: Path) -> None:
    s = flaky()
    data = os.urandom(1 << 20)
    item = _locked(data, s.serve("w.whl", data, ("drop", 300_000), ("drop", 200_000)))
    assert _fetch(tmp_path, item) == data
    # each retry asks only for what is missing (Range), and the whole file is verified at the end
    assert s.seen("w.whl") == ["/w.whl", "/w.whl bytes=300000-", "/w.whl bytes=500000-"]


def test_a_body_cut_short_by_the_server_is_resumed_not_taken_for_the_file(flaky: Callable[[], Flaky],
                                                                          tmp_path: Path) -> None:
    s = flaky()
    data = os.urandom(400_000)
    item = _locked(data, s.serve("w.whl", data, ("short", 150_000)))
    assert _fetch(tmp_path, item) == data
    assert s.seen("w.whl") == ["/w.whl", "/w.whl bytes=150000-"]


def test_a_server_failing_every_attempt_is_a_fetch_error_with_its_reasons(flaky: Callable[[], Flaky],
                                                                          tmp_path: Path) -> None:
    from lockbuild import net

    s = flaky()
    data = os.urandom(1000)
    item = _locked(data, s.serve("w.whl", data, *[("status", 503)] * (net.RETRIES + 2)))
    with pytest.raises(FetchError, match="could not download w.whl") as e:
        _fetch(tmp_path, item)
    assert "503" in (e.value.hint or "")
    assert len(s.seen("w.whl")) == net.RETRIES
    _nothing_cached(tmp_path, item)


def test_a_mirror_that_is_down_falls_back_to_the_next(flaky: Callable[[], Flaky], tmp_path: Path) -> None:
    from tests.conftest_services import free_port

    s = flaky()
    data = os.urandom(200_000)
    down = f"http://127.0.0.1:{free_port()}/w.whl"  # nothing listens there: connection refused
    item = _locked(data, down, s.serve("w.whl", data))
    assert _fetch(tmp_path, item) == data
    assert s.seen("w.whl") == ["/w.whl"]


def test_a_mirror_without_the_file_is_left_at_once_for_the_next(flaky: Callable[[], Flaky], tmp_path: Path) -> None:
    first, second = flaky(), flaky()
    data = os.urandom(50_000)
    item = _locked(data, f"{first.base}/w.whl", second.serve("w.whl", data))
    assert _fetch(tmp_path, item) == data
    assert first.seen("w.whl") == ["/w.whl"]  # a 404 is not retried


def test_a_mirror_serving_other_bytes_is_never_used_and_the_next_one_is(flaky: Callable[[], Flaky],
                                                                        tmp_path: Path) -> None:
    first, second = flaky(), flaky()
    data = os.urandom(200_000)
    evil = os.urandom(200_000)  # same size, other bytes
    item = _locked(data, first.serve("w.whl", data, ("other", evil)), second.serve("w.whl", data))
    assert _fetch(tmp_path, item) == data
    assert first.seen("w.whl") == ["/w.whl"] and second.seen("w.whl") == ["/w.whl"]
    cache = Cache(tmp_path / "cache")
    assert not cache.has("sha256:" + hashlib.sha256(evil).hexdigest())


def test_a_mirror_dropping_mid_body_hands_its_prefix_to_the_next(flaky: Callable[[], Flaky], tmp_path: Path) -> None:
    """A mirror that keeps dropping after 300 kB: the next mirror resumes from there (Range), and
    the file, prefix included, is verified whole."""
    from lockbuild import net

    first, second = flaky(), flaky()
    data = os.urandom(600_000)
    item = _locked(data, first.serve("w.whl", data, ("drop", 300_000), *[("status", 503)] * net.RETRIES),
                   second.serve("w.whl", data))
    assert _fetch(tmp_path, item) == data
    assert second.seen("w.whl") == ["/w.whl bytes=300000-"]


def test_when_every_mirror_serves_other_bytes_nothing_enters_the_cache(flaky: Callable[[], Flaky],
                                                                       tmp_path: Path) -> None:
    first, second = flaky(), flaky()
    data = os.urandom(10_000)
    item = _locked(data, first.serve("w.whl", data, ("other", b"x" * 10_000)),
                   second.serve("w.whl", data, ("other", b"y" * 10_000)))
    with pytest.raises(IntegrityError, match="w.whl: downloaded bytes do not match the lock.*from 2 sources"):
        _fetch(tmp_path, item)
    _nothing_cached(tmp_path, item)
