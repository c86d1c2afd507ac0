"""The epoch loop of a detection run: training steps, COCO evaluation and the epoch's row.

Exact resume: the loop starts the epoch's batches at the state's step, then restores the
saved Python / NumPy / torch RNG states (flips, the RPN and ROI samplers), and sets the
learning rate from the global step; evaluation leaves the training RNG streams untouched.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

from ..train import checkpoint as ckpt_io
from ..train import distributed as D
from ..train.config import ConfigError
from ..train.crash import crash_point
from ..train.loop import progress_bar
from .coco import STAT_NAMES, CocoSet, coco_evaluate, to_coco_results
from .data import eval_loader
from .setup import lr_factor
from .state import DetectRun

METRICS = [f"box_{k}" for k in STAT_NAMES] + [f"mask_{k}" for k in STAT_NAMES]
#: The columns of a detection run's metrics.csv, in order.
CSV_FIELDS = ["epoch", "global_step", "lr", "train_loss", *METRICS, "epoch_time_s",
              "elapsed_s"]
#: The columns also written to TensorBoard (tags ``train/loss``, ``box/AP``, ...).
SCALARS = ("train_loss", *METRICS)


def to_device(images, targets, device):
    images = [i.to(device, non_blocking=True) for i in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def train_step(run: DetectRun, images, targets, lr: float) -> dict:
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


@torch.no_grad()
def evaluate(model: nn.Module, loader, val_set: CocoSet, device, precision, masks: bool,
             info: D.DistInfo = D.DistInfo(), progress: bool = False) -> dict:
    """COCO box (and mask) AP of ``model`` on ``loader``'s images, plus images per second."""
    was_training = model.training
    model.eval()
    boxes, segms, ids = [], [], []
    t0 = time.perf_counter()
    for images, targets in progress_bar(loader, progress, "eval", leave=False):
        images = [i.to(device) for i in images]
        with precision.autocast(device):
            outputs = model(images)
        image_ids = [t["image_id"] for t in targets]
        b, s = to_coco_results(outputs, image_ids, val_set.cat_ids, masks)
        boxes += b
        segms += s
        ids += image_ids
        crash_point("eval")
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


def train_epoch(run: DetectRun, rng: Optional[dict], tuner=None) -> None:
    """Train from the state's position to the end of its epoch or to the run's last step;
    checkpoints every ``train.ckpt_every_steps`` steps inside the epoch."""
    state, cfg, spe = run.state, run.cfg, run.steps_per_epoch
    state.start_epoch()
    batches = run.batches.epoch(state.epoch, state.step_in_epoch)
    if rng is not None:  # after the iterator exists: it must not move the restored state
        ckpt_io.restore_rng(rng)
    bar = progress_bar(batches, cfg.log.progress and run.info.is_main, f"epoch {state.epoch + 1}",
                       total=spe, initial=state.step_in_epoch)
    for images, targets in bar:
        if tuner is not None:
            tuner.before_step()
        t0 = time.perf_counter()
        losses = train_step(run, images, targets, lr_factor(cfg, state.global_step, spe))
        dt = time.perf_counter() - t0
        if tuner is not None:
            tuner.after_step(dt)
        state.train_compute_s += dt
        state.train_images += len(images)
        state.global_step += 1
        state.step_in_epoch += 1
        state.epoch_loss_sum += losses["loss"]
        state.epoch_steps += 1
        if bar is not batches:
            bar.set_postfix(loss=f"{losses['loss']:.3f}", refresh=False)
        done = state.global_step >= run.total_steps
        if cfg.train.ckpt_every_steps and not done and \
                state.global_step % cfg.train.ckpt_every_steps == 0 and state.step_in_epoch < spe:
            run.save()
        if done:
            break
    if bar is not batches:
        bar.close()


def evaluate_epoch(run: DetectRun) -> dict:
    """COCO AP of the model now (kept in ``state.evals``); the RNG streams are restored."""
    rng = ckpt_io.capture_rng()
    cfg = run.cfg
    metrics = evaluate(run.model, eval_loader(run.val_set, cfg, run.info), run.val_set,
                       run.device, run.precision, cfg.model.detector == "maskrcnn", run.info,
                       cfg.log.progress and run.info.is_main)
    ckpt_io.restore_rng(rng)
    run.state.evals = metrics
    return metrics


def epoch_row(run: DetectRun, metrics: dict) -> dict:
    """The epoch's ``metrics.csv`` row (see :data:`CSV_FIELDS`); ``lr``: the last step's."""
    state = run.state
    state.tick()
    lr = lr_factor(run.cfg, state.global_step - 1, run.steps_per_epoch)
    row = {"epoch": state.epoch + 1, "global_step": state.global_step,
           "lr": f"{run.cfg.optim.lr * lr:.3e}",
           "train_loss": f"{state.epoch_loss_sum / max(state.epoch_steps, 1):.4f}",
           "epoch_time_s": f"{state.epoch_time_s:.1f}", "elapsed_s": f"{state.elapsed_s:.1f}"}
    row.update({k: f"{metrics[k]:.4f}" for k in METRICS if k in metrics})
    return row


__all__ = ["METRICS", "CSV_FIELDS", "SCALARS", "train_step", "train_epoch", "evaluate",
           "evaluate_epoch", "epoch_row"]
