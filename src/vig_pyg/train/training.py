"""``fit``: one training run, the function the CLI, the sweeps and a notebook call.

A run: config -> setup (device, precision, model, data, optimiser) -> run state (restored
from a checkpoint when resuming) -> epochs (steps, evaluation, records, checkpoint) ->
summary.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence, Union

import torch

from ..models.compile import maybe_compile
from . import checkpoint as ckpt_io
from . import distributed as D
from .config import Config, ConfigError, build_config
from .crash import crash_point
from .data import TrainLoader, build_datasets, build_eval_loader, build_mixup, loader_init
from .loop import epoch_row, evaluate_epoch, train_epoch
from .records import Records
from .setup import (build_criterion, build_ema, build_model, build_optimizer, build_scheduler,
                    check_input_size, compile_options, count_params, run_process,
                    resolve_precision, seed_everything, set_deterministic, wrap_ddp)
from .state import Run
from .summary import final_summary, print_summary, save_final_weights
from .threads import ThreadTuner

ConfigLike = Union[None, str, dict, Config]


def resolve_config(config: ConfigLike, overrides: Sequence[str] = (),
                   resume: Optional[str] = None):
    """(config, checkpoint path, loaded checkpoint): a resumed run's saved config is the base
    unless ``config`` is given; ``overrides`` (``KEY=VALUE``) apply last."""
    path, ckpt = (None, None) if resume is None else ckpt_io.read_training_checkpoint(resume)
    if isinstance(config, Config):
        cfg = build_config(None, overrides, base=config.to_dict())
    elif isinstance(config, dict):
        cfg = build_config(None, overrides, base=config)
    else:
        base = ckpt.get("config") if ckpt is not None and config is None else None
        cfg = build_config(config, overrides, base=base)
    return cfg, path, ckpt


def fit(config: ConfigLike = None, overrides: Sequence[str] = (), output: Optional[str] = None,
        resume: Optional[str] = None) -> dict:
    """Train; returns the summary (also written to ``RUN/summary.json``).

    Args:
        config: a :class:`Config`, a dict of sections, a YAML path, or None (defaults; or,
            when resuming, the config saved in the checkpoint).
        overrides: ``"section.key=value"`` strings applied last.
        output: the run directory (default ``log.output_dir/NAME-TIMESTAMP``; when
            resuming, the checkpoint's run directory).
        resume: a run directory or training checkpoint to continue.
    """
    return fit_run(config, overrides, output, resume)[0]


def fit_run(config: ConfigLike = None, overrides: Sequence[str] = (),
            output: Optional[str] = None, resume: Optional[str] = None) -> tuple[dict, Run]:
    """:func:`fit`, also returning the :class:`Run` (trained model, EMA, optimizer)."""
    wall0 = time.perf_counter()
    cfg, resume_path, ckpt = resolve_config(config, overrides, resume)
    with run_process(cfg) as (device, info):
        return _fit(cfg, output, resume_path, ckpt, device, info, wall0)


def run_directory(cfg: Config, output: Optional[str], resume_path: Optional[str],
             info: D.DistInfo, name: Optional[str] = None) -> str:
    """The run directory; a new run refuses a directory that holds anything. ``name``:
    the default for ``log.name`` (the model and data set's names)."""
    if resume_path is not None:
        return output or os.path.dirname(os.path.dirname(os.path.abspath(resume_path)))
    name = cfg.log.name or name or f"{cfg.model.name}-{cfg.data.dataset}"
    run_dir = output or os.path.join(cfg.log.output_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = D.broadcast_object(run_dir, info)
    problem = None  # decided by rank 0 alone: the others may look after it created the dir
    if info.is_main and os.path.exists(run_dir) and (
            not os.path.isdir(run_dir) or os.listdir(run_dir)):
        problem = (f"run directory '{run_dir}' already exists: continue it with "
                   f"--resume {run_dir}, or pick a new --output")
    problem = D.broadcast_object(problem, info)
    if problem:
        raise ConfigError(problem)
    return run_dir


def build_run(cfg: Config, device, info: D.DistInfo, resumed: bool) -> Run:
    """Data, model and the objects that train it (nothing is written)."""
    t, d = cfg.train, cfg.data
    precision = resolve_precision(cfg, device)
    compile_kwargs = compile_options(cfg, device) if t.compile else {}
    if (cfg.aug.mixup > 0 or cfg.aug.cutmix > 0) and d.batch_size % 2:
        raise ConfigError(f"mixup/cutmix need an even data.batch_size, got {d.batch_size}")
    set_deterministic(t.deterministic, device)
    train_set, val_set, test_set, num_classes = build_datasets(cfg)
    seed_everything(t.seed)
    model = build_model(cfg, num_classes, initial_weights=not resumed)
    model.to(device)
    check_input_size(model, cfg, device)
    if t.grad_checkpointing:
        model.set_grad_checkpointing(True)
    pin = device.type == "cuda"
    init = loader_init(cfg.model.imports)
    train_loader = TrainLoader(train_set, d.batch_size, d.num_workers, t.seed, info.world_size,
                               info.rank, pin_memory=pin, worker_init_fn=init)
    test_loader, val_loader = (
        None if split is None else build_eval_loader(
            split, d.eval_batch_size, d.num_workers, info.world_size, info.rank,
            pin_memory=pin, worker_init_fn=init)
        for split in (test_set, val_set))
    optimizer = build_optimizer(cfg, model)
    mixup = build_mixup(cfg, num_classes)
    return Run(cfg=cfg, device=device, info=info, precision=precision, model=model,
               train_model=maybe_compile(wrap_ddp(model, cfg, device, info), t.compile,
                                         **compile_kwargs),
               ema=build_ema(cfg, model), optimizer=optimizer,
               scheduler=build_scheduler(cfg, optimizer, train_loader.steps_per_epoch),
               scaler=torch.amp.GradScaler(device.type, enabled=precision.scaler),
               criterion=build_criterion(cfg, mixup), mixup=mixup, train_loader=train_loader,
               test_loader=test_loader, val_loader=val_loader, num_classes=num_classes)


def _check_resumable(run: Run, path: str, records_dir: str) -> None:
    state, t = run.state, run.cfg.train
    done = state.epoch >= t.epochs or (t.max_steps and state.global_step >= t.max_steps)
    if done and os.path.exists(os.path.join(records_dir, "summary.json")):
        what = (f"all {t.epochs} epochs" if state.epoch >= t.epochs
                else f"train.max_steps={t.max_steps}")
        raise ConfigError(f"checkpoint '{path}' already finished {what}: raise train.epochs or "
                          "train.max_steps (--set ...) to train further")
    state.finished = bool(done)  # a finished run without its summary: write the summary


def _fit(cfg, output, resume_path, ckpt, device, info, wall0) -> dict:
    run_dir = run_directory(cfg, output, resume_path, info)
    run = build_run(cfg, device, info, resumed=ckpt is not None)
    rng = None
    if ckpt is not None:
        rng = run.restore(ckpt, resume_path)
        _check_resumable(run, resume_path, run_dir)
        del ckpt
    seed_everything(cfg.train.seed + info.rank)  # augmentations differ per rank
    records = Records(run_dir, cfg, enabled=info.is_main).open(
        run.state.recorded_epochs if resume_path is not None else None)
    try:
        _announce(run, run_dir, resume_path)
        _train(run, records, rng)
        summary = final_summary(run, run_dir, wall0)
        summary["weights_file"] = save_final_weights(run, run_dir)
        crash_point("summary")
        records.write_summary(summary)
        print_summary(run, summary)
    finally:
        records.close()
    return summary, run


def _train(run: Run, records: Records, rng) -> None:
    state, t = run.state, run.cfg.train
    last = os.path.join(records.checkpoint_dir, "last.pt")
    tuner = thread_tuner(run)
    run.scheduler.step_update(state.global_step)
    while not state.finished:
        state.finished = train_epoch(run, lambda: run.save(last), rng, tuner)
        rng = None
        final = state.finished or state.epoch + 1 >= t.epochs
        evals = (evaluate_epoch(run, final) if final or (state.epoch + 1) % t.eval_every == 0
                 else None)
        row = epoch_row(run, evals)
        records.add_epoch(row)
        crash_point("epoch_row")
        _print_epoch(run, row, tuner)
        if state.step_in_epoch >= run.steps_per_epoch:
            state.end_epoch()
        state.finished = state.finished or state.epoch >= t.epochs
        run.save(last)


def thread_tuner(run: Run):
    t = run.cfg.train
    if run.device.type != "cpu":
        return None
    if t.threads.isdigit():
        torch.set_num_threads(int(t.threads))
    elif t.threads == "auto" and not t.deterministic:
        return ThreadTuner(torch.get_num_threads())
    return None


def _announce(run: Run, run_dir: str, resume_path: Optional[str]) -> None:
    if not run.info.is_main:
        return
    cfg, s = run.cfg, run.state
    print(f"{'resuming' if resume_path else 'training'} {cfg.model.name} "
          f"({count_params(run.model) / 1e6:.2f} M params, conv {cfg.model.conv}) on "
          f"{cfg.data.dataset}: {len(run.train_loader.sampler.inner.dataset)} train images, "
          f"{_val_images(run)}"
          f"{run.num_classes} classes, {cfg.train.epochs} epochs x {run.steps_per_epoch} steps, "
          f"batch {cfg.data.batch_size}x{run.info.world_size}, {run.device.type} "
          f"{run.precision.name}{_compiled(cfg)}"
          f"{', grad checkpointing' if cfg.train.grad_checkpointing else ''} -> {run_dir}",
          flush=True)
    if resume_path:
        print(f"resumed from {resume_path} at epoch {s.epoch + 1}, step "
              f"{s.step_in_epoch}/{run.steps_per_epoch} (global step {s.global_step})", flush=True)


def _val_images(run: Run) -> str:
    if run.val_loader is None:
        return ""
    return f"{len(run.val_loader.dataset)} validation images (test once, at the end), "


def _compiled(cfg: Config) -> str:
    if not cfg.train.compile:
        return ""
    return f", compiled ({cfg.train.compile_mode})" if cfg.train.compile_mode else ", compiled"


def _print_epoch(run: Run, row: dict, tuner) -> None:
    if not run.info.is_main:
        return
    msg = f"epoch {row['epoch']}/{run.cfg.train.epochs}  loss {row['train_loss']}  lr {row['lr']}"
    for split in ("val", "test"):
        if row.get(f"{split}_top1"):
            msg += f"  {split} top-1 {float(row[f'{split}_top1']):.2f}%"
        if row.get(f"ema_{split}_top1"):
            msg += f" (ema {float(row[f'ema_{split}_top1']):.2f}%)"
    msg += f"  {row['epoch_time_s']} s"
    if tuner is not None and tuner.active:
        msg += f"  (threads {tuner.describe()})"
    print(msg, flush=True)
