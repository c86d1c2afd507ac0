"""Training and evaluation of the detectors: ``fit(config) -> summary``.

The loop reuses the classification package's pieces (device and precision choice, seeding,
determinism, torchrun helpers, resumable sampler, RNG capture, checkpoint reader, thread
tuner) and keeps its own parts small: one function per step of a run, so they can move onto
a shared run-state / records layer unchanged.

Exact resume: with ``data.num_workers=0`` and a fixed thread count, a run stopped at any
checkpoint and resumed ends with the same weights as an uninterrupted one, because (1) the
epoch's shuffle is a function of (seed, epoch) and restarts at the saved batch, (2) the
Python / NumPy / torch RNG states (flips, the RPN and ROI samplers) are saved at the step
boundary and restored after the epoch's iterator exists, and (3) the learning rate is a
function of the global step.

A run directory holds ``config.yaml``, ``metrics.csv`` (one row per epoch), ``tb/``
(TensorBoard), ``checkpoints/last.pt`` (resumable) and ``summary.json``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader

from ..train import checkpoint as ckpt_io
from ..train import distributed as D
from ..train.config import ConfigError
from ..train.data import ResumableSampler, ShardSampler
from ..train.loop import progress_bar as _bar
from ..train.setup import (resolve_device, resolve_precision, seed_everything,
                           set_deterministic)
from ..train.state import _plain
from ..train.threads import ThreadTuner
from .coco import STAT_NAMES, CocoSet, coco_evaluate, collate, to_coco_results
from .config import DetectConfig, build_config
from .detectors import build_detector

FORMAT = "vig_pyg.detect"
METRICS = [f"box_{k}" for k in STAT_NAMES] + [f"mask_{k}" for k in STAT_NAMES]
CSV_FIELDS = ["epoch", "global_step", "lr", "train_loss", *METRICS, "epoch_time_s",
              "elapsed_s"]


# --------------------------------------------------------------------------- data
def data_paths(cfg: DetectConfig, progress: bool = False) -> dict:
    """``train_json``, ``train_images``, ``val_json``, ``val_images`` (the synthetic set is
    generated here on first use)."""
    d = cfg.data
    if d.dataset == "synthetic":
        from .synthetic import SyntheticSpec, ensure_synthetic

        spec = SyntheticSpec(canvas=d.canvas, num_train=d.num_train, num_val=d.num_val,
                             max_objects=d.max_objects, scale=tuple(d.scale), seed=d.seed)
        root = ensure_synthetic(spec, d.cache_dir, progress)
        paths = {f"{s}_json": os.path.join(root, "annotations", f"instances_{s}.json")
                 for s in ("train", "val")}
        paths.update({f"{s}_images": os.path.join(root, s) for s in ("train", "val")})
        return paths
    root = os.path.expanduser(d.root) if d.root else ""
    default = {"train_json": os.path.join(root, "annotations", "instances_train2017.json"),
               "train_images": os.path.join(root, "train2017"),
               "val_json": os.path.join(root, "annotations", "instances_val2017.json"),
               "val_images": os.path.join(root, "val2017")}
    return {k: os.path.expanduser(getattr(d, k) or v) for k, v in default.items()}


def build_sets(cfg: DetectConfig, train: bool = True, progress: bool = False):
    """``(train_set or None, val_set)`` as :class:`CocoSet` (masks for Mask R-CNN)."""
    p = data_paths(cfg, progress)
    masks = cfg.model.detector == "maskrcnn"
    n = cfg.model.num_classes
    hflip = cfg.data.hflip
    train_set = (CocoSet(p["train_json"], p["train_images"], train=True, masks=masks,
                         hflip=hflip, num_classes=n) if train else None)
    val_set = CocoSet(p["val_json"], p["val_images"], masks=False,
                      num_classes=n or (train_set.num_classes if train_set else None))
    return train_set, val_set


class TrainBatches:
    """Shuffled full batches, startable at any step of an epoch (see the module doc)."""

    def __init__(self, dataset, batch_size, num_workers, seed, info: D.DistInfo):
        self.sampler = ResumableSampler(dataset, info.world_size, info.rank, seed)
        self.batch_size, self.seed = batch_size, seed
        self.steps_per_epoch = len(self.sampler.inner) // batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the "
                              f"{len(self.sampler.inner)} training images per process")
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_sampler=BatchSampler(self.sampler, batch_size, True),
                                 num_workers=num_workers, collate_fn=collate,
                                 generator=self.generator)

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch, start_step * self.batch_size)
        self.generator.manual_seed(self.seed * 100003 + epoch)
        return iter(self.loader)


def eval_loader(val_set, cfg: DetectConfig, info: D.DistInfo) -> DataLoader:
    n = len(val_set) if cfg.data.max_eval_images <= 0 else min(cfg.data.max_eval_images,
                                                              len(val_set))
    # its own generator: creating an iterator must not draw from the global RNG
    return DataLoader(val_set, batch_size=cfg.data.eval_batch_size, collate_fn=collate,
                      sampler=ShardSampler(n, info.world_size, info.rank),
                      num_workers=cfg.data.num_workers, generator=torch.Generator())


# --------------------------------------------------------------------------- model
def make_detector(cfg: DetectConfig, num_classes: int, with_checkpoint: bool = True) -> nn.Module:
    m = cfg.model
    overrides = dict(m.overrides)
    overrides.update(k=m.k, conv=m.conv, drop_path_rate=m.drop_path)
    sizes = [int(s) for s in m.min_size]
    return build_detector(
        m.detector, m.backbone, num_classes, out_indices=m.out_indices,
        frozen_stages=m.frozen_stages, norm_eval=m.norm_eval,
        checkpoint=m.checkpoint if with_checkpoint else None, fpn_channels=m.fpn_channels,
        anchor_scale=m.anchor_scale, representation_size=m.representation_size,
        mask_channels=m.mask_channels, min_size=tuple(sizes) if len(sizes) > 1 else sizes[0],
        max_size=m.max_size, backbone_overrides=overrides, **m.extra)


def make_optimizer(cfg: DetectConfig, model: nn.Module):
    from timm.optim import create_optimizer_v2, list_optimizers

    o = cfg.optim
    if o.name not in list_optimizers():
        raise ConfigError(f"unknown optimizer '{o.name}': set optim.name to a timm optimizer "
                          "such as adamw, sgd")
    kwargs = dict(opt=o.name, lr=o.lr, weight_decay=o.weight_decay)
    if "sgd" in o.name or "momentum" in o.name:
        kwargs["momentum"] = o.momentum
    optimizer = create_optimizer_v2(model, **kwargs)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def lr_factor(cfg: DetectConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warmup from ``warmup_ratio`` over ``warmup_steps``, times the decay:
    ``step``: ``gamma ** #(milestones <= epoch)``; ``cosine``:
    ``min + (1 - min) (1 + cos(pi t / T)) / 2`` with ``T = epochs * steps_per_epoch``
    (``train.max_steps`` stops a run early without changing its schedule)."""
    total_steps = cfg.train.epochs * steps_per_epoch
    s = cfg.sched
    warm = 1.0
    if step < s.warmup_steps:
        warm = s.warmup_ratio + (1 - s.warmup_ratio) * step / s.warmup_steps
    if s.name == "step":
        epoch = step // steps_per_epoch
        return warm * s.gamma ** sum(epoch >= m for m in s.milestones)
    t = min(step / max(total_steps, 1), 1.0)
    return warm * (s.min_ratio + (1 - s.min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# --------------------------------------------------------------------------- one step
@dataclass
class Run:
    """What the steps of one training session share."""
    cfg: DetectConfig
    device: torch.device
    info: D.DistInfo
    precision: Any
    model: nn.Module            # the detector (unwrapped)
    net: nn.Module              # what runs forward: the detector or its DDP wrapper
    optimizer: Any
    scaler: Any
    batches: TrainBatches
    val_set: CocoSet
    train_set: CocoSet
    run_dir: str
    total_steps: int
    writer: Any = None


@dataclass
class State:
    """The position and records of a run (saved in every checkpoint)."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0
    last_eval: dict = field(default_factory=dict)


def to_device(images, targets, device):
    images = [i.to(device, non_blocking=True) for i in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def train_step(run: Run, images, targets, lr: float) -> dict:
    """One optimizer step; returns the losses (floats)."""
    for group in run.optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr
    images, targets = to_device(images, targets, run.device)
    with run.precision.autocast(run.device):
        losses = run.net(images, targets)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        parts = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items())
        raise ConfigError(f"the training loss became {loss.item()} ({parts}): lower optim.lr, "
                          "set optim.clip_grad, or check the data's boxes")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.optim.clip_grad:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, val_set: CocoSet, device, precision, masks: bool,
             info: D.DistInfo = D.DistInfo(), progress: bool = False) -> dict:
    """COCO box (and mask) AP of ``model`` on ``loader``'s images, plus images per second."""
    was_training = model.training
    model.eval()
    boxes, segms, ids = [], [], []
    t0 = time.perf_counter()
    for images, targets in _bar(loader, progress, "eval", leave=False):
        images = [i.to(device) for i in images]
        with precision.autocast(device):
            outputs = model(images)
        image_ids = [t["image_id"] for t in targets]
        b, s = to_coco_results(outputs, image_ids, val_set.cat_ids, masks)
        boxes += b
        segms += s
        ids += image_ids
    seconds = time.perf_counter() - t0
    model.train(was_training)
    if info.enabled:
        import torch.distributed as dist

        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, (boxes, segms, ids))
        boxes, segms, ids = ([x for g in gathered for x in g[j]] for j in range(3))
    out = {f"box_{k}": v for k, v in coco_evaluate(val_set.coco, boxes, "bbox", ids).items()}
    if masks:
        out.update({f"mask_{k}": v for k, v in
                    coco_evaluate(val_set.coco, segms, "segm", ids).items()})
    out["images"] = len(ids)
    out["img_per_s"] = len(ids) / max(seconds, 1e-9)
    return out


# --------------------------------------------------------------------------- records
def read_rows(path: str, before_epoch: int) -> list:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= before_epoch]


def write_rows(path: str, rows: list) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    os.replace(tmp, path)


def write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=2)
    os.replace(path + ".tmp", path)


def save_checkpoint(run: Run, state: State, session0: float, epoch_elapsed: float) -> None:
    """``RUN/checkpoints/last.pt`` (atomic); every rank's RNG states under DDP."""
    rng = ckpt_io.capture_rng()
    if run.info.enabled:
        import torch.distributed as dist

        everyone = [None] * run.info.world_size
        dist.all_gather_object(everyone, rng)
        rng = everyone
    if not run.info.is_main:
        return
    payload = {
        "format": FORMAT, "version": 1, "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.precision.scaler else None,
        "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "elapsed_s": state.elapsed_s + time.perf_counter() - session0,
        "epoch_loss_sum": state.epoch_loss_sum, "epoch_steps": state.epoch_steps,
        "epoch_elapsed_s": epoch_elapsed, "metrics": _plain(state.last_eval), "rng": rng,
        "world_size": run.info.world_size, "config": run.cfg.to_dict(),
        "num_classes": run.train_set.num_classes, "cat_ids": list(run.val_set.cat_ids),
        "class_names": list(run.val_set.class_names),
    }
    ckpt_io.atomic_save(payload, os.path.join(run.run_dir, "checkpoints", "last.pt"))


def epoch_record(run: Run, state: State, epoch_time: float, metrics: dict, lr: float,
                 elapsed: float) -> dict:
    row = {"epoch": state.epoch + 1, "global_step": state.global_step,
           "lr": f"{run.cfg.optim.lr * lr:.3e}",
           "train_loss": f"{state.epoch_loss_sum / max(state.epoch_steps, 1):.4f}",
           "epoch_time_s": f"{epoch_time:.1f}", "elapsed_s": f"{elapsed:.1f}"}
    row.update({k: f"{metrics[k]:.4f}" for k in METRICS if k in metrics})
    if run.writer is not None:
        run.writer.add_scalar("train/loss", float(row["train_loss"]), state.global_step)
        for k in METRICS:
            if k in metrics:
                run.writer.add_scalar(k.replace("_", "/", 1), metrics[k], state.global_step)
        run.writer.flush()
    return row


# --------------------------------------------------------------------------- the run
def load_resume(resume: str) -> tuple[str, dict]:
    path = ckpt_io.resolve_resume_path(resume)
    payload = ckpt_io.load_file(path)
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise ConfigError(f"'{path}' is not a vig-pyg detection checkpoint: resume a run of "
                          f"vig-pyg detect train (RUN or RUN/checkpoints/last.pt)")
    return path, payload


def resolve_config(config=None, overrides=(), resume_payload: Optional[dict] = None
                   ) -> DetectConfig:
    """A config object, a YAML path or None (defaults, or the resumed run's config)."""
    if isinstance(config, DetectConfig):
        cfg = build_config(None, overrides, base=config.to_dict())
    else:
        base = resume_payload.get("config") if (resume_payload and config is None) else None
        cfg = build_config(config, overrides, base=base)
    return cfg


def prepare_run_dir(cfg: DetectConfig, output, resume_path, info) -> str:
    if resume_path is not None:
        return output or os.path.dirname(os.path.dirname(os.path.abspath(resume_path)))
    name = cfg.log.name or f"{cfg.model.detector}-{cfg.model.backbone}-{cfg.data.dataset}"
    run_dir = output or os.path.join(cfg.log.output_dir,
                                     f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = D.broadcast_object(run_dir, info)
    if info.is_main and os.path.exists(run_dir) and (
            not os.path.isdir(run_dir) or os.listdir(run_dir)):
        raise ConfigError(f"run directory '{run_dir}' already exists: continue it with "
                          f"--resume {run_dir}, or pick a new --output")
    return run_dir


def fit(config=None, overrides=(), output: Optional[str] = None,
        resume: Optional[str] = None) -> dict:
    """Trains a detector; returns the summary (also ``RUN/summary.json``).

    ``config``: a :class:`DetectConfig`, a YAML path or None (defaults; with ``resume``
    the run's own config). ``overrides``: ``"section.key=value"`` strings. ``resume``: a run
    directory or its checkpoint, continued exactly."""
    resume_path, payload = load_resume(resume) if resume else (None, None)
    cfg = resolve_config(config, overrides, payload)
    wall0 = time.perf_counter()
    device = resolve_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    info = D.init_distributed(device.type)
    threads = torch.get_num_threads()
    try:
        run, state = setup(cfg, device, info, output, resume_path, payload)
        return loop(run, state, payload, wall0)
    finally:
        torch.set_num_threads(threads)
        D.cleanup(info)


def setup(cfg, device, info, output, resume_path, payload) -> tuple[Run, State]:
    """Everything is checked (data, model, checkpoint) before the run directory appears."""
    set_deterministic(cfg.train.deterministic, device)
    precision = resolve_precision(cfg, device)
    run_dir = prepare_run_dir(cfg, output, resume_path, info)
    train_set, val_set = build_sets(cfg, progress=cfg.log.progress and info.is_main)
    seed_everything(cfg.train.seed)
    model = make_detector(cfg, train_set.num_classes, with_checkpoint=payload is None).to(device)
    optimizer = make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    state = State()
    if payload is not None:
        restore(payload, resume_path, model, optimizer, scaler, precision, state)
    net = model
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    batches = TrainBatches(train_set, cfg.data.batch_size, cfg.data.num_workers,
                           cfg.train.seed, info)
    total = cfg.train.epochs * batches.steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    if payload is not None and state.global_step >= total:
        raise ConfigError(f"checkpoint '{resume_path}' already finished its {total} steps: "
                          "raise train.epochs or train.max_steps (--set ...) to train further")
    seed_everything(cfg.train.seed + info.rank)
    run = Run(cfg, device, info, precision, model, net, optimizer, scaler, batches, val_set,
              train_set, run_dir, total)
    open_records(run, state, payload is not None)
    return run, state


def restore(payload, path, model, optimizer, scaler, precision, state: State) -> None:
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if precision.scaler and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ConfigError(f"checkpoint '{path}' does not fit this run's detector or optimizer "
                          f"({str(exc).strip().splitlines()[0][:160]}): resume with the config "
                          "it was written with") from None
    for key in ("epoch", "step_in_epoch", "global_step", "elapsed_s", "epoch_loss_sum",
                "epoch_steps"):
        setattr(state, key, payload[key])
    state.last_eval = dict(payload.get("metrics") or {})


def open_records(run: Run, state: State, resumed: bool) -> None:
    if not run.info.is_main:
        return
    os.makedirs(os.path.join(run.run_dir, "checkpoints"), exist_ok=True)
    with open(os.path.join(run.run_dir, "config.yaml"), "w") as fh:
        fh.write(run.cfg.to_yaml())
    csv_path = os.path.join(run.run_dir, "metrics.csv")
    write_rows(csv_path, read_rows(csv_path, state.epoch) if resumed else [])
    if run.cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(os.path.join(run.run_dir, "tb"),
                                   purge_step=state.global_step if resumed else None)
    n = sum(p.numel() for p in run.model.parameters())
    c, d = run.cfg, run.cfg.data
    print(f"{'resuming' if resumed else 'training'} {c.model.detector} + {c.model.backbone} "
          f"({n / 1e6:.2f} M params) on {d.dataset}: {len(run.train_set)} train / "
          f"{len(run.val_set)} val images, {run.train_set.num_classes} classes, "
          f"{run.total_steps} steps ({c.train.epochs} epochs x {run.batches.steps_per_epoch}), "
          f"batch {d.batch_size}x{run.info.world_size}, {run.device.type} {run.precision.name}"
          f" -> {run.run_dir}", flush=True)


def loop(run: Run, state: State, payload: Optional[dict], wall0: float) -> dict:
    """Epochs of steps; checkpoints at epoch ends (and every ``ckpt_every_steps``)."""
    cfg = run.cfg
    tuner = make_tuner(cfg, run.device)
    session0 = time.perf_counter()
    rng = payload.get("rng") if payload else None
    if isinstance(rng, list):
        rng = rng[run.info.rank] if len(rng) == run.info.world_size else None
    epoch_elapsed = payload.get("epoch_elapsed_s", 0.0) if payload else 0.0
    images_seen, compute_s = 0, 0.0
    while state.global_step < run.total_steps:
        epoch_start = time.perf_counter() - epoch_elapsed
        batches = run.batches.epoch(state.epoch, state.step_in_epoch)
        if rng is not None:  # after the iterator exists: it must not move the restored state
            ckpt_io.restore_rng(rng)
            rng = None
        lr = lr_factor(cfg, state.global_step, run.batches.steps_per_epoch)
        bar = _bar(batches, cfg.log.progress and run.info.is_main, f"epoch {state.epoch + 1}",
                   total=run.batches.steps_per_epoch, initial=state.step_in_epoch)
        for images, targets in bar:
            lr = lr_factor(cfg, state.global_step, run.batches.steps_per_epoch)
            if tuner is not None:
                tuner.before_step()
            t0 = time.perf_counter()
            losses = train_step(run, images, targets, lr)
            compute_s += time.perf_counter() - t0
            if tuner is not None:
                tuner.after_step(time.perf_counter() - t0)
            images_seen += len(images)
            state.global_step += 1
            state.step_in_epoch += 1
            state.epoch_loss_sum += losses["loss"]
            state.epoch_steps += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{losses['loss']:.3f}", refresh=False)
            done = state.global_step >= run.total_steps
            if cfg.train.ckpt_every_steps and not done and \
                    state.global_step % cfg.train.ckpt_every_steps == 0 and \
                    state.step_in_epoch < run.batches.steps_per_epoch:
                save_checkpoint(run, state, session0, time.perf_counter() - epoch_start)
            if done:
                break
        end_of_epoch(run, state, lr, time.perf_counter() - epoch_start, session0)
        epoch_elapsed = 0.0
    return finish(run, state, session0, wall0, images_seen, compute_s)


def make_tuner(cfg: DetectConfig, device) -> Optional[ThreadTuner]:
    t = cfg.train.threads
    if device.type != "cpu":
        return None
    if t.isdigit():
        torch.set_num_threads(int(t))
    elif t == "auto" and not cfg.train.deterministic:
        return ThreadTuner(torch.get_num_threads())
    return None


def end_of_epoch(run: Run, state: State, lr: float, epoch_time: float, session0: float) -> None:
    """Evaluate (every ``eval_every`` epochs and at the end), record, checkpoint."""
    cfg = run.cfg
    last = state.global_step >= run.total_steps
    finished = state.step_in_epoch >= run.batches.steps_per_epoch
    metrics = {}
    if last or (finished and (state.epoch + 1) % cfg.train.eval_every == 0):
        rng = ckpt_io.capture_rng()  # evaluating leaves the training RNG streams untouched
        metrics = evaluate(run.model, eval_loader(run.val_set, cfg, run.info), run.val_set,
                           run.device, run.precision, cfg.model.detector == "maskrcnn",
                           run.info, cfg.log.progress and run.info.is_main)
        ckpt_io.restore_rng(rng)
        state.last_eval = metrics
    if run.info.is_main and (finished or last):
        row = epoch_record(run, state, epoch_time, metrics, lr,
                           state.elapsed_s + time.perf_counter() - session0)
        path = os.path.join(run.run_dir, "metrics.csv")
        write_rows(path, read_rows(path, state.epoch) + [row])
        msg = f"epoch {state.epoch + 1}/{cfg.train.epochs}  loss {row['train_loss']}  lr {row['lr']}"
        if metrics:
            msg += f"  box AP {metrics['box_AP']:.3f} (AP50 {metrics['box_AP50']:.3f})"
            if "mask_AP" in metrics:
                msg += f"  mask AP {metrics['mask_AP']:.3f}"
        print(msg + f"  {epoch_time:.0f} s", flush=True)
    if finished:
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        state.epoch_loss_sum, state.epoch_steps = 0.0, 0
    save_checkpoint(run, state, session0, 0.0 if finished else epoch_time)


def finish(run: Run, state: State, session0, wall0, images_seen, compute_s) -> dict:
    m = state.last_eval
    train_time = state.elapsed_s + time.perf_counter() - session0
    summary = {
        "detector": run.cfg.model.detector, "backbone": run.cfg.model.backbone,
        "dataset": run.cfg.data.dataset, "num_classes": run.train_set.num_classes,
        "params": sum(p.numel() for p in run.model.parameters()),
        **{k: m.get(k) for k in METRICS}, "eval_images": m.get("images"),
        "eval_img_per_s": m.get("img_per_s"),
        "train_img_per_s": images_seen / compute_s if compute_s else None,
        "global_step": state.global_step, "epochs": state.epoch + state.step_in_epoch /
        run.batches.steps_per_epoch, "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - wall0, "device": str(run.device),
        "precision": run.precision.name, "world_size": run.info.world_size,
        "run_dir": os.path.abspath(run.run_dir),
        "checkpoint": os.path.abspath(os.path.join(run.run_dir, "checkpoints", "last.pt")),
        "config": run.cfg.to_dict(),
    }
    if run.info.is_main:
        write_json(os.path.join(run.run_dir, "summary.json"), summary)
        if run.writer is not None:
            run.writer.close()
        line = f"box AP {m.get('box_AP', 0):.3f}  AP50 {m.get('box_AP50', 0):.3f}  AP75 " \
               f"{m.get('box_AP75', 0):.3f}"
        if m.get("mask_AP") is not None:
            line += f"  |  mask AP {m['mask_AP']:.3f}  AP50 {m['mask_AP50']:.3f}"
        print(f"{line}  ({m.get('images')} val images)  |  training {train_time:.0f} s  |  "
              f"{run.run_dir}", flush=True)
    summary["_model"] = run.model
    return summary


__all__ = ["fit", "evaluate", "make_detector", "build_sets", "lr_factor", "FORMAT",
           "CSV_FIELDS", "data_paths"]
