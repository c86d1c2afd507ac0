"""Images/s of vig_pyg's models against the dense official-style reference, same run.

For each model (default vig_ti and pvig_ti), batch 16 at 224 px, float32 on the CPU:

* inference: eval mode, ``torch.no_grad()``, one forward;
* training step: train mode, forward + cross-entropy + backward + SGD step.

"ours" is ``vig_pyg.models.create_model`` (channels-last, PyG patch graphs); "reference" is
``tests/official_reference.py`` run in float32 on the same weights (a random state dict in
the official layout, loaded into ours through ``create_model(checkpoint=...)``): NCHW
tensors, ``[B, C, N, k]`` gathers, subtract-then-max, like the release (which
docs/architecture.md records at vig_ti 16.8 / 6.9 img/s and pvig_ti 10.5 / 4.3 img/s on
this machine).

Timing: for each (model, mode) one process holds both implementations and alternates
them step by step, so a disturbance from other work on the machine hits both alike; the
best of ``--iters`` steps each is reported (the least disturbed), with the median beside
it. Peak memory: every (model, mode, implementation) runs once more in its own process,
and its ``ru_maxrss`` growth over the resident size before the first step is reported.

    python benchmarks/bench_models.py                     # full run (a few minutes)
    python benchmarks/bench_models.py --iters 2 --models vig_ti
    python benchmarks/bench_models.py --threads 1 --clock cpu   # on a busy machine
    python benchmarks/bench_models.py --profile vig_ti    # torch.profiler table of ours
    python benchmarks/bench_models.py --convs mr edge sage gin --no-memory   # every aggregator
    python benchmarks/bench_models.py --breakdown --modes infer   # where inference time goes
    python benchmarks/bench_models.py --compile --convs mr        # + torch.compile vs eager
    python benchmarks/bench_models.py --keep-memory   # freed memory kept (bench_allocator.py)
    python benchmarks/bench_models.py --device cuda --warmup 3 --iters 20   # on a GPU
    python benchmarks/bench_models.py --ops --convs mr gin   # operators (launches) per forward

``--convs`` runs each model with each graph convolution (the reference evaluates the same
aggregator literally, as the release does). ``--breakdown`` times every call of ours'
modules during inference (the Grapher's kNN edge builder with its input checks, the graph
convolution, the Grapher's fc1/fc2 projections, the FFNs; the rest is stem, pos-embed,
downsampling, head and glue) and prints each share of the forward time. ``--compile``
adds ``torch.compile(ours)`` to the alternation (compiled on the warm-up step) and prints
its speed against eager ours, with the graph-break count of ``torch._dynamo.explain``.
``--device cuda`` runs both implementations on a GPU: each step is timed from a
synchronised start to a synchronised finish, and peak memory is the CUDA allocator's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import synchronizer  # noqa: E402
ROOT = os.path.dirname(HERE)
TARGETS = {  # (inference, training) speed-up over the reference
    "vig_ti": (2.5, 2.0),
    "pvig_ti": (2.5, 2.0),
}
OFFICIAL = {"vig_ti": (16.8, 6.9), "pvig_ti": (10.5, 4.3)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _setup(model_name: str, batch: int, img: int, seed: int = 0, conv: str = "mr",
           device: str = "cpu"):
    import torch

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import official_reference as R

    from vig_pyg.models import create_model

    cfg = R.make_cfg(model_name, conv=conv)
    sd = R.random_official_state_dict(cfg, seed=seed, dtype=torch.float32)
    model = create_model(model_name, conv=conv, checkpoint=sd)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, img, img, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    sd = type(sd)((key, t.to(device)) for key, t in sd.items())
    return R, cfg, sd, model.to(device), x.to(device), y.to(device)


def _make_step(model_name: str, impl: str, mode: str, batch: int, img: int,
               conv: str = "mr", device: str = "cpu"):
    import torch
    import torch.nn.functional as F

    R, cfg, sd, model, x, y = _setup(model_name, batch, img, conv=conv, device=device)
    if impl == "compiled":
        model = torch.compile(model)
    if impl == "reference":
        del model
        params = []
        for key, t in sd.items():
            trainable = (t.is_floating_point() and not key.endswith(("running_mean",
                         "running_var", "relative_pos")))
            if mode == "train" and trainable:
                t.requires_grad_(True)
                params.append(t)
        if mode == "infer":
            def step():
                with torch.no_grad():
                    return R.ref_forward(sd, x, cfg)
        else:
            opt = torch.optim.SGD(params, lr=1e-3)

            def step():
                loss = F.cross_entropy(R.ref_forward(sd, x, cfg, training=True), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss
    else:
        if mode == "infer":
            model.eval()

            def step():
                with torch.no_grad():
                    return model(x)
        else:
            model.train()
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)

            def step():
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss
    return step


def time_worker(model_name: str, mode: str, conv: str, compiled: str, batch: int, img: int,
                iters: int, warmup: int, threads: int, clock: str, device: str) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    timer = time.perf_counter if clock == "wall" else time.process_time
    sync = synchronizer(device)
    impls = ("reference", "ours") + (("compiled",) if compiled == "1" else ())
    steps = {impl: _make_step(model_name, impl, mode, batch, img, conv, device)
             for impl in impls}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {impl: [] for impl in steps}
    for _ in range(iters):
        for impl, step in steps.items():
            sync()
            t0 = timer()
            step()
            sync()
            times[impl].append(timer() - t0)
    out = {"times": times, "threads": torch.get_num_threads()}
    if compiled == "1":
        out["graph_breaks"] = graph_breaks(model_name, mode, conv, batch, img, device)
    return out


def graph_breaks(model_name: str, mode: str, conv: str, batch: int, img: int,
                 device: str = "cpu") -> int:
    """Graph breaks of ``torch._dynamo.explain`` on one forward of ours."""
    import torch

    _, _, _, model, x, _ = _setup(model_name, batch, img, conv=conv, device=device)
    model.train(mode == "train")
    torch._dynamo.reset()
    return torch._dynamo.explain(model)(x).graph_break_count


def breakdown_worker(model_name: str, conv: str, batch: int, img: int, iters: int,
                     threads: int, clock: str, device: str) -> dict:
    """Seconds per inference forward spent in each part of ours: the median over ``iters``
    forwards of each part and of the whole (a shared machine's bursts of load land on one
    forward or one part, and move a mean more than a median). On a GPU every hook
    synchronises first, so each part is charged its own kernels (and the forward is slower
    than unhooked: the shares, not the total, are the result)."""
    import torch

    from vig_pyg.conv.base import GrapherConv
    from vig_pyg.graph.builders import GraphBuilder
    from vig_pyg.models import grapher as grapher_mod
    from vig_pyg.models.ffn import FFN

    if threads:
        torch.set_num_threads(threads)
    clock_timer = time.perf_counter if clock == "wall" else time.process_time
    sync = synchronizer(device)

    def timer():
        sync()
        return clock_timer()

    _, _, _, model, x, _ = _setup(model_name, batch, img, conv=conv, device=device)
    model.eval()
    spent = {"graph": 0.0, "aggregation": 0.0, "projections": 0.0, "FFN": 0.0}
    started = {}

    def timed(part):
        def pre(module, args):
            started[id(module)] = timer()

        def post(module, args, out):
            spent[part] += timer() - started.pop(id(module))
        return pre, post

    for m in model.modules():
        part = ("aggregation" if isinstance(m, GrapherConv) else "FFN" if isinstance(m, FFN)
                else "graph" if isinstance(m, GraphBuilder) else None)
        if isinstance(m, grapher_mod.Grapher):
            for proj in (m.fc1, m.fc2):
                pre, post = timed("projections")
                proj.register_forward_pre_hook(pre)
                proj.register_forward_hook(post)
        if part:
            pre, post = timed(part)
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
    forwards = []
    with torch.no_grad():
        model(x)
        for _ in range(iters):
            for key in spent:
                spent[key] = 0.0
            t0 = timer()
            model(x)
            total = timer() - t0
            forwards.append(dict(spent, rest=total - sum(spent.values()), total=total))
    median = {key: statistics.median(f[key] for f in forwards) for key in forwards[0]}
    return {"total": median.pop("total"), "parts": median}


def memory_worker(model_name: str, impl: str, mode: str, conv: str, batch: int,
                  img: int, device: str) -> dict:
    """Peak memory of two steps above what was held before them: resident size on the CPU,
    ``torch.cuda.max_memory_allocated`` on a GPU."""
    step = _make_step(model_name, impl, mode, batch, img, conv, device)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated() / 2 ** 20
        torch.cuda.reset_peak_memory_stats()
        step()
        step()
        return {"peak_mb": torch.cuda.max_memory_allocated() / 2 ** 20 - base}
    base = _rss_mb()
    step()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak - base}


def _run(args, *worker_args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *worker_args,
           *(["--keep-memory"] if args.keep_memory else []),
           "--batch", str(args.batch), "--img", str(args.img), "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--clock", args.clock,
           "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"bench_models: the worker for {' '.join(worker_args)} failed "
                 f"(exit {out.returncode}); its last output:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def count_ops(model_name: str, conv: str, img: int) -> dict:
    """ATen operators one inference forward dispatches, ours and the reference (batch 2, on
    the CPU with vig_pyg's CPU-only fast paths off, the ops a GPU would launch as kernels,
    except that the CPU folds BatchNorm into the convolutions: five small operators per
    convolution that a GPU runs as one BatchNorm)."""
    import collections

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from vig_pyg import fast_paths

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func)] += 1
            return func(*args, **(kwargs or {}))

    R, cfg, sd, model, x, _ = _setup(model_name, 2, img, conv=conv)
    model.eval()
    counts = {}
    with fast_paths.disabled(*fast_paths.NATIVE, "fused_conv",
                             "grouped_linear"), torch.no_grad():
        for name, fn in (("ours", lambda: model(x)),
                         ("reference", lambda: R.ref_forward(sd, x, cfg))):
            fn()
            with Count() as c:
                fn()
            counts[name] = sum(c.ops.values())
    return counts


def profile(model_name: str, batch: int, img: int, mode: str, conv: str = "mr",
            device: str = "cpu") -> None:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile as tprofile

    _, _, _, model, x, y = _setup(model_name, batch, img, conv=conv, device=device)
    if mode == "infer":
        model.eval()
        fn = lambda: model(x)  # noqa: E731
        ctx = torch.no_grad
    else:
        model.train()
        fn = lambda: F.cross_entropy(model(x), y).backward()  # noqa: E731
        ctx = torch.enable_grad
    with ctx():
        fn()
        gpu = device.startswith("cuda")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with tprofile(activities=activities) as prof:
            fn()
            synchronizer(device)()
    sort = "self_cuda_time_total" if gpu else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25))


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(TARGETS))
    p.add_argument("--convs", nargs="+", default=["mr"], metavar="CONV",
                   help="graph convolutions to run each model with (mr edge sage gin)")
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--iters", type=int, default=4, help="timed iterations (best is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--keep-memory", action="store_true",
                   help="run every worker with freed memory kept in the process "
                        "(timing.keep_freed_memory; both implementations)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (default: torch's choice, all cores)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time (default); cpu: process CPU time, which other "
                        "work on a busy machine disturbs far less; use with --threads 1")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda[:N]: both implementations run there, steps "
                        "are timed to the GPU's finish, peak memory is the allocator's")
    p.add_argument("--breakdown", action="store_true",
                   help="print where ours' inference time goes instead of the speed table")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile(ours) against eager ours")
    p.add_argument("--ops", action="store_true",
                   help="count the operators of one inference forward, ours and reference "
                        "(what bounds a small model's speed on a GPU: each is a launch)")
    p.add_argument("--profile", metavar="MODEL", help="profile ours instead of benchmarking")
    p.add_argument("--profile-mode", default="infer", choices=["infer", "train"])
    return p.parse_args(argv)


def _worker(args) -> int:
    kind, *rest = args.worker
    if args.keep_memory:
        from timing import keep_freed_memory
        keep_freed_memory()
    if kind == "time":
        out = time_worker(*rest, args.batch, args.img, args.iters, args.warmup,
                          args.threads, args.clock, args.device)
    elif kind == "breakdown":
        out = breakdown_worker(*rest, args.batch, args.img, args.iters, args.threads,
                               args.clock, args.device)
    else:
        out = memory_worker(*rest, args.batch, args.img, args.device)
    print(json.dumps(out))
    return 0


def print_breakdown(args) -> None:
    parts = ("graph", "aggregation", "projections", "FFN", "rest")
    print(f"ours, inference, batch {args.batch}, {args.img} px, {_where(args)}, "
          f"{args.clock} clock: share of the forward time (each part's median over "
          f"{args.iters} forwards against the forward's median; every module call timed)")
    # the graph's own milliseconds too: its share moves with how fast the host runs the rest
    header = (f"{'model':8} {'conv':5} {'ms':>7} " + " ".join(f"{p:>11}" for p in parts)
              + f" {'graph ms':>9}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        for conv in args.convs:
            res = _run(args, "breakdown", name, conv)
            shares = " ".join(f"{100 * res['parts'][p] / res['total']:10.1f}%" for p in parts)
            print(f"{name:8} {conv:5} {1e3 * res['total']:7.1f} {shares} "
                  f"{1e3 * res['parts']['graph']:9.1f}", flush=True)


def _where(args) -> str:
    """The device in words, for the tables' first line."""
    if args.device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(args.device)} (torch {torch.__version__})"
    return f"CPU ({os.cpu_count()} cores, {args.threads or 'all'} thread(s))"


def main(argv=None) -> int:
    args = _parse(argv)
    if args.worker:
        return _worker(args)
    if args.profile:
        profile(args.profile, args.batch, args.img, args.profile_mode, args.convs[0],
                args.device)
        return 0
    if args.breakdown:
        print_breakdown(args)
        return 0
    if args.ops:
        print("ATen operators per inference forward (count_ops: CPU, fast paths off)")
        for name in args.models:
            for conv in args.convs:
                c = count_ops(name, conv, args.img)
                print(f"{name:8} {conv:5} ours {c['ours']:5d}  reference {c['reference']:5d}",
                      flush=True)
        return 0

    print(f"batch {args.batch}, {args.img} px, float32, {_where(args)}, {args.clock} clock; "
          f"{args.iters} alternating steps per implementation after {args.warmup} warm-up")
    header = (f"{'model':8} {'conv':5} {'mode':6} {'reference img/s':>16} {'ours img/s':>13} "
              f"{'speed-up':>8} {'target':>6} {'ref peak MB':>11} {'our peak MB':>11}"
              + ("  compiled img/s  vs eager  breaks" if args.compile else ""))
    print(header)
    print("-" * len(header))
    ok = True
    for name in args.models:
        for conv in args.convs:
            for mode in args.modes:
                ok &= _report(args, name, conv, mode)
    print("img/s: best step (median in brackets); speed-up from the best steps")
    if args.device == "cpu":
        print("(docs/architecture.md, official code on this machine: "
              + ", ".join(f"{k} {v[0]} / {v[1]} img/s" for k, v in OFFICIAL.items()) + ")")
    return 0 if ok else 1


def _report(args, name: str, conv: str, mode: str) -> bool:
    res = _run(args, "time", name, mode, conv, "1" if args.compile else "0")
    best = {impl: args.batch / min(t) for impl, t in res["times"].items()}
    med = {impl: args.batch / statistics.median(t) for impl, t in res["times"].items()}
    ratio = best["ours"] / best["reference"]
    mem = ({impl: _run(args, "memory", name, impl, mode, conv)["peak_mb"]
            for impl in ("reference", "ours")} if not args.no_memory else
           {"reference": float("nan"), "ours": float("nan")})
    target = TARGETS.get(name, (None, None))[0 if mode == "infer" else 1]
    met = target is None or ratio >= target
    extra = ""
    if args.compile:
        extra = (f"  {best['compiled']:6.1f} ({med['compiled']:5.1f}) "
                 f"{best['compiled'] / best['ours']:7.2f}x {res['graph_breaks']:6d}")
    print(f"{name:8} {conv:5} {mode:6} {best['reference']:7.1f} ({med['reference']:5.1f}) "
          f"{best['ours']:5.1f} ({med['ours']:5.1f}) {ratio:7.2f}x "
          f"{('' if target is None else f'{target:.1f}x'):>6} "
          f"{mem['reference']:11.0f} {mem['ours']:11.0f}{extra}"
          f"{'' if met else '  (target missed)'}", flush=True)
    return met


if __name__ == "__main__":
    sys.exit(main())
