"""Issue 20: what signing and attaching add to a release of the example. Interleaved pairs (ABAB...)
against one throwaway local registry (scripts/registry.sh): `lockbuild image --push` (warm cache: every
layer cached, blobs already in the registry after the first push) and the same with `--sign --key`
(the signature, three DSSE attestations, the .sig/.att tags and referrers). Plus `lockbuild sign
--no-verify` alone on the pushed digest. The per-pair difference is the overhead."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from common import REPO, Results, lb_env, lockbuild_cmd, log, run

KEY_ENV = "LOCKBUILD_KEY_PASSWORD"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_sign(res: Results, work: Path, cache: Path, repeats: int) -> None:
    """``work``: a copy of the example whose layers are in ``cache`` (bench_warm's)."""
    port = str(_free_port())
    started = subprocess.run(["bash", str(REPO / "scripts" / "registry.sh"), "start", port], capture_output=True,
                             text=True)
    if started.returncode != 0:
        log(f"   sign: skipped, no local registry ({started.stderr.strip()[-200:]})")
        return
    keydir = res.scratch / "sign-key"
    shutil.rmtree(keydir, ignore_errors=True)
    keydir.mkdir()
    env = {**lb_env(cache, None), KEY_ENV: os.urandom(16).hex()}
    try:
        run([*lockbuild_cmd(), "keygen", str(keydir / "bench")], env=env, cwd=work).check()
        repo = f"127.0.0.1:{port}/lockbuild-bench/keras3"
        first = run([*lockbuild_cmd(), "image", "--json", "--push", f"{repo}:prime"], env=env, cwd=work).check()
        digest = first.json()["digest"]
        log(f"   release: image --push vs image --push --sign x{repeats} (interleaved), sign alone x{repeats}")
        push, signed, alone = [], [], []
        for i in range(repeats):
            push.append(run([*lockbuild_cmd(), "image", "--json", "--push", f"{repo}:p{i}"], env=env,
                            cwd=work).check().seconds)
            s = run([*lockbuild_cmd(), "image", "--json", "--push", f"{repo}:s{i}", "--sign", "--key",
                     str(keydir / "bench.key")], env=env, cwd=work).check()
            if not s.json().get("signed", {}).get("signature_tag"):
                raise RuntimeError("image --push --sign did not sign")
            signed.append(s.seconds)
            alone.append(run([*lockbuild_cmd(), "sign", f"{repo}@{digest}", "--key", str(keydir / "bench.key"),
                              "--no-verify"], env=env, cwd=work).check().seconds)
        res.add("push_image_s", push, "lockbuild image --push (warm, blobs present)")
        res.add("push_sign_image_s", signed, "lockbuild image --push --sign --key (warm)")
        res.add("sign_only_s", alone, "lockbuild sign --no-verify (signature + 3 attestations)")
        res.facts["sign_overhead_per_pair_s"] = [round(b - a, 3) for a, b in zip(push, signed, strict=True)]
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "registry.sh"), "stop", port], capture_output=True)
        shutil.rmtree(keydir, ignore_errors=True)
