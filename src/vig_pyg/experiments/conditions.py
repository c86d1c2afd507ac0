"""The conditions a study ran under: machine, commit, float precision and device.

The sweep records the machine and the package's commit in its marker when it starts
(:func:`sweep_conditions`); each run's ``summary.json`` has its precision and device. The
report states them in one line (:func:`conditions_line`) so that a table is never read
without them. Recording never fails a sweep: what cannot be found is None ("unknown").
"""
from __future__ import annotations

import os
import platform
import subprocess
from collections import Counter
from typing import Optional

GIT_TIMEOUT_S = 10
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model(path: str = "/proc/cpuinfo") -> Optional[str]:
    """The first "model name" of ``path`` (Linux), else None."""
    try:
        with open(path) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip() or None
    except OSError:
        return None
    return None


def machine_info() -> dict:
    """{arch, cpu, cores, torch}: what decides speed and bf16 numerics on CPU."""
    import torch

    return {"arch": platform.machine() or None, "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch": str(torch.__version__)}  # a str subclass yaml cannot write


def _git(args: list, cwd: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):  # no git, a hung git: the sweep goes on
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(path: str = PACKAGE_DIR) -> Optional[str]:
    """``git rev-parse --short HEAD`` of the repository holding ``path``, with "+dirty"
    when ``git status --porcelain`` lists anything; None outside a git repository."""
    head = _git(["rev-parse", "--short", "HEAD"], path)
    if not head:
        return None
    dirty = _git(["status", "--porcelain"], path)
    return head + ("+dirty" if dirty else "")


def merged(old, new, had_marker: bool = True):
    """A marker field after another sweep invocation: the value, or the distinct values of
    every invocation in first-seen order when a continuation ran under different ones. A
    marker without the field (``old`` None) ran under unknown conditions: None is kept."""
    if not had_marker:
        return new
    seen = old if isinstance(old, list) else [old]
    if new in seen:
        return old
    return seen + [new]


def sweep_conditions(previous: Optional[dict], executor: str) -> dict:
    """The marker's ``machine``, ``commit`` and ``executor`` for this invocation, merged
    with those of the marker it replaces (``previous``)."""
    now = {"machine": machine_info(), "commit": git_commit(), "executor": executor}
    return {k: merged((previous or {}).get(k), v, previous is not None) for k, v in now.items()}


def _machine_text(m) -> str:
    if not isinstance(m, dict):
        return "unknown"
    cores = f"{m['cores']} cores" if m.get("cores") else None
    torch = f"torch {m['torch']}" if m.get("torch") else None
    return ", ".join(str(v) for v in (m.get("arch"), m.get("cpu"), cores, torch) if v) or "unknown"


def _several(values: list, text) -> str:
    """One value as itself; several as all of them, said to differ."""
    if len(values) == 1:
        return text(values[0])
    return "differs between invocations: " + "; ".join(text(v) for v in values)


def _per_run(rows: list, key: str) -> str:
    """The runs' values of ``key``; when they disagree, each with its number of runs."""
    counts = Counter(r.get(key) or "unknown" for r in rows if r["status"] == "done")
    if not counts:
        return "unknown"
    if len(counts) == 1:
        return next(iter(counts))
    return "differs between runs: " + ", ".join(
        f"{v} ({n} run{'' if n == 1 else 's'})" for v, n in sorted(counts.items()))


def conditions_line(marker: dict, rows: list) -> str:
    """``Conditions: machine ...; commit ...; precision ...; device ...``."""
    def listed(key):
        v = marker.get(key)
        return v if isinstance(v, list) else [v]

    machine = _several(listed("machine"), _machine_text)
    executors = [e for e in listed("executor") if e and e != "local"]
    if executors:  # the machine is the one that submitted; runs went elsewhere
        machine += f" (submitting host; runs on {', '.join(executors)})"
    commit = _several(listed("commit"), lambda c: c or "unknown")
    return (f"Conditions: machine {machine}; commit {commit}; precision "
            f"{_per_run(rows, 'precision')}; device {_per_run(rows, 'device')}.")
