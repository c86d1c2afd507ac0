"""``vig-pyg inspect``: see the graphs a ViG builds and measure what its blocks do."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import VigPygError


def _centre(text: str) -> tuple[int, int]:
    try:
        row, col = (int(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a centre is ROW,COL (e.g. 3,5), got {text!r}")
    return row, col


def add_inspect_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``inspect`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "inspect", help="draw the patch graphs of a model and tabulate per-block statistics",
        description="Runs a model on a few images, captures the graph of every Grapher block "
                    "and writes neighbour overlays, in-degree heat maps, statistics against "
                    "depth (PNG), stats.csv and summary.txt.")
    p.add_argument("--checkpoint", help="a vig_pyg checkpoint (model.pt), or a release file "
                                        "together with --model")
    p.add_argument("--model", help="zoo model name: random weights, or the model of a release "
                                   "--checkpoint")
    p.add_argument("--conv", default="mr", help="graph convolution for --model (default mr)")
    p.add_argument("--compare", nargs="+", default=[], metavar="CKPT",
                   help="more checkpoints drawn in the same plots and table")
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="image files or folders, or 'digits' for the built-in digits' test "
                        "split (with their classes: homophily); default: scikit-image's "
                        "astronaut, coffee, chelsea")
    p.add_argument("--blocks", nargs="+", type=int, metavar="I",
                   help="Grapher blocks to draw, 0 = shallowest (default: 4 spread)")
    p.add_argument("--centres", nargs="+", type=_centre, metavar="ROW,COL",
                   help="centre patches in the first drawn block's grid (default: 3 spread)")
    p.add_argument("--radius", type=float, default=2.0,
                   help="edges longer than this (in patches) count as 'beyond' (default 2)")
    p.add_argument("--output", default="inspect", help="output directory (default ./inspect)")
    p.set_defaults(func=run_inspect)
    return p


def _images(paths, model):
    """``--images``: paths as given, or the word ``digits`` (and no such file) for the
    built-in digits' test split at the model's input size, with their classes."""
    if paths == ["digits"] and not os.path.exists("digits"):
        from ..datasets import digits_tensor

        return digits_tensor(train=False, img_size=model.config.img_size[0])
    return paths, None


def run_inspect(args) -> int:
    from .report import inspect_run, load_for_inspection

    try:
        models = [load_for_inspection(args.checkpoint, args.model, args.conv)]
        models += [load_for_inspection(c, args.model, args.conv) for c in args.compare]
        images, classes = _images(args.images, models[0])
        result = inspect_run(models, args.output, images=images, classes=classes,
                             blocks=args.blocks, centres=args.centres, radius=args.radius)
    except VigPygError as exc:
        print(f"vig-pyg inspect: error: {exc}", file=sys.stderr)
        return 2
    print(result["summary"])
    print(f"\nwrote {len(result['files'])} files to {os.path.abspath(args.output)}")
    return 0
