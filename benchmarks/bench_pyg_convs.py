"""PyG's convolutions (the ``pyg:`` adapters) inside vig_ti, against the release's ``mr``.

Each model is vig_ti with one graph convolution (own weights: the layers differ); all run in
one process, alternating step by step, so other work on the machine hits all alike. The
best of ``--iters`` steps is reported (median beside it) with its ratio to ``mr``:

* training step: train mode, forward + cross-entropy + backward + SGD step;
* forward: eval mode, ``torch.no_grad()``.

``--compare-generic`` also times each adapter through PyG's own path (the adapters' speed-ups
off: the fast paths ``pyg_aggregation`` and ``split_edge_conv``; same model and weights),
alternating with the rest, and prints ``fast / generic`` per adapter: before/after in one
run.

    python benchmarks/bench_pyg_convs.py                         # batch 16, 224 px
    python benchmarks/bench_pyg_convs.py --batch 8 --threads 1 --clock cpu   # busy machine
    python benchmarks/bench_pyg_convs.py --compare-generic --iters 2 --batch 8
"""
from __future__ import annotations

import argparse

from bench_graphs import make_step  # same step definitions as the graph-builder benchmark
from timing import add_step_arguments, print_ratios, step_setup, time_alternately, without

GENERIC = " (generic)"
#: The adapters' speed-ups (vig_pyg.fast_paths): off, every pyg: adapter runs PyG's code.
ADAPTER_PATHS = ("pyg_aggregation", "split_edge_conv")

CONVS = ["mr", "pyg:GATv2Conv", "pyg:TransformerConv", "pyg:GENConv", "pyg:GINConv",
         "pyg:EdgeConv"]


def main(argv=None) -> int:
    import torch

    from vig_pyg.models import create_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--convs", nargs="+", default=CONVS)
    p.add_argument("--modes", nargs="+", default=["train", "forward"])
    add_step_arguments(p)
    p.add_argument("--compare-generic", action="store_true",
                   help="also time each adapter with PyG's own path (speed-ups off)")
    args = p.parse_args(argv)
    timer, x, y = step_setup(args)
    convs = ["mr"] + [c for c in args.convs if c != "mr"]
    for mode in args.modes:
        torch.manual_seed(0)
        steps = {}
        for c in convs:
            model = create_model(args.model, conv=c)
            steps[c] = make_step(model, mode, x, y)
            if args.compare_generic and c != "mr":
                steps[c + GENERIC] = without(make_step(model, mode, x, y), *ADAPTER_PATHS)
        times = time_alternately(steps, args.iters, timer, args.warmup)
        print_ratios(times, "mr", args.batch, mode, "conv")
        if args.compare_generic:
            _print_speedups(times)
    return 0


def _print_speedups(times: dict) -> None:
    print(f"\n{'adapter':<26} {'fast ms':>9} {'generic ms':>11} {'fast / generic':>15}")
    for name, t in times.items():
        if name + GENERIC in times:
            fast, generic = min(t), min(times[name + GENERIC])
            print(f"{name:<26} {fast * 1e3:9.1f} {generic * 1e3:11.1f} {fast / generic:15.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
