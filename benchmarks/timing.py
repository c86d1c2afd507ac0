"""Shared by the benchmarks that compare model variants in one process: the variants run
alternately step by step (so a disturbance from other work hits all alike), and the best of
the timed steps is reported beside the median, as a ratio to the first variant."""
from __future__ import annotations

import statistics


def time_alternately(steps: dict, iters: int, timer, warmup: int = 1) -> dict:
    """``{name: step}`` -> ``{name: [seconds of each timed call]}``."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(iters):
        for name, step in steps.items():
            t0 = timer()
            step()
            times[name].append(timer() - t0)
    return times


def without(fn, *paths: str):
    """``fn`` as a step run with the fast paths ``paths`` off
    (:func:`vig_pyg.fast_paths.disabled`; none: as it is), for :func:`time_alternately`."""
    from vig_pyg import fast_paths

    def run():
        with fast_paths.disabled(*paths):
            return fn()
    return run


def switched(owner, name: str, value, fn):
    """``fn`` as a step run with ``owner.name`` set to ``value`` and restored after (a
    module constant such as a size bound, for :func:`time_alternately`)."""
    def run():
        before = getattr(owner, name)
        setattr(owner, name, value)
        try:
            fn()
        finally:
            setattr(owner, name, before)
    return run


def print_ratios(times: dict, base: str, batch: int, title: str, label: str) -> None:
    """One row per variant: best ms, median ms, best / best of ``base``, images/s."""
    ref = min(times[base])
    print(f"\n{title}: best of {len(times[base])} (median), ratio = time / {base} time")
    print(f"{label:<26} {'ms':>9} {'median':>9} {'ratio':>6} {'img/s':>7}")
    for name, t in times.items():
        best = min(t)
        print(f"{name:<26} {best * 1e3:9.1f} {statistics.median(t) * 1e3:9.1f} "
              f"{best / ref:6.2f} {batch / best:7.1f}")


def add_step_arguments(p) -> None:
    """The options shared by the benchmarks that time whole-model steps."""
    p.add_argument("--model", default="vig_ti")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time; cpu: process CPU time, which other work on a "
                        "busy machine disturbs far less (use with --threads 1)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda[:N]; on a GPU each reading of the timer "
                        "waits for the kernels queued before it")


def synchronizer(device):
    """What makes a timer read the device's finished work: ``torch.cuda.synchronize`` on a
    GPU (kernels run asynchronously), nothing on the CPU."""
    import torch

    if torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def step_setup(args):
    """``(timer, images, labels)`` for those options (threads set, header printed; images
    and labels on ``--device``, and there the timer synchronises before it reads)."""
    import time

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.img, args.img, generator=g).to(args.device)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(args.device)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    sync = synchronizer(x.device)

    def timer():
        sync()
        return clock()
    where = (f"float32 on {torch.cuda.get_device_name(x.device)}" if x.is_cuda else
             f"float32 on the CPU, {torch.get_num_threads()} thread(s)")
    print(f"{args.model}, batch {args.batch}, {args.img} px, {where}, {args.clock} clock")
    return timer, x, y


def keep_freed_memory() -> bool:
    """Makes this process keep the memory it frees (glibc's ``mallopt``; ``False`` on other
    C libraries): blocks up to 1 GiB come from the heap instead of their own ``mmap``, and
    the heap is never trimmed, so a step's fresh tensors reuse pages that are already mapped
    rather than faulting new ones in. ``bench_allocator.py`` shows what that does to each
    implementation: the reference's large ``[B, C, N, k]`` gathers fault heavily, ours little,
    and ours' training steps came out slower with it, so vig_pyg itself does not do this."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return False
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    trim, top_pad, mmap = -1, -2, -3  # M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD
    # a trim threshold of -1 is read as the largest size: never trim
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (trim, -1), (top_pad, 256 << 20), (mmap, 1 << 30)))


def print_table_header(header: str) -> None:
    """``header`` and a rule under it."""
    print(header)
    print("-" * len(header))


def each_case(args):
    """``(model, conv, mode)`` for every combination of ``--models``, ``--convs``, ``--modes``."""
    import itertools

    return itertools.product(args.models, args.convs, args.modes)
