"""Each fast path switched off against all of them on, in the same process, alternating.

The switches are :mod:`vig_pyg.fast_paths`' (``fast_paths.names()`` says what each does).
``--paths`` picks the variants, one per entry (``a+b``: those off together); by default
each model-wide path alone: ``fused_conv`` (conv + BatchNorm + activation or residual in
one oneDNN call, inference only), the compiled kernels of ``fast_paths.NATIVE`` (the kNN's
selection, normalisation and single pass, the neighbour sum/max, and in training
BatchNorm + activation) and ``grouped_linear`` (the graph convolutions' grouped projections
as BLAS products in training). Variants: all on, each entry off, every named path off at
once. The steps are ``bench_graphs.make_step``'s: ``forward`` an eval-mode forward under
``torch.no_grad()``, ``train`` forward + cross-entropy + backward + SGD step.

    python benchmarks/bench_fast_paths.py                       # vig_ti and pvig_ti, batch 16
    python benchmarks/bench_fast_paths.py --models pvig_ti --modes forward train --iters 3
    python benchmarks/bench_fast_paths.py --modes train --conv gin
    python benchmarks/bench_fast_paths.py --paths single_pass select+normalize
"""
from __future__ import annotations

import argparse
import time

import torch

from bench_graphs import make_step  # the same steps as the other model benchmarks
from timing import print_ratios, time_alternately, without
from vig_pyg import fast_paths, native
from vig_pyg.models import create_model

MODEL_WIDE = ("fused_conv", *fast_paths.NATIVE, "grouped_linear")


def variants(entries) -> dict:
    """``{label: paths off}``: all on, each entry (``a+b``: together), all of them."""
    groups = [tuple(entry.split("+")) for entry in entries]
    every = tuple(dict.fromkeys(name for group in groups for name in group))
    for name in every:
        fast_paths.enabled(name)  # an unknown name: one line naming the known ones
    out = {"fast paths on": ()}
    out.update({f"{'+'.join(group)} off": group for group in groups})
    if len(groups) > 1:
        out["all off"] = every
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vig_ti", "pvig_ti"])
    p.add_argument("--modes", nargs="+", default=["forward"], choices=["forward", "train"])
    p.add_argument("--conv", default="mr", help="graph convolution of the models")
    p.add_argument("--paths", nargs="+", default=list(MODEL_WIDE),
                   help="fast paths switched off, one variant each (a+b: together); "
                        f"known: {', '.join(fast_paths.names())}")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=4)
    args = p.parse_args(argv)
    try:
        off = variants(args.paths)
    except ValueError as exc:
        p.error(str(exc))
    print(f"batch {args.batch}, 224 px, float32, {torch.get_num_threads()} threads, wall clock;"
          f" native kernels available: {native.available()}")
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, conv=args.conv)
        x = torch.randn(args.batch, 3, 224, 224)
        y = torch.randint(0, 1000, (args.batch,))
        for mode in args.modes:
            step = make_step(model, mode, x, y)
            steps = {label: without(step, *paths) for label, paths in off.items()}
            times = time_alternately(steps, args.iters, time.perf_counter)
            print_ratios(times, "fast paths on", args.batch, f"{name} {args.conv} {mode}",
                         "variant")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
