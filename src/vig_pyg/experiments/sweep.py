"""The resumable sweep: every run of a study, each an ordinary run directory.

Layout of the sweep directory (``--output``, default ``runs/<study name>``)::

    study.yaml          the study as run (its name marks the directory as this study's),
                        with the machine, commit and executor it ran under (:mod:`.conditions`)
    status.json         per run: state (done, failed), attempts, error
    runs/NAME/          one training run each (config.yaml, metrics.csv, summary.json, ...)
    logs/NAME.log       the run's console output
    results.csv, table.md, *.png   the report (``vig-pyg report DIR``)

Running a sweep again continues it: finished runs (``summary.json``) are skipped,
interrupted ones (``checkpoints/last.pt``) resume, the others start. A run that fails is
tried once more (resuming if it left a checkpoint); if it fails again its error goes to
``status.json`` and the other runs go on.
"""
from __future__ import annotations

import json
import os
import threading

import yaml

from .conditions import sweep_conditions
from .executors import check_executor, execute
from .runner import run_state
from .study import Study, StudyError

ATTEMPTS = 2
MARKER = "study.yaml"


def check_output(study: Study, output: str) -> None:
    """The directory must be new, empty, or this study's own (same name)."""
    if not os.path.exists(output):
        return
    if not os.path.isdir(output):
        raise StudyError(f"--output '{output}' is a file; pick a directory")
    marker = os.path.join(output, MARKER)
    if os.path.exists(marker):
        with open(marker) as fh:
            other = (yaml.safe_load(fh) or {}).get("name")
        if other != study.name:
            raise StudyError(f"--output '{output}' holds study '{other}', not '{study.name}': "
                             "pick another --output")
    elif os.listdir(output):
        raise StudyError(f"--output '{output}' is not empty and holds no study: pick a new "
                         "or empty directory")


def read_status(output: str) -> dict:
    path = os.path.join(output, "status.json")
    if not os.path.exists(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def write_status(output: str, status: dict) -> None:
    path = os.path.join(output, "status.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(status, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def write_marker(study: Study, output: str, executor: str) -> dict:
    """``study.yaml``: the study plus this invocation's machine, commit and executor (merged
    with those of the marker it replaces: a continued sweep lists every one it ran under)."""
    path = os.path.join(output, MARKER)
    previous = None
    if os.path.exists(path):
        with open(path) as fh:
            previous = yaml.safe_load(fh) or {}
    marker = {**study.to_dict(), **sweep_conditions(previous, executor)}
    with open(path, "w") as fh:
        yaml.safe_dump(marker, fh, sort_keys=False)
    return marker


def plan(study: Study, output: str) -> list:
    """[(run, state)] with state done / interrupted / new, from the run directories."""
    return [(r, run_state(os.path.join(output, "runs", r.name))) for r in study.runs()]


def _task(study: Study, output: str, run, extra: list) -> dict:
    return {"name": run.name, "run_dir": os.path.join(output, "runs", run.name),
            "base": study.base, "overrides": run.overrides, "extra": list(extra),
            "task_file": os.path.join(output, "logs", run.name + ".task.json"),
            "result_file": os.path.join(output, "logs", run.name + ".result.json"),
            "log_file": os.path.join(output, "logs", run.name + ".log")}


class Progress:
    """tqdm bar over the runs, with done / running / failed counts; keeps status.json."""

    def __init__(self, output: str, total: int, done: int, status: dict):
        from tqdm import tqdm

        self.output, self.status, self.lock = output, status, threading.Lock()
        self.running, self.failed = set(), set()
        self.bar = tqdm(total=total, initial=done, desc="runs", unit="run", dynamic_ncols=True)
        self._postfix()

    def _postfix(self):
        self.bar.set_postfix_str(f"done {self.bar.n}, running {len(self.running)}, "
                                 f"failed {len(self.failed)}")

    def __call__(self, name: str, event) -> None:
        with self.lock:
            if event == "running":
                self.running.add(name)
                self.failed.discard(name)
            else:
                self.running.discard(name)
                entry = self.status.setdefault(name, {"attempts": 0})
                entry["attempts"] = entry.get("attempts", 0) + 1
                entry.update(state=event["state"], error=event["error"], action=event["action"])
                if event["state"] == "done":
                    self.bar.update(1)
                else:
                    self.failed.add(name)
                write_status(self.output, self.status)
            self._postfix()

    def close(self):
        self.bar.close()


def run_sweep(study: Study, output: str, executor: str = "local", jobs: int = 1) -> dict:
    """Run every unfinished run (twice at most); returns status.json's content."""
    check_executor(executor)
    check_output(study, output)
    os.makedirs(os.path.join(output, "logs"), exist_ok=True)
    os.makedirs(os.path.join(output, "runs"), exist_ok=True)
    write_marker(study, output, executor)
    runs = plan(study, output)
    status = {n: s for n, s in read_status(output).items() if n in {r.name for r, _ in runs}}
    for run, state in runs:
        if state == "done":
            status.setdefault(run.name, {"attempts": 0})["state"] = "done"
        else:  # a new invocation gives every unfinished run its attempts again
            status[run.name] = {"attempts": 0, "state": "pending", "error": None}
    write_status(output, status)
    todo = [r for r, state in runs if state != "done"]
    progress = Progress(output, len(runs), len(runs) - len(todo), status)
    extra = ["log.progress=false"]
    try:
        for _ in range(ATTEMPTS):
            tasks = [_task(study, output, r, extra) for r in todo
                     if status[r.name]["state"] != "done"]
            execute(executor, tasks, progress, jobs, os.path.join(output, "submitit"),
                    study.sweep)
    finally:
        progress.close()
    return status


def describe_plan(study: Study, output: str) -> str:
    """``--dry-run``: one line per run (state, name, overrides); nothing is written."""
    lines = [f"study {study.name}: {len(study.runs())} runs "
             f"({len(study.configurations())} configurations x {len(study.seeds)} seeds), "
             f"base {study.base}, output {output}"]
    exists = os.path.isdir(os.path.join(output, "runs"))
    for run, state in plan(study, output) if exists else [(r, "new") for r in study.runs()]:
        lines.append(f"  {state:<11} {run.name}  {' '.join(run.overrides)}")
    return "\n".join(lines)
