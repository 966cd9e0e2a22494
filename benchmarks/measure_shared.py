"""Issue 24: a second runner with an empty local cache and the shared registry cache, against pulling
the finished image from that registry (skopeo copy docker:// -> oci:), in the same run, interleaved.

A local docker-registry (scripts/registry.sh) is filled once by a runner with the warm cache
(`--cache-key`, and `--push` of the image itself). Each round then times, in alternating order:
  - `lockbuild image --oci DIR --cache-registry R/cache --cache-trust PUB` with an empty
    LOCKBUILD_CACHE (every layer fetched, its blob checked against the signed sha256 and size as it
    streams; the signed diff_id is believed, see docs/architecture.md "Shared cache");
  - `skopeo copy docker://R/image:bench oci:DIR:bench` (blobs copied, digest-checked).
Both write the same blobs (~356 MB compressed for the example) and fsync them. Wall seconds and CPU
seconds (user+sys, from wait4) are recorded for both, and the per-round ratio (the pair runs back to
back, so a load change on a shared machine hits both). Once per run the same build with
LOCKBUILD_CACHE_CHECK_TAR=1 (every tar inflated and hashed too) is timed beside them.

A second model on the same pins (the example with another model file) is then built by a runner
with an empty cache and pushed (push only): the layer bytes it downloads (none: shared layers are
referenced by their signed entries and mounted) and uploads (its own layers) are recorded.

Standalone: `.venv/bin/python benchmarks/measure_shared.py --rounds 5` (this part only; prints JSON)."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Results, lb_env, lockbuild_cmd, log, run  # noqa: E402
from measure import copy_example  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keys(dest: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = dest / "bench.pem", dest / "bench.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _timed(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float, str]:
    """(wall s, CPU s of the process and its children, stdout) of one command that must succeed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read().decode(errors='replace')[-3000:]}")
        return wall, usage.ru_utime + usage.ru_stime, out.read().decode()


def bench_shared(res: Results, warm_cache: Path, host: str | None, rounds: int) -> None:
    import json

    log(f"2c. shared registry cache: {rounds} round(s) of empty-cache build vs skopeo copy of the image")
    if shutil.which("skopeo") is None:
        log("   skopeo missing: skipped")
        return
    port = str(_free_port())
    subprocess.run(["bash", str(REPO / "scripts/registry.sh"), "start", port], check=True, capture_output=True)
    registry = f"127.0.0.1:{port}"
    try:
        priv, pub = _keys(res.scratch)
        cache_repo, image_ref = f"{registry}/lockbuild-cache", f"{registry}/bench/keras3:bench"
        shared = ["--cache-registry", cache_repo, "--cache-trust", str(pub)]
        work = copy_example(res.scratch / "shared-fill")
        filled = run([*lockbuild_cmd(), "image", "--json", "--oci", str(work / "out" / "oci"), *shared,
                      "--cache-key", str(priv), "--push", image_ref],
                     env=lb_env(warm_cache, host), cwd=work).check().json()
        want = filled["digest"]
        wall: dict[str, list[float]] = {"shared": [], "pull": [], "check_tar": []}
        cpu: dict[str, list[float]] = {"shared": [], "pull": [], "check_tar": []}

        def lockbuild_shared(r: int, kind: str = "shared") -> None:
            w = copy_example(res.scratch / f"shared-{r}")
            cache = res.scratch / f"shared-cache-{r}"
            env = lb_env(cache, host)
            if kind == "check_tar":
                env["LOCKBUILD_CACHE_CHECK_TAR"] = "1"
            s, c, out = _timed([*lockbuild_cmd(), "image", "--json", "--oci", str(w / "out" / "oci"), *shared],
                               env=env, cwd=w)
            d = json.loads(out)
            names = sorted(x["name"] for x in d["layers"])
            if d["digest"] != want or sorted(d["shared_cache"]["fetched"]) != names:
                raise RuntimeError(f"shared-cache build: {d['digest']} (want {want}), {d['shared_cache']}")
            res.digests.append(("shared-cache", d["digest"]))
            wall[kind].append(s)
            cpu[kind].append(c)
            res.facts["shared_fetched_bytes"] = d["shared_cache"]["fetched_bytes"]
            shutil.rmtree(cache)
            shutil.rmtree(w)

        def skopeo_pull(r: int) -> None:
            dest = res.scratch / f"pull-{r}"
            s, c, _ = _timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image_ref}",
                              f"oci:{dest}:bench"])
            wall["pull"].append(s)
            cpu["pull"].append(c)
            shutil.rmtree(dest)

        lockbuild_shared(-1)  # one unmeasured round: page cache and registry warm for both sides alike
        skopeo_pull(-1)
        for v in (*wall.values(), *cpu.values()):
            v.clear()
        for r in range(rounds):
            steps = [lockbuild_shared, skopeo_pull] if r % 2 == 0 else [skopeo_pull, lockbuild_shared]
            for step in steps:
                step(r)
        lockbuild_shared(rounds, "check_tar")
        res.add("shared_cache_image_s", wall["shared"], "lockbuild image, empty cache, shared registry cache")
        res.add("skopeo_pull_s", wall["pull"], "skopeo copy of the finished image from the same registry")
        res.add("shared_cache_image_cpu_s", cpu["shared"], "its CPU seconds (user+sys)")
        res.add("skopeo_pull_cpu_s", cpu["pull"], "skopeo's CPU seconds (user+sys)")
        res.add("shared_cache_check_tar_s", wall["check_tar"], "the same build, LOCKBUILD_CACHE_CHECK_TAR=1")
        res.facts["shared_vs_pull_per_round"] = [round(a / b, 2) for a, b in zip(wall["shared"], wall["pull"],
                                                                                   strict=True)]
        res.facts["shared_vs_pull_cpu"] = round(statistics.median(cpu["shared"]) / statistics.median(cpu["pull"]), 2)
        res.facts["shared_loadavg"] = list(os.getloadavg())

        # a second model on the same TensorFlow: only its own layers move
        second = copy_example(res.scratch / "shared-second")
        _second_model(second)
        run([*lockbuild_cmd(), "lock", "--json"], env=lb_env(warm_cache, host), cwd=second).check()
        # push-only: the shared layers are referenced by their signed entries and mounted, never downloaded
        d = run([*lockbuild_cmd(), "image", "--json", *shared, "--cache-key", str(priv),
                 "--push", f"{registry}/bench/second:bench"],
                env=lb_env(res.scratch / "second-cache", host), cwd=second).check().json()
        own = [x for x in d["layers"] if x["name"] not in d["shared_cache"]["fetched"]]
        res.facts["second_model"] = {
            "built_here": [x["name"] for x in own], "referenced": d["shared_cache"]["referenced"],
            "fetched_bytes": d["shared_cache"]["fetched_bytes"], "uploaded_bytes": d["shared_cache"]["uploaded_bytes"],
            "own_bytes": sum(x["size"] for x in own), "image_push": d.get("push")}
        shutil.rmtree(res.scratch / "second-cache", ignore_errors=True)
    finally:
        subprocess.run(["bash", str(REPO / "scripts/registry.sh"), "stop", port], capture_output=True)


def _second_model(work: Path) -> None:
    """Another model on the same pins: the example's model with one more file (its tree digest differs)."""
    (work / "model" / "NOTES.txt").write_text("a second model sharing the TensorFlow layer\n")


if __name__ == "__main__":
    import argparse
    import json

    import common

    ap = argparse.ArgumentParser(description="the shared-cache rows of the benchmark, alone")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm-cache", type=Path, default=common.BENCH_ROOT / "cache",
                    help="a cache that has the example's downloads (its layers are built once if missing)")
    args = ap.parse_args()
    common.BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shared-", dir=common.BENCH_ROOT) as scratch:
        common.PYCACHE = Path(scratch) / "pycache"
        results = Results(Path(scratch))
        bench_shared(results, args.warm_cache, os.environ.get("DOCKER_HOST"), args.rounds)
        med = {k: v["median"] for k, v in results.metrics.items()}
        ratio = round(med["shared_cache_image_s"] / med["skopeo_pull_s"], 2)
        print(json.dumps({"medians": med, "shared_vs_pull": ratio, "metrics": results.metrics,
                          "facts": results.facts}, indent=1))
