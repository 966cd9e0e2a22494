"""Start-up (issue 12): seconds from `docker run` to the first /ping 200 and to the first correct
/invocations answer, for the example image with and without build-time bytecode, interleaved."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from baseline import docker, image_size
from common import EXAMPLE, Results, lb_env, lockbuild_cmd, log, run
from measure import copy_example, lb_image

# -- start-up: docker run -> first /ping 200 -> first correct /invocations (issue 12) ---------------

STARTUP_TAGS = {"bytecode": "lockbuild-bench/keras3:startup-pyc", "none": "lockbuild-bench/keras3:startup-nopyc"}


def _http(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol * max(1.0, abs(b))
    return bool(a == b)


def time_to_serve(host: str, tag: str, body: bytes, expected: Any, tol: float,
                  timeout: float = 300) -> tuple[float, float]:
    """Seconds from `docker run` to the first 200 on /ping, and to the first correct /invocations answer."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    cid = docker(host, "run", "-d", "--network", "host", "-e", f"PORT={port}", "-e", "HOST=127.0.0.1",
                 tag).stdout.strip()
    try:
        ping = inv = None
        while time.perf_counter() - t0 < timeout:
            if ping is None:
                if _http(base + "/ping")[0] == 200:
                    ping = time.perf_counter() - t0
            else:
                code, out = _http(base + "/invocations", body)
                if code == 200 and _close(json.loads(out).get("predictions"), expected, tol):
                    inv = time.perf_counter() - t0
                    break
            time.sleep(0.05)
        if ping is None or inv is None:
            raise RuntimeError(f"{tag} did not serve a correct answer in {timeout} s")
        return ping, inv
    finally:
        docker(host, "rm", "-f", cid)


def bench_startup(res: Results, cache: Path, host: str | None, repeats: int) -> None:
    """The TF example with and without build-time bytecode (and without pruning: today's image),
    interleaved; plus each image's unpacked (engine) and compressed size."""
    if host is None:
        log("4. start-up: skipped (no Docker engine)")
        return
    log(f"4. start-up: docker run -> /ping 200 -> correct /invocations, bytecode vs none, x{repeats}")
    expected = json.loads((EXAMPLE / "predictions.json").read_text())
    body = json.dumps(expected.get("input") or json.loads(
        (EXAMPLE / "model" / "serving_input_example.json").read_text())).encode()
    for kind, tag in STARTUP_TAGS.items():
        work = copy_example(res.scratch / f"startup-{kind}")
        if kind == "none":  # what images were before issue 12: no .pyc, nothing pruned
            with open(work / "lockbuild.toml", "a") as f:
                f.write("\n[build]\nbytecode = false\nprune-defaults = false\n")
            run([*lockbuild_cmd(), "lock"], env=lb_env(cache, None), cwd=work).check()
        docker(host, "rmi", "-f", tag)
        d = lb_image(work, cache, host, "--load", "--tag", tag).json()
        res.facts[f"startup_{kind}_engine_bytes"] = image_size(host, tag)
        res.facts[f"startup_{kind}_compressed_bytes"] = d["compressed_bytes"]
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in STARTUP_TAGS}
    for i in range(repeats):
        for kind in (list(STARTUP_TAGS) if i % 2 == 0 else list(reversed(STARTUP_TAGS))):
            ping, inv = time_to_serve(host, STARTUP_TAGS[kind], body, expected["predictions"],
                                      float(expected.get("tolerance", 1e-5)))
            samples[kind][0].append(ping)
            samples[kind][1].append(inv)
    for kind, (ping_s, inv_s) in samples.items():
        res.add(f"ping_{kind}_s", ping_s, f"docker run -> first /ping 200 ({kind})")
        res.add(f"invocations_{kind}_s", inv_s, f"docker run -> first correct /invocations ({kind})")
    for tag in STARTUP_TAGS.values():
        docker(host, "rmi", "-f", tag)
