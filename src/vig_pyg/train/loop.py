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
    for x, y in progress_bar(loader, progress, desc, leave=False):
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
    ``save`` is called every ``train.ckpt_every_steps`` steps. Returns True when the run's
    last step is done."""
    state, t = run.state, run.cfg.train
    state.start_epoch()
    it = run.train_loader.epoch(state.epoch, state.step_in_epoch)
    if rng is not None:  # after the iterator exists, so that creating it drew nothing
        ckpt_io.restore_rng(rng)
    run.train_model.train()
    bar = progress_bar(it, run.cfg.log.progress and run.info.is_main,
                       f"epoch {state.epoch + 1}/{t.epochs}", leave=False,
                       total=run.steps_per_epoch, initial=state.step_in_epoch)
    for x, y in bar:
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
        if bar is not it:
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}",
                            refresh=False)
        done = state.global_step >= run.total_steps
        if (t.ckpt_every_steps and state.global_step % t.ckpt_every_steps == 0
                and state.step_in_epoch < run.steps_per_epoch and not done):
            save()
        if done:
            break
    if bar is not it:
        bar.close()
    return state.global_step >= run.total_steps


def evaluate_epoch(run: Run) -> dict:
    """Evaluate the model (and its EMA); records the results and the best top-1 in the state."""
    progress = run.cfg.log.progress and run.info.is_main
    evals = {"model": evaluate(run.model, run.test_loader, run.device, run.precision,
                               run.info, progress, "test")}
    if run.ema is not None and run.cfg.ema.evaluate:
        evals["ema"] = evaluate(run.ema.module, run.test_loader, run.device, run.precision,
                                run.info, progress, "test (ema)")
    head = evals.get("ema", evals["model"])
    state = run.state
    state.evals = {k: {m: float(v[m]) for m in ("top1", "top5", "loss", "img_per_s", "images")}
                   for k, v in evals.items()}
    if head["top1"] > state.best_top1:
        state.best_top1, state.best_epoch = head["top1"], state.epoch + 1
    return evals


def epoch_row(run: Run, evals: Optional[dict]) -> dict:
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
    for prefix, key in (("", "model"), ("ema_", "ema")):
        if evals and key in evals:
            ev = evals[key]
            row.update({f"{prefix}test_loss": f"{ev['loss']:.5f}",
                        f"{prefix}test_top1": f"{ev['top1']:.3f}",
                        f"{prefix}test_top5": f"{ev['top5']:.3f}"})
    return row
