"""Issue 24: a second runner with an empty local cache and the shared registry cache, against pulling
the finished image from that registry (skopeo copy docker:// -> oci:), in the same run, interleaved.

A local docker-registry (scripts/registry.sh) is filled once by a runner with the warm cache
(`--cache-key`, and `--push` of the image itself). Each round then times, in alternating order:
  - `lockbuild image --oci DIR --cache-registry R/cache --cache-trust PUB` with an empty
    LOCKBUILD_CACHE (every layer fetched, verified against its signed sha256 and diff_id);
  - `skopeo copy docker://R/image:bench oci:DIR:bench` (blobs copied, digest-checked).
A second model on the same pins (the example with another model file) is then built by a runner
with an empty cache and pushed (push only): the layer bytes it downloads (none: shared layers are
referenced by their signed entries and mounted) and uploads (its own layers) are recorded."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from common import REPO, Results, lb_env, lockbuild_cmd, log, run
from measure import copy_example


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


def bench_shared(res: Results, warm_cache: Path, host: str | None, rounds: int) -> None:
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
        shared_s, pull_s = [], []
        for r in range(rounds):
            def lockbuild_shared(r: int = r) -> None:
                w = copy_example(res.scratch / f"shared-{r}")
                cache = res.scratch / f"shared-cache-{r}"
                run_ = run([*lockbuild_cmd(), "image", "--json", "--oci", str(w / "out" / "oci"), *shared],
                           env=lb_env(cache, host), cwd=w).check()
                d = run_.json()
                names = sorted(x["name"] for x in d["layers"])
                if d["digest"] != want or sorted(d["shared_cache"]["fetched"]) != names:
                    raise RuntimeError(f"shared-cache build: {d['digest']} (want {want}), {d['shared_cache']}")
                res.digests.append(("shared-cache", d["digest"]))
                shared_s.append(run_.seconds)
                res.facts["shared_fetched_bytes"] = d["shared_cache"]["fetched_bytes"]
                shutil.rmtree(cache)
                shutil.rmtree(w)

            def skopeo_pull(r: int = r) -> None:
                dest = res.scratch / f"pull-{r}"
                run_ = run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{image_ref}",
                            f"oci:{dest}:bench"]).check()
                pull_s.append(run_.seconds)
                shutil.rmtree(dest)

            for step in [lockbuild_shared, skopeo_pull] if r % 2 == 0 else [skopeo_pull, lockbuild_shared]:
                step()
        res.add("shared_cache_image_s", shared_s, "lockbuild image, empty cache, shared registry cache")
        res.add("skopeo_pull_s", pull_s, "skopeo copy of the finished image from the same registry")

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
