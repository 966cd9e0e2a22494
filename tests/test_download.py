"""Verified downloads (fetch/download.py) against a real local HTTP server that honours Range:
each item verified once (hashed while it streams, including a resumed prefix), errors raised to
whoever needs the item, nothing unverified left in the cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import threading
from collections.abc import Iterator
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
