"""The end of a run: ``summary.json`` and the model-only weights file.

The summary is computed from the run state alone, so a run killed and resumed (even
killed while writing these files) ends with the summary of an uninterrupted run, except
the fields of ``records.SUMMARY_VOLATILE`` (times and places) and ``resumes``.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from . import distributed as D
from .setup import count_params
from .state import Run


def final_summary(run: Run, run_dir: str, wall0: float) -> dict:
    state, cfg = run.state, run.cfg
    state.tick()
    model_eval, ema_eval = state.evals.get("model", {}), state.evals.get("ema", {})
    head = ema_eval or model_eval
    diff = D.max_param_difference(run.model, run.info)
    D.broadcast_buffers(run.model, run.info)
    partial = state.step_in_epoch / run.steps_per_epoch
    return {
        "model": cfg.model.name, "conv": cfg.model.conv, "dataset": cfg.data.dataset,
        "num_classes": run.num_classes, "params": count_params(run.model),
        "weights": "ema" if ema_eval else "model",
        "top1": head.get("top1"), "top5": head.get("top5"), "loss": head.get("loss"),
        "model_top1": model_eval.get("top1"), "model_top5": model_eval.get("top5"),
        "model_loss": model_eval.get("loss"),
        "ema_top1": ema_eval.get("top1"), "ema_top5": ema_eval.get("top5"),
        "ema_loss": ema_eval.get("loss"),
        **_val_summary(state.val_evals),
        "selected_on": "val" if state.val_evals else "test",
        "best_top1": state.best_top1, "best_epoch": state.best_epoch,
        "epochs": state.epoch + partial, "global_step": state.global_step,
        "skipped_images": state.skipped_images,  # damaged training images skipped (data.skip_bad_images)
        "eval_img_per_s": head.get("img_per_s"),
        "train_img_per_s": (state.train_images / state.train_compute_s
                            if state.train_compute_s > 0 else None),
        "train_time_s": state.elapsed_s, "wall_time_s": time.perf_counter() - wall0,
        "resumes": state.resumes,
        "world_size": run.info.world_size, "device": str(run.device),
        "precision": run.precision.name,
        "ddp_max_param_diff": diff if run.info.enabled else None,
        "run_dir": os.path.abspath(run_dir),
        "checkpoint": os.path.abspath(os.path.join(run_dir, "checkpoints", "last.pt")),
        "config": cfg.to_dict(),
    }


def _val_summary(val_evals: dict) -> dict:
    """The validation split's results (None without one): ``val_*`` of the reported weights
    (EMA when evaluated), ``model_val_*`` and ``ema_val_*``."""
    model_eval, ema_eval = val_evals.get("model", {}), val_evals.get("ema", {})
    head = ema_eval or model_eval
    out = {}
    for prefix, ev in (("val_", head), ("model_val_", model_eval), ("ema_val_", ema_eval)):
        out.update({f"{prefix}{m}": ev.get(m) for m in ("top1", "top5", "loss")})
    return out


def save_final_weights(run: Run, run_dir: str) -> Optional[str]:
    """``RUN/model.pt``: the reported weights (EMA when it was evaluated) in the model-only
    format that ``create_model(checkpoint=...)`` and ``load_model`` read."""
    from ..models import save_checkpoint

    export = run.ema.module if (run.ema is not None and "ema" in run.state.evals) else run.model
    if not run.info.is_main or not hasattr(export, "config"):
        return None
    path = os.path.abspath(os.path.join(run_dir, "model.pt"))
    head = run.state.evals.get("ema") or run.state.evals.get("model") or {}
    save_checkpoint(export, path, dataset=run.cfg.data.dataset, top1=head.get("top1"),
                    weights="ema" if export is not run.model else "model",
                    imports=list(run.cfg.model.imports))
    return path


def print_summary(run: Run, summary: dict) -> None:
    if not run.info.is_main or summary["top1"] is None:
        return
    val = "" if summary["val_top1"] is None else f"val top-1 {summary['val_top1']:.2f}%  "
    print(f"{val}test top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  loss "
          f"{summary['loss']:.4f}  ({summary['weights']} weights)  |  training "
          f"{summary['train_time_s']:.1f} s, {summary['train_img_per_s'] or 0:.0f} img/s  |  "
          f"{summary['run_dir']}", flush=True)
