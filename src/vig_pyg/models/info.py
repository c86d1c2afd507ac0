"""Model card: parameters and multiply-accumulates of the zoo (``vig-pyg info``).

MACs are what :class:`torch.utils.flop_counter.FlopCounterMode` counts (convolutions and
matrix products, so the kNN distance matmuls too, like the figures of the release) divided
by 2, for one image in eval mode. The reported count is the release's: every Grapher
convolution evaluated literally (:data:`LITERAL` off, e.g. ``edge`` projects every edge);
``executed`` is what the default, algebraically equal but cheaper, evaluation runs.
With another graph builder (``--graph``) the kNN column counts the distance matmuls that
builder computes (``window_knn``: within windows; ``static_knn``: once per stage;
``axial``, ``spatial_knn``, ``random``: none; ``axial_threshold``'s L1 distances are
elementwise, not MACs).
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from .. import fast_paths
from .factory import create_model
from .zoo import VIG_TI_CONVS, ZOO, list_models


#: The fast paths off in the release's (literal) evaluation: the Grapher convolutions' dense
#: paths, and PyG's own code for the ``pyg:`` adapters.
LITERAL = ("fixed_degree", "padded", "pyg_aggregation", "split_edge_conv")


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable); frozen relative-position tables count in the total only."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def count_macs(model: nn.Module, img_size=224) -> dict:
    """``{"total": MACs as the release counts them, "knn": MACs of the kNN distance matmuls,
    "executed": MACs of the default evaluation}`` for one image. The total is that of the
    literal evaluation (:data:`LITERAL` off); the executed count follows the switches as
    they are."""
    with fast_paths.disabled(*LITERAL):
        release = _count_macs(model, img_size)
    executed = (_count_macs(model, img_size)
                if any(fast_paths.enabled(name) for name in LITERAL) else release)
    return {**release, "executed": executed["total"]}


def _count_macs(model: nn.Module, img_size) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    p = next(model.parameters())
    # zeros: the count depends on shapes only, and an untrained network in eval mode
    # (BatchNorm without statistics) can overflow on random images (gin sums neighbours)
    x = torch.zeros(1, model.config.in_chans, h, w, dtype=p.dtype, device=p.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    ops = counter.get_flop_counts().get("Global", {})
    knn = sum(v for op, v in ops.items() if "baddbmm" in str(op))
    return {"total": counter.get_total_flops() // 2, "knn": knn // 2}


def model_card(name: str, conv: str = "mr", img_size=224, macs: bool = True, **kwargs) -> dict:
    """Parameters and (optionally) MACs of one zoo model."""
    model = create_model(name, conv=conv, img_size=img_size, **kwargs)
    total, trainable = count_params(model)
    card = {"model": name, "kind": ZOO[name].kind, "conv": conv,
            "graph": model.config.graph,
            "img_size": model.config.img_size, "params": total, "trainable": trainable}
    if macs:
        counted = count_macs(model, img_size)
        card["macs"], card["knn_macs"] = counted["total"], counted["knn"]
        card["executed_macs"] = counted["executed"]
    if tuple(model.config.img_size) == (224, 224) and not kwargs:
        if conv == "mr":
            card["top1"] = ZOO[name].top1
        elif name == "vig_ti" and conv in VIG_TI_CONVS:
            card["top1"] = VIG_TI_CONVS[conv].top1
    return card


def model_cards(names=None, conv: str = "mr", img_size=224, macs: bool = True,
                **kwargs) -> list[dict]:
    return [model_card(n, conv, img_size, macs, **kwargs) for n in (names or list_models())]


def format_table(cards: list[dict]) -> str:
    header = ["model", "kind", "conv", "params (M)", "trainable (M)", "GMACs", "kNN GMACs",
              "run GMACs", "top-1"]
    rows = []
    for c in cards:
        rows.append([c["model"], c["kind"], c["conv"], f"{c['params'] / 1e6:.2f}",
                     f"{c['trainable'] / 1e6:.2f}",
                     f"{c['macs'] / 1e9:.2f}" if "macs" in c else "-",
                     f"{c['knn_macs'] / 1e9:.3f}" if "knn_macs" in c else "-",
                     f"{c['executed_macs'] / 1e9:.2f}" if c.get("executed_macs", c.get("macs"))
                     != c.get("macs") else "=",
                     f"{c['top1']:.1f}" if "top1" in c else "-"])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(s.ljust(w) if i < 3 else s.rjust(w)  # noqa: E731
                              for i, (s, w) in enumerate(zip(r, widths)))
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    return "\n".join(lines)


def add_info_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``info`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "info", help="parameters and GMACs of the model zoo",
        description="Model card of the ViG zoo: parameters (total / trainable) and "
                    "multiply-accumulates for one image (FlopCounterMode / 2; the kNN "
                    "distance matmuls included, as in the release's figures).")
    p.add_argument("--model", action="append", choices=list_models(), metavar="NAME",
                   help=f"model(s) to describe (repeatable; default: all of {list_models()})")
    p.add_argument("--conv", default="mr",
                   help="graph convolution (mr, edge, sage, gin or a PyG name; default mr)")
    p.add_argument("--graph", default="knn", metavar="NAME",
                   help="graph builder (vig_pyg.graph.list_graph_builders(): knn, axial, mgc, "
                        "lsgc, gated_axial, clustered_knn, hypergraph_fcm, ...; default knn)")
    p.add_argument("--graph-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the graph builder, e.g. hop=4 (repeatable)")
    p.add_argument("--img-size", type=int, default=224, help="input size (default 224)")
    p.add_argument("--no-macs", action="store_true", help="parameters only (fast)")
    p.set_defaults(func=run_info)
    return p


def _graph_kwargs(args) -> dict:
    import yaml

    from ..graph.builders import GraphBuilderError

    graph = getattr(args, "graph", "knn")
    options = {}
    for item in getattr(args, "graph_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GraphBuilderError(f"--graph-option expects KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    if graph == "knn" and not options:
        return {}
    return {"graph": graph, "graph_options": options or None}


def run_info(args) -> int:
    import sys

    from ..errors import VigPygError

    try:
        graph = _graph_kwargs(args)
        cards = model_cards(args.model, args.conv, args.img_size, macs=not args.no_macs,
                            **graph)
    except VigPygError as e:
        print(f"vig-pyg info: error: {e}", file=sys.stderr)
        return 2
    print(f"ViG zoo, {args.img_size} x {args.img_size} input, batch 1, eval "
          f"(MACs = FlopCounterMode FLOPs / 2; GMACs as the release evaluates the graph "
          f"convolution, run GMACs what vig_pyg's equal, cheaper evaluation executes, = if "
          f"the same)"
          + (f", graph {graph['graph']} {graph['graph_options'] or ''}".rstrip() if graph
             else ""))
    print(format_table(cards))
    return 0
