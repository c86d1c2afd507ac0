"""Checkpoints: the official release's files and vig_pyg's own format.

vig_pyg's format (written by :func:`save_checkpoint`) is a plain dict that
``torch.load(weights_only=True)`` reads::

    {"format": "vig_pyg", "version": 1, "model_name": "pvig_ti",
     "config": {...ViGConfig fields...}, "state_dict": {...our keys...}, **extra}

Official files hold the state dict itself, or wrap it under ``state_dict``,
``state_dict_ema`` or ``model`` (``vig_pyg.train`` checkpoints: ``model`` / ``ema``),
possibly with a ``module.`` prefix. Our module names follow the release, so the key map is
one rule: the release wraps the graph convolution in a ``gconv`` attribute
(``backbone.i.0.graph_conv.gconv.nn.0.weight``), ours is the convolution itself
(``backbone.i.0.graph_conv.nn.0.weight``).
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VigPygError

FORMAT = "vig_pyg"
VERSION = 1
_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema", "ema")
_EMA_FIRST = ("state_dict_ema", "model_ema", "ema", "state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(VigPygError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


# ---------------------------------------------------------------------------- reading
def load_file(path) -> Any:
    """The one place the library reads a checkpoint file: ``torch.load(weights_only=True)``
    on the CPU, with a one-line :class:`CheckpointError` for a missing, truncated, corrupt
    or unsafe (pickled objects) file. Every reader (models, training, evaluation,
    detection, diagnostics) goes through here, and reads each file once."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory: pass a .pt/.pth file (a "
                              "training run keeps RUN/checkpoints/last.pt and RUN/model.pt)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist: check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses pickled objects by naming an "Unsupported global"; anything
        # else it cannot unpickle is a damaged file
        unsafe = next((line.strip() for line in str(exc).splitlines()
                       if "Unsupported global" in line), None)
        if unsafe:
            raise CheckpointError(
                f"checkpoint {path!r} holds objects other than tensors and plain containers, "
                f"which torch.load(weights_only=True) refuses ({unsafe[:120]}): re-save its "
                "state dict") from None
        first = (str(exc).strip().splitlines() or ["unpickling failed"])[0][:120]
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt ({first}): "
                              "re-download or re-create it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError,
            IndexError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt ({first}): "
                              "re-download or re-create it") from None


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()))


def _strip_prefixes(state: dict) -> dict:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_checkpoint(source, use_ema: bool = False) -> tuple[dict, dict]:
    """A path (or loaded dict) -> ``(state_dict, meta)``; ``meta`` has ``model_name`` and
    ``config`` for vig_pyg files, else is empty. ``use_ema`` prefers the EMA weights of a
    file that has both."""
    obj = source if isinstance(source, Mapping) else load_file(source)
    where = "the given dict" if isinstance(source, Mapping) else repr(os.fspath(source))
    meta: dict = {}
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {where} holds a {type(obj).__name__}, not a dict")
    if obj.get("format") == FORMAT:
        meta = {"model_name": obj.get("model_name"), "config": obj.get("config")}
        state = obj.get("state_dict")
    elif _is_state_dict(obj):
        state = obj
    else:
        state = next((obj[k] for k in (_EMA_FIRST if use_ema else _WRAPPERS)
                      if _is_state_dict(obj.get(k))), None)
    if not _is_state_dict(state):
        raise CheckpointError(
            f"no state dict in checkpoint {where}: expected a dict of tensors, or one under "
            f"{list(_WRAPPERS)}; its keys are {list(obj)[:10]}")
    return _strip_prefixes(dict(state)), meta


def official_to_vig_pyg(key: str) -> str:
    """Official release key -> vig_pyg key (identity for keys already ours)."""
    return key.replace(".graph_conv.gconv.", ".graph_conv.")


def vig_pyg_to_official(key: str) -> str:
    """vig_pyg key -> official release key."""
    return key.replace(".graph_conv.", ".graph_conv.gconv.")


# ---------------------------------------------------------------------------- adapting
def _resize_pos_embed(t: Tensor, shape) -> Tensor:
    """[1, C, h, w] -> [1, C, H, W], bicubic (align_corners=False)."""
    return F.interpolate(t, size=tuple(shape[-2:]), mode="bicubic", align_corners=False)


def _resize_relative_pos(t: Tensor, shape) -> Tensor:
    """[1, n, m] -> [1, N, M], bicubic (align_corners=False), as the release does at run time."""
    from ..graph import resize_relative_position

    return resize_relative_position(t, shape[-2], shape[-1])


def adapt_state_dict(state: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """Maps keys to ours and resizes position tables to the model's grid. Returns the new
    dict and the keys that were resized."""
    own = model.state_dict()
    out, resized = {}, []
    for key, value in state.items():
        key = official_to_vig_pyg(key)
        target = own.get(key)
        if target is not None and value.shape != target.shape and value.is_floating_point():
            if key == "pos_embed" and value.dim() == 4 and value.shape[:2] == target.shape[:2]:
                value = _resize_pos_embed(value, target.shape)
                resized.append(key)
            elif (key.endswith("relative_pos") and value.dim() == 3
                  and value.shape[0] == target.shape[0]):
                value = _resize_relative_pos(value, target.shape)
                resized.append(key)
        out[key] = value
    for key, value in own.items():  # files from older BatchNorms lack these counters
        if (key.endswith("num_batches_tracked") and key not in out
                and key.replace("num_batches_tracked", "running_mean") in out):
            out[key] = value
    return out, resized


def _guess_conv(keys) -> str | None:
    keys = list(keys)
    if any(".graph_conv.nn1." in k for k in keys):
        return "sage"
    if any(k.endswith(".graph_conv.eps") for k in keys):
        return "gin"
    if any(".graph_conv.nn.0." in k for k in keys):
        return "mr or edge"
    return None


def _mismatch_report(state: dict, model: nn.Module, meta: dict) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return None

    def listing(title, items):
        more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
        return f"{len(items)} {title}: " + ", ".join(items[:8]) + more

    parts = [listing(t, items) for t, items in (("missing keys", missing),
                                                ("unexpected keys", unexpected),
                                                ("shape mismatches", shapes)) if items]
    hints = []
    cfg = getattr(model, "config", None)
    if meta.get("model_name") and cfg is not None and meta["model_name"] != cfg.name:
        hints.append(f"the checkpoint is a {meta['model_name']}, the model a {cfg.name}")
    ck_conv, own_conv = _guess_conv(state), _guess_conv(own)
    if ck_conv and own_conv and ck_conv != own_conv:
        hints.append(f"the checkpoint's graph convolution looks like {ck_conv!r}, the "
                     f"model's like {own_conv!r}: pass conv=...")
    head = "prediction.4.weight"
    if head in state and head in own and state[head].shape[0] != own[head].shape[0] \
            and len(shapes) <= 2:
        hints.append(f"the checkpoint has {state[head].shape[0]} classes: build the model "
                     f"with num_classes={state[head].shape[0]}, load, then call "
                     f"model.reset_classifier({own[head].shape[0]}) to fine-tune")
    return "; ".join(parts) + (". Hint: " + "; ".join(hints) if hints else "")


def load_checkpoint(model: nn.Module, source, use_ema: bool = False) -> nn.Module:
    """Loads an official or vig_pyg checkpoint (path or dict) into ``model`` (strict).

    Position tables (``pos_embed``, ``relative_pos``) saved for another input size are
    resized bicubically. Raises :class:`CheckpointError` naming every missing and
    unexpected key and shape mismatch.
    """
    state, meta = read_checkpoint(source, use_ema)
    state, _ = adapt_state_dict(state, model)
    report = _mismatch_report(state, model, meta)
    if report:
        where = "dict" if isinstance(source, Mapping) else repr(os.fspath(source))
        name = getattr(getattr(model, "config", None), "name", "") or type(model).__name__
        raise CheckpointError(f"checkpoint {where} does not fit {name}: {report}")
    model.load_state_dict(state, strict=True)
    return model


def load_model(source, use_ema: bool = False, **changes):
    """Rebuilds a model from a vig_pyg checkpoint's own config (``changes`` replace config
    fields, e.g. ``img_size=256`` or ``knn_backend="dense"``) and loads its weights."""
    from .config import ViGConfig
    from .vig import ViG

    state, meta = read_checkpoint(source, use_ema)
    if not meta.get("config"):
        raise CheckpointError("this checkpoint carries no model config (an official release "
                              "file?): use create_model(name, checkpoint=path)")
    config = dict(meta["config"])
    config.update(changes)
    model = ViG(ViGConfig.from_dict(config))
    load_checkpoint(model, {"format": FORMAT, "model_name": meta.get("model_name"),
                            "config": meta["config"], "state_dict": state})
    return model


# ---------------------------------------------------------------------------- writing
def checkpoint_dict(model: nn.Module, **extra) -> dict:
    """The vig_pyg checkpoint of ``model`` (weights on the CPU, NCHW-contiguous)."""
    cfg = model.config
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "version": VERSION, "model_name": cfg.name,
            "config": cfg.to_dict(), "state_dict": state, **extra}


def atomic_save(obj, path) -> str:
    """``torch.save`` to a temporary file in the target directory, flushed and fsync'ed,
    then ``os.replace``: a crash leaves the old file or the new one, never a torn one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def save_checkpoint(model: nn.Module, path, **extra) -> str:
    """Writes :func:`checkpoint_dict` atomically (see :func:`atomic_save`)."""
    return atomic_save(checkpoint_dict(model, **extra), path)
