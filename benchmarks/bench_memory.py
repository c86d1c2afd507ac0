"""Peak memory of one training step: ours, ours with gradient checkpointing, the reference.

For each model (default vig_ti, pvig_ti, pvig_s), batch 64 at 224 px, float32: one training
step (train mode, forward + cross-entropy + backward + SGD step), built by
``benchmarks/bench_models.py``'s ``_make_step`` on the same random weights in the official
layout:

* ours: ``vig_pyg.models.create_model``;
* checkpointed: ours after ``model.set_grad_checkpointing(True)`` (each block keeps only
  its input for backward and is recomputed there);
* reference: ``tests/official_reference.py`` (the release's dense NCHW code).

Every (model, implementation) runs in a fresh process. Peak: on the CPU the growth of
``ru_maxrss`` over the resident size just before the step (the high-water mark is reset
then, through ``/proc/self/clear_refs``, so that building the model does not count); with
``--device cuda`` the growth of ``torch.cuda.max_memory_allocated`` over
``torch.cuda.memory_allocated`` before the step. The gradients (one copy of the parameters)
are part of both.

    python benchmarks/bench_memory.py                         # the table (a few minutes)
    python benchmarks/bench_memory.py --models pvig_s --batch 32
    python benchmarks/bench_memory.py --device cuda

Targets: ours at most the reference's peak for every model; checkpointed pvig_s at most
60 % of plain ours. The exit status is 1 when one is missed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_models import _make_step, _rss_mb  # noqa: E402

IMPLS = ("reference", "ours", "checkpointed")
MODELS = ("vig_ti", "pvig_ti", "pvig_s")
CHECKPOINTED_TARGET = {"pvig_s": 0.60}  # checkpointed / ours, at most


def _reset_peak_rss() -> bool:
    """Resets the resident high-water mark (what ``ru_maxrss`` reports) to the current
    resident size; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_worker(model_name: str, impl: str, batch: int, img: int, device: str) -> dict:
    """Peak memory of one training step above what was held before it (MB)."""
    step = _make_step(model_name, impl, "train", batch, img, device=device)
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return {"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2 ** 20,
                "reset": True}
    reset = _reset_peak_rss()
    base = _rss_mb()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak - base, "reset": reset}


def _run(args, model_name: str, impl: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model_name, impl,
           "--batch", str(args.batch), "--img", str(args.img), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"bench_memory: the worker for {model_name} {impl} failed (exit "
                 f"{out.returncode}); its last output:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.worker:
        print(json.dumps(memory_worker(*args.worker, args.batch, args.img, args.device)))
        return 0
    what = ("CUDA allocator peak" if args.device.startswith("cuda")
            else "resident-size (ru_maxrss) growth")
    print(f"one training step (forward + cross-entropy + backward + SGD), batch {args.batch}, "
          f"{args.img} px, float32, {args.device}: peak memory above the state before the "
          f"step ({what}), MB; each in a fresh process")
    header = (f"{'model':8} {'reference':>10} {'ours':>10} {'checkpointed':>12} "
              f"{'ours/ref':>9} {'ckpt/ours':>10}  targets")
    print(header)
    print("-" * len(header))
    ok, unreset = True, False
    for name in args.models:
        res = {impl: _run(args, name, impl) for impl in IMPLS}
        unreset |= not all(r["reset"] for r in res.values())
        mb = {impl: r["peak_mb"] for impl, r in res.items()}
        vs_ref = mb["ours"] / mb["reference"]
        vs_ours = mb["checkpointed"] / mb["ours"]
        met = [vs_ref <= 1.0]
        note = "ours <= ref " + ("met" if met[0] else "MISSED")
        if name in CHECKPOINTED_TARGET:
            met.append(vs_ours <= CHECKPOINTED_TARGET[name])
            note += (f"; ckpt <= {CHECKPOINTED_TARGET[name]:.0%} of ours "
                     + ("met" if met[-1] else "MISSED"))
        ok &= all(met)
        print(f"{name:8} {mb['reference']:10.0f} {mb['ours']:10.0f} {mb['checkpointed']:12.0f} "
              f"{vs_ref:9.2f} {vs_ours:10.2f}  {note}", flush=True)
    if unreset:
        print("(the resident high-water mark could not be reset here: a peak while building "
              "the model may be counted)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
