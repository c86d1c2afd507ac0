"""PyG's convolutions (the ``pyg:`` adapters) inside vig_ti, against the release's ``mr``.

Each model is vig_ti with one graph convolution (own weights: the layers differ); all run in
one process, alternating step by step, so other work on the machine hits all alike. The
best of ``--iters`` steps is reported (median beside it) with its ratio to ``mr``:

* training step: train mode, forward + cross-entropy + backward + SGD step;
* forward: eval mode, ``torch.no_grad()``.

    python benchmarks/bench_pyg_convs.py                         # batch 16, 224 px
    python benchmarks/bench_pyg_convs.py --batch 8 --threads 1 --clock cpu   # busy machine
"""
from __future__ import annotations

import argparse
import time

from bench_graphs import make_step  # same step definitions as the graph-builder benchmark
from timing import print_ratios, time_alternately

CONVS = ["mr", "pyg:GATv2Conv", "pyg:TransformerConv", "pyg:GENConv", "pyg:GINConv",
         "pyg:EdgeConv"]


def main(argv=None) -> int:
    import torch

    from vig_pyg.models import create_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vig_ti")
    p.add_argument("--convs", nargs="+", default=CONVS)
    p.add_argument("--modes", nargs="+", default=["train", "forward"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = p.parse_args(argv)
    timer = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    convs = ["mr"] + [c for c in args.convs if c != "mr"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.img, args.img, generator=g)
    y = torch.randint(0, 1000, (args.batch,), generator=g)
    print(f"{args.model}, batch {args.batch}, {args.img} px, float32 on the CPU, "
          f"{torch.get_num_threads()} thread(s), {args.clock} clock")
    for mode in args.modes:
        torch.manual_seed(0)
        steps = {c: make_step(create_model(args.model, conv=c), mode, x, y) for c in convs}
        times = time_alternately(steps, args.iters, timer)
        print_ratios(times, "mr", args.batch, mode, "conv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
