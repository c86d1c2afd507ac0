"""The run state: everything a checkpoint holds, and how it is saved and restored.

:class:`RunState` is the run's counters and results (one list of fields: the dataclass's
own, which ``state_dict`` and ``from_checkpoint`` both walk). :class:`Run` holds the
objects that train (model, EMA, optimizer, schedule, scaler) and writes or restores the
whole training checkpoint (see :mod:`.checkpoint` for its layout).

Exact resume (``train.deterministic=true``, ``data.num_workers=0``) holds because the
sampler restarts the epoch at the saved batch, the loader's generator is re-seeded per
epoch, the python / numpy / torch generator states are saved at the step boundary and
restored after the epoch's iterator is created, and the lr is a function of the global step.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import one_line
from . import checkpoint as ckpt_io
from . import distributed as D
from .config import Config, ConfigError
from .crash import crash_point
from .setup import Precision, load_run_weights, unwrap


@dataclass
class RunState:
    """Counters and results; ``epoch`` epochs are complete and the next batch is batch
    ``step_in_epoch`` of epoch ``epoch`` (0-based)."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0              # optimizer steps done
    elapsed_s: float = 0.0            # training wall time, all sessions
    epoch_time_s: float = 0.0         # wall time spent in the current epoch so far
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0
    train_images: int = 0             # images trained on (all ranks), for img/s
    train_compute_s: float = 0.0      # time inside training steps, for img/s
    epoch_skipped: int = 0            # damaged training images skipped this epoch (this rank)
    skipped_images: int = 0           # damaged training images skipped in the recorded epochs (all ranks)
    best_top1: float = -1.0           # on the validation split when there is one, else test
    best_epoch: int = -1
    evals: dict = field(default_factory=dict)  # last test evaluation: {"model": {...}, "ema": {...}}
    val_evals: dict = field(default_factory=dict)  # last validation evaluation, same layout
    finished: bool = False            # the schedule (or train.max_steps) is done
    resumes: int = 0                  # how many times the run was resumed

    def __post_init__(self):
        self._mark = time.perf_counter()

    def state_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "RunState":
        saved = ckpt.get("run", ckpt)  # version 1 kept the counters at the top level
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    @classmethod
    def resumed(cls, ckpt: dict, steps_per_epoch: int) -> "RunState":
        """The state a checkpoint restores, counted as one more resume; a checkpoint written
        on an epoch's last batch continues with the next epoch."""
        state = cls.from_checkpoint(ckpt)
        state.resumes += 1
        if state.step_in_epoch >= steps_per_epoch:
            state.end_epoch()
        return state

    def tick(self) -> None:
        """Add the wall time since the last tick to the run's and the epoch's clocks."""
        now = time.perf_counter()
        self.elapsed_s += now - self._mark
        self.epoch_time_s += now - self._mark
        self._mark = now

    def start_epoch(self) -> None:
        if self.step_in_epoch == 0:
            self.epoch_loss_sum, self.epoch_samples, self.epoch_time_s = 0.0, 0, 0.0
            self.epoch_skipped = 0

    @property
    def recorded_epochs(self) -> int:
        """How many epoch rows this state accounts for: the completed epochs, and the last,
        partial epoch of a run that stopped there (``train.max_steps``)."""
        return self.epoch + (1 if self.finished and self.step_in_epoch > 0 else 0)

    def end_epoch(self) -> None:
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.epoch_loss_sum, self.epoch_samples, self.epoch_time_s = 0.0, 0, 0.0
        self.epoch_skipped = 0


@dataclass
class Run:
    """The objects of one training run (built by :func:`vig_pyg.train.fit`)."""
    cfg: Config
    device: torch.device
    info: D.DistInfo
    precision: Precision
    model: nn.Module                  # the plain model (weights, evaluation, export)
    train_model: nn.Module            # what the steps call: DDP and/or torch.compile of model
    ema: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    criterion: nn.Module
    mixup: Any
    train_loader: Any
    test_loader: Any
    num_classes: int
    val_loader: Any = None            # data.val_fraction's split, or None
    state: RunState = field(default_factory=RunState)

    @property
    def steps_per_epoch(self) -> int:
        return self.train_loader.steps_per_epoch

    @property
    def total_steps(self) -> int:
        t = self.cfg.train
        total = t.epochs * self.steps_per_epoch
        return min(total, t.max_steps) if t.max_steps else total

    def checkpoint(self) -> dict:
        """The training checkpoint (call on every rank: the RNG states are gathered)."""
        self.state.tick()
        return {
            "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION,
            "run": self.state.state_dict(),
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": _plain(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict() if self.precision.scaler else None,
            "rng": gather_rng(self.info), "world_size": self.info.world_size,
            "config": self.cfg.to_dict(), "model_name": self.cfg.model.name,
            "num_classes": self.num_classes,
        }

    def save(self, path: str) -> None:
        payload = self.checkpoint()
        if self.info.is_main:
            ckpt_io.atomic_save(payload, path)
        crash_point("checkpoint")

    def restore(self, ckpt: dict, path: str) -> Optional[dict]:
        """Load a training checkpoint; returns this rank's RNG states to restore once the
        next epoch's iterator exists."""
        load_run_weights(self.model, ckpt["model"], f"checkpoint '{path}'")
        if self.ema is not None and ckpt.get("ema") is not None:
            load_run_weights(self.ema.module, ckpt["ema"], f"checkpoint '{path}' (EMA)")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scheduler"):
                self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.precision.scaler and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(f"checkpoint '{path}' does not match this run's optimizer or "
                              f"settings ({one_line(exc)[:120]}): resume with the "
                              "config it was written with") from None
        self.state = RunState.resumed(ckpt, self.steps_per_epoch)
        return rank_rng(ckpt, self.info)


def rank_rng(ckpt: dict, info: D.DistInfo) -> Optional[dict]:
    """This rank's saved RNG states (a DDP checkpoint holds every rank's; another world
    size restores none)."""
    rng = ckpt.get("rng")
    if isinstance(rng, list):
        rng = rng[info.rank] if len(rng) == info.world_size else None
    return rng


def gather_rng(info: D.DistInfo):
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
