"""Steps with freed memory kept in the process against glibc's default, for both
implementations: how much of each step is page faults.

glibc unmaps a freed block above its mmap threshold (raised on the fly to at most 32 MiB),
so the next tensor that large faults its pages in afresh, which is expensive on virtual
machines. ``timing.keep_freed_memory`` keeps freed memory mapped. It changes the whole
process, so each variant runs in worker processes
of its own (``bench_models``'s time worker: the reference and ours alternating step by
step), and the two variants alternate round by round in this run. Printed: the best step
of each implementation under each variant, what keeping memory gains each, and ours'
speed-up over the reference under each (the ``bench_models`` ratio).

    python benchmarks/bench_allocator.py                      # vig_ti, pvig_ti; mr, gin
    python benchmarks/bench_allocator.py --models vig_ti --convs gin --modes train --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from timing import each_case, print_table_header

HERE = os.path.dirname(os.path.abspath(__file__))


def worker_times(model: str, mode: str, conv: str, keep: bool, iters: int) -> dict:
    """``{"reference": [s, ...], "ours": [s, ...]}`` from one bench_models time worker."""
    cmd = [sys.executable, os.path.join(HERE, "bench_models.py"), "--worker", "time", model,
           mode, conv, "0", "--iters", str(iters), *(["--keep-memory"] if keep else [])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["times"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vig_ti", "pvig_ti"])
    p.add_argument("--convs", nargs="+", default=["mr", "gin"])
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--rounds", type=int, default=2, help="worker processes per variant")
    p.add_argument("--iters", type=int, default=3, help="timed steps per worker")
    args = p.parse_args(argv)
    print(f"batch 16, 224 px, float32; best step in ms over {args.rounds} x {args.iters} "
          f"steps per variant; 'kept' = timing.keep_freed_memory()")
    header = (f"{'model':8} {'conv':5} {'mode':6} {'ours':>7} {'kept':>7} {'gain':>6} "
              f"{'ref':>7} {'kept':>7} {'gain':>6}   {'ours/ref speed-up':>17} {'kept':>6}")
    print_table_header(header)
    for model, conv, mode in each_case(args):
        best = {}
        for _ in range(args.rounds):
            for keep in (False, True):
                for impl, t in worker_times(model, mode, conv, keep,
                                            args.iters).items():
                    best[impl, keep] = min(best.get((impl, keep), 1e9), min(t))
        ours, ours_k = 1e3 * best["ours", False], 1e3 * best["ours", True]
        ref, ref_k = 1e3 * best["reference", False], 1e3 * best["reference", True]
        print(f"{model:8} {conv:5} {mode:6} {ours:7.0f} {ours_k:7.0f} "
              f"{ours / ours_k:5.2f}x {ref:7.0f} {ref_k:7.0f} {ref / ref_k:5.2f}x   "
              f"{ref / ours:16.2f}x {ref_k / ours_k:5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
