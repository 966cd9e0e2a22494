"""lockbuild benchmark suite (`make bench`): lockbuild vs the tools it replaces, on one model.

Measures, in ONE run, on examples/keras3 (copied to a scratch directory) and its committed pins:

1. lock:   `lockbuild lock --upgrade` (warm uv + Debian index caches) vs a bare `uv pip compile`
           of the same Python inputs with the same flags (interleaved pairs, medians).
2. cold:   `lockbuild lock --upgrade` and `lockbuild image`, each into an empty LOCKBUILD_CACHE, vs
           `docker build --no-cache` of the Dockerfile `mlflow models generate-dockerfile
           --env-manager local` writes (rounds alternate which goes first); the lock step counts in
           the ratio. Per round: pure download of the same artifacts with lockbuild's own fetch code,
           and `lockbuild image` on that download-only cache ("warm-downloads build"). Then the
           model-only change through MLflow's Dockerfile (`docker build` with its layer cache).
3. warm:   no-op rebuild; model-only change (add a file to the model, `lock`, `image`);
           image sizes; peak RSS of every `lockbuild image` process; the floor's CPU work
           (measure_floor.py: inflate, byte-compile, compress, on every core); CLI start-up.
4. start-up: time from `docker run` to the first 200 on /ping and to the first correct
           /invocations answer, for the image with build-time bytecode + pruning and for the same
           lock without either ([build] bytecode = false, prune-defaults = false), interleaved.

Writes benchmarks/results/latest.json (atomically) and prints a markdown table. See
benchmarks/README.md for the baseline's construction and the caveats.

    .venv/bin/python benchmarks/run.py                 # everything (~30 min on 2 cores)
    .venv/bin/python benchmarks/run.py --quick         # no docker build, no cold builds
    .venv/bin/python benchmarks/run.py --skip-docker   # no MLflow-style docker baseline
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import common
from baseline import MLFLOW_TAG, docker, ensure_engine, ensure_standin_base, mlflow_dockerfile
from common import BENCH_ROOT, EXAMPLE, README, REPO, RESULTS, Results, log, machine_facts
from measure import bench_cold, bench_isal, bench_lock, bench_warm
from measure_shared import bench_shared
from measure_sign import bench_sign
from measure_startup import bench_startup
from report import render_table, replace_readme_table, summarize, write_json, write_targets

BENCH_README = REPO / "benchmarks" / "README.md"  # its target table is generated (report.write_targets)


def snapshot_source(dest: Path) -> tuple[Path, str]:
    """Copy the lockbuild package (as it is now) to dest/lockbuild; return dest and a digest of it."""
    import hashlib

    shutil.copytree(REPO / "lockbuild", dest / "lockbuild", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    h = hashlib.sha256()
    for f in sorted((dest / "lockbuild").rglob("*"), key=lambda q: q.as_posix()):
        if f.is_file():
            h.update(f.relative_to(dest).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return dest, "sha256:" + h.hexdigest()


@contextlib.contextmanager
def scratch_dir(keep: bool) -> Iterator[Path]:
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH_ROOT))
    try:
        yield d
    finally:
        if keep:
            log(f"kept scratch {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


def _shown_path(p: Path) -> str:
    p = p.resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="skip the docker build baseline and the cold builds")
    ap.add_argument("--skip-docker", action="store_true", help="skip the MLflow-style docker build baseline")
    ap.add_argument("--rounds", type=int, default=3, help="cold rounds (cold image, docker build, floors)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the cheap measurements")
    ap.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    ap.add_argument("--update-readme", action="store_true", help="put the table into README.md's bench block")
    ap.add_argument("--keep-scratch", action="store_true", help="keep the scratch directory")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only recompute ratios and the table of a results file (rewritten in place)")
    args = ap.parse_args(argv)
    if args.render:
        doc = json.loads(args.render.read_text())
        table = render_table(doc["metrics"], doc["facts"], summarize(doc["metrics"], doc["facts"]), doc["machine"])
        print(table)
        doc.update(summarize(doc["metrics"], doc["facts"]), table_markdown=table)
        write_json(args.render, doc)
        if doc.get("mode") == "full":
            write_targets(BENCH_README, doc, _shown_path(args.render))
        if args.update_readme and doc.get("mode") == "full":
            README.write_text(replace_readme_table(README.read_text(), table))
        return 0
    if args.quick:
        args.repeats = min(args.repeats, 2)
    with_docker = not (args.quick or args.skip_docker)

    t_start = time.perf_counter()
    host = ensure_engine()
    machine = machine_facts(host)
    log(f"machine: {machine['nproc']} cores, {machine['cpu']}, {machine['ram_gb']} GB, docker {host or 'none'}")
    warm_cache = BENCH_ROOT / "cache"  # persistent: warm uv cache, Debian indexes, downloads, layers
    with scratch_dir(args.keep_scratch) as scratch:
        common.SNAPSHOT, machine["lockbuild_source_digest"] = snapshot_source(scratch / "src")
        sys.path.insert(0, str(common.SNAPSHOT))  # the runner's own lockbuild imports use the snapshot too
        common.PYCACHE = scratch / "pycache"
        res = Results(scratch)
        mlflow_ctx = None
        if with_docker:
            if host is None:
                raise SystemExit("no Docker engine: run scripts/dockerd.sh start, or pass --skip-docker")
            base = ensure_standin_base(host)
            res.facts["standin_bytes"] = base["size"]
            res.facts["standin_base_bytes"] = base["base_size"]
            mlflow_ctx = scratch / "mlflow-docker"
            res.facts["mlflow_dockerfile"] = mlflow_dockerfile(EXAMPLE / "model", mlflow_ctx)
        bench_lock(res, warm_cache, args.repeats)
        if not args.quick:
            bench_cold(res, host, args.rounds, with_docker, mlflow_ctx)
            bench_isal(res, host, args.rounds)
            bench_shared(res, warm_cache, host, args.rounds)
        bench_warm(res, warm_cache, host, args.repeats, compress_repeats=0 if args.quick else args.rounds)
        bench_startup(res, warm_cache, host, args.repeats)
        bench_sign(res, res.scratch / "warm", warm_cache, args.repeats)
        if with_docker and host:
            docker(host, "rmi", "-f", MLFLOW_TAG)
    machine["loadavg_end"] = list(os.getloadavg())
    res.facts["unchanged_lock_builds"] = len(res.digests)
    res.facts["unchanged_lock_digests_identical"] = len({d for _, d in res.digests}) == 1
    res.facts["unchanged_lock_digests"] = [f"{kind} {d}" for kind, d in res.digests]
    wall = time.perf_counter() - t_start
    summary = summarize(res.metrics, res.facts)
    table = render_table(res.metrics, res.facts, summary, machine)
    doc = {"machine": machine, "mode": "quick" if args.quick else ("skip-docker" if not with_docker else "full"),
           "wall_seconds": round(wall, 1), "metrics": res.metrics, "facts": res.facts, **summary,
           "table_markdown": table}
    write_json(args.output, doc)
    if doc["mode"] == "full":
        write_targets(BENCH_README, doc, _shown_path(args.output))
    print(table)
    log(f"wrote {args.output} (run took {wall / 60:.1f} min)")
    if args.update_readme:
        if args.quick or not with_docker:
            log("not updating README.md from a partial run")
        else:
            README.write_text(replace_readme_table(README.read_text(), table))
            log("updated README.md's bench table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
