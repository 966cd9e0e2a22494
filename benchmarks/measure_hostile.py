"""Issue 19's rows: what `lockbuild verify` costs on hostile input, against its cost on the untouched
image in the same run (`verify_s`). Each variant is made from the example's own out/oci by
tests/hostile_images.py (the differential test suite's generators): a zstd bomb (a small blob that
expands to 8 GiB) and a layer of huge PAX names in place of the model layer, a config nested
200 000 levels deep, an index.json with a Go case-variant "Manifests" key, and a docker-archive
with a second manifest.json spelled ./manifest.json. verify must refuse each (exit 13 or 23, never
a traceback) at about the untouched image's own cost, peak RSS < 200 MB.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from common import REPO, Results, lb_env, lockbuild_cmd, log, run

VARIANTS = ("zstd_bomb", "pax_names", "deep_config", "index_case", "archive_dot_manifest")


def make_variants(work: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO))
    from tests import hostile_images as h  # noqa: E402 - the test suite's generators, one definition

    base = work / "out" / "oci"
    root = work / "hostile"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    out: dict[str, Path] = {}
    for name, make in (("zstd_bomb", lambda p: h.zstd_bomb(p, gib=8)), ("pax_names", h.pax_name_bomb),
                       ("deep_config", h.config_deep), ("index_case", h.index_manifests_case)):
        out[name] = h.copy_layout(base, root / name)
        make(out[name])
    from lockbuild.lockfile.io import read_lock
    from lockbuild.oci.docker_archive import layout_archive

    name = read_lock(work / "lockbuild.lock").image_name
    archive = layout_archive(base, f"{name}:bench", root / "image.tar")
    out["archive_dot_manifest"] = h.archive_second_manifest("./manifest.json")(archive, root / "dot.tar")
    archive.unlink()
    return out


def bench_verify_hostile(res: Results, cache: Path, work: Path, repeats: int) -> None:
    log(f"   verify of hostile inputs x{repeats} each: {', '.join(VARIANTS)}")
    variants = make_variants(work)
    rss = []
    try:
        for name, path in variants.items():
            secs = []
            for _ in range(repeats):
                v = run([*lockbuild_cmd(), "verify", str(path), "--json"], env=lb_env(cache, None), cwd=work)
                if v.returncode not in (13, 23) or "Traceback" in v.stderr:
                    raise RuntimeError(f"verify of hostile {name} exited {v.returncode}: {v.stderr[-2000:]}")
                secs.append(v.seconds)
                rss.append(v.max_rss_kb)
            res.add(f"verify_hostile_{name}_s", secs, f"lockbuild verify of a hostile {name.replace('_', ' ')} "
                    "(refused)")
    finally:
        shutil.rmtree(work / "hostile", ignore_errors=True)
    res.facts["peak_rss_verify_hostile_kb"] = max(rss)


def hostile_rows(metrics: dict, facts: dict, fmt_s) -> list[tuple[str, str, str, str, str]]:  # type: ignore[no-untyped-def]
    """Report rows: each hostile input's median and its ratio to the untouched image's verify."""
    if not any(k.startswith("verify_hostile_") for k in metrics):
        return []
    base = (metrics.get("verify_s") or {}).get("median")
    rows = []
    for name in VARIANTS:
        m = metrics.get(f"verify_hostile_{name}_s")
        if m:
            note = f"{m['median'] / base:.2f}x untouched" if base else ""
            rows.append(("verify", f"`lockbuild verify`, hostile {name.replace('_', ' ')}", fmt_s(m["median"]),
                         str(len(m["samples"])), note))
    kb = facts.get("peak_rss_verify_hostile_kb")
    rows.append(("memory", "peak RSS `lockbuild verify`, hostile inputs", "n/a" if not kb else f"{kb / 1024:.0f} MB",
                 "", "target < 200 MB"))
    return rows
