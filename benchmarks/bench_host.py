"""Host time per forward and per training step on the GPU's code path, ours against the
reference, measured on the CPU.

A small ViG on a GPU waits on its host: Python, the dispatcher and the launches, not the
kernels. This measures that part here. The model keeps vig_ti's or pvig_ti's structure
(blocks, stages, k and the dilations that fit) with its channels divided by ``--shrink``
(default 8), batch 2 at 224 px (the kNN's distances and selections keep their size:
the same work in both implementations), so each other kernel has
next to nothing to compute; ours runs with
``vig_pyg.fast_paths.disabled(*GPU_CHOICES)``, the branches a GPU takes. Both
implementations alternate step by step in one process with one thread, and the best of
``--iters`` steps each is reported, with the ratio reference / ours (above 1: ours spends
less host time).

    python benchmarks/bench_host.py                       # vig_ti and pvig_ti, mr edge sage gin
    python benchmarks/bench_host.py --models vig_ti --convs mr --iters 20
    python benchmarks/bench_host.py --profile vig_ti      # where ours' host time goes
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(ROOT, "tests")]

ARCH = {"vig_ti": dict(channels=192), "pvig_ti": dict(channels=[48, 96, 240, 384])}


def _shrunk(name: str, shrink: int) -> dict:
    ch = ARCH[name]["channels"]
    # keep every width a multiple of 4 (the projections' groups) and of 2 (edge's halves)
    fit = (lambda c: max(8, c // shrink // 8 * 8))
    return dict(channels=[fit(c) for c in ch] if isinstance(ch, list) else fit(ch))


def make_steps(name: str, conv: str, mode: str, shrink: int, batch: int = 2, img: int = 224):
    """``{impl: step}`` for ours (GPU choices) and the reference, on the same weights
    (``bench_models``' steps)."""
    import torch

    import bench_models as B
    import official_reference as R
    from vig_pyg import fast_paths
    from vig_pyg.models import create_model

    over = _shrunk(name, shrink)
    cfg = R.make_cfg(name, conv=conv, img_size=img)
    cfg.update(over)
    sd = R.random_official_state_dict(cfg, seed=0, dtype=torch.float32)
    model = create_model(name, conv=conv, checkpoint=sd, img_size=img, **over)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    step = B._ours_step(model, mode, x, y)

    def ours():
        with fast_paths.disabled(*fast_paths.GPU_CHOICES):
            return step()
    return {"ours": ours, "reference": B._reference_step(R, cfg, sd, mode, x, y)}


def measure(steps: dict, iters: int) -> dict:
    for step in steps.values():
        step()  # warm-up: caches, allocator
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(iters):
        for impl, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[impl] = min(best[impl], time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(ARCH), choices=list(ARCH))
    p.add_argument("--convs", nargs="+", default=["mr", "edge", "sage", "gin"])
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--shrink", type=int, default=8)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--profile", metavar="MODEL", choices=list(ARCH))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        step = make_steps(args.profile, args.convs[0], args.modes[0], args.shrink)["ours"]
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return 0
    print(f"host ms per step, GPU code path on the CPU, channels / {args.shrink}, batch 2, "
          f"224 px, 1 thread, best of {args.iters}")
    print(f"{'model':8} {'conv':5} {'mode':6} {'ours':>8} {'ref':>8} {'ref/ours':>9}")
    for name in args.models:
        for conv in args.convs:
            for mode in args.modes:
                t = measure(make_steps(name, conv, mode, args.shrink), args.iters)
                print(f"{name:8} {conv:5} {mode:6} {1e3 * t['ours']:8.2f} "
                      f"{1e3 * t['reference']:8.2f} {t['reference'] / t['ours']:9.2f}x",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
