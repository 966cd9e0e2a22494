"""The timed measurements of lockbuild: lock vs uv, cold builds vs the docker build (ABBA rounds), the
download and compression floors, the ISA-L baseline (issue 25), warm rebuilds, verify, model-only changes, sizes
and peak RSS. Start-up is in measure_startup.py."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import common
from baseline import MLFLOW_TAG, docker, docker_build, docker_build_env, image_size, saved_compressed_bytes
from common import EXAMPLE, Results, Run, du_bytes, lb_env, lockbuild_cmd, log, run, timed

LOADED_TAG = "lockbuild-bench/keras3:bench"


# -- lockbuild steps ---------------------------------------------------------------------------------


def copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("out", "*.tar", "__pycache__", "out.*"))
    return dest


def lb_image(work: Path, cache: Path, docker_host: str | None, *extra: str, bytecode: bool = True) -> Run:
    oci = work / "out" / "oci"
    shutil.rmtree(oci, ignore_errors=True)
    return run([*lockbuild_cmd(), "image", "--json", "--oci", str(oci), *extra],
               env=lb_env(cache, docker_host, bytecode=bytecode), cwd=work).check()


def uv_compile_cmd(work: Path, out_dir: Path) -> list[str]:
    """lockbuild's own uv invocation on the inputs the lock in `work` records: built by `UvCall.argv`
    (resolve/uvcall.py), the one place lockbuild builds it, so the bare-uv baseline cannot drift from it."""
    from lockbuild.lockfile.io import read_lock
    from lockbuild.model.metadata import read_model
    from lockbuild.resolve.uvcall import UvCall, uv_bin

    lk = read_lock(work / "lockbuild.lock")
    call = UvCall(requirements=tuple(lk.python.requirements), constraints=tuple(read_model(work / "model").constraints),
                  python=lk.target.python, wheel_platform=lk.target.wheel_platform, index_url=lk.python.index_url,
                  exclude_newer=lk.python.exclude_newer)
    call.write_inputs(out_dir)
    return call.argv(out_dir, uv_bin())


def same_pins(work: Path, pylock: Path) -> bool:
    import tomllib

    from lockbuild.lockfile.io import read_lock

    lk = read_lock(work / "lockbuild.lock")
    doc = tomllib.loads(pylock.read_text())
    from packaging.utils import canonicalize_name

    uv_pins = {(canonicalize_name(p["name"]), str(p["version"])) for p in doc.get("packages", [])}
    lb_pins = {(w.name, w.version) for w in lk.python.packages} | {(n, v) for n, v in uv_pins if n in lk.python.omitted}
    return uv_pins == lb_pins


def bench_lock(res: Results, cache: Path, repeats: int) -> None:
    log(f"1. lock --upgrade vs uv pip compile: 1 warm-up + {repeats} interleaved pairs")
    work = copy_example(res.scratch / "lock")
    uv_dir = res.scratch / "uv"
    uv_dir.mkdir()
    env = lb_env(cache, None)
    from lockbuild.resolve import uvcall

    uv_env = {**uvcall.uv_env(), "UV_CACHE_DIR": str(cache / "uv")}  # the environment lockbuild gives uv
    lock_s, uv_s = [], []
    for i in range(repeats + 1):
        r = run([*lockbuild_cmd(), "lock", "--upgrade", "--json"], env=env, cwd=work).check()
        u = run(uv_compile_cmd(work, uv_dir), env=uv_env, cwd=uv_dir).check()
        if i == 0:
            res.facts["pins_identical_uv_vs_lockbuild"] = same_pins(work, uv_dir / "pylock.toml")
            res.facts["lock_python_packages"] = r.json()["python_packages"]
            res.facts["lock_debian_packages"] = r.json()["debian_packages"]
            continue
        lock_s.append(r.seconds)
        uv_s.append(u.seconds)
        res.facts.setdefault("lock_uv_head_start", []).append(r.json()["uv_head_start"])  # resolve/headstart.py
    res.add("lock_upgrade_s", lock_s, "lockbuild lock --upgrade (warm caches)")
    res.add("uv_compile_s", uv_s, "bare uv pip compile, same inputs and flags")
    bench_lock_50k(res, cache, env, uv_env)


BIG_LINES = 50_000


def bench_lock_50k(res: Results, cache: Path, env: dict[str, str], uv_env: dict[str, str]) -> None:
    """A requirements.txt of 50,000 lines (the logged ones, then `numpy==<pin>` repeated): every line is a
    requirement recorded twice in the lock. One untimed lock of the big file first (it rewrites the audit
    inputs kept beside the lock, work that has nothing to do with the line count), then one timed run each
    (the writer was quadratic)."""
    log(f"1b. lock --upgrade of a {BIG_LINES:,}-line requirements.txt vs uv pip compile of it")
    work = copy_example(res.scratch / "lock-50k")
    req = work / "model" / "requirements.txt"
    lines = req.read_text().splitlines()
    pin = next(ln for ln in lines if ln.startswith("numpy=="))
    req.write_text("\n".join(lines + [pin] * (BIG_LINES - len(lines))) + "\n")
    uv_dir = res.scratch / "uv-50k"
    uv_dir.mkdir()
    run([*lockbuild_cmd(), "lock", "--upgrade", "--json"], env=env, cwd=work).check()  # warm-up
    r = run([*lockbuild_cmd(), "lock", "--upgrade", "--json"], env=env, cwd=work).check()
    u = run(uv_compile_cmd(work, uv_dir), env=uv_env, cwd=uv_dir).check()
    res.add("lock_50k_lines_s", [r.seconds], f"lockbuild lock --upgrade, {BIG_LINES:,}-line requirements.txt")
    res.add("uv_50k_lines_s", [u.seconds], f"bare uv pip compile of the same {BIG_LINES:,} lines")


def download_floor(work: Path, cache: Path) -> float:
    """Pure download of every wheel and .deb the lock names, with lockbuild's fetch code, empty cache."""
    from lockbuild.fetch.cache import Cache
    from lockbuild.fetch.debs import deb_items
    from lockbuild.fetch.download import Item, fetch_all
    from lockbuild.lockfile.io import read_lock

    lk = read_lock(work / "lockbuild.lock")
    items = list(deb_items(lk.debian))
    items += [Item(urls=(w.url,), sha256=w.sha256, size=w.size, label=w.filename) for w in lk.python.packages]
    c = Cache(cache)
    seconds, _ = timed(lambda: fetch_all(c, items, jobs=4))  # `lockbuild image` default: --jobs 4
    return seconds


def docker_model_change(host: str, ctx: Path, scratch: Path, repeats: int) -> list[float]:
    """The user's warm path with MLflow's Dockerfile: one file added to the model, then `docker build`
    WITH the engine's layer cache (the cold rounds' builds left it): the COPY of the model and every
    step after it (MLflow's dependency install) run again."""
    model = next(p for p in (ctx / "model_dir").iterdir() if p.is_dir())
    secs = []
    for i in range(repeats):
        before = docker(host, "image", "inspect", "--format", "{{.Id}}", MLFLOW_TAG).stdout.strip()
        (model / f"bench-extra-{i}.txt").write_text(f"benchmark model change {i} {time.time_ns()}\n")
        log(f"   model-only change {i + 1}/{repeats}: docker build (cache warm)")
        r = run(["docker", "build", "--network", "host", "-t", MLFLOW_TAG, str(ctx)], env=docker_build_env(host))
        (scratch / f"docker-model-change-{i}.log").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
        r.check()
        if "Using cache" not in r.stdout:
            raise RuntimeError("the warm docker build used no cached step: the engine's layer cache was empty")
        secs.append(r.seconds)
        if before:
            docker(host, "rmi", before)  # the image the tag left: its own steps go, the shared ones stay
    return secs


def bench_cold(res: Results, host: str | None, rounds: int, with_docker: bool, mlflow_ctx: Path | None) -> None:
    log(f"2. cold builds: {rounds} round(s) of cold lockbuild image"
        + (" / docker build --no-cache" if with_docker else "") + " / download floor / warm-downloads build")
    cold, cold_lock, dock, dl, warmdl, rss = [], [], [], [], [], []
    for r in range(rounds):
        def lockbuild_cold(r: int = r) -> None:
            work = copy_example(res.scratch / f"cold-{r}")
            cache = res.scratch / f"cold-cache-{r}"
            log(f"   round {r + 1}: cold lockbuild lock --upgrade (its own empty cache), then cold lockbuild image")
            lock_cache = res.scratch / f"cold-lock-cache-{r}"
            lock_work = copy_example(res.scratch / f"cold-lock-{r}")
            cold_lock.append(run([*lockbuild_cmd(), "lock", "--upgrade", "--json"], env=lb_env(lock_cache, None),
                                 cwd=lock_work).check().seconds)
            shutil.rmtree(lock_cache)
            shutil.rmtree(lock_work)
            run_ = lb_image(work, cache, host)
            cold.append(run_.seconds)
            rss.append(run_.max_rss_kb)
            d = run_.json()
            res.digests.append(("cold", d["digest"]))
            if not any(layer["reused"] for layer in d["layers"]):
                res.facts.setdefault("cold_layers", d["layers"])
                res.facts["image_digest"] = d["digest"]
                res.facts["compressed_bytes"] = d["compressed_bytes"]
            else:
                raise RuntimeError("a cold build reused a cached layer: the cache was not empty")
            shutil.rmtree(cache)
            shutil.rmtree(work)

        def docker_cold(r: int = r) -> None:
            assert host and mlflow_ctx
            log(f"   round {r + 1}: docker build --no-cache (MLflow Dockerfile)")
            dock.append(docker_build(host, mlflow_ctx, res.scratch / f"docker-build-{r}.log"))
            res.facts["mlflow_image_bytes"] = image_size(host, MLFLOW_TAG)

        order = [lockbuild_cold, docker_cold] if with_docker else [lockbuild_cold]
        for step in order if r % 2 == 0 else reversed(order):
            step()

        log(f"   round {r + 1}: download floor + warm-downloads build")
        work = copy_example(res.scratch / f"floor-{r}")
        cache = res.scratch / f"floor-cache-{r}"
        dl.append(download_floor(work, cache))
        res.facts["download_bytes"] = du_bytes(cache / "blobs")
        run_ = lb_image(work, cache, host)
        res.digests.append(("warm-downloads", run_.json()["digest"]))
        warmdl.append(run_.seconds)
        rss.append(run_.max_rss_kb)
        shutil.rmtree(cache)
        shutil.rmtree(work)
    res.add("cold_image_s", cold, "cold lockbuild image (empty cache)")
    res.add("cold_lock_s", cold_lock, "cold lockbuild lock --upgrade (empty cache: uv, Debian indexes)")
    res.add("cold_total_s", [a + b for a, b in zip(cold_lock, cold, strict=True)], "cold lock + cold image")
    if dock and host:
        log("   MLflow-style image: gzip -1 of docker save (its compressed size)")
        res.facts["mlflow_compressed_bytes"] = saved_compressed_bytes(host, MLFLOW_TAG)
        assert mlflow_ctx is not None
        res.add("docker_model_change_s", docker_model_change(host, mlflow_ctx, res.scratch, min(rounds, 2)),
                "model-only change: docker build (layer cache warm) of MLflow's Dockerfile")
    if dock:
        res.add("docker_build_s", dock, "docker build --no-cache of MLflow's Dockerfile")
    res.add("download_floor_s", dl, "download floor: same wheels + .debs, lockbuild fetch, --jobs 4")
    res.add("warm_downloads_image_s", warmdl, "lockbuild image, downloads cached, no layers cached")
    res.rss_kb.extend(rss)
    res.facts["peak_rss_cold_kb"] = max(rss)


def isal_lock(work: Path) -> None:
    """The example's lock naming gzip from ISA-L at level 1 (compressor isal 1.9.1), as locks did before
    issue 25, so it builds the layers every earlier benchmark measured."""
    from dataclasses import replace

    from lockbuild.lockfile.io import dumps, read_lock

    lk = read_lock(work / "lockbuild.lock")
    (work / "lockbuild.lock").write_text(dumps(replace(lk, compression="gzip", compressor="isal 1.9.1",
                                                       compression_level=1)))


def bench_isal(res: Results, host: str | None, rounds: int) -> None:
    """The same lock as it was before CPU-independent encoders (ISA-L gzip; issue 25's baseline), built
    with downloads cached and no layer cache, round by round beside the default lock (zstd level 1)
    under the same condition: time and compressed size, compared in the report (same diff_ids)."""
    log(f"2b. ISA-L baseline: {rounds} round(s) of the ISA-L lock and the default lock, downloads cached")
    secs: list[float] = []
    dflt: list[float] = []
    for r in range(rounds):
        for kind in ("isal", "default") if r % 2 == 0 else ("default", "isal"):
            work = copy_example(res.scratch / f"{kind}-{r}")
            if kind == "isal":
                isal_lock(work)
            cache = res.scratch / f"{kind}-cache-{r}"
            download_floor(work, cache)
            run_ = lb_image(work, cache, host)
            (secs if kind == "isal" else dflt).append(run_.seconds)
            d = run_.json()
            if any(layer["reused"] for layer in d["layers"]):
                raise RuntimeError(f"an {kind} build reused a cached layer: the cache was not empty")
            res.facts[f"{kind}_compressed_bytes"] = d["compressed_bytes"]
            res.facts[f"{kind}_image_digest"] = d["digest"]
            shutil.rmtree(cache)
            shutil.rmtree(work)
    res.add("isal_warm_downloads_image_s", secs, "lockbuild image, ISA-L lock (before issue 25), downloads cached")
    res.add("default_warm_downloads_image_s", dflt, "lockbuild image, default lock, downloads cached (paired)")


def bench_warm(res: Results, cache: Path, host: str | None, repeats: int, compress_repeats: int) -> None:
    work = copy_example(res.scratch / "warm")
    log("3. warm: prime the warm cache (not reported)")
    prime = lb_image(work, cache, host)
    layers = prime.json()["layers"]
    res.digests.append(("warm-prime", prime.json()["digest"]))
    res.facts.setdefault("image_digest", prime.json()["digest"])
    res.facts.setdefault("compressed_bytes", prime.json()["compressed_bytes"])
    res.facts["layers"] = [{"name": x["name"], "size": x["size"]} for x in layers]

    log(f"   no-op rebuild x{repeats}")
    noop, rss = [], []
    for _ in range(repeats):
        r = lb_image(work, cache, host)
        if not all(x["reused"] for x in r.json()["layers"]):
            raise RuntimeError("a no-op rebuild rebuilt a layer")
        res.digests.append(("no-op", r.json()["digest"]))
        noop.append(r.seconds)
        rss.append(r.max_rss_kb)
    res.add("noop_image_s", noop, "no-op rebuild (unchanged lock, warm cache)")
    nopyc = []
    shutil.rmtree(common.PYCACHE.with_name("no-pycache"), ignore_errors=True)
    for _ in range(repeats):
        nopyc.append(lb_image(work, cache, host, bytecode=False).seconds)
    res.add("noop_nopyc_image_s", nopyc, "no-op rebuild without bytecode (PYTHONDONTWRITEBYTECODE=1)")

    log(f"   verify x{repeats} (warm, signed layer records) and once --rederive (every layer from the lock)")
    ver, ver_rss = [], []
    for _ in range(repeats):
        v = run([*lockbuild_cmd(), "verify", "out/oci"], env=lb_env(cache, None), cwd=work).check()
        ver.append(v.seconds)
        ver_rss.append(v.max_rss_kb)
    res.add("verify_s", ver, "lockbuild verify out/oci (warm)")
    v = run([*lockbuild_cmd(), "verify", "out/oci", "--rederive"], env=lb_env(cache, None), cwd=work).check()
    res.add("verify_rederive_s", [v.seconds], "lockbuild verify --rederive out/oci (every layer re-derived)")
    res.facts["peak_rss_verify_kb"] = max([*ver_rss, v.max_rss_kb])
    from measure_hostile import bench_verify_hostile

    bench_verify_hostile(res, cache, work, max(1, repeats // 2))  # issue 19: hostile inputs, same run

    log(f"   model-only change x{repeats}: add a file to the model, lock, image")
    lock_s, img_s, rebuilt = [], [], set()
    for i in range(repeats):
        (work / "model" / f"bench-extra-{i}.txt").write_text(f"benchmark model change {i} {time.time_ns()}\n")
        lk = run([*lockbuild_cmd(), "lock", "--json"], env=lb_env(cache, None), cwd=work).check()
        if lk.json()["changed"] is not True or lk.json()["reused"] is not False:
            raise RuntimeError(f"lock did not change after a model change: {lk.stdout}")
        if lk.json().get("moves"):  # a re-lock keeps every pin the model change does not require to move
            raise RuntimeError(f"a model-only change moved pins: {lk.json()['moves']}")
        r = lb_image(work, cache, host)
        names = {x["name"] for x in r.json()["layers"] if not x["reused"]}
        if names - {"model", "config"}:
            raise RuntimeError(f"a model-only change rebuilt {sorted(names)}: only model and config may change")
        rebuilt |= names
        lock_s.append(lk.seconds)
        img_s.append(r.seconds)
        rss.append(r.max_rss_kb)
    res.add("model_lock_s", lock_s, "model-only change: lockbuild lock")
    res.add("model_image_s", img_s, "model-only change: lockbuild image")
    res.add("model_total_s", [a + b for a, b in zip(lock_s, img_s, strict=True)], "model-only change: lock + image")
    res.facts["model_change_rebuilt_layers"] = sorted(rebuilt)
    res.rss_kb.extend(rss)
    res.facts["peak_rss_warm_kb"] = max(rss)

    if compress_repeats:
        from measure_floor import cpu_floor

        log(f"   floor: inflate, byte-compile, compress the image's work on every core x{compress_repeats}")
        cf = cpu_floor(layers, cache, res.scratch, compress_repeats)
        res.add("inflate_floor_s", cf["seconds"]["inflate"], "floor: inflate every wheel member and .deb data")
        res.add("compile_floor_s", cf["seconds"]["compile"], "floor: byte-compile every .py the image has a .pyc of")
        res.add("compress_floor_s", cf["seconds"]["compress"], "floor: the lock's compressor over the layer tars")
        res.facts.update(floor_cores=cf["cores"], floor_inputs=cf["inputs"], floor_sources=cf["sources"],
                         uncompressed_bytes=cf["uncompressed_bytes"])
        for entry in res.facts["layers"]:
            entry["uncompressed"] = cf["per_layer"].get(entry["name"])

    log(f"   CLI start-up x{repeats}: `lockbuild --help` (the floor of any one command)")
    starts = [run([*lockbuild_cmd(), "--help"], env=lb_env(cache, None), cwd=work).check() for _ in range(repeats)]
    res.add("cli_start_s", [x.seconds for x in starts], "lockbuild --help (interpreter + CLI import)")
    res.facts["cli_start_rss_kb"] = max(x.max_rss_kb for x in starts)

    if host:
        log("   load into the engine (for the engine's size)")
        docker(host, "rmi", "-f", LOADED_TAG)
        r = lb_image(work, cache, host, "--load", "--tag", LOADED_TAG)
        res.add("load_s", [r.seconds], "lockbuild image --load (warm; streams layers into dockerd)")
        res.facts["lockbuild_engine_bytes"] = image_size(host, LOADED_TAG)
        docker(host, "rmi", "-f", LOADED_TAG)
