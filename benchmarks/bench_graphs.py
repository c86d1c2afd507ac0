"""Cost of each graph builder under ``mr`` on vig_ti at 224 px, against ``knn`` + ``mr``.

All models share the same weights (builders have no parameters) and run in one process,
alternating step by step, so a disturbance from other work on the machine hits all alike;
the best of ``--iters`` steps is reported (median beside it) with its ratio to ``knn``:

* forward: eval mode, ``torch.no_grad()``;
* training step: train mode, forward + cross-entropy + backward + SGD step.

``axial_threshold`` has a variable degree: it is timed with the padded-table fast path
(:mod:`vig_pyg.conv.padded`) and, as ``axial_threshold/propagate``, without it (the fast
paths ``fixed_degree`` and ``padded`` off around its steps).

``graph@conv`` times a builder under its own aggregator (``hypergraph_fcm@vihgnn``: a
hypergraph needs a hypergraph aggregator); those models have their own weights (same seed).

    python benchmarks/bench_graphs.py                     # batch 16, 3 timed steps each
    python benchmarks/bench_graphs.py --batch 8 --iters 2 --graphs knn axial
    python benchmarks/bench_graphs.py --threads 1 --clock cpu   # on a busy machine
"""
from __future__ import annotations

import argparse

from timing import add_step_arguments, print_ratios, step_setup, time_alternately, without

GRAPHS = ["knn", "static_knn", "axial", "axial_threshold", "axial_threshold/propagate",
          "window_knn", "spatial_knn", "random", "mgc", "lsgc", "gated_axial",
          "gated_axial@gated_mr", "clustered_knn", "clustered_knn@cluster_mr",
          "hypergraph_fcm@vihgnn", "hypergraph_fcm@pyg:HypergraphConv"]


def build(name: str, state, model_name: str):
    import torch

    from vig_pyg.models import create_model

    graph, _, conv = name.split("/")[0].partition("@")
    if conv:
        torch.manual_seed(0)
        model = create_model(model_name, graph=graph, conv=conv)
    else:
        model = create_model(model_name, graph=graph)
        model.load_state_dict(state)
    return model


def paths_off(name: str) -> tuple:
    """The fast paths off while ``name``'s steps run: the Grapher convolutions' dense paths
    for a ``/propagate`` variant, none otherwise."""
    return ("fixed_degree", "padded") if name.endswith("/propagate") else ()


def make_step(model, mode: str, x, y):
    """One forward (``mode="forward"``) or training step of ``model``, moved to ``x``'s
    device."""
    import torch
    import torch.nn.functional as F

    model.to(x.device)
    if mode == "forward":
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
        return step
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main(argv=None) -> int:
    import torch

    from vig_pyg.models import create_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--graphs", nargs="+", default=GRAPHS)
    p.add_argument("--modes", nargs="+", default=["forward", "train"])
    add_step_arguments(p)
    args = p.parse_args(argv)
    timer, x, y = step_setup(args)
    graphs = ["knn"] + [g for g in args.graphs if g != "knn"]
    torch.manual_seed(0)
    state = create_model(args.model).state_dict()
    for mode in args.modes:
        steps = {}
        for name in graphs:
            model = build(name, state, args.model)
            steps[name] = without(make_step(model, mode, x, y), *paths_off(name))
        times = time_alternately(steps, args.iters, timer, args.warmup)
        print_ratios(times, "knn", args.batch, mode, "graph")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
