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
    python benchmarks/bench_models.py --ops --convs mr edge sage gin   # launches per step
    python benchmarks/bench_models.py --ops --ops-detail --models vig_ti --convs edge
    python benchmarks/bench_models.py --matrix --device cuda --convs mr edge sage gin \
        --warmup 2 --iters 5 --budget 130      # the GPU matrix (benchmarks/gpu_checks.sh)
    python benchmarks/bench_models.py --matrix --device cpu --models vig_ti --batches 2 \
        --img 80 --iters 1 --warmup 1 --compile-backend aot_eager   # its dry run on a CPU

``--convs`` runs each model with each graph convolution (the reference evaluates the same
aggregator literally, as the release does). ``--breakdown`` times every call of ours'
modules during inference (the Grapher's kNN edge builder with its input checks, the graph
convolution, the Grapher's fc1/fc2 projections, the FFNs; the rest is stem, pos-embed,
downsampling, head and glue) and prints each share of the forward time. ``--compile``
adds ``torch.compile(ours)`` to the alternation (compiled on the warm-up step) and prints
its speed against eager ours, with the graph-break count of ``torch._dynamo.explain``.
``--device cuda`` runs both implementations on a GPU: each step is timed from a
synchronised start to a synchronised finish, and peak memory is the CUDA allocator's.

``--ops`` counts the operators of one inference forward and one training step at batch 2 on
the ``meta`` device, which computes nothing and takes the branches a GPU takes (vig_pyg's
CPU-only fast paths and checks ask ``x.is_cpu``): every dispatched operator, and the
launches, those that run a kernel on the device (:data:`NO_KERNEL` lists the ones that
do not). ``--ops-detail`` adds, per model and aggregator, the operators whose launches differ.

``--matrix`` times, in this one process, every cell of models x ``--convs`` x ``--batches``
x ``--precisions`` (float32; bf16: ``torch.autocast`` around the forward and the loss of
both implementations) x ``--modes``, eager, then compiled cells: ``torch.compile(ours)``
(default mode) against the eager reference at ``--compiled-batches`` (default: the
largest batch; each batch size its own static compile), and with
``--compile-reference`` then the compiled reference against compiled ours. Each (model,
conv) is built once; each cell alternates the two implementations step by step as above,
after one more step of each alone for its peak memory (CUDA allocator; none on the CPU).
``--budget`` seconds: a cell that would end past it (by the longest like cell, or the
longest compile, seen so far) is reported as skipped. One JSON line per cell as it ends, a
table at the end. The zoo's models take 80 px and up (at 64 px a block's k * dilation
exceeds its nodes), so 80 px is the quick size for a dry run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import synchronizer, time_alternately  # noqa: E402
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


def _trainable(sd) -> list:
    """The reference's trained tensors: the floating-point entries less the BatchNorm
    statistics and the fixed relative positions."""
    return [t for key, t in sd.items() if t.is_floating_point()
            and not key.endswith(("running_mean", "running_var", "relative_pos"))]


def _sgd(params, x):
    import torch

    # foreach (one multi-tensor update, not one per parameter) is CUDA's default; set here
    # so that the meta device, where --ops counts, updates as CUDA does (the CPU keeps its
    # own default, False)
    return torch.optim.SGD(params, lr=1e-3, foreach=not x.is_cpu)


def _ours_step(model, mode: str, x, y, amp=contextlib.nullcontext, forward=None):
    """One step of ours on ``(x, y)``: ``infer`` is one forward in eval mode under
    ``torch.no_grad()``, ``train`` one forward + cross-entropy + backward + SGD step in train
    mode. ``forward`` (default ``model``) is what is called, e.g. ``torch.compile(model)``;
    ``amp()`` is entered around the forward and the loss (autocast)."""
    import torch
    import torch.nn.functional as F

    # not `forward or model`: a module's truth value is its len()
    forward = model if forward is None else forward
    if mode == "infer":
        model.eval()

        def step():
            with torch.no_grad(), amp():
                return forward(x)
        return step
    model.train()
    opt = _sgd([p for p in model.parameters() if p.requires_grad], x)

    def step():
        with amp():
            loss = F.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def _reference_step(R, cfg, sd, mode: str, x, y, amp=contextlib.nullcontext, forward=None):
    """:func:`_ours_step` for the reference, a function of the state dict ``sd``:
    ``forward`` defaults to ``R.ref_forward``; training trains :func:`_trainable`."""
    import torch
    import torch.nn.functional as F

    forward = R.ref_forward if forward is None else forward
    if mode == "infer":
        def step():
            with torch.no_grad(), amp():
                return forward(sd, x, cfg)
        return step
    params = _trainable(sd)
    for t in params:
        t.requires_grad_(True)
    opt = _sgd(params, x)

    def step():
        with amp():
            loss = F.cross_entropy(forward(sd, x, cfg, training=True), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def _make_step(model_name: str, impl: str, mode: str, batch: int, img: int,
               conv: str = "mr", device: str = "cpu"):
    """A fresh ``step()`` of ``impl`` (``ours``, ``compiled``: ``torch.compile(ours)``,
    ``checkpointed``: ours after ``set_grad_checkpointing(True)``, or ``reference``) in
    ``mode`` (``infer`` or ``train``)."""
    import torch

    R, cfg, sd, model, x, y = _setup(model_name, batch, img, conv=conv, device=device)
    if impl == "reference":
        del model
        return _reference_step(R, cfg, sd, mode, x, y)
    if impl == "checkpointed":
        model.set_grad_checkpointing(True)
    forward = torch.compile(model) if impl == "compiled" else model
    return _ours_step(model, mode, x, y, forward=forward)


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


# Operators that launch no kernel on a GPU, by name (any overload). A view or alias of a
# tensor changes only sizes, strides or the storage offset on the host (view, reshape's
# _unsafe_view, permute, expand, slice, select, squeeze_ ...); detach and alias share the
# storage; the empty* and new_empty* allocations take memory from the caching allocator and
# write nothing. Everything else dispatched on a device tensor counts as a launch (even a
# copy_ or clone of a few bytes is a kernel), and so does an operator the GPU would run as
# several kernels (a foreach update is one dispatch, a few multi-tensor launches).
NO_KERNEL = frozenset({
    "view", "_unsafe_view", "_reshape_alias", "alias", "as_strided", "detach", "lift_fresh",
    "permute", "transpose", "t", "expand", "slice", "select", "narrow", "unfold", "diagonal",
    "unsqueeze", "squeeze", "unsqueeze_", "squeeze_", "unbind", "split", "split_with_sizes",
    "chunk", "view_as_real", "view_as_complex",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
})


def _touches_device(tree) -> bool:
    """Whether any tensor in ``tree`` (arguments and results of an operator) is off the
    CPU: an operator on host tensors only (the reference's schedule, a CPU scalar read)
    runs on the host whatever device the model is on, and launches nothing there."""
    import torch
    from torch.utils._pytree import tree_leaves

    return any(isinstance(t, torch.Tensor) and not t.is_cpu for t in tree_leaves(tree))


def _op_counter():
    """A ``TorchDispatchMode`` whose ``dispatched`` and ``launches`` count operators by
    name (``aten.add.Tensor``) while it is active: every operator, and those that run a
    kernel on the device (not in :data:`NO_KERNEL`, with a tensor off the CPU).

    A backward pass started inside the mode is counted: on ``meta`` (as on the CPU) the
    autograd engine runs it on the calling thread, and on a GPU's device thread it installs
    the caller's thread-local state, dispatch modes included. :func:`count_ops` checks that
    a training step's count holds backward operators."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dispatched = collections.Counter()
            self.launches = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = str(func)
            self.dispatched[name] += 1
            if (func.overloadpacket.__name__ not in NO_KERNEL
                    and _touches_device((args, kwargs, out))):
                self.launches[name] += 1
            return out
    return OpCounter()


def count_ops(model_name: str, conv: str, img: int = 224, batch: int = 2,
              device: str = "meta") -> dict:
    """``{(mode, impl): counter}`` (:func:`_op_counter`) of one step of ours and of the
    reference in each mode (``infer``: an eval forward under ``torch.no_grad()``; ``train``:
    forward + cross-entropy + backward + SGD step), after a first step that fills what a
    model builds once (relative-position tables). On ``meta`` no value exists, so no
    data-dependent branch can be taken: the operators are those of the GPU's code path."""
    R, cfg, sd, model, x, y = _setup(model_name, batch, img, conv=conv, device=device)
    counts = {}
    for mode in ("infer", "train"):
        for impl in ("ours", "reference"):
            step = (_ours_step(model, mode, x, y) if impl == "ours" else
                    _reference_step(R, cfg, sd, mode, x, y))
            step()
            counter = _op_counter()
            with counter:
                step()
            if mode == "train" and not any("backward" in n for n in counter.dispatched):
                raise RuntimeError(f"{impl}'s training step of {model_name} ({conv}) "
                                   f"counted no backward operator: the counter missed "
                                   f"the autograd engine's thread; count under "
                                   f"torch.autograd.set_multithreading_enabled(False)")
            counts[mode, impl] = counter
    return counts


def print_ops(args) -> int:
    """The operator table of ``--ops`` (``--ops-detail``: each model's differing operators
    too); 1 where ours launches more than the reference anywhere."""
    print(f"Operators per step, batch 2, {args.img} px, counted on the meta device (the "
          f"code path a GPU takes, nothing computed; SGD's update as CUDA runs it, foreach)."
          f"\nlaunches: the operators that run a kernel on the device (all dispatched "
          f"operators less views, aliases, allocations and host-only ones, bench_models."
          f"NO_KERNEL); all: every dispatched operator. ratio = ours / reference; the "
          f"target is at most 1.00 in launches.")
    group = f"{'ours':>6} {'ref':>6} {'ratio':>6}"
    header = (f"{'model':8} {'conv':5} | {'infer launches':^20} | {'train launches':^20} | "
              f"{'infer all':^20} | {'train all':^20}")
    print(header)
    print(f"{'':14} | " + " | ".join([group] * 4))
    print("-" * len(header))
    ok = True
    details = []
    for name in args.models:
        for conv in args.convs:
            c = count_ops(name, conv, args.img)
            cells, over = [], False
            for kind in ("launches", "dispatched"):
                for mode in ("infer", "train"):
                    ours = sum(getattr(c[mode, "ours"], kind).values())
                    ref = sum(getattr(c[mode, "reference"], kind).values())
                    cells.append(f"{ours:6d} {ref:6d} {ours / ref:6.2f}")
                    over |= kind == "launches" and ours > ref
            ok &= not over
            print(f"{name:8} {conv:5} | " + " | ".join(cells)
                  + ("  (more launches than the reference)" if over else ""), flush=True)
            if args.ops_detail:
                details.append((name, conv, c))
    for name, conv, c in details:
        for mode in ("infer", "train"):
            ours, ref = c[mode, "ours"].launches, c[mode, "reference"].launches
            diff = sorted(((ours[op] - ref[op], op) for op in set(ours) | set(ref)
                           if ours[op] != ref[op]), key=lambda d: (-d[0], d[1]))
            print(f"\n{name} {conv} {mode}: launches by operator where ours and the "
                  f"reference differ (ours - reference)")
            for d, op in diff:
                print(f"  {op:45} {ours[op]:6d} {ref[op]:6d} {d:+6d}")
    return 0 if ok else 1


# --matrix's targets (the issue's, checked on a GPU only): eager at batch 128 at least the
# reference's speed; compiled ours at least 1.5x the eager reference
EAGER_TARGET = (128, 1.0)
COMPILED_TARGET = 1.5
# seconds a compile is taken to cost before this process has seen one (torch.compile of
# vig_ti or pvig_ti on a GPU, default mode: about 30-60 s; training compiles the backward too)
COMPILE_GUESS_S = {"infer": 45.0, "train": 90.0}
CELL_FIELDS = ("model", "conv", "batch", "precision", "compiled", "mode")


def _matrix_cells(args) -> list:
    """``(model, conv, batch, precision, compiled, mode)`` in run order: every eager cell;
    then compiled ours against the eager reference (``compiled="ours"``) at
    ``--compiled-batches``, for each model every conv in the first precision and mode
    (orders as given), then the next mode, then the next precision (so a short budget keeps
    every aggregator in the first ones); then, with ``--compile-reference``, compiled ours
    against the compiled reference (``"both"``, ours' compiles reused) in the same order."""
    import itertools

    batches = (args.compiled_batches if args.compiled_batches is not None
               else [max(args.batches)])
    cells = [(m, c, b, p, "eager", mode) for m, c, b, p, mode in itertools.product(
        args.models, args.convs, args.batches, args.precisions, args.modes)]
    for kind in ("ours",) + (("both",) if args.compile_reference else ()):
        cells += [(m, c, b, p, kind, mode) for m, p, mode, c, b in itertools.product(
            args.models, args.precisions, args.modes, args.convs, batches)]
    return cells


def _peak_mb(step, sync, device: str):
    """The CUDA allocator's peak during one ``step()`` above what was allocated before it
    (weights, inputs, the last step's gradients); ``None`` off CUDA (the resident size of a
    process that has run other cells says nothing of one step)."""
    import torch

    if _device_type(device) != "cuda":
        return None
    sync()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync()
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def _device_type(device: str) -> str:
    import torch

    return torch.device(device).type


def _matrix_target(cell, device: str):
    """The speed-up over the reference that ``cell`` must reach, or ``None``."""
    _, _, batch, _, compiled, _ = cell
    if _device_type(device) != "cuda":
        return None
    if compiled == "eager":
        return EAGER_TARGET[1] if batch == EAGER_TARGET[0] else None
    return COMPILED_TARGET if compiled == "ours" else None


def _matrix_cell(cell, b: dict, ref_compiled, args, sync) -> dict:
    """Times one cell: the first step of each implementation alone (it compiles what is
    compiled; its seconds are ``first_s``), one more of each alone for ``peak_mb``, then
    ``--warmup`` - 1 untimed and ``--iters`` timed alternating steps. ``b``: the built
    (model, conv) of :func:`matrix`; ``graphs``: the graphs Dynamo compiled in each first
    step (1 for a model that compiles whole)."""
    import torch
    from torch._dynamo.utils import counters

    _, _, batch, precision, compiled, mode = cell
    x, y = b["x"][:batch], b["y"][:batch]
    if precision == "float32":
        amp = contextlib.nullcontext
    else:
        def amp():
            return torch.autocast(_device_type(args.device), dtype=torch.bfloat16)
    if compiled != "eager" and b["compiled"] is None:
        b["compiled"] = torch.compile(b["model"], backend=args.compile_backend)
    steps = {
        "ours": _ours_step(b["model"], mode, x, y, amp,
                           b["compiled"] if compiled != "eager" else None),
        "reference": _reference_step(b["R"], b["cfg"], b["sd"], mode, x, y, amp,
                                     ref_compiled if compiled == "both" else None),
    }
    first, graphs = {}, {}
    for name, step in steps.items():
        before = counters["stats"]["unique_graphs"]
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        first[name] = time.perf_counter() - t0
        graphs[name] = counters["stats"]["unique_graphs"] - before
    peak = {name: _peak_mb(step, sync, args.device) for name, step in steps.items()}

    def clock():
        sync()
        return time.perf_counter()
    times = time_alternately(steps, args.iters, clock, warmup=max(0, args.warmup - 1))
    best = {name: batch / min(t) for name, t in times.items()}
    target = _matrix_target(cell, args.device)
    ratio = best["ours"] / best["reference"]
    return {**dict(zip(CELL_FIELDS, cell)), "img_s": _rounded(best, 1),
            "img_s_median": {n: round(batch / statistics.median(t), 1)
                             for n, t in times.items()},
            "ratio": round(ratio, 3), "target": target,
            "met": None if target is None else ratio >= target,
            "peak_mb": {n: None if v is None else round(v, 1) for n, v in peak.items()},
            "first_s": _rounded(first, 2), "graphs": graphs}


def _rounded(values: dict, digits: int) -> dict:
    return {name: round(v, digits) for name, v in values.items()}


def matrix(args) -> int:
    """``--matrix``: every cell of :func:`_matrix_cells` in this process (a JSON line each,
    then a table); 1 if a cell failed or missed its target."""
    started = time.perf_counter()
    import torch
    import torch._dynamo.config as dynamo_config

    # every (model, conv, batch, precision, mode) compiled here is its own cache entry on
    # the same forward code: past the default limit (8) Dynamo would run the rest eager
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, 256)
            break
    # a second batch size would otherwise recompile with a symbolic batch (other kernels
    # than the static graph a fixed-batch run compiles)
    dynamo_config.automatic_dynamic_shapes = False
    sync = synchronizer(args.device)
    compiled_note = (f"compiled: torch.compile(ours, backend={args.compile_backend}) "
                     f"against the eager reference"
                     + ("; both: compiled ours against torch.compile(the reference's "
                        "forward)" if args.compile_reference else ""))
    print(f"--matrix on {_where(args)}, {args.img} px; each cell: ours and the reference "
          f"alternating, {args.iters} timed steps after {args.warmup} warm-up (the first "
          f"alone, first s: compiles); img/s from the best step; {compiled_note}; bf16: "
          f"torch.autocast around forward and loss; peak MB: the CUDA allocator's peak of "
          f"one step alone above what was allocated before it; targets (GPU only): eager "
          f"at batch {EAGER_TARGET[0]} >= {EAGER_TARGET[1]:.2f}x, compiled >= "
          f"{COMPILED_TARGET:.2f}x the eager reference"
          + (f"; budget {args.budget:.0f} s" if args.budget else ""), flush=True)
    built, results, ref_compiled = {}, [], None
    # the longest eager cell of each (mode, batch), compile of each mode and model build
    # seen so far: what the budget expects the next like one to take
    longest, compile_s, build_s, compiled_keys = {}, {}, 0.0, set()
    for cell in _matrix_cells(args):
        model_name, conv, batch, precision, compiled, mode = cell
        key = (model_name, conv, batch, precision, mode)
        compiles = {"eager": 0, "ours": 0 if key in compiled_keys else 1,
                    "both": 1 + (key not in compiled_keys)}[compiled]
        need = (longest.get((mode, batch), 0.0)
                + compiles * compile_s.get(mode, COMPILE_GUESS_S[mode])
                + (build_s if (model_name, conv) not in built else 0.0))
        left = args.budget - (time.perf_counter() - started) if args.budget else None
        if left is not None and need > left:
            res = dict(zip(CELL_FIELDS, cell),
                       skipped=f"budget: about {need:.0f} s needed, {max(left, 0):.0f} s left")
            results.append(res)
            print(json.dumps(res), flush=True)
            continue
        try:
            if (model_name, conv) not in built:
                t0 = time.perf_counter()
                R, cfg, sd, model, x, y = _setup(model_name, max(
                    args.batches + (args.compiled_batches or [])), args.img, conv=conv,
                    device=args.device)
                built[model_name, conv] = dict(R=R, cfg=cfg, sd=sd, model=model, x=x, y=y,
                                               compiled=None)
                build_s = max(build_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            if compiled == "both" and ref_compiled is None:
                R = built[model_name, conv]["R"]
                ref_compiled = torch.compile(R.ref_forward, backend=args.compile_backend)
            res = _matrix_cell(cell, built[model_name, conv], ref_compiled, args, sync)
        except Exception as exc:  # one failed cell is reported; the others still run
            traceback.print_exc()
            if isinstance(exc, torch.OutOfMemoryError):
                torch.cuda.empty_cache()
            message = str(exc).strip()
            res = dict(zip(CELL_FIELDS, cell), error=type(exc).__name__ + (
                f": {message.splitlines()[0][:300]}" if message else ""))
        cell_s = time.perf_counter() - t0
        res["cell_s"] = round(cell_s, 2)
        if "error" not in res:
            if compiled != "eager":
                compiled_keys.add(key)
                compiler = "reference" if compiled == "both" else "ours"
                compile_s[mode] = max(compile_s.get(mode, 0.0), res["first_s"][compiler])
            else:
                longest[mode, batch] = max(longest.get((mode, batch), 0.0), cell_s)
        results.append(res)
        print(json.dumps(res), flush=True)
    print_matrix(results)
    bad = [r for r in results if "error" in r or r.get("met") is False]
    return 1 if bad else 0


def print_matrix(results: list) -> None:
    """The table of :func:`matrix`'s results (skipped and failed cells with their reason)."""
    header = (f"{'model':8} {'conv':5} {'batch':>5} {'prec':7} {'compiled':8} {'mode':5} "
              f"{'ours img/s':>10} {'ref img/s':>10} {'ratio':>6} {'target':>6} "
              f"{'ours MB':>8} {'ref MB':>8} {'first s ours/ref':>16} {'graphs':>6}")
    print()
    print(header)
    print("-" * len(header))

    def mb(v):
        return f"{v:8.0f}" if v is not None else f"{'-':>8}"
    for r in results:
        head = (f"{r['model']:8} {r['conv']:5} {r['batch']:5d} {r['precision']:7} "
                f"{r['compiled']:8} {r['mode']:5} ")
        if "img_s" not in r:
            print(head + (f"skipped ({r['skipped']})" if "skipped" in r
                          else f"FAILED: {r['error']}"))
            continue
        target = "" if r["target"] is None else f"{r['target']:.2f}x"
        print(head + f"{r['img_s']['ours']:10.1f} {r['img_s']['reference']:10.1f} "
              f"{r['ratio']:5.2f}x {target:>6} {mb(r['peak_mb']['ours'])} "
              f"{mb(r['peak_mb']['reference'])} "
              f"{r['first_s']['ours']:8.1f}/{r['first_s']['reference']:<7.1f} "
              f"{sum(r['graphs'].values()):6d}" + ("  (target missed)" if r["met"] is False
                                                   else ""))
    print("compiled: eager = both eager; ours = compiled ours vs the eager reference; both = "
          "compiled vs compiled. img/s: best step; ratio = ours / reference; first s: each "
          "one's first step (with its compile); graphs: the graphs Dynamo compiled in the "
          "cell (1 per compiled model without graph breaks)")


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
                   help="count the operators of one inference forward and one training "
                        "step at batch 2 on the meta device (a GPU's code path), ours and "
                        "reference (what bounds a small model's speed on a GPU: launches)")
    p.add_argument("--ops-detail", action="store_true",
                   help="with --ops: also each operator whose launches differ")
    p.add_argument("--matrix", action="store_true",
                   help="time every cell of models x convs x batches x precisions x modes, "
                        "eager and compiled, in this one process (see the docstring)")
    p.add_argument("--batches", nargs="+", type=int, default=[16, 128],
                   help="--matrix: batch sizes")
    p.add_argument("--precisions", nargs="+", default=["float32", "bf16"],
                   choices=["float32", "bf16"], help="--matrix: bf16 is autocast")
    p.add_argument("--compiled-batches", nargs="*", type=int,
                   help="--matrix: batch sizes of the compiled cells (default: the largest "
                        "of --batches; none: no compiled cells)")
    p.add_argument("--compile-reference", action="store_true",
                   help="--matrix: then compiled ours against the compiled reference too")
    p.add_argument("--compile-backend", default="inductor",
                   help="--matrix: torch.compile's backend (aot_eager: a quick dry run)")
    p.add_argument("--budget", type=float, default=0,
                   help="--matrix: seconds; cells that would end later are skipped")
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
        return print_ops(args)
    if args.matrix:
        return matrix(args)

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
