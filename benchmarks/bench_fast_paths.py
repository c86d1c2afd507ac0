"""Each model-wide fast path against its plain path, in the same process, alternating.

Switches: ``vig_pyg.layers.fused`` (conv + BatchNorm + activation or residual in one oneDNN
call, inference only), ``vig_pyg.graph.select.native`` (the compiled kernels: the kNN
selection instead of ``torch.topk``, the kNN's row normalisation, the neighbour sum/max,
and in training BatchNorm + activation), ``vig_pyg.graph.knn.fused`` (the kNN's distances
and selection in one compiled pass, against the matmul + compiled selection) and
``vig_pyg.layers.grouped_linear.enabled`` (the graph convolutions' grouped projections as
one matrix product per group, and every other 1x1 convolution as one, training only).
Variants: all on (the default), fused off, fused kNN pass off, per-group products off, all
off. The steps are
``bench_graphs.make_step``'s: ``forward`` an eval-mode forward under ``torch.no_grad()``,
``train`` forward + cross-entropy + backward + SGD step.

    python benchmarks/bench_fast_paths.py                       # vig_ti and pvig_ti, batch 16
    python benchmarks/bench_fast_paths.py --models pvig_ti --modes forward train --iters 3
    python benchmarks/bench_fast_paths.py --modes train --conv gin
"""
from __future__ import annotations

import argparse
import time

import torch

from bench_graphs import make_step  # the same steps as the other model benchmarks
from timing import print_ratios, switched as switched_one, time_alternately
from vig_pyg.graph import knn, select
from vig_pyg.layers import fused, grouped_linear
from vig_pyg.models import create_model


def switched(step, fused_on: bool, native_on: bool, grouped_on: bool = True):
    """``step`` run with the three switches set as given (and restored after)."""
    def run():
        before = fused.enabled, select.native, grouped_linear.enabled
        fused.enabled, select.native, grouped_linear.enabled = fused_on, native_on, grouped_on
        try:
            step()
        finally:
            fused.enabled, select.native, grouped_linear.enabled = before
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vig_ti", "pvig_ti"])
    p.add_argument("--modes", nargs="+", default=["forward"], choices=["forward", "train"])
    p.add_argument("--conv", default="mr", help="graph convolution of the models")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=4)
    args = p.parse_args(argv)
    print(f"batch {args.batch}, 224 px, float32, {torch.get_num_threads()} threads, wall clock;"
          f" native selection available: {select.native_available()}")
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, conv=args.conv)
        x = torch.randn(args.batch, 3, 224, 224)
        y = torch.randint(0, 1000, (args.batch,))
        for mode in args.modes:
            step = make_step(model, mode, x, y)
            steps = {"fast paths on": switched(step, True, True),
                     "fused off": switched(step, False, True),
                     "fused kNN pass off": switched_one(knn, "fused", False,
                                                        switched(step, True, True)),
                     "per-group products off": switched(step, True, True, False),
                     "all off": switched(step, False, False, False)}
            times = time_alternately(steps, args.iters, time.perf_counter)
            print_ratios(times, "fast paths on", args.batch, f"{name} {args.conv} {mode}",
                         "variant")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
