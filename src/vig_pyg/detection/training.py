"""``fit(config) -> summary``: one detection training run.

A run: config -> setup (device, precision, data, detector, optimizer) -> run state
(restored from a checkpoint when resuming) -> epochs (steps, evaluation, records,
checkpoint) -> summary. The records (``config.yaml``, ``metrics.csv``, ``tb/``,
``summary.json``) are the classification package's :class:`~vig_pyg.train.records.Records`
with detection's columns, under the same resume rule: they hold exactly the epochs the
restored state has completed, each once. ``checkpoints/last.pt`` is resumable.
"""
from __future__ import annotations

import os
import time
from typing import Optional

import torch
from torch import nn

from ..train import distributed as D
from ..train.config import ConfigError
from ..train.crash import crash_point
from ..train.training import run_directory, thread_tuner
from ..train.records import Records
from ..train.setup import (count_params, resolve_precision, run_process, seed_everything,
                           set_deterministic)
from .config import DetectConfig, build_config
from .data import TrainBatches, build_sets
from .loop import CSV_FIELDS, METRICS, SCALARS, epoch_row, evaluate_epoch, train_epoch
from .setup import make_detector, make_optimizer
from .state import DetectRun, load_resume


def resolve_config(config=None, overrides=(), resume_payload: Optional[dict] = None
                   ) -> DetectConfig:
    """A config object, a YAML path or None (defaults, or the resumed run's config)."""
    if isinstance(config, DetectConfig):
        return build_config(None, overrides, base=config.to_dict())
    base = resume_payload.get("config") if (resume_payload and config is None) else None
    return build_config(config, overrides, base=base)


def fit(config=None, overrides=(), output: Optional[str] = None,
        resume: Optional[str] = None) -> dict:
    """Trains a detector; returns the summary (also ``RUN/summary.json``).

    ``config``: a :class:`DetectConfig`, a YAML path or None (defaults; with ``resume``
    the run's own config). ``overrides``: ``"section.key=value"`` strings. ``resume``: a run
    directory or its checkpoint, continued exactly."""
    resume_path, payload = load_resume(resume) if resume else (None, None)
    cfg = resolve_config(config, overrides, payload)
    wall0 = time.perf_counter()
    with run_process(cfg) as (device, info):
        return _fit(cfg, output, resume_path, payload, device, info, wall0)


def build_run(cfg: DetectConfig, device, info: D.DistInfo, output, resume_path,
              resumed: bool) -> DetectRun:
    """Data, detector and optimizer, all checked before the run directory appears."""
    set_deterministic(cfg.train.deterministic, device)
    precision = resolve_precision(cfg, device)
    m = cfg.model
    run_dir = run_directory(cfg, output, resume_path, info,
                       name=f"{m.detector}-{m.backbone}-{cfg.data.dataset}")
    train_set, val_set = build_sets(cfg, progress=cfg.log.progress and info.is_main)
    seed_everything(cfg.train.seed)
    model = make_detector(cfg, train_set.num_classes, with_checkpoint=not resumed).to(device)
    optimizer = make_optimizer(cfg, model)
    batches = TrainBatches(train_set, cfg.data.batch_size, cfg.data.num_workers,
                           cfg.train.seed, info)
    total = cfg.train.epochs * batches.steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    return DetectRun(cfg, device, info, precision, model, model, optimizer,
                     torch.amp.GradScaler(device.type, enabled=precision.scaler), batches,
                     val_set, train_set, run_dir, total)


def _check_resumable(run: DetectRun, path: str) -> None:
    """A finished run resumes only to write a summary it lost (killed while writing it)."""
    done = run.state.global_step >= run.total_steps
    if done and os.path.exists(os.path.join(run.run_dir, "summary.json")):
        raise ConfigError(f"checkpoint '{path}' already finished its {run.total_steps} steps: "
                          "raise train.epochs or train.max_steps (--set ...) to train further")
    run.state.finished = done


def _fit(cfg, output, resume_path, payload, device, info, wall0) -> dict:
    run = build_run(cfg, device, info, output, resume_path, resumed=payload is not None)
    rng = None
    if payload is not None:
        rng = run.restore(payload, resume_path)
        _check_resumable(run, resume_path)
        del payload
    if info.enabled:
        run.net = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None)
    seed_everything(cfg.train.seed + info.rank)
    records = Records(run.run_dir, cfg, enabled=info.is_main, fields=CSV_FIELDS,
                      scalars=SCALARS).open(
        run.state.recorded_epochs if resume_path is not None else None)
    try:
        _announce(run, resume_path is not None)
        _train(run, records, rng)
        summary = final_summary(run, wall0)
        crash_point("summary")
        records.write_summary(summary)
        _print_summary(run, summary)
    finally:
        records.close()
    summary["_model"] = run.model
    return summary


def _train(run: DetectRun, records: Records, rng: Optional[dict]) -> None:
    """Epochs of steps; evaluation every ``eval_every`` epochs and at the end; a row and a
    checkpoint at every epoch's end (and at the last step)."""
    state, cfg = run.state, run.cfg
    tuner = thread_tuner(run)
    while not state.finished:
        train_epoch(run, rng, tuner)
        rng = None
        state.finished = state.global_step >= run.total_steps
        full = state.step_in_epoch >= run.steps_per_epoch
        due = full and (state.epoch + 1) % cfg.train.eval_every == 0
        metrics = evaluate_epoch(run) if state.finished or due else {}
        row = epoch_row(run, metrics)
        records.add_epoch(row)
        crash_point("epoch_row")
        _print_epoch(run, row, metrics)
        if full:
            state.end_epoch()
        run.save()


def final_summary(run: DetectRun, wall0: float) -> dict:
    """The run's summary, from its state alone (times and places aside)."""
    state, cfg = run.state, run.cfg
    state.tick()
    m = state.evals
    return {
        "detector": cfg.model.detector, "backbone": cfg.model.backbone,
        "dataset": cfg.data.dataset, "num_classes": run.train_set.num_classes,
        "params": count_params(run.model),
        **{k: m.get(k) for k in METRICS}, "eval_images": m.get("images"),
        "eval_img_per_s": m.get("img_per_s"),
        "train_img_per_s": (state.train_images / state.train_compute_s
                            if state.train_compute_s else None),
        "global_step": state.global_step,
        "epochs": state.epoch + state.step_in_epoch / run.steps_per_epoch,
        "train_time_s": state.elapsed_s, "wall_time_s": time.perf_counter() - wall0,
        "resumes": state.resumes, "device": str(run.device),
        "precision": run.precision.name, "world_size": run.info.world_size,
        "run_dir": os.path.abspath(run.run_dir),
        "checkpoint": os.path.abspath(run.checkpoint_path), "config": cfg.to_dict(),
    }


def _announce(run: DetectRun, resumed: bool) -> None:
    if not run.info.is_main:
        return
    c, d, s = run.cfg, run.cfg.data, run.state
    print(f"{'resuming' if resumed else 'training'} {c.model.detector} + {c.model.backbone} "
          f"({count_params(run.model) / 1e6:.2f} M params) on {d.dataset}: "
          f"{len(run.train_set)} train / {len(run.val_set)} val images, "
          f"{run.train_set.num_classes} classes, {run.total_steps} steps ({c.train.epochs} "
          f"epochs x {run.steps_per_epoch}), batch {d.batch_size}x{run.info.world_size}, "
          f"{run.device.type} {run.precision.name} -> {run.run_dir}", flush=True)
    if resumed:
        print(f"resumed at epoch {s.epoch + 1}, step {s.step_in_epoch}/{run.steps_per_epoch} "
              f"(global step {s.global_step})", flush=True)


def _print_epoch(run: DetectRun, row: dict, metrics: dict) -> None:
    if not run.info.is_main:
        return
    msg = (f"epoch {row['epoch']}/{run.cfg.train.epochs}  loss {row['train_loss']}  "
           f"lr {row['lr']}")
    if metrics:
        msg += f"  box AP {metrics['box_AP']:.3f} (AP50 {metrics['box_AP50']:.3f})"
        if "mask_AP" in metrics:
            msg += f"  mask AP {metrics['mask_AP']:.3f}"
    print(msg + f"  {float(row['epoch_time_s']):.0f} s", flush=True)


def _print_summary(run: DetectRun, summary: dict) -> None:
    if not run.info.is_main:
        return
    s = summary
    line = f"box AP {s['box_AP'] or 0:.3f}  AP50 {s['box_AP50'] or 0:.3f}  AP75 " \
           f"{s['box_AP75'] or 0:.3f}"
    if s.get("mask_AP") is not None:
        line += f"  |  mask AP {s['mask_AP']:.3f}  AP50 {s['mask_AP50']:.3f}"
    print(f"{line}  ({s['eval_images']} val images)  |  training {s['train_time_s']:.0f} s  |  "
          f"{run.run_dir}", flush=True)


__all__ = ["fit", "resolve_config", "build_run", "final_summary"]
