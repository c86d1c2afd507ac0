"""The `vig-pyg` command line (also `python -m vig_pyg`).

Each subcommand lives with the code it drives; this file only collects them.
"""
from __future__ import annotations

import argparse
import sys

from .detection.cli import add_detect_parser
from .diagnostics.cli import add_inspect_parser
from .errors import VigPygError
from .experiments import add_report_parser, add_sweep_parser
from .models.export import add_export_parser
from .models.info import add_info_parser
from .train.cli import add_eval_parser, add_train_parser


def _add_graph_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "graph", help="build patch graphs for a batch of images and print edge statistics",
        description="Builds the kNN patch graph of ViG for a batch of the embedded digits "
                    "images (or random maps) with both backends and prints edge statistics.")
    p.add_argument("--images", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--size", type=int, default=14, help="grid side in patches (default 14)")
    p.add_argument("--k", type=int, default=9, help="neighbours per node (default 9)")
    p.add_argument("--dilation", type=int, default=1)
    p.add_argument("--reduce-ratio", type=int, default=1)
    p.set_defaults(func=_run_graph)


def _run_graph(args) -> int:
    from .graph.stats import print_graph_stats
    print_graph_stats(args.images, args.size, args.k, args.dilation, args.reduce_ratio)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vig-pyg", description="Vision GNN (ViG) on PyTorch Geometric.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    add_info_parser(subparsers)
    add_export_parser(subparsers)
    _add_graph_parser(subparsers)
    add_detect_parser(subparsers)
    add_inspect_parser(subparsers)
    add_sweep_parser(subparsers)
    add_report_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs a sub-command. An input problem (any :class:`~vig_pyg.errors.VigPygError`) is one
    ``vig-pyg CMD: error: ...`` line on stderr and exit status 2, whichever sub-command
    raised it; anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VigPygError as exc:
        print(f"vig-pyg {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
