"""Layer encoders compared on real layer tars (issue 25): thread CPU time (median of N interleaved
rounds), wall time and compressed size of each encoder/level through lockbuild's own writer.

    .venv/bin/python benchmarks/encoders.py TAR [TAR...] [--rounds 3] [--codecs isal:1,zlib-ng:1,zstandard:1]

Get the tars by decompressing the layer blobs of a build (e.g. examples/keras3's OCI layout). CPU
time, not wall time, is the figure to compare on a shared machine: interleaving makes load changes
hit every encoder alike. Not part of `make bench` (it needs the tars on disk).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from pathlib import Path

from lockbuild.oci.compress import ENCODERS, compress_writer


class _Count:
    def __init__(self) -> None:
        self.n, self.h = 0, hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.n += len(b)
        self.h.update(b)
        return len(b)


def one(tar: Path, encoder: str, level: int) -> tuple[float, float, int, str]:
    sink = _Count()
    t0, c0 = time.perf_counter(), time.thread_time()
    with open(tar, "rb") as f, compress_writer(sink, ENCODERS[encoder], level, encoder) as z:
        while chunk := f.read(1 << 20):
            z.write(chunk)
    return time.thread_time() - c0, time.perf_counter() - t0, sink.n, sink.h.hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tars", nargs="+", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--codecs", default="isal:1,zlib-ng:1,zlib-ng:2,zstandard:1,zstandard:3")
    args = ap.parse_args()
    codecs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.codecs.split(",")]
    runs: dict[tuple[str, int], list[tuple[float, float, int]]] = {c: [] for c in codecs}
    for r in range(args.rounds):
        for enc, level in codecs:
            got = [one(t, enc, level) for t in args.tars]
            cpu, wall, size = sum(g[0] for g in got), sum(g[1] for g in got), sum(g[2] for g in got)
            runs[(enc, level)].append((cpu, wall, size))
            print(f"round {r + 1} {enc} {level}: CPU {cpu:.2f} s, wall {wall:.2f} s, {size:,} bytes "
                  f"({', '.join(g[3] for g in got)})", flush=True)
    base_cpu = statistics.median(x[0] for x in runs[codecs[0]])
    base_size = runs[codecs[0]][0][2]
    print(f"\n| encoder | CPU (median) | x {codecs[0][0]} | bytes | x {codecs[0][0]} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for c in codecs:
        cpu = statistics.median(x[0] for x in runs[c])
        print(f"| {c[0]} level {c[1]} | {cpu:.2f} s | {cpu / base_cpu:.2f} | {runs[c][0][2]:,} | "
              f"{runs[c][0][2] / base_size:.3f} |")


if __name__ == "__main__":
    main()
