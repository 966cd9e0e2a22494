"""Private package indexes and uv's failures, against real servers (issue 21, items 4, 5, 6, 7).

A real private index: pypiserver (PyPI, the test extra) on 127.0.0.1, serving PEP 503 HTML (no
upload times, no sizes) behind basic auth, credentials from a netrc file. uv resolves through it
with the lock's exclude-newer cutoff (which cannot apply to files without upload times), and every
kind of uv failure is provoked for real: wrong credentials, a closed port, a full disk, a platform
uv rejects, a package without a wheel, a cutoff nothing satisfies. The slow test locks and builds a
real image from a model whose requirements.txt carries the index token in its URL and proves the
token is in none of lock, image layers, cache, stdout or stderr."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockbuild.errors import FetchError, ResolveError
from lockbuild.fetch.cache import Cache
from lockbuild.fsutil import sha256_file
from lockbuild.resolve.python import resolve_python
from lockbuild.resolve.uv import PythonTarget, UvReport, uv_compile
from tests.conftest_services import free_port, need_root
from tests.test_build import make_wheel

pytestmark = [pytest.mark.network]

USER, TOKEN = "alice", "tok-9f3c2b71e0-private"
TARGET = PythonTarget(python="3.11.2", wheel_platform="x86_64-manylinux_2_36")
CUTOFF = "2026-11-01T00:00:00Z"


@pytest.fixture(scope="module")
def private_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from passlib.apache import HtpasswdFile

    root = tmp_path_factory.mktemp("private-index")
    pkgs = root / "packages"
    pkgs.mkdir()
    _, wheel = make_wheel(pkgs, "lbprivate", "1.0", {"lbprivate/__init__.py": b"VALUE = 42\n"})
    ht = HtpasswdFile(str(root / "htpasswd"), new=True)
    ht.set_password(USER, TOKEN)
    ht.save()
    netrc = root / "netrc"
    netrc.write_text(f"machine 127.0.0.1\nlogin {USER}\npassword {TOKEN}\n")
    netrc.chmod(0o600)
    port = free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "pypiserver", "run", "-i", "127.0.0.1", "-p", str(port),
                             "-P", str(root / "htpasswd"), "-a", "download,list,update", str(pkgs)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"pypiserver did not start: {(root / 'server.log').read_text()}") from None
                time.sleep(0.2)
        yield {"url": f"http://127.0.0.1:{port}/simple", "netrc": netrc, "wheel": wheel,
               "sha256": sha256_file(wheel)[0], "size": wheel.stat().st_size, "log": root / "server.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture()
def uv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LOCKBUILD_CACHE (uv's cache is its uv/ directory): nothing answered from an earlier run."""
    monkeypatch.setenv("LOCKBUILD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_html_index_without_upload_times_resolves_behind_basic_auth(
        private_index: dict, uv_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETRC", str(private_index["netrc"]))
    report = UvReport()
    (w,) = resolve_python(["lbprivate==1.0"], [], target=TARGET, index_url=private_index["url"],
                          exclude_newer=CUTOFF, cache=Cache(uv_cache), report=report)
    assert (w.name, w.version, w.sha256) == ("lbprivate", "1.0", private_index["sha256"])
    assert w.size == private_index["size"]  # the index gives none: pinned from the verified download
    assert w.url.startswith(private_index["url"].removesuffix("/simple")) and TOKEN not in w.url
    assert report.exempt == ["lbprivate"]  # the cutoff applies where upload times exist: not here


def test_wrong_credentials_are_an_auth_failure_with_the_netrc_hint(
        private_index: dict, uv_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "netrc"
    wrong.write_text(f"machine 127.0.0.1\nlogin {USER}\npassword not-the-token\n")
    monkeypatch.setenv("NETRC", str(wrong))
    with pytest.raises(FetchError) as e:
        uv_compile(["lbprivate==1.0"], [], target=TARGET, index_url=private_index["url"], exclude_newer=CUTOFF,
                   workdir=tmp_path)
    assert "(authentication)" in e.value.message and "netrc" in (e.value.hint or "")


def test_closed_port_is_a_network_failure(uv_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lockbuild import net

    monkeypatch.setattr(net, "RETRIES", 1)  # uv follows lockbuild's retry policy: no retries, no backoff to wait out
    with pytest.raises(FetchError) as e:
        uv_compile(["lbprivate==1.0"], [], target=TARGET, index_url=f"http://127.0.0.1:{free_port()}/simple",
                   exclude_newer=CUTOFF, workdir=tmp_path)
    assert "(network)" in e.value.message and "proxy" in (e.value.hint or "")


def test_uv_retries_as_lockbuild_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from lockbuild import net
    from lockbuild.resolve.uvcall import uv_env

    monkeypatch.setenv("UV_HTTP_RETRIES", "99")  # the user's uv settings never reach lockbuild's uv
    assert uv_env()["UV_HTTP_RETRIES"] == str(net.RETRIES - 1)
    monkeypatch.setattr(net, "RETRIES", 1)
    assert uv_env()["UV_HTTP_RETRIES"] == "0"


def test_full_disk_is_a_disk_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_root("mounting a 200 KiB tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("LOCKBUILD_CACHE", str(small))
        with pytest.raises(ResolveError) as e:
            uv_compile(["requests==2.32.3"], [], target=TARGET, index_url="https://pypi.org/simple",
                       exclude_newer=CUTOFF, workdir=tmp_path)
        assert "(disk)" in e.value.message and "free disk space" in (e.value.hint or "")
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_platform_uv_rejects_names_the_platform(tmp_path: Path) -> None:
    target = PythonTarget(python="3.13.5", wheel_platform="x86_64-manylinux_2_41")
    with pytest.raises(ResolveError) as e:
        uv_compile(["requests==2.32.3"], [], target=target, index_url="https://pypi.org/simple",
                   exclude_newer=CUTOFF, workdir=tmp_path)
    assert "does not accept the target platform x86_64-manylinux_2_41" in e.value.message
    assert "possible values" not in e.value.message and "wheel" not in (e.value.hint or "")


def test_no_wheel_and_cutoff_failures_have_their_own_hints(tmp_path: Path) -> None:
    with pytest.raises(ResolveError) as e:
        uv_compile(["docopt==0.6.2"], [], target=TARGET, index_url="https://pypi.org/simple",
                   exclude_newer=CUTOFF, workdir=tmp_path)
    assert e.value.message.startswith("no wheel for x86_64-manylinux_2_36") and "platform" in (e.value.hint or "")
    report = UvReport()
    with pytest.raises(ResolveError) as e:
        uv_compile(["certifi==2026.10.19.post1"], [], target=TARGET, index_url="https://pypi.org/simple",
                   exclude_newer="2024-01-01T00:00:00Z", workdir=tmp_path, report=report)
    assert "cutoff" in e.value.message and "exclude-newer" in (e.value.hint or "")
    assert report.exempt == []  # PyPI gives upload times: the cutoff holds there


def test_yanked_release_is_reported_by_uv(tmp_path: Path) -> None:
    report = UvReport()
    uv_compile(["requests==2.32.0"], [], target=TARGET, index_url="https://pypi.org/simple",
               exclude_newer=CUTOFF, workdir=tmp_path, report=report)
    version, reason = report.yanked()["requests"]
    assert version == "2.32.0" and "CVE-2024-35195" in reason


# -- the token in neither lock, image, cache, stdout nor logs -----------------------------------------
def _layer_bytes(oci: Path) -> Iterator[bytes]:
    """Every blob of an OCI layout, each layer also decompressed and every member read."""
    for blob in sorted((oci / "blobs" / "sha256").iterdir()):
        data = blob.read_bytes()
        yield data
        if data[:2] == b"\x1f\x8b":
            raw = gzip.decompress(data)
            yield raw
            import io

            with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
                for m in tf.getmembers():
                    f = tf.extractfile(m) if m.isfile() else None
                    if f is not None:
                        yield f.read()


def _files_containing(root: Path, needle: bytes, since: float = 0.0) -> list[str]:
    """Files below root (written at or after ``since``) that contain ``needle``."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if p.is_symlink() or not p.is_file() or p.stat().st_mtime < since:
                continue
            with open(p, "rb") as f:
                if needle in f.read():
                    hits.append(str(p))
    return hits


@pytest.mark.slow
def test_a_model_token_reaches_no_lock_image_cache_or_log(private_index: dict, tmp_path: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.lockbuild_testing import finish, lockbuild_process, shared_cache
    from tests.tiny_project import save_tiny_model

    work = tmp_path / "project"
    work.mkdir()
    save_tiny_model(work / "model")
    req = work / "model" / "requirements.txt"
    host = private_index["url"].removeprefix("http://")
    req.write_text(f"--extra-index-url http://{USER}:{TOKEN}@{host}\n" + req.read_text().rstrip("\n")
                   + f"\nlbprivate==1.0 --hash={private_index['sha256']}\n")
    (work / "lockbuild.toml").write_text('[model]\nuri = "./model"\n\n[image]\nname = "lockbuild-test/private"\n')
    # the session's cache (warm Debian indexes and wheels); every file written into it from here on is searched
    cache = shared_cache(tmp_path_factory)
    start = time.time() - 1
    env: dict[str, str | None] = {"LOCKBUILD_CACHE": str(cache), "NETRC": str(private_index["netrc"])}
    lock = finish(lockbuild_process("lock", cwd=work, env=env), timeout=900)
    assert lock.code == 0, lock.stderr
    image = finish(lockbuild_process("image", "--oci", "out/oci", cwd=work, env=env), timeout=900)
    assert image.code == 0, image.stderr
    needle = TOKEN.encode()
    text = (work / "lockbuild.lock").read_text()
    assert TOKEN not in text and "[[model.rewritten]]" in text and 'path = "requirements.txt"' in text
    assert "lbprivate" in text and "cutoff-exempt = [\"lbprivate\"]" in text
    for out in (lock.stdout, lock.stderr, image.stdout, image.stderr):
        assert TOKEN not in out
    assert "credentials" in " ".join(lock.stderr.split())  # the rewrite is said, without the secret
    assert not [i for i, b in enumerate(_layer_bytes(work / "out" / "oci")) if needle in b]
    assert _files_containing(cache, needle, start) == [] and _files_containing(work / "out", needle) == []
    assert _files_containing(cache, b"lbprivate", start)  # the search does see what this lock cached
    # the model layer carries the rewritten file, and verify proves the image against the lock
    verify = finish(lockbuild_process("verify", "out/oci", cwd=work, env=env), timeout=600)
    assert verify.code == 0, verify.stderr
    # a wrong --hash pin refuses, naming the requirement
    req.write_text(req.read_text().replace(private_index["sha256"].removeprefix("sha256:"), "0" * 64))
    bad = finish(lockbuild_process("lock", cwd=work, env=env), timeout=900)
    assert bad.code == 21 and "lbprivate" in bad.stderr and "--hash=sha256:" + "0" * 64 in bad.stderr
    assert TOKEN not in bad.stdout + bad.stderr
