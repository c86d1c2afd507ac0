"""Where a sweep's attempts run: ``local`` (subprocesses, ``--jobs N`` at once), ``slurm``
(a submitit array job, one task per run) and ``submitit-local`` (submitit's local executor:
the Slurm code path without a scheduler).

An executor takes a list of tasks (see :func:`runner.attempt`) and reports through
``events(name, "running" | result)``; a task that dies without a result (killed, out of
memory) is reported failed with its exit status.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import time

from .study import StudyError

EXECUTORS = ("local", "slurm", "submitit-local")


def check_executor(kind: str) -> None:
    """Fail early (nothing started) where the executor cannot run here."""
    if kind not in EXECUTORS:
        raise StudyError(f"--executor {kind} is not one of {', '.join(EXECUTORS)}")
    if kind == "local":
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise StudyError(f"--executor {kind} needs submitit: pip install submitit "
                         "(or use --executor local)") from None
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise StudyError("--executor slurm: Slurm is not available here (no sbatch on PATH); "
                         "run on a Slurm login node or use --executor local")


def cores_per_job(jobs: int) -> int:
    """The machine's cores (those this process may use) divided among ``jobs`` runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, jobs))


def _failed(message: str) -> dict:
    return {"state": "failed", "action": "new", "error": message}


def run_local(tasks: list, events, jobs: int = 1) -> None:
    """Each task in ``python -m vig_pyg.experiments.runner``, ``jobs`` at a time; with
    several jobs each gets ``cores // jobs`` threads (OMP_NUM_THREADS and train.threads)."""
    threads = cores_per_job(jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if jobs > 1 else dict(os.environ)

    def one(task):
        if jobs > 1:
            task = {**task, "extra": task["extra"] + [f"train.threads={threads}"]}
        with open(task["task_file"], "w") as fh:
            json.dump(task, fh)
        if os.path.exists(task["result_file"]):
            os.remove(task["result_file"])
        events(task["name"], "running")
        with open(task["log_file"], "a") as log:
            code = subprocess.call([sys.executable, "-m", "vig_pyg.experiments.runner",
                                    task["task_file"]], stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
        try:
            with open(task["result_file"]) as fh:
                result = json.load(fh)
        except (OSError, ValueError):
            result = _failed(f"process ended with status {code} before reporting (killed?); "
                             f"see {task['log_file']}")
        events(task["name"], result)

    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one, t) for t in tasks]:
            future.result()


def _submitit_executor(kind: str, folder: str, settings: dict, jobs: int):
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="local" if kind != "slurm" else None)
    params = {"timeout_min": int(settings.get("time", 60 * 24)),
              "cpus_per_task": int(settings.get("cpus", cores_per_job(jobs))),
              "gpus_per_node": int(settings.get("gpus", 0)), "nodes": 1, "tasks_per_node": 1}
    if settings.get("mem_gb"):
        params["mem_gb"] = float(settings["mem_gb"])
    if kind == "slurm":
        for key in ("partition", "account", "qos", "constraint"):
            if settings.get(key):
                params[f"slurm_{key}"] = settings[key]
        params["slurm_array_parallelism"] = max(1, jobs)
    executor.update_parameters(**params)
    return executor


def run_submitit(tasks: list, events, kind: str, folder: str, settings: dict,
                 jobs: int = 1, poll_s: float = 1.0) -> None:
    """One array job (``map_array``), one task per run; results collected as they end."""
    from .runner import attempt

    executor = _submitit_executor(kind, folder, settings, jobs)
    submitted = executor.map_array(attempt, tasks)
    for task in tasks:
        events(task["name"], "running")
    pending = dict(zip((t["name"] for t in tasks), submitted))
    while pending:
        for name, job in list(pending.items()):
            if not job.done():
                continue
            del pending[name]
            try:
                result = job.result()
            except Exception as exc:  # the task died (killed, timeout, out of memory)
                text = str(exc).strip().splitlines()
                result = _failed(f"submitit job {job.job_id}: {text[-1] if text else exc!r}")
            events(name, result)
        if pending:
            time.sleep(poll_s)


def execute(kind: str, tasks: list, events, jobs: int, folder: str, settings: dict) -> None:
    if not tasks:
        return
    if kind == "local":
        run_local(tasks, events, jobs)
    else:
        run_submitit(tasks, events, kind, folder, settings, jobs)
