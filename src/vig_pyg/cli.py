"""The `vig-pyg` command line (also `python -m vig_pyg`).

Each subcommand lives with the code it drives; this file only collects them.
"""
from __future__ import annotations

import argparse
import sys

from .detection.cli import add_detect_parser
from .diagnostics.cli import add_graph_parser, add_inspect_parser
from .errors import VigPygError
from .experiments import add_report_parser, add_sweep_parser
from .models.export import add_export_parser
from .models.info import add_info_parser
from .train.cli import add_eval_parser, add_train_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vig-pyg", description="Vision GNN (ViG) on PyTorch Geometric.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    add_info_parser(subparsers)
    add_export_parser(subparsers)
    add_graph_parser(subparsers)
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
