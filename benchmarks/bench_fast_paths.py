"""Each model-wide fast path against its plain path, in the same process, alternating.

Switches: ``vig_pyg.layers.fused`` (conv + BatchNorm + activation or residual in one oneDNN
call, inference only) and ``vig_pyg.graph.select.native`` (the compiled kNN selection
instead of ``torch.topk``). Variants: both on (the default), fused off, both off. Inference
is an eval-mode forward under ``torch.no_grad()``; training (``--modes train``) a forward +
backward, where only the selection applies.

    python benchmarks/bench_fast_paths.py                       # vig_ti and pvig_ti, batch 16
    python benchmarks/bench_fast_paths.py --models pvig_ti --modes infer train --iters 3
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from timing import print_ratios, time_alternately
from vig_pyg.graph import select
from vig_pyg.layers import fused
from vig_pyg.models import create_model


@contextlib.contextmanager
def switches(fused_on: bool, native_on: bool):
    before = fused.enabled, select.native
    fused.enabled, select.native = fused_on, native_on
    try:
        yield
    finally:
        fused.enabled, select.native = before


def make_step(model, x, y, mode: str, fused_on: bool, native_on: bool):
    def infer():
        with switches(fused_on, native_on), torch.no_grad():
            model(x)

    def train():
        with switches(fused_on, native_on):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
    return infer if mode == "infer" else train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vig_ti", "pvig_ti"])
    p.add_argument("--modes", nargs="+", default=["infer"], choices=["infer", "train"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=4)
    args = p.parse_args(argv)
    print(f"batch {args.batch}, 224 px, float32, {torch.get_num_threads()} threads, wall clock;"
          f" native selection available: {select.native_available()}")
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name)
        x = torch.randn(args.batch, 3, 224, 224)
        y = torch.randint(0, 1000, (args.batch,))
        for mode in args.modes:
            model.train(mode == "train")
            steps = {"fast paths on": make_step(model, x, y, mode, True, True),
                     "fused off": make_step(model, x, y, mode, False, True),
                     "fused + selection off": make_step(model, x, y, mode, False, False)}
            times = time_alternately(steps, args.iters, time.perf_counter)
            print_ratios(times, "fast paths on", args.batch, f"{name} {mode}", "variant")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
