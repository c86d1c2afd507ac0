"""Training-mode BatchNorm + activation (+ residual): compiled (``native/_batch_norm.c``)
against torch's modules, on the maps a ViG training step normalises.

For every shape (vig_ti's stem maps, its FFN's hidden map, the Grapher's 192-channel maps,
gin's grouped projection over 3136 rows, and two small maps, where the compiled pass is
forced on to show why maps under ``MIN_ELEMENTS`` take the modules) and activation, the
two run alternately call by call (the fast path ``batch_norm`` on and off), forward alone
and forward + backward; the best of ``--repeats`` is printed with torch / compiled.

    python benchmarks/bench_batch_norm.py
    python benchmarks/bench_batch_norm.py --repeats 30 --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from timing import time_alternately, without

SHAPES = [  # (what, [B, C, H, W], activation, residual)
    ("vig_ti stem 1", (16, 24, 112, 112), "gelu", False),
    ("vig_ti stem 2", (16, 48, 56, 56), "gelu", False),
    ("vig_ti stem 3", (16, 96, 28, 28), "gelu", False),
    ("FFN hidden", (16, 768, 14, 14), "gelu", False),
    ("gin projection", (1, 384, 3136, 1), "gelu", False),
    ("Grapher fc1", (16, 192, 14, 14), "none", False),
    ("fc2 + residual", (16, 192, 14, 14), "none", True),
    ("small map", (2, 64, 7, 7), "gelu", False),
    ("small map", (8, 128, 7, 7), "gelu", False),
]


def compare(what: str, shape, act_name: str, residual: bool, repeats: int) -> None:
    from vig_pyg.layers.batch_norm import batch_norm_act

    g = torch.Generator().manual_seed(0)
    z = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)
    r = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(*shape, generator=g).contiguous(memory_format=torch.channels_last)
    leaf = z.clone().requires_grad_(True)
    bn = nn.BatchNorm2d(shape[1])
    act = nn.GELU() if act_name == "gelu" else None
    res = r if residual else None

    def forward():
        with torch.no_grad():
            batch_norm_act(bn, z, act, res)

    def both():
        leaf.grad = None
        batch_norm_act(bn, leaf, act, res).backward(grad)

    steps = {(on, mode): without(fn, *(() if on else ("batch_norm",))) for on in (False, True)
             for mode, fn in (("fwd", forward), ("both", both))}
    t = {key: 1e3 * min(v) for key, v in
         time_alternately(steps, repeats, time.perf_counter, warmup=2).items()}
    name = f"{what}, {act_name}{' + residual' if residual else ''}"
    print(f"{name:<34}{str(list(shape)):>20} {t[False, 'fwd']:8.2f} {t[True, 'fwd']:9.2f} "
          f"{t[False, 'fwd'] / t[True, 'fwd']:6.2f}x {t[False, 'both']:10.2f} "
          f"{t[True, 'both']:9.2f} {t[False, 'both'] / t[True, 'both']:6.2f}x", flush=True)


def main(argv=None) -> int:
    from vig_pyg import native

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vig_pyg.layers import batch_norm
    batch_norm.MIN_ELEMENTS = 0  # time the compiled pass on the small maps too (the rule's why)
    if not native.available():
        print("the native library could not be built here: nothing to compare")
        return 0
    print(f"training BatchNorm + activation, float32, {torch.get_num_threads()} thread(s); "
          f"best of {args.repeats} alternating calls (ms); ratio = torch / compiled")
    print(f"{'map':<34}{'shape':>20} {'fwd torch':>8} {'compiled':>9} {'ratio':>7} "
          f"{'fwd+bwd torch':>10} {'compiled':>9} {'ratio':>7}")
    for what, shape, act, residual in SHAPES:
        compare(what, shape, act, residual, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
