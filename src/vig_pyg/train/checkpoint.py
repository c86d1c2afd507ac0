"""Training checkpoints: atomic writes, ``weights_only`` loading, RNG states as tensors.

A training checkpoint is a plain dict that ``torch.load(weights_only=True)`` accepts::

    {"format": "vig_pyg.train", "version": 1,
     "model": state_dict, "ema": state_dict | None,
     "optimizer": ..., "scheduler": ..., "scaler": ... | None,
     "epoch": e, "step_in_epoch": s, "global_step": g,   # the next batch to train is (e, s)
     "rng": {"python": LongTensor, "numpy": LongTensor, "torch": ByteTensor, "cuda": [...]},
     "config": {...}, "metrics": {...}, "elapsed_s": float, "world_size": int}

Files are written to a temporary name in the same directory, flushed, fsync'ed and moved
into place with ``os.replace``, so a crash (even SIGKILL) leaves either the old or the new
file, never a torn one.
"""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from typing import Any

import numpy as np
import torch

from ..models.checkpoint import atomic_save  # noqa: F401  (re-exported for the engine)
from .config import ConfigError

FORMAT = "vig_pyg.train"
VERSION = 1


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
# one atomic writer for the whole library: models.checkpoint.atomic_save


def load_file(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors for the usual problems."""
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint '{path}' does not exist: check the path")
    if os.path.isdir(path):
        raise ConfigError(f"checkpoint '{path}' is a directory: pass a .pt/.pth file "
                          "(a run's checkpoint is RUN/checkpoints/last.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text:
            what = next((l.strip() for l in text.splitlines() if "Unsupported global" in l), "")
            raise ConfigError(f"checkpoint '{path}' holds objects other than tensors and plain "
                              f"containers ({what[:120]}): re-save it as a plain state_dict") from None
        detail = next((l.strip() for l in text.splitlines() if l.strip().startswith("Unsupported")),
                      text.strip().splitlines()[0] if text.strip() else "unpickling failed")
        raise ConfigError(f"checkpoint '{path}' is truncated or corrupt ({detail[:120]}): "
                          "re-download or re-create it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"checkpoint '{path}' is truncated or corrupt ({first[:120]}): "
                          "re-download or re-create it") from None


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


def strip_prefix(state: dict, prefix: str = "module.") -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_model_state(model: torch.nn.Module, state: dict, source: str, model_name: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the mismatch."""
    state = strip_prefix(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches, e.g. {k} {tuple(state[k].shape)} vs "
                         f"{tuple(own[k].shape)}")
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        raise ConfigError(f"checkpoint '{source}' does not fit model '{model_name}' "
                          f"({'; '.join(parts)}): use the model config it was trained with "
                          "(model.name, model.overrides, data.img_size, number of classes)")
    model.load_state_dict(state, strict=True)
