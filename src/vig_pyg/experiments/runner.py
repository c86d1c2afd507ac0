"""One attempt at one run of a sweep, in its own process (a local subprocess or a
submitit task), so that its peak memory is its own.

The run's state decides what an attempt does: ``summary.json`` present -> nothing (done);
``checkpoints/last.pt`` present -> ``fit(resume=RUN)`` (interrupted); otherwise a fresh
``fit`` (a directory left without a checkpoint holds nothing worth keeping and is cleared).
After a finished run, ``resources.json`` records its peak memory.

    python -m vig_pyg.experiments.runner TASK.json    # what the local executor starts
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import traceback


def run_state(run_dir: str) -> str:
    """done (summary.json exists), interrupted (a checkpoint exists) or new."""
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        return "done"
    if os.path.exists(os.path.join(run_dir, "checkpoints", "last.pt")):
        return "interrupted"
    return "new"


def peak_memory_mb() -> dict:
    """This process's peak resident memory (``ru_maxrss``, KiB on Linux) and, on CUDA, the
    peak of allocated GPU memory, in MiB."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def attempt(task: dict) -> dict:
    """Run (or resume) ``task['run_dir']``; returns {"state": done|failed, "error", "action"}.
    ``task``: run_dir, base, overrides (the run's), extra (settings of this execution only:
    threads, progress bars)."""
    from ..train.training import fit

    run_dir = task["run_dir"]
    state = run_state(run_dir)
    if state == "done":
        return {"state": "done", "action": "skipped", "error": None}
    try:
        if state == "interrupted":
            fit(None, task.get("extra", []), resume=run_dir)
        else:
            if os.path.isdir(run_dir):
                shutil.rmtree(run_dir)
            fit(task["base"], list(task["overrides"]) + list(task.get("extra", [])),
                output=run_dir)
    except Exception as exc:  # recorded, never raised: the other runs go on
        traceback.print_exc()
        text = str(exc).strip().splitlines()
        return {"state": "failed", "action": state,
                "error": f"{type(exc).__name__}: {text[0] if text else ''}"}
    with open(os.path.join(run_dir, "resources.json"), "w") as fh:
        json.dump(peak_memory_mb(), fh)
    return {"state": "done", "action": "resumed" if state == "interrupted" else "trained",
            "error": None}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as fh:
        task = json.load(fh)
    result = attempt(task)
    with open(task["result_file"], "w") as fh:
        json.dump(result, fh)
    return 0 if result["state"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
