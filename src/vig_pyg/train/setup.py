"""Setting a run up: device, precision, seeds, the model and the parts that train it.

Everything here is decided before the run directory is written, so a bad setting fails
with one line and leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import VigPygError, one_line
from . import distributed as D
from .config import Config, ConfigError, cuda_graphs_need_cuda, in_chans, model_kwargs
from .imports import import_modules


# --------------------------------------------------------------------------- device, precision
def resolve_device(cfg: Config, local_rank: int = 0) -> torch.device:
    """``train.device`` for this process: ``auto`` is ``cuda`` where a GPU is visible, and
    ``cuda`` gives each of torchrun's processes on a node its own GPU (``local_rank``)."""
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cpu":
        return torch.device("cpu")
    try:
        device = torch.device(want)
    except RuntimeError:
        device = None
    if device is None or device.type != "cuda":
        raise ConfigError(f"train.device='{want}' is not a device: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={cfg.train.device} but CUDA is not available: "
                          "use train.device=cpu (or auto)")
    count = torch.cuda.device_count()
    index = local_rank if device.index is None else device.index
    if index >= count:
        which = (f"process {local_rank} of this node" if device.index is None
                 else f"train.device={want}")
        raise ConfigError(f"{which} needs GPU {index} but {count} GPU(s) are visible: launch "
                          f"at most {count} process(es) per node, or use train.device=cpu")
    return torch.device("cuda", index)


@contextlib.contextmanager
def run_process(cfg):
    """This process's device and process group (torchrun's ``LOCAL_RANK``) for one run;
    afterwards the thread count is restored and the group torn down."""
    device = resolve_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_distributed(device.type)
    threads = torch.get_num_threads()
    try:
        yield device, info
    finally:
        torch.set_num_threads(threads)
        D.cleanup(info)


@dataclass
class Precision:
    dtype: Optional[torch.dtype]
    scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 autocast is faster than fp32 here (elsewhere it is emulated)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - older torch
        return False


def resolve_precision(cfg: Config, device: torch.device) -> Precision:
    amp = cfg.train.amp
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "bf16" if cpu_has_native_bf16() else "none"
    if amp == "none":
        return Precision(None, False)
    if amp == "bf16":
        return Precision(torch.bfloat16, False)
    if device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; on CPU use train.amp=bf16 or none")
    return Precision(torch.float16, True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool, device: torch.device) -> None:
    if on:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


# --------------------------------------------------------------------------- the model
def build_model(cfg: Config, num_classes: int, weights: Any = None,
                initial_weights: bool = True) -> nn.Module:
    """``create_model`` from the model section. ``weights``: an already loaded file (read once
    by the caller), else (with ``initial_weights``) ``model.checkpoint`` is read here; a
    classifier of another size is replaced (fine-tuning, e.g. ImageNet weights on CIFAR-10).
    A resumed run passes ``initial_weights=False``: its weights come from its checkpoint."""
    from ..models import create_model, read_checkpoint
    from ..models.checkpoint import load_file

    import_modules(cfg.model.imports)
    kwargs = model_kwargs(cfg, num_classes)
    if weights is None and initial_weights and cfg.model.checkpoint is not None:
        weights = load_file(cfg.model.checkpoint)
    if weights is None:
        return create_model(cfg.model.name, **kwargs)
    state, _ = read_checkpoint(weights)
    head = state.get("prediction.4.weight")
    if head is not None and head.shape[0] != num_classes:
        model = create_model(cfg.model.name, **{**kwargs, "num_classes": int(head.shape[0])},
                             checkpoint=state)
        model.reset_classifier(num_classes)
        return model
    return create_model(cfg.model.name, checkpoint=state, **kwargs)


def compile_options(cfg: Config, device: torch.device) -> dict:
    """``torch.compile``'s keyword arguments for ``train.compile_mode`` on ``device``
    (``{}``: torch's default mode); ``reduce-overhead`` needs a CUDA device."""
    mode = cfg.train.compile_mode
    if mode is None:
        return {}
    if mode == "reduce-overhead" and device.type != "cuda":
        raise ConfigError(cuda_graphs_need_cuda(device.type))
    return {"mode": mode}


def load_run_weights(model: nn.Module, weights, source: str) -> None:
    """Weights of a training checkpoint into the model its config builds (strict)."""
    from ..models.checkpoint import CheckpointError, load_checkpoint

    try:
        load_checkpoint(model, weights)
    except CheckpointError as exc:
        raise ConfigError(f"{source}: {exc}; use the config it was written with (model.name, "
                          "the model's options, data.img_size, the data set's classes)") from None


def check_input_size(model: nn.Module, cfg: Config, device: torch.device) -> None:
    """One eval-mode forward at ``data.img_size``: a clear error if the model cannot take it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            size = cfg.data.img_size
            out = model(torch.zeros(1, in_chans(cfg), size, size, device=device))
    except VigPygError:
        raise
    except Exception as exc:  # any failure here means the size does not fit
        raise ConfigError(f"model '{cfg.model.name}' cannot take {cfg.data.img_size} px images "
                          f"({one_line(exc)[:160]}): choose a data.img_size the stem and stages "
                          "divide (multiples of 32 work for every zoo model)") from None
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise ConfigError(f"model '{cfg.model.name}' returned shape {tuple(out.shape)} at "
                          f"{cfg.data.img_size} px instead of [batch, classes]")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def wrap_ddp(model: nn.Module, cfg: Config, device: torch.device, info: D.DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    if cfg.train.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


# --------------------------------------------------------------------------- optimisation
def build_optimizer(cfg: Config, model: nn.Module):
    from timm.optim import create_optimizer_v2, list_optimizers

    o = cfg.optim
    kwargs = dict(opt=o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    if "adam" in o.name or "lamb" in o.name:
        kwargs["eps"] = o.eps
    if o.name not in list_optimizers():
        raise ConfigError(f"unknown optimizer '{o.name}': set optim.name to a timm optimizer "
                          "such as adamw, sgd, lamb, lion")
    try:
        return create_optimizer_v2(model, **kwargs)
    except (ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"optimizer '{o.name}' rejected the settings ({one_line(exc)}): "
                          "check optim.*") from None


def build_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    from timm.scheduler import create_scheduler_v2

    s = cfg.sched
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=s.name, num_epochs=cfg.train.epochs, warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr, min_lr=s.min_lr, step_on_epochs=False,
        updates_per_epoch=steps_per_epoch)
    return scheduler


def build_ema(cfg: Config, model: nn.Module):
    if not cfg.ema.enabled:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)


def build_criterion(cfg: Config, mixup) -> nn.Module:
    if mixup is not None:  # soft targets; timm's Mixup applies the label smoothing
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=cfg.aug.smoothing)
