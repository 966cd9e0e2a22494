"""Serve an example model with MLflow's own scoring server and check predictions.json.

Run with the Python of the venv that made the example, e.g.

    examples/keras3/.venv/bin/python examples/serve_check.py examples/keras3 --port 5055
    examples/legacy-tfkeras/.venv/bin/python examples/serve_check.py examples/legacy-tfkeras --port 5056

It starts `mlflow models serve -m <example>/model --env-manager local` (the venv's bin
directory first on PATH, so the venv's mlflow and uvicorn are used), waits for /ping,
prints the raw bodies of GET /version and POST /invocations, compares the returned
"predictions" with predictions.json within its tolerance, and stops the server it started.
The server runs in a scratch working directory (MLflow 2.22's server creates ./mlruns
there); the script lists what the server left in it.
Exit status 0 means the served predictions match.
"""

import argparse
import json
import math
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def http(method: str, url: str, body: bytes | None = None, timeout: float = 30.0):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.headers.get("Content-Type"), resp.read()


def close(a, b, tol: float) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("example_dir")
    ap.add_argument("--port", type=int, default=5055)
    ap.add_argument("--timeout", type=float, default=180.0)
    args = ap.parse_args()

    example = os.path.abspath(args.example_dir)
    with open(os.path.join(example, "predictions.json")) as f:
        expected = json.load(f)

    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    cmd = [
        os.path.join(bindir, "mlflow"), "models", "serve",
        "-m", os.path.join(example, "model"),
        "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(args.port),
    ]
    print("$", " ".join(cmd), flush=True)
    log_path = os.path.join("/tmp", f"serve_check_{args.port}.log")
    log = open(log_path, "w")
    workdir = tempfile.mkdtemp(prefix="serve_check_cwd_")
    server = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{args.port}"
    try:
        t0 = time.time()
        while True:
            if server.poll() is not None:
                print(f"server exited with {server.returncode}; log: {log_path}")
                return 1
            try:
                status, _, _ = http("GET", base + "/ping", timeout=2)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() - t0 > args.timeout:
                print(f"server not ready after {args.timeout}s; log: {log_path}")
                return 1
            time.sleep(0.5)
        print(f"ready after {time.time() - t0:.1f}s")

        status, ctype, body = http("GET", base + "/version")
        print(f"GET /version -> {status} {ctype}: {body.decode()}")

        payload = json.dumps(expected["input"]).encode()
        status, ctype, body = http("POST", base + "/invocations", payload)
        print(f"POST /invocations -> {status} {ctype}: {body.decode()}")
        served = json.loads(body)["predictions"]
        ok = close(served, expected["predictions"], expected.get("tolerance", 1e-5))
        print("exactly equal to predictions.json:", served == expected["predictions"])
        print("within tolerance:", ok)
        return 0 if ok else 1
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        print(f"server stopped; its log: {log_path}")
        left = sorted(
            os.path.relpath(os.path.join(root, name), workdir)
            for root, dirs, files in os.walk(workdir) for name in dirs + files
        )
        print("files the server left in its working directory:", left or "none")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
