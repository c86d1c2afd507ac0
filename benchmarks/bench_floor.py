"""The arithmetic floor of a step: how fast this CPU could run it at the very best.

A step cannot take less time than its multiply-accumulates (MACs) take at the best rate the
processor reaches on a matrix product. This benchmark measures, in one process:

* the MACs of one step of ours (``torch.utils.flop_counter.FlopCounterMode``, divided by
  2), split into convolutions (forward, and in training the two products of every
  convolution's backward, grad-input and grad-weight) and the kNN's distance products;
* the best MAC rate of ``torch.mm`` and of a channels-last 1x1 convolution on this CPU, over
  large and model-sized shapes (the highest rate seen, so the floor is the lowest one
  any implementation built on these kernels could reach);
* the reference's step and ours, alternating (``bench_models``'s steps: batch 16, 224 px).

It prints ``floor = convolution MACs / best rate`` and ``bound = reference time / floor``:
the largest speed-up over the reference that any implementation doing those convolutions
could show on this machine, even with a free graph, free BatchNorm and activations, and
free optimiser. A target above ``bound`` cannot be met here with standard matrix-product
algorithms. ``+ distances`` adds the distance products at the same rate (the kNN's own
floor, as far as its matmul goes).

    python benchmarks/bench_floor.py                          # vig_ti, pvig_ti; mr and gin
    python benchmarks/bench_floor.py --models vig_ti --convs gin --modes train --iters 3
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench_models import TARGETS, _make_step, _setup
from timing import each_case, print_table_header, time_alternately

CONV_OPS = ("convolution", "convolution_backward")
MATMUL_OPS = ("bmm", "baddbmm", "mm", "addmm")
#: (m, k, n) of ``torch.mm``: large squares and the shapes of vig_ti's / pvig_ti's layers
MM_SHAPES = ((4096, 4096, 4096), (2048, 2048, 2048), (3136, 192, 768), (3136, 768, 192),
             (3136, 192, 192), (12544, 48, 192))
#: (channels in, channels out, grid) of channels-last 1x1 convolutions, batch 16
CONV_SHAPES = ((192, 768, 14), (768, 192, 14), (48, 192, 56), (240, 960, 14))


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                         _dilation, transposed, _output_padding, _groups, output_mask,
                         out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each product it runs (grad-input if asked,
    grad-weight if asked) has the forward's MACs. ``FlopCounterMode``'s own formula counts
    the grad-weight of a grouped convolution as if it had one group (torch 2.14: 578 M
    instead of 231 M MACs for a 384 -> 384, groups = 4 conv over 3136 rows)."""
    if transposed:
        raise NotImplementedError("transposed convolutions do not occur in ViG")
    forward_macs = math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return 2 * forward_macs * (int(output_mask[0]) + int(output_mask[1]))


def step_macs(model_name: str, conv: str, mode: str) -> dict:
    """``{"conv": MACs, "distance": MACs}`` of one forward (``infer``) or one forward +
    backward (``train``) of ours at batch 16, 224 px."""
    _, _, _, model, x, y = _setup(model_name, 16, 224, conv=conv)
    model.train(mode == "train")
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter, torch.set_grad_enabled(mode == "train"):
        out = model(x)
        if mode == "train":
            F.cross_entropy(out, y).backward()
    counts = {str(op).split(".")[1]: n  # "aten.convolution" -> "convolution"
              for op, n in counter.get_flop_counts()["Global"].items()}
    unknown = set(counts) - set(CONV_OPS) - set(MATMUL_OPS)
    if unknown:
        raise RuntimeError(f"FlopCounterMode counted ops this benchmark does not sort: "
                           f"{sorted(unknown)}")
    return {"conv": sum(counts.get(op, 0) for op in CONV_OPS) / 2,
            "distance": sum(counts.get(op, 0) for op in MATMUL_OPS) / 2}


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def best_rate(repeats: int = 5) -> tuple[float, str]:
    """``(MACs per second, what reached it)``: the highest rate over :data:`MM_SHAPES` and
    :data:`CONV_SHAPES`."""
    g = torch.Generator().manual_seed(0)
    rates = {}
    with torch.no_grad():
        for m, k, n in MM_SHAPES:
            a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
            out = torch.empty(m, n)
            rates[f"mm {m}x{k}x{n}"] = m * k * n / _best_seconds(
                lambda: torch.mm(a, b, out=out), repeats)
        for cin, cout, grid in CONV_SHAPES:
            x = torch.randn(16, cin, grid, grid, generator=g).to(
                memory_format=torch.channels_last)
            w = torch.randn(cout, cin, 1, 1, generator=g)
            rates[f"1x1 conv {cin}->{cout} at {grid}x{grid}"] = (
                16 * grid * grid * cin * cout / _best_seconds(lambda: F.conv2d(x, w), repeats))
    name = max(rates, key=rates.get)
    return rates[name], name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(TARGETS))
    p.add_argument("--convs", nargs="+", default=["mr", "gin"])
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--iters", type=int, default=3, help="timed steps of each (best is used)")
    args = p.parse_args(argv)
    print(f"batch 16, 224 px, float32, {torch.get_num_threads()} threads; rates in GMAC/s, "
          f"times in ms (best of {args.iters}); bound = reference / floor")
    header = (f"{'model':8} {'conv':5} {'mode':6} {'conv GMAC':>9} {'dist GMAC':>9} "
              f"{'rate':>6} {'floor':>7} {'+ dist':>7} {'ref':>7} {'ours':>7} "
              f"{'ours/floor':>10} {'bound':>6} {'target':>6}  reachable")
    print_table_header(header)
    for name, conv, mode in each_case(args):
        macs = step_macs(name, conv, mode)
        steps = {impl: _make_step(name, impl, mode, 16, 224, conv)
                 for impl in ("reference", "ours")}
        rate, _ = best_rate()
        times = time_alternately(steps, args.iters, time.perf_counter)
        rate = max(rate, best_rate()[0])  # before and after: the higher one
        ref, ours = min(times["reference"]), min(times["ours"])
        floor = macs["conv"] / rate
        bound = ref / floor
        target = TARGETS[name][0 if mode == "infer" else 1]
        print(f"{name:8} {conv:5} {mode:6} {macs['conv'] / 1e9:9.2f} "
              f"{macs['distance'] / 1e9:9.3f} {rate / 1e9:6.1f} {floor * 1e3:7.0f} "
              f"{(macs['conv'] + macs['distance']) / rate * 1e3:7.0f} "
              f"{ref * 1e3:7.0f} {ours * 1e3:7.0f} {ours / floor:10.2f} "
              f"{bound:5.2f}x {target:5.1f}x  {'yes' if bound >= target else 'NO'}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
