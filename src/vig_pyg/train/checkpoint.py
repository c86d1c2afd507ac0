"""What a training checkpoint adds to model weights: the resume side.

A training checkpoint is a plain dict that ``torch.load(weights_only=True)`` accepts::

    {"format": "vig_pyg.train", "version": 2,
     "run": {...},                                  # RunState.state_dict(): counters, evals
     "model": state_dict, "ema": state_dict | None,
     "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "rng": {"python": LongTensor, "numpy": LongTensor, "torch": ByteTensor, "cuda": [...]},
     "config": {...}, "model_name": str, "num_classes": int, "world_size": int}

Reading the file (and reading model weights out of it) is ``vig_pyg.models.checkpoint``'s
job, the library's one reader; writing goes through its ``atomic_save``. This module keeps
what is about resuming: the RNG states as tensors, the format tag, and finding the file of
a run directory.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from ..models.checkpoint import atomic_save, load_file  # noqa: F401  (the one writer / reader)
from .config import ConfigError

FORMAT = "vig_pyg.train"
VERSION = 2


# --------------------------------------------------------------------------- RNG states
def _python_state_to_tensor(state) -> torch.Tensor:
    version, internal, gauss = state
    gauss_flag = 0 if gauss is None else 1
    gauss_bits = 0 if gauss is None else int(np.array(gauss, dtype=np.float64).view(np.int64))
    return torch.tensor([version, gauss_flag, gauss_bits, *internal], dtype=torch.int64)


def _python_state_from_tensor(t: torch.Tensor):
    v = t.tolist()
    gauss = None if v[1] == 0 else float(np.array(v[2], dtype=np.int64).view(np.float64))
    return (v[0], tuple(v[3:]), gauss)


def _numpy_state_to_tensor(state) -> torch.Tensor:
    name, keys, pos, has_gauss, cached = state
    assert name == "MT19937"
    cached_bits = int(np.array(cached, dtype=np.float64).view(np.int64))
    head = [pos, has_gauss, cached_bits]
    return torch.tensor(head + keys.astype(np.int64).tolist(), dtype=torch.int64)


def _numpy_state_from_tensor(t: torch.Tensor):
    v = t.tolist()
    keys = np.array(v[3:], dtype=np.int64).astype(np.uint32)
    cached = float(np.array(v[2], dtype=np.int64).view(np.float64))
    return ("MT19937", keys, v[0], v[1], cached)


def capture_rng() -> dict:
    """Python, NumPy, torch (and CUDA) generator states, all as tensors."""
    out = {"python": _python_state_to_tensor(random.getstate()),
           "numpy": _numpy_state_to_tensor(np.random.get_state()),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng(state: dict) -> None:
    random.setstate(_python_state_from_tensor(state["python"]))
    np.random.set_state(_numpy_state_from_tensor(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in states])


# --------------------------------------------------------------------------- files
def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def resolve_resume_path(path: str) -> str:
    """A run directory or a checkpoint file -> the checkpoint file."""
    if os.path.isdir(path):
        cand = os.path.join(path, "checkpoints", "last.pt")
        if not os.path.exists(cand):
            raise ConfigError(f"no checkpoint in run directory '{path}' (expected {cand}): "
                              "pass a checkpoint file or a run directory with checkpoints/last.pt")
        return cand
    if not os.path.exists(path):
        raise ConfigError(f"resume path '{path}' does not exist: pass a run directory or its "
                          "checkpoints/last.pt")
    return path


def read_training_checkpoint(resume: str) -> tuple[str, dict]:
    """``--resume RUN_OR_FILE`` -> (checkpoint path, the loaded training checkpoint)."""
    path = resolve_resume_path(resume)
    state = load_file(path)
    if not is_training_checkpoint(state):
        raise ConfigError(f"'{path}' is not a vig-pyg training checkpoint (model weights only?): "
                          "to start from weights use --set model.checkpoint=PATH instead of --resume")
    return path, state
