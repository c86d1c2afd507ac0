"""Shared pieces of the experiments tests: a tiny training config and study files."""
from __future__ import annotations

import os
import subprocess
import sys

import yaml

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# a 16-channel, 1-block ViG on 8x8 digits nodes: a run is a few hundred milliseconds of compute
TINY = {
    "model": {"name": "vig_ti", "conv": "mr", "k": 4, "channels": 16, "depth": 1, "stem_stride": 4},
    "data": {"dataset": "digits", "img_size": 32, "batch_size": 64, "eval_batch_size": 512,
             "test_fraction": 0.8},
    "aug": {"auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "re_prob": 0.0, "hflip": 0.0},
    "ema": {"enabled": False},
    "sched": {"warmup_epochs": 0},
    "train": {"epochs": 1, "max_steps": 0, "threads": "1", "amp": "none"},
    "log": {"tensorboard": False, "progress": False},
}


def write_study(tmp_path, grid, seeds=(0,), reference=None, extra_set=None, name="tiny",
                base=None) -> str:
    base_path = tmp_path / "base.yaml"
    base_path.write_text(yaml.safe_dump(base or TINY))
    study = {"name": name, "base": "base.yaml", "grid": grid, "seeds": list(seeds)}
    if reference is not None:
        study["reference"] = reference
    if extra_set:
        study["set"] = extra_set
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return str(path)


def env(**extra) -> dict:
    e = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
             OMP_NUM_THREADS="1")
    e.update(extra)
    return e


def sweep_cmd(*args) -> list:
    return [sys.executable, "-m", "vig_pyg", "sweep", *args]


def run_sweep(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_cmd(*args), env=env(), capture_output=True, text=True, **kw)
