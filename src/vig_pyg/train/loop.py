"""The epoch loop: training steps, evaluation, and the epoch's row of metrics."""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint as ckpt_io
from . import distributed as D
from ..datasets.bad_images import BadImageError, take_skipped
from ..models.finite import check_finite
from .crash import crash_point
from .setup import Precision
from .state import Run


def progress_bar(iterable, enabled: bool, desc: str, leave: bool = True, total=None,
                 initial: int = 0):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=leave, total=total, initial=initial,
                dynamic_ncols=True, mininterval=0.5, file=sys.stderr)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: Precision,
             info: D.DistInfo = D.DistInfo(), progress: bool = False, desc: str = "eval") -> dict:
    """Loss, top-1, top-5 (percent) and images per second over ``loader`` (summed over ranks)."""
    model.eval()
    loss_sum = top1 = top5 = n = 0.0
    t0 = time.perf_counter()
    for batch in progress_bar(loader, progress, desc, leave=False):
        take_skipped(batch)
        x, y = batch
        if y is None:  # data.skip_bad_images dropped every image of the batch
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast(device):
            out = model(x)
        out = out.float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        check_finite(model)  # off the CPU: the blocks' NaN/Inf flags, read with the loss
        hit = out.topk(min(5, out.size(1)), dim=1).indices.eq(y[:, None])
        top1 += hit[:, 0].sum().item()
        top5 += hit.any(dim=1).sum().item()
        n += y.numel()
        crash_point("eval")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    loss_sum, top1, top5, n = D.all_reduce_sum([loss_sum, top1, top5, n], info, device)
    dt = max(D.all_reduce_sum([dt], info, device)[0] / max(info.world_size, 1), 1e-9)
    n = max(n, 1)
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n,
            "images": int(n), "img_per_s": n / dt, "time_s": dt}


def _step(run: Run, x, y) -> float:
    """One optimizer step; returns the batch loss."""
    from timm.utils import dispatch_clip_grad

    if run.mixup is not None:
        x, y = run.mixup(x, y)
    with run.precision.autocast(run.device):
        out = run.train_model(x)
    loss = run.criterion(out.float(), y)
    value = loss.item()
    check_finite(run.model)  # off the CPU: the blocks' NaN/Inf flags, read with the loss
    if not math.isfinite(value) and not run.precision.scaler:
        raise RuntimeError(f"loss is {value} at step {run.state.global_step}: lower optim.lr "
                           "or enable optim.clip_grad")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.cfg.optim.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        dispatch_clip_grad(run.model.parameters(), run.cfg.optim.clip_grad,
                           mode=run.cfg.optim.clip_mode)
    run.scaler.step(run.optimizer)  # GradScaler skips steps with inf/NaN gradients (fp16)
    run.scaler.update()
    return value


def train_epoch(run: Run, save: Callable[[], None], rng: Optional[dict], tuner=None) -> bool:
    """Train from ``run.state``'s position to the end of its epoch (or to the last step);
    ``save`` is called every ``train.ckpt_every_steps`` steps, and before a damaged image
    (:class:`BadImageError`) leaves, so that ``--resume`` continues at its batch once the
    file is fixed. Returns True when the run's last step is done."""
    state, t = run.state, run.cfg.train
    state.start_epoch()
    it = run.train_loader.epoch(state.epoch, state.step_in_epoch)
    if rng is not None:  # after the iterator exists, so that creating it drew nothing
        ckpt_io.restore_rng(rng)
    run.train_model.train()
    bar = progress_bar(it, run.cfg.log.progress and run.info.is_main,
                       f"epoch {state.epoch + 1}/{t.epochs}", leave=False,
                       total=run.steps_per_epoch, initial=state.step_in_epoch)
    start = _BatchStart(run)
    try:
        for batch in bar:
            x, y = _trainable(run, batch)
            if x is None:  # every image of the batch was skipped: no step
                state.step_in_epoch += 1
            elif _train_step(run, x, y, tuner, bar if bar is not it else None, save):
                break
            start.mark()
    except BadImageError:
        start.save(save)
        raise
    if bar is not it:
        bar.close()
    return state.global_step >= run.total_steps


class _BatchStart:
    """The RNG states before the next batch is read: reading it in this process
    (``data.num_workers=0``) draws the augmentations' numbers, so a checkpoint saved when
    that batch fails restores these to see the batch exactly as an unbroken run would.
    Kept only where files are read (imagefolder): other sets have no damaged image."""

    def __init__(self, run: Run):
        self.run = run
        self.needed = (run.cfg.data.dataset == "imagefolder"
                       and run.train_loader.loader.num_workers == 0)
        self.mark()

    def mark(self) -> None:
        self.rng = ckpt_io.capture_rng() if self.needed else None

    def save(self, save: Callable[[], None]) -> None:
        """Checkpoint at the failing batch; not under DDP, where the save's collectives
        would wait for ranks that are inside a step (their last checkpoint stands)."""
        if self.run.info.enabled:
            return
        if self.rng is not None:
            ckpt_io.restore_rng(self.rng)
        save()


def _trainable(run: Run, batch):
    """``(x, y)`` of a batch, its skipped images counted. A batch that lost images and is
    left odd under mixup / cutmix (which pair its images) also drops its last one; left
    with fewer than two (BatchNorm's batch statistics need two) it gives ``(None, None)``."""
    skipped = take_skipped(batch)
    run.state.epoch_skipped += skipped
    x, y = batch
    if not skipped:
        return x, y
    if y is not None and run.mixup is not None and y.size(0) % 2:
        x, y = x[:-1], y[:-1]
    return (None, None) if y is None or y.size(0) < 2 else (x, y)


def _train_step(run: Run, x, y, tuner, bar, save: Callable[[], None]) -> bool:
    """One batch's optimizer step and its bookkeeping; returns True at the run's last step."""
    state, t = run.state, run.cfg.train
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    t0 = time.perf_counter()
    if tuner is not None:
        tuner.before_step()
    loss = _step(run, x, y)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    dt = time.perf_counter() - t0
    if tuner is not None:
        tuner.after_step(dt)
    state.train_compute_s += dt
    state.global_step += 1
    run.scheduler.step_update(state.global_step)
    if run.ema is not None:
        run.ema.update(run.model, step=state.global_step)
    if math.isfinite(loss):  # an fp16 overflow step, skipped by GradScaler, is not counted
        state.epoch_loss_sum += loss * y.size(0)
        state.epoch_samples += y.size(0)
    state.train_images += y.size(0) * run.info.world_size
    state.step_in_epoch += 1
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}",
                        refresh=False)
    done = state.global_step >= run.total_steps
    if (t.ckpt_every_steps and state.global_step % t.ckpt_every_steps == 0
            and state.step_in_epoch < run.steps_per_epoch and not done):
        save()
    return done


def skipped_in_epoch(run: Run) -> int:
    """The epoch's skipped training images over all ranks, added to the run's total."""
    n = int(D.all_reduce_sum([run.state.epoch_skipped], run.info, run.device)[0])
    run.state.skipped_images += n
    return n


def evaluate_epoch(run: Run, final: bool) -> dict:
    """``{split: {"model": ..., "ema": ...}}``: the model (and its EMA) on the validation split
    when there is one, and on the test split when there is none or ``final`` (so with a
    validation split the test split is evaluated once, at the end). Records the results in
    the state, and the best top-1 of the selection split (validation, else test)."""
    state, splits = run.state, {}
    if run.val_loader is not None:
        splits["val"] = _evaluate_models(run, run.val_loader, "val")
        state.val_evals = _plain_evals(splits["val"])
    if run.val_loader is None or final:
        splits["test"] = _evaluate_models(run, run.test_loader, "test")
        state.evals = _plain_evals(splits["test"])
    chosen = splits["val" if run.val_loader is not None else "test"]
    head = chosen.get("ema", chosen["model"])
    if head["top1"] > state.best_top1:
        state.best_top1, state.best_epoch = head["top1"], state.epoch + 1
    return splits


def _evaluate_models(run: Run, loader, split: str) -> dict:
    progress = run.cfg.log.progress and run.info.is_main
    evals = {"model": evaluate(run.model, loader, run.device, run.precision, run.info,
                               progress, split)}
    if run.ema is not None and run.cfg.ema.evaluate:
        evals["ema"] = evaluate(run.ema.module, loader, run.device, run.precision, run.info,
                                progress, f"{split} (ema)")
    return evals


def _plain_evals(evals: dict) -> dict:
    return {k: {m: float(v[m]) for m in ("top1", "top5", "loss", "img_per_s", "images")}
            for k, v in evals.items()}


def epoch_row(run: Run, splits: Optional[dict]) -> dict:
    """The epoch's ``metrics.csv`` row (see ``records.CSV_FIELDS``)."""
    state = run.state
    state.tick()
    loss_sum, samples = D.all_reduce_sum([state.epoch_loss_sum, state.epoch_samples],
                                         run.info, run.device)
    row = {"epoch": state.epoch + 1, "global_step": state.global_step,
           "lr": f"{run.optimizer.param_groups[0]['lr']:.6g}",
           "train_loss": f"{loss_sum / max(samples, 1):.5f}",
           "train_img_per_s": f"{samples / max(state.epoch_time_s, 1e-9):.1f}",
           "epoch_time_s": f"{state.epoch_time_s:.2f}", "elapsed_s": f"{state.elapsed_s:.1f}"}
    for split, evals in (splits or {}).items():
        for prefix, key in (("", "model"), ("ema_", "ema")):
            if key in evals:
                ev = evals[key]
                row.update({f"{prefix}{split}_loss": f"{ev['loss']:.5f}",
                            f"{prefix}{split}_top1": f"{ev['top1']:.3f}",
                            f"{prefix}{split}_top5": f"{ev['top5']:.3f}"})
    row["skipped_images"] = skipped_in_epoch(run)
    return row
