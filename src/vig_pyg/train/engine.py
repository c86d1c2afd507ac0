"""The training and evaluation loops (timm recipe parts, DDP, exact mid-epoch resume).

Recipe: AdamW (``timm.optim.create_optimizer_v2``, no decay on biases and norms), cosine
schedule with linear warmup stepped every update (``timm.scheduler``), label smoothing,
Mixup / CutMix (``timm.data.Mixup``), weight EMA (``timm.utils.ModelEmaV3``), drop path,
gradient clipping, autocast (bf16 on CPU when asked; bf16 or fp16 + GradScaler on CUDA)
and channels-last on CUDA.

Reproducibility: with ``train.deterministic=true`` and ``data.num_workers=0`` a run that is
killed and resumed from any checkpoint (``train.ckpt_every_steps`` writes them mid-epoch)
ends with bit-identical weights. That holds because (1) the sampler restarts the epoch at
the saved batch, (2) the loader's own generator is re-seeded per epoch, so iterators never
draw from the global RNG, (3) the python / numpy / torch generator states (which the
augmentations, mixup and drop path use) are saved at the step boundary and restored after
the epoch's iterator is created, and (4) the lr is a function of the global step.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import Config, ConfigError, build_config
from .data import TrainLoader, build_datasets, build_eval_loader, build_mixup
from .threads import ThreadTuner

CSV_FIELDS = ["epoch", "global_step", "lr", "train_loss", "train_img_per_s", "test_loss",
              "test_top1", "test_top5", "ema_test_loss", "ema_test_top1", "ema_test_top5",
              "epoch_time_s", "elapsed_s"]


# --------------------------------------------------------------------------- set-up pieces
def resolve_device(cfg: Config, local_rank: int = 0) -> torch.device:
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={cfg.train.device} but CUDA is not available: "
                              "use train.device=cpu (or auto)")
        if want == "cuda":
            return torch.device("cuda", local_rank)
        return torch.device(want)
    if want != "cpu":
        raise ConfigError(f"train.device='{want}' is not a device: use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


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


def _models_api():
    try:
        from vig_pyg.models import create_model, list_models
    except ImportError as exc:  # pragma: no cover - only while the model zoo is missing
        raise ConfigError(f"vig_pyg.models is not available ({exc}): reinstall the package") from None
    return create_model, list_models


def build_model(cfg: Config, num_classes: int, with_checkpoint: bool = True) -> nn.Module:
    """``create_model`` with one-line errors for unknown names and bad checkpoints."""
    create_model, list_models = _models_api()
    m = cfg.model
    names = list(list_models())
    if m.name not in names:
        raise ConfigError(f"unknown model '{m.name}': set model.name to one of " + ", ".join(names))
    kwargs = dict(num_classes=num_classes, conv=m.conv, k=m.k, drop_path_rate=m.drop_path,
                  img_size=cfg.data.img_size)
    if m.dropout:
        kwargs["dropout"] = m.dropout
    clash = sorted(set(m.overrides) & (set(kwargs) | {"name", "checkpoint"}))
    if clash:
        raise ConfigError(f"model.overrides sets {clash[0]}, which has its own key: use "
                          f"model.{clash[0]} / data.img_size instead")
    kwargs.update(m.overrides)
    checkpoint = m.checkpoint if with_checkpoint else None
    if checkpoint is not None:
        if not os.path.exists(checkpoint):
            raise ConfigError(f"model.checkpoint '{checkpoint}' does not exist: check the path")
        ckpt_io.load_file(checkpoint)  # one-line error for truncated / unsafe files
    try:
        head_classes = _checkpoint_classes(checkpoint) if checkpoint is not None else None
        if head_classes is not None and head_classes != num_classes:
            # fine-tuning, e.g. ImageNet weights on CIFAR-10: load, then a fresh classifier
            kwargs["num_classes"] = head_classes
            model = create_model(m.name, checkpoint=checkpoint, **kwargs)
            model.reset_classifier(num_classes)
            return model
        return create_model(m.name, checkpoint=checkpoint, **kwargs)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"model '{m.name}' rejected its arguments ({exc}): check model.overrides "
                          "(isotropic: channels, depth, stem_stride; pyramid: channels, blocks, "
                          "reduce_ratios)") from None
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if checkpoint is not None:
            raise ConfigError(f"cannot build '{m.name}' from model.checkpoint '{checkpoint}' "
                              f"({msg}): use a checkpoint of this model, or set model.name to "
                              "the model it belongs to") from None
        raise ConfigError(f"cannot build model '{m.name}' ({msg}): check model.* and data.img_size") from None


def _checkpoint_classes(path: str) -> Optional[int]:
    """Number of classes of a weights file's classifier (None if unknown)."""
    try:
        from vig_pyg.models import read_checkpoint
        state, _ = read_checkpoint(path)
    except Exception:  # let create_model report unreadable files
        return None
    head = state.get("prediction.4.weight")
    return int(head.shape[0]) if head is not None and head.dim() >= 1 else None


def check_input_size(model: nn.Module, cfg: Config, device: torch.device) -> None:
    """One eval-mode forward at ``data.img_size``: a clear error if the model cannot take it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, cfg.data.img_size, cfg.data.img_size, device=device))
    except Exception as exc:  # any failure here means the size does not fit
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model '{cfg.model.name}' cannot take {cfg.data.img_size} px images "
                          f"({msg[:160]}): choose a data.img_size the stem and stages divide "
                          "(multiples of 32 work for every zoo model)") from None
    finally:
        model.train(was_training)
    if out.dim() != 2:
        raise ConfigError(f"model '{cfg.model.name}' returned shape {tuple(out.shape)} at "
                          f"{cfg.data.img_size} px instead of [batch, classes]")


def default_run_dir(cfg: Config) -> str:
    name = cfg.log.name or f"{cfg.model.name}-{cfg.data.dataset}"
    return os.path.join(cfg.log.output_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: Precision,
             channels_last: bool = False, info: D.DistInfo = D.DistInfo(),
             progress: bool = False, desc: str = "eval") -> dict:
    """Loss, top-1, top-5 (percent) and images per second over ``loader`` (summed over ranks)."""
    model.eval()
    loss_sum = top1 = top5 = n = 0.0
    t0 = time.perf_counter()
    bar = _bar(loader, progress, desc, leave=False)
    for x, y in bar:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            out = model(x)
        out = out.float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        k = min(5, out.size(1))
        hit = out.topk(k, dim=1).indices.eq(y[:, None])
        top1 += hit[:, 0].sum().item()
        top5 += hit.any(dim=1).sum().item()
        n += y.numel()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    loss_sum, top1, top5, n = D.all_reduce_sum([loss_sum, top1, top5, n], info, device)
    dt = max(D.all_reduce_sum([dt], info, device)[0] / max(info.world_size, 1), 1e-9)
    n = max(n, 1)
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n,
            "images": int(n), "img_per_s": n / dt, "time_s": dt}


def _bar(iterable, enabled: bool, desc: str, leave: bool = True, total=None, initial: int = 0):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=leave, total=total, initial=initial, dynamic_ncols=True,
                mininterval=0.5, file=sys.stderr)


# --------------------------------------------------------------------------- training
@dataclass
class RunState:
    epoch: int = 0             # epoch of the next batch
    step_in_epoch: int = 0     # index of the next batch within that epoch
    global_step: int = 0       # optimizer steps done
    elapsed_s: float = 0.0     # training time of earlier sessions
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    epoch_time_s: float = 0.0
    best_top1: float = -1.0
    best_epoch: int = -1
    last_eval: dict = field(default_factory=dict)


def _log(info: D.DistInfo, *msg) -> None:
    if info.is_main:
        print(*msg, flush=True)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(
        model, nn.parallel.DistributedDataParallel) else model


def _read_csv_rows(path: str, before_epoch: int) -> list:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) < before_epoch]


def _write_csv(path: str, rows: list) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    os.replace(tmp, path)


def prepare_resume(resume: str, config_path: Optional[str], overrides: list):
    """Checkpoint file, loaded checkpoint and effective config for ``--resume``."""
    path = ckpt_io.resolve_resume_path(resume)
    state = ckpt_io.load_file(path)
    if not ckpt_io.is_training_checkpoint(state):
        raise ConfigError(f"'{path}' is not a vig-pyg training checkpoint (model weights only?): "
                          "to start from weights use --set model.checkpoint=PATH instead of --resume")
    base = None if config_path else state.get("config")
    cfg = build_config(config_path, overrides, base=base)
    return path, state, cfg


def train(cfg: Config, output: Optional[str] = None, resume: Optional[str] = None,
          resume_state: Optional[dict] = None) -> dict:
    """Train according to ``cfg``; returns the summary dict (also written to RUN/summary.json).

    ``resume`` is a checkpoint path (its run directory is reused unless ``output`` is given);
    ``resume_state`` the already-loaded checkpoint, if the caller has it.
    """
    wall0 = time.perf_counter()
    device = resolve_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_distributed(device.type)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, output, resume, resume_state, device, info, wall0)
    finally:
        torch.set_num_threads(threads)
        D.cleanup(info)


def _train(cfg, output, resume, resume_state, device, info, wall0) -> dict:
    t, d = cfg.train, cfg.data
    precision = resolve_precision(cfg, device)
    channels_last = t.channels_last if t.channels_last is not None else device.type == "cuda"
    if (cfg.aug.mixup > 0 or cfg.aug.cutmix > 0) and d.batch_size % 2:
        raise ConfigError(f"mixup/cutmix need an even data.batch_size, got {d.batch_size}")
    set_deterministic(t.deterministic, device)

    # ---- validate everything before anything is written ----------------------------
    if resume is not None and resume_state is None:
        resume = ckpt_io.resolve_resume_path(resume)
        resume_state = ckpt_io.load_file(resume)
        if not ckpt_io.is_training_checkpoint(resume_state):
            raise ConfigError(f"'{resume}' is not a vig-pyg training checkpoint: to start from "
                              "weights use --set model.checkpoint=PATH instead of --resume")
    if resume is not None:
        run_dir = output or os.path.dirname(os.path.dirname(os.path.abspath(resume)))
    else:
        run_dir = output or default_run_dir(cfg)
        run_dir = D.broadcast_object(run_dir, info)
        problem = None  # decided by rank 0 alone: the others may look after it created the dir
        if info.is_main and os.path.exists(run_dir) and (
                not os.path.isdir(run_dir) or os.listdir(run_dir)):
            problem = (f"run directory '{run_dir}' already exists: continue it with "
                       f"--resume {run_dir}, or pick a new --output")
        problem = D.broadcast_object(problem, info)
        if problem:
            raise ConfigError(problem)

    train_set, test_set, num_classes = build_datasets(cfg)
    seed_everything(t.seed)
    model = build_model(cfg, num_classes, with_checkpoint=resume_state is None)
    model.to(device)
    check_input_size(model, cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if resume_state is not None:
        ckpt_io.load_model_state(model, resume_state["model"], resume, cfg.model.name)

    train_loader = TrainLoader(train_set, d.batch_size, d.num_workers, t.seed,
                               info.world_size, info.rank, pin_memory=device.type == "cuda")
    test_loader = build_eval_loader(test_set, d.eval_batch_size, d.num_workers,
                                    info.world_size, info.rank, pin_memory=device.type == "cuda")
    steps_per_epoch = train_loader.steps_per_epoch

    from timm.optim import create_optimizer_v2, list_optimizers
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad

    o = cfg.optim
    opt_kwargs = dict(opt=o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum)
    if "adam" in o.name or "lamb" in o.name:
        opt_kwargs["eps"] = o.eps
    if o.name not in list_optimizers():
        raise ConfigError(f"unknown optimizer '{o.name}': set optim.name to a timm optimizer "
                          "such as adamw, sgd, lamb, lion")
    try:
        optimizer = create_optimizer_v2(model, **opt_kwargs)
    except (ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"optimizer '{o.name}' rejected the settings ({exc}): check optim.*") from None
    s = cfg.sched
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=s.name, num_epochs=t.epochs, warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr, min_lr=s.min_lr, step_on_epochs=False,
        updates_per_epoch=steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    ema = None
    if cfg.ema.enabled:
        ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)

    state = RunState()
    if resume_state is not None:
        try:
            optimizer.load_state_dict(resume_state["optimizer"])
            if ema is not None and resume_state.get("ema") is not None:
                ckpt_io.load_model_state(ema.module, resume_state["ema"], resume, cfg.model.name)
            if resume_state.get("scheduler"):
                scheduler.load_state_dict(resume_state["scheduler"])
            if precision.scaler and resume_state.get("scaler"):
                scaler.load_state_dict(resume_state["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"checkpoint '{resume}' does not match this run's optimizer or "
                              f"settings ({str(exc).splitlines()[0][:120]}): resume with the "
                              "config it was written with") from None
        for k in ("epoch", "step_in_epoch", "global_step", "elapsed_s", "epoch_loss_sum",
                  "epoch_samples", "epoch_time_s", "best_top1", "best_epoch"):
            if k in resume_state:
                setattr(state, k, resume_state[k])
        if state.step_in_epoch >= steps_per_epoch:
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
    if state.epoch >= t.epochs and resume_state is not None:
        raise ConfigError(f"checkpoint '{resume}' already finished all {t.epochs} epochs: "
                          "raise train.epochs (--set train.epochs=N) to train further")
    if resume_state is not None and t.max_steps and state.global_step >= t.max_steps:
        raise ConfigError(f"checkpoint '{resume}' already reached train.max_steps={t.max_steps}: "
                          "raise it or set train.max_steps=0 (--set ...) to train further")

    if info.enabled:
        if t.sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        ddp_model = model
    # augmentations differ per rank; model init above was identical on every rank
    seed_everything(t.seed + info.rank)
    rng_to_restore = None
    if resume_state is not None:
        saved = resume_state.get("rng")
        if isinstance(saved, list):
            saved = saved[info.rank] if len(saved) == info.world_size else None
        rng_to_restore = saved

    mixup = build_mixup(cfg, num_classes)
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy
        criterion = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.aug.smoothing)

    # ---- from here on the run directory exists -------------------------------------
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    csv_path = os.path.join(run_dir, "metrics.csv")
    writer = None
    csv_rows = []
    if info.is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
            fh.write(cfg.to_yaml())
        csv_rows = _read_csv_rows(csv_path, state.epoch) if resume_state is not None else []
        _write_csv(csv_path, csv_rows)
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(run_dir, "tb"),
                                   purge_step=state.global_step if resume_state is not None else None)
    n_params = count_params(model)
    _log(info, f"{'resuming' if resume_state is not None else 'training'} {cfg.model.name} "
               f"({n_params / 1e6:.2f} M params) on {d.dataset}: {len(train_set)} train / "
               f"{len(test_set)} test images, {num_classes} classes, {t.epochs} epochs x "
               f"{steps_per_epoch} steps, batch {d.batch_size}x{info.world_size}, {device.type} "
               f"{precision.name}{', channels-last' if channels_last else ''} -> {run_dir}")
    if resume_state is not None:
        _log(info, f"resumed from {resume} at epoch {state.epoch + 1}, step "
                   f"{state.step_in_epoch}/{steps_per_epoch} (global step {state.global_step})")

    def save(path_name: str = "last.pt") -> None:
        rng = capture_all_rng(info)
        if not info.is_main:
            return
        payload = {
            "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
            "model": _unwrap(ddp_model).state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": _plain(scheduler.state_dict()),
            "scaler": scaler.state_dict() if precision.scaler else None,
            "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "elapsed_s": state.elapsed_s + (time.perf_counter() - session0),
            "epoch_loss_sum": state.epoch_loss_sum, "epoch_samples": state.epoch_samples,
            "epoch_time_s": (state.epoch_time_s + (time.perf_counter() - epoch0)
                             if state.step_in_epoch else 0.0),
            "best_top1": state.best_top1, "best_epoch": state.best_epoch,
            "rng": rng, "world_size": info.world_size,
            "config": cfg.to_dict(), "model_name": cfg.model.name, "num_classes": num_classes,
            "metrics": _plain(state.last_eval),
        }
        ckpt_io.atomic_save(payload, os.path.join(ckpt_dir, path_name))

    tuner = None
    if device.type == "cpu":
        if t.threads.isdigit():
            torch.set_num_threads(int(t.threads))
        elif t.threads == "auto" and not t.deterministic:
            tuner = ThreadTuner(torch.get_num_threads())
    scheduler.step_update(state.global_step)
    session0 = time.perf_counter()
    clip = o.clip_grad
    stop = False
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)
    train_imgs = 0
    train_compute_s = 0.0
    final_eval = {}
    final_ema_eval = {}
    epoch = state.epoch
    while epoch < t.epochs and not stop:
        start_step = state.step_in_epoch
        epoch0 = time.perf_counter()
        if start_step == 0:
            state.epoch_loss_sum, state.epoch_samples, state.epoch_time_s = 0.0, 0, 0.0
        it = train_loader.epoch(epoch, start_step)
        if rng_to_restore is not None:
            ckpt_io.restore_rng(rng_to_restore)
            rng_to_restore = None
        ddp_model.train()
        bar = _bar(it, cfg.log.progress and info.is_main, f"epoch {epoch + 1}/{t.epochs}",
                   leave=False, total=steps_per_epoch, initial=start_step)
        step_t0 = time.perf_counter()
        for step, (x, y) in enumerate(bar, start=start_step):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if mixup is not None:
                x, y = mixup(x, y)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if tuner is not None:
                tuner.before_step()
                compute0 = time.perf_counter()
            with precision.autocast(device):
                out = ddp_model(x)
            loss = criterion(out.float(), y)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss is {loss.item()} at step {state.global_step}: lower optim.lr "
                                   "or enable optim.clip_grad")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), clip, mode=o.clip_mode)
            scaler.step(optimizer)
            scaler.update()
            if tuner is not None:
                tuner.after_step(time.perf_counter() - compute0)
            state.global_step += 1
            scheduler.step_update(state.global_step)
            if ema is not None:
                ema.update(model, step=state.global_step)
            state.epoch_loss_sum += loss.item() * y.size(0)
            state.epoch_samples += y.size(0)
            train_imgs += y.size(0) * info.world_size
            state.step_in_epoch = step + 1
            if bar is not it:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                refresh=False)
            if state.global_step >= total_steps:
                stop = True
            end_of_epoch = state.step_in_epoch >= steps_per_epoch
            if (t.ckpt_every_steps and state.global_step % t.ckpt_every_steps == 0
                    and not end_of_epoch and not stop):
                save()
            if stop:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_compute_s += time.perf_counter() - step_t0
        if bar is not it:
            bar.close()
        finished_epoch = state.step_in_epoch >= steps_per_epoch
        last = stop or epoch + 1 >= t.epochs
        row = {"epoch": epoch + 1, "global_step": state.global_step,
               "lr": f"{optimizer.param_groups[0]['lr']:.6g}"}
        loss_sum, samples = D.all_reduce_sum([state.epoch_loss_sum, state.epoch_samples], info, device)
        row["train_loss"] = f"{loss_sum / max(samples, 1):.5f}"
        if last or (epoch + 1) % t.eval_every == 0:
            ev = evaluate(_unwrap(ddp_model), test_loader, device, precision, channels_last, info,
                          cfg.log.progress and info.is_main, "test")
            row.update(test_loss=f"{ev['loss']:.5f}", test_top1=f"{ev['top1']:.3f}",
                       test_top5=f"{ev['top5']:.3f}")
            final_eval = ev
            head = ev
            if ema is not None and cfg.ema.evaluate:
                eev = evaluate(ema.module, test_loader, device, precision, channels_last, info,
                               cfg.log.progress and info.is_main, "test (ema)")
                row.update(ema_test_loss=f"{eev['loss']:.5f}", ema_test_top1=f"{eev['top1']:.3f}",
                           ema_test_top5=f"{eev['top5']:.3f}")
                final_ema_eval = eev
                head = eev
            state.last_eval = {"top1": head["top1"], "top5": head["top5"], "loss": head["loss"]}
            if head["top1"] > state.best_top1:
                state.best_top1, state.best_epoch = head["top1"], epoch + 1
        epoch_time = state.epoch_time_s + (time.perf_counter() - epoch0)
        row["epoch_time_s"] = f"{epoch_time:.2f}"
        row["train_img_per_s"] = f"{samples / max(epoch_time, 1e-9):.1f}"
        row["elapsed_s"] = f"{state.elapsed_s + time.perf_counter() - session0:.1f}"
        if info.is_main:
            csv_rows.append(row)
            _write_csv(csv_path, csv_rows)
            if writer is not None:
                gs = state.global_step
                writer.add_scalar("train/loss", float(row["train_loss"]), gs)
                writer.add_scalar("train/lr", float(row["lr"]), gs)
                for key in ("test_loss", "test_top1", "test_top5", "ema_test_loss", "ema_test_top1",
                            "ema_test_top5"):
                    if row.get(key):
                        writer.add_scalar(key.replace("_", "/", 1), float(row[key]), gs)
                writer.flush()
            msg = f"epoch {epoch + 1}/{t.epochs}  loss {row['train_loss']}  lr {row['lr']}"
            if "test_top1" in row:
                msg += f"  test top-1 {float(row['test_top1']):.2f}%"
            if "ema_test_top1" in row:
                msg += f" (ema {float(row['ema_test_top1']):.2f}%)"
            msg += f"  {epoch_time:.1f} s"
            if tuner is not None and tuner.active:
                msg += f"  (threads {tuner.describe()})"
            print(msg, flush=True)
        if finished_epoch:
            epoch += 1
            state.epoch, state.step_in_epoch = epoch, 0
            state.epoch_loss_sum, state.epoch_samples, state.epoch_time_s = 0.0, 0, 0.0
        save()

    train_time = state.elapsed_s + time.perf_counter() - session0
    diff = D.max_param_difference(_unwrap(ddp_model), info)
    D.broadcast_buffers(_unwrap(ddp_model), info)
    head = final_ema_eval or final_eval
    summary = {
        "model": cfg.model.name, "dataset": d.dataset, "num_classes": num_classes,
        "params": n_params, "weights": "ema" if final_ema_eval else "model",
        "top1": head.get("top1"), "top5": head.get("top5"), "loss": head.get("loss"),
        "model_top1": final_eval.get("top1"), "model_top5": final_eval.get("top5"),
        "model_loss": final_eval.get("loss"),
        "ema_top1": final_ema_eval.get("top1"), "ema_top5": final_ema_eval.get("top5"),
        "ema_loss": final_ema_eval.get("loss"),
        "best_top1": state.best_top1, "best_epoch": state.best_epoch,
        "eval_img_per_s": head.get("img_per_s"),
        "train_img_per_s": train_imgs / train_compute_s if train_compute_s > 0 else None,
        "epochs": state.epoch if state.step_in_epoch == 0 else state.epoch + state.step_in_epoch / steps_per_epoch,
        "global_step": state.global_step,
        "train_time_s": train_time, "wall_time_s": time.perf_counter() - wall0,
        "world_size": info.world_size, "device": str(device), "precision": precision.name,
        "ddp_max_param_diff": diff if info.enabled else None,
        "run_dir": os.path.abspath(run_dir),
        "checkpoint": os.path.abspath(os.path.join(ckpt_dir, "last.pt")),
        "config": cfg.to_dict(),
    }
    export = ema.module if (ema is not None and final_ema_eval) else _unwrap(ddp_model)
    summary["weights_file"] = None
    if info.is_main and hasattr(export, "config"):
        # model-only file: create_model(name, checkpoint=...) / vig_pyg.models.load_model
        from vig_pyg.models import save_checkpoint

        summary["weights_file"] = os.path.abspath(os.path.join(run_dir, "model.pt"))
        save_checkpoint(export, summary["weights_file"], dataset=d.dataset,
                        top1=head.get("top1"), weights=summary["weights"])
    if info.is_main:
        with open(os.path.join(run_dir, "summary.json.tmp"), "w") as fh:
            json.dump(summary, fh, indent=2)
        os.replace(os.path.join(run_dir, "summary.json.tmp"), os.path.join(run_dir, "summary.json"))
        if writer is not None:
            writer.close()
        if head:
            print(f"test top-1 {head['top1']:.2f}%  top-5 {head['top5']:.2f}%  loss {head['loss']:.4f}"
                  f"  ({summary['weights']} weights, {head['images']} images)  |  training "
                  f"{train_time:.1f} s, {summary['train_img_per_s'] or 0:.0f} img/s  |  {run_dir}",
                  flush=True)
    summary["_model"] = _unwrap(ddp_model)
    summary["_ema"] = ema.module if ema is not None else None
    return summary


def capture_all_rng(info: D.DistInfo):
    """This rank's RNG states, or (DDP) the list of every rank's, gathered on all ranks."""
    mine = ckpt_io.capture_rng()
    if not info.enabled:
        return mine
    import torch.distributed as dist

    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def _plain(obj: Any) -> Any:
    """Keep only what ``torch.load(weights_only=True)`` reads back (tensors, containers, primitives)."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, (torch.Tensor, int, float, str, bool)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    return repr(obj)
