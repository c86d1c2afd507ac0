"""``vig-pyg inspect``: see the graphs a ViG builds and measure what its blocks do.
``vig-pyg graph``: the statistics of kNN patch graphs built on the built-in digits."""
from __future__ import annotations

import argparse
import os
import sys
import time

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


def add_graph_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``graph`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "graph", help="build patch graphs for a batch of images and print edge statistics",
        description="Builds the kNN patch graph of ViG for a batch of the built-in digits' "
                    "test images with both backends and prints edge statistics.")
    p.add_argument("--images", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--size", type=int, default=14, help="grid side in patches (default 14)")
    p.add_argument("--k", type=int, default=9, help="neighbours per node (default 9)")
    p.add_argument("--dilation", type=int, default=1)
    p.add_argument("--reduce-ratio", type=int, default=1)
    p.set_defaults(func=run_graph)
    return p


def digit_patch_maps(num_images: int, grid: int, patch: int = 4):
    """The first ``num_images`` of the built-in digits' test split
    (:func:`~vig_pyg.datasets.digits_tensor`) at ``grid * patch`` pixels, cut into
    ``patch x patch`` patches: a ``[B, patch*patch, grid, grid]`` map of grey patch pixels."""
    import torch.nn.functional as F

    from ..datasets import digits_tensor

    images = digits_tensor(train=False, img_size=grid * patch)[0][:num_images, :1]
    patches = F.unfold(images, patch, stride=patch)  # [B, p*p, grid*grid]
    return patches.view(images.size(0), patch * patch, grid, grid)


def _time_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def graph_report(images: int = 16, grid: int = 14, k: int = 9, dilation: int = 1,
                 reduce_ratio: int = 1) -> str:
    """The ``vig-pyg graph`` report: the dense backend's kNN graph of the digits' patch
    pixels read through :mod:`.stats`, its agreement with the cluster backend and the
    time per call of each."""
    import torch

    from ..graph import knn_edges
    from .capture import BlockGraph
    from .stats import (cross_image_edges, edge_lengths, in_degree, reach_max,
                        self_loop_share, spatial_reach)

    fmap = digit_patch_maps(images, grid)
    # Pixels are in [0, 1]; blank patches all normalise to zero length, which would make
    # many distances tie, so centre them first (the model's features never tie in practice).
    noise = torch.randn(fmap.shape, generator=torch.Generator().manual_seed(0))
    fmap = fmap - fmap.mean(dim=1, keepdim=True) + 1e-3 * noise
    kwargs = dict(dilation=dilation, reduce_ratio=reduce_ratio)
    dense = knn_edges(fmap, k, backend="dense", **kwargs)
    cluster = knn_edges(fmap, k, backend="cluster", **kwargs)
    key_grid = (grid // reduce_ratio,) * 2
    block = BlockGraph(0, "knn", fmap.size(0), (grid, grid), key_grid, reduce_ratio, dense)
    lengths = edge_lengths(block)
    reach = spatial_reach(lengths, radius=0.0)
    degree = in_degree(block)
    agree = float((cluster == dense).all(0).float().mean())
    dense_ms = _time_ms(lambda: knn_edges(fmap, k, backend="dense", **kwargs))
    cluster_ms = _time_ms(lambda: knn_edges(fmap, k, backend="cluster", **kwargs))
    return "\n".join([
        f"patch graph: {block.num_images} digit images, {grid}x{grid} patches of 4x4 pixels, "
        f"k={k}, dilation={dilation}, reduce ratio={reduce_ratio}",
        f"  nodes {block.num_images * block.num_nodes}, edges {dense.size(1)}, in-degree "
        f"(times chosen as a neighbour) min/max {int(degree.min())}/{int(degree.max())}",
        f"  edges crossing images: {cross_image_edges(block)}",
        f"  self-loops: {self_loop_share(block):.1%} of edges",
        f"  neighbour distance on the grid: mean {reach['reach_mean']:.2f} patches, "
        f"median {reach['reach_median']:.2f}, max {reach_max(lengths):.2f}",
        f"  dense and cluster backends agree on {agree:.2%} of edges",
        f"  time per call: dense {dense_ms:.2f} ms, cluster {cluster_ms:.2f} ms "
        f"({cluster_ms / dense_ms:.1f}x)"])


def run_graph(args) -> int:
    print(graph_report(args.images, args.size, args.k, args.dilation, args.reduce_ratio))
    return 0
