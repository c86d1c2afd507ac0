"""Fixed-degree dense path vs generic ``propagate`` for the four Grapher convolutions.

vig_ti shape: 16 images x 196 nodes x 192 channels -> 384, k in {9, 18}, kNN graph from
:func:`vig_pyg.graph.knn_edges`. For every conv and k, both paths run in the same process,
alternating repeat by repeat (so machine noise hits both alike); the table gives the median
(``--stat min``: the minimum) milliseconds of each and their ratio (generic / fast):

- ``fwd``: eval mode, ``torch.no_grad()`` (inference);
- ``fwd+bwd``: train mode, forward plus backward of a fixed random output gradient, with
  ``x`` requiring a gradient as inside a network.

    .venv/bin/python benchmarks/bench_conv.py [--repeats 7] [--convs mr edge] [--ks 9 18]
        [--threads 1] [--stat min]
    .venv/bin/python benchmarks/bench_conv.py --gather   # neighbour sum/max: compiled vs torch
    .venv/bin/python benchmarks/bench_conv.py --projection   # grouped projections in training
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vig_pyg import fast_paths
from vig_pyg.conv import build_conv
from vig_pyg.graph import knn_edges

#: The dense paths of the Grapher convolutions: with both off, PyG's propagate runs.
DENSE = ("fixed_degree", "padded")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(conv: str, k: int, batch: int, side: int, channels: int, repeats: int,
          stat=statistics.median):
    torch.manual_seed(0)
    fmap = torch.randn(batch, channels, side, side)
    x = fmap.permute(0, 2, 3, 1).reshape(-1, channels).contiguous()
    edge_index = knn_edges(fmap, k)
    layer = build_conv(conv, channels, 2 * channels)
    grad = torch.randn(x.size(0), 2 * channels)
    xg = x.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            layer(x, edge_index)

    def train_step():
        layer(xg, edge_index).backward(grad)

    rows = {}
    for mode, fn, train in (("fwd", forward, False), ("fwd+bwd", train_step, True)):
        layer.train(train)
        times = {True: [], False: []}
        for fast in (True, False):  # warm-up
            with fast_paths.disabled(*(() if fast else DENSE)):
                fn()
        for _ in range(repeats):
            for fast in (True, False):
                with fast_paths.disabled(*(() if fast else DENSE)):
                    times[fast].append(_time(fn))
        layer.zero_grad(set_to_none=True)
        xg.grad = None
        rows[mode] = (stat(times[True]) * 1e3, stat(times[False]) * 1e3)
    return rows


def compare_gathers(ks, batch: int, side: int, channels: int, repeats: int) -> None:
    """The neighbour sum and max of ``vig_pyg.conv.functional``: compiled
    (``native/_gather.c``) against the chunked torch path (the fast path ``gather`` off),
    alternating call by call on a kNN graph of the shape above."""
    from timing import time_alternately, without
    from vig_pyg.conv import functional

    print(f"\nneighbour gathers, best of {repeats} alternating calls (ms)")
    print(f"{'reduce':<7}{'k':>4} {'torch':>8} {'compiled':>9} {'ratio':>7}   "
          f"{'fwd+bwd torch':>13} {'compiled':>9} {'ratio':>7}")
    x = torch.randn(batch, channels, side, side).to(memory_format=torch.channels_last)
    rows = x.permute(0, 2, 3, 1).reshape(-1, channels)
    leaf = rows.detach().clone().requires_grad_(True)
    for k in ks:
        index = knn_edges(x, k)[0].contiguous()
        grad = torch.randn(rows.size(0), channels)
        for name, fn in (("sum", functional.gather_sum), ("max", functional.gather_max)):
            def both():
                leaf.grad = None
                fn(leaf, index, k).backward(grad)
            t = time_alternately({(on, mode): without(step, *(() if on else ("gather",)))
                                  for on in (False, True)
                                  for mode, step in (("fwd", lambda: fn(rows, index, k)),
                                                     ("bwd", both))},
                                 repeats, time.perf_counter)
            b = {key: 1e3 * min(v) for key, v in t.items()}
            print(f"{name:<7}{k:>4} {b[False, 'fwd']:8.3f} {b[True, 'fwd']:9.3f} "
                  f"{b[False, 'fwd'] / b[True, 'fwd']:6.2f}x   {b[False, 'bwd']:13.3f} "
                  f"{b[True, 'bwd']:9.3f} {b[False, 'bwd'] / b[True, 'bwd']:6.2f}x", flush=True)


PROJECTIONS = [  # (what, rows, in, out): the graph convolutions' grouped projections
    ("gin, vig_ti", 3136, 192, 384),
    ("mr/edge/sage nn2, vig_ti", 3136, 384, 384),
    ("mr, pvig_ti stage 1", 50176, 96, 96),
    ("mr, pvig_ti stage 2", 12544, 192, 192),
]


def compare_projections(repeats: int) -> None:
    """The grouped 1x1 convolutions of the graph convolutions in training (4 groups):
    oneDNN's grouped convolution against one matrix product per group
    (``vig_pyg.layers.grouped_linear``, the fast path ``grouped_linear`` off and on),
    forward + backward, alternating call by call."""
    from timing import time_alternately, without
    from vig_pyg.layers import grouped_linear as GL

    print(f"\ngrouped projections (4 groups), forward + backward, best of {repeats} "
          f"alternating calls (ms)")
    print(f"{'projection':<26}{'rows':>7}{'in':>5}{'out':>5} {'conv':>8} {'per group':>10} "
          f"{'ratio':>7}")
    for what, m, cin, cout in PROJECTIONS:
        x = torch.randn(m, cin, requires_grad=True)
        w = torch.randn(cout, cin // 4, 1, 1, requires_grad=True)
        b = torch.randn(cout, requires_grad=True)
        grad = torch.randn(m, cout)

        def step():
            x.grad = w.grad = b.grad = None
            GL.grouped_linear(x, w, b, 4).backward(grad)
        t = time_alternately({on: without(step, *(() if on else ("grouped_linear",)))
                              for on in (False, True)},
                             repeats, time.perf_counter, warmup=2)
        conv, mm = 1e3 * min(t[False]), 1e3 * min(t[True])
        print(f"{what:<26}{m:>7}{cin:>5}{cout:>5} {conv:8.2f} {mm:10.2f} {conv / mm:6.2f}x",
              flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--convs", nargs="+", default=["mr", "edge", "sage", "gin"])
    parser.add_argument("--ks", nargs="+", type=int, default=[9, 18])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--side", type=int, default=14, help="nodes per image = side^2")
    parser.add_argument("--channels", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stat", choices=["median", "min"], default="median")
    parser.add_argument("--gather", action="store_true",
                        help="only the neighbour sum/max: compiled against torch")
    parser.add_argument("--projection", action="store_true",
                        help="only the grouped projections in training: oneDNN's grouped "
                             "convolution against one matrix product per group")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.projection:
        return compare_projections(max(args.repeats, 15))
    if args.gather:
        return compare_gathers(args.ks, args.batch, args.side, args.channels,
                               max(args.repeats, 20))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.batch} images x {args.side ** 2} nodes x {args.channels} -> "
          f"{2 * args.channels} channels; {args.stat} of {args.repeats} (ms)")
    header = (f"{'conv':<6}{'k':>4} | {'fwd fast':>9}{'generic':>9}{'ratio':>7} | "
              f"{'fwd+bwd fast':>13}{'generic':>9}{'ratio':>7}")
    print(header)
    print("-" * len(header))
    for conv in args.convs:
        for k in args.ks:
            r = bench(conv, k, args.batch, args.side, args.channels, args.repeats,
                      statistics.median if args.stat == "median" else min)
            (ff, fg), (tf, tg) = r["fwd"], r["fwd+bwd"]
            print(f"{conv:<6}{k:>4} | {ff:>9.1f}{fg:>9.1f}{fg / ff:>6.2f}x | "
                  f"{tf:>13.1f}{tg:>9.1f}{tg / tf:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
