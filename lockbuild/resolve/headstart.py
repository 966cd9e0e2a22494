"""uv's head start for `lockbuild lock --upgrade`: the resolution starts before the CLI has loaded.

`lock --upgrade` always resolves, and uv is most of its time; the rest of lockbuild (typer, rich,
the spec, the model, the previous lock) takes ~0.6 s to load before it knows what to ask uv. So
the console script (lockbuild/__main__.py ``run``) calls ``start`` first, with only the standard
library loaded: when the same working directory and argv ran `lock --upgrade` before, the uv call
that run made first (``remember``) is started again at once, in a work directory of its own, with
this process's "now" as its cutoff where the recorded one was that run's "now".

Nothing about the lock depends on it: resolve/uv.py asks ``take`` with the call it computed, and
the running uv is adopted only when that call equals the started one field for field (and uv's
environment is the same); otherwise it is killed and uv runs as always. An untaken start is
killed at exit. The record is data only (the argv is rebuilt by resolve/uvcall.py) and carries an
HMAC made with the layer-record key kept outside the cache dir, so a record planted in a shared
cache never runs. Environment variables are never recorded (they may hold secrets).

`lockbuild lock` without --upgrade does not use it: it reuses the previous lock's pins and often
runs no uv at all. LOCKBUILD_NO_HEADSTART=1 turns it off.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lockbuild.resolve.uvcall import OUTPUT, UvCall, uv_bin, uv_env

NAMESPACE = "headstart"
VERSION = "lockbuild-headstart-1"
NOW = "{now}"  # in a record: this process's "now" as the cutoff


@dataclass
class _Started:
    call: UvCall
    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes]


_now: str | None = None
_key: str | None = None  # this process's record key, when it is a `lock --upgrade` run
_started: _Started | None = None
_remembered = False
_outcome: str | None = None
_mu = threading.Lock()


def process_now() -> str | None:
    """This `lock --upgrade` run's "now", the cutoff a head start uses (lock/create.py's ``now_utc`` says it)."""
    return _now


def outcome() -> str | None:
    """What became of the head start, for `lock --json`: "adopted", "discarded" (the call differed),
    "not started" (no valid record for this directory and argv yet); None outside `lock --upgrade`."""
    if _key is None:
        return None
    return _outcome or "not started"


def _wants(argv: list[str]) -> bool:
    return (bool(argv) and argv[0] == "lock" and "--upgrade" in argv and not {"-h", "--help", "--check"} & set(argv)
            and os.environ.get("LOCKBUILD_NO_HEADSTART") != "1")


def record_key(argv: list[str], cwd: str) -> str:
    """The record's name: this lockbuild, the working directory and the argv."""
    from lockbuild import __version__

    return hashlib.sha256(json.dumps([VERSION, __version__, cwd, argv]).encode()).hexdigest()


def _mac(key: str, call: dict) -> str | None:
    from lockbuild.fetch.cache import mac_key

    secret = mac_key()
    if secret is None:
        return None
    return hmac.new(secret, json.dumps([VERSION, key, call], sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _recorded(key: str) -> UvCall | None:
    from lockbuild.fetch.cache import Cache

    record = Cache().meta_get(NAMESPACE, key)
    if not isinstance(record, dict) or not isinstance(record.get("call"), dict):
        return None
    want, got = _mac(key, record["call"]), record.get("mac")
    if want is None or not isinstance(got, str) or not hmac.compare_digest(want, got):
        return None
    try:
        call = UvCall.from_dict(record["call"])
    except (KeyError, TypeError, ValueError):
        return None
    return call


def start(argv: list[str]) -> None:
    """Start the recorded first uv call of `lock --upgrade` for this directory and argv, if any. Never fails."""
    global _now, _key, _started
    if not _wants(argv):
        return
    try:
        _key = record_key(argv, os.getcwd())
        _now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        call = _recorded(_key)
        if call is None or call.find_links:
            return
        if call.exclude_newer == NOW:
            call = UvCall(**{**call.__dict__, "exclude_newer": _now})
        workdir = Path(tempfile.mkdtemp(prefix="lockbuild-uv-"))
        call.write_inputs(workdir)
        env = uv_env()
        with open(workdir / "uv.out", "wb") as out, open(workdir / "uv.err", "wb") as err:
            proc = subprocess.Popen(call.argv(workdir, uv_bin()), stdout=out, stderr=err, env=env, cwd=workdir,
                                    stdin=subprocess.DEVNULL)
        _started = _Started(call, env, workdir, proc)
        atexit.register(_discard)
    except Exception:  # noqa: BLE001 - a head start is an optimisation: lock runs as always without it
        _discard()


def take(call: UvCall, workdir: Path) -> subprocess.CompletedProcess[str] | None:
    """The started uv's result (its pylock copied into ``workdir``) when it ran exactly ``call`` in
    this environment; else None (and a started uv is killed). Asked once, by the first uv call."""
    global _started
    with _mu:
        s, _started = _started, None
    if s is None:
        return None
    global _outcome
    try:
        if s.call != call or s.env != uv_env():
            _outcome = "discarded"
            return None
        _outcome = "adopted"
        rc = s.proc.wait()
        out = s.workdir / OUTPUT
        if rc == 0:
            shutil.copyfile(out, workdir / OUTPUT)
        return subprocess.CompletedProcess(s.proc.args, rc, (s.workdir / "uv.out").read_text(errors="replace"),
                                           (s.workdir / "uv.err").read_text(errors="replace"))
    finally:
        _stop(s)


def remember(call: UvCall, ok: bool) -> None:
    """Record the first uv call of a `lock --upgrade` run (when it succeeded) for the next one."""
    global _remembered
    with _mu:
        if _remembered or _key is None:
            return
        _remembered = True
    if not ok or call.find_links:
        return
    from lockbuild.fetch.cache import Cache

    data = call.to_dict()
    if call.exclude_newer == _now:
        data["exclude_newer"] = NOW
    mac = _mac(_key, data)
    if mac is None:
        return
    try:
        Cache().meta_put(NAMESPACE, _key, {"call": data, "mac": mac})
    except OSError:
        pass


def _stop(s: _Started) -> None:
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait()
    shutil.rmtree(s.workdir, ignore_errors=True)


def _discard() -> None:
    global _started
    with _mu:
        s, _started = _started, None
    if s is not None:
        _stop(s)
