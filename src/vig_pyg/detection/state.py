"""A detection run's state and its checkpoint.

:class:`DetectState` is the classification package's :class:`~vig_pyg.train.state.RunState`
(one list of fields, walked by ``state_dict`` and ``from_checkpoint``) plus the one counter
detection adds: the steps of the current epoch (its train loss is the mean over steps).
:class:`DetectRun` holds the objects that train and writes or restores the whole
checkpoint::

    {"format": "vig_pyg.detect", "version": 2,
     "run": DetectState.state_dict(), "model": ..., "optimizer": ..., "scaler": ... | None,
     "rng": RNG states (a list, one per rank, under DDP), "world_size": int,
     "config": {...}, "num_classes": int, "cat_ids": [...], "class_names": [...]}

Version 1 kept the counters at the top level and the last evaluation under ``metrics``;
it still resumes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..errors import one_line
from ..train import checkpoint as ckpt_io
from ..train import distributed as D
from ..train.config import ConfigError
from ..train.crash import crash_point
from ..train.state import RunState, gather_rng, rank_rng
from .coco import CocoSet
from .data import TrainBatches

FORMAT = "vig_pyg.detect"
VERSION = 2


@dataclass
class DetectState(RunState):
    """:class:`RunState` (``evals``: the last evaluation's metrics) plus ``epoch_steps``."""
    epoch_steps: int = 0              # steps of the current epoch so far

    def start_epoch(self) -> None:
        if self.step_in_epoch == 0:
            super().start_epoch()
            self.epoch_steps = 0

    def end_epoch(self) -> None:
        super().end_epoch()
        self.epoch_steps = 0

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "DetectState":
        state = super().from_checkpoint(ckpt)
        if "run" not in ckpt:  # version 1
            state.evals = dict(ckpt.get("metrics") or {})
        return state


@dataclass
class DetectRun:
    """The objects of one detection training session."""
    cfg: Any                    # DetectConfig
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
    state: DetectState = field(default_factory=DetectState)

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.run_dir, "checkpoints", "last.pt")

    def checkpoint(self) -> dict:
        """The checkpoint (call on every rank: the RNG states are gathered)."""
        self.state.tick()
        return {
            "format": FORMAT, "version": VERSION, "run": self.state.state_dict(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.precision.scaler else None,
            "rng": gather_rng(self.info), "world_size": self.info.world_size,
            "config": self.cfg.to_dict(), "num_classes": self.train_set.num_classes,
            "cat_ids": list(self.val_set.cat_ids),
            "class_names": list(self.val_set.class_names),
        }

    def save(self) -> None:
        """``RUN/checkpoints/last.pt``, written atomically by the main rank."""
        payload = self.checkpoint()
        if self.info.is_main:
            ckpt_io.atomic_save(payload, self.checkpoint_path)
        crash_point("checkpoint")

    def restore(self, payload: dict, path: str) -> Optional[dict]:
        """Load a checkpoint; returns this rank's RNG states to restore once the next
        epoch's iterator exists."""
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            if self.precision.scaler and payload.get("scaler"):
                self.scaler.load_state_dict(payload["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"checkpoint '{path}' does not fit this run's detector or "
                              f"optimizer ({one_line(exc)[:160]}): resume with the config it "
                              "was written with") from None
        self.state = DetectState.resumed(payload, self.steps_per_epoch)
        return rank_rng(payload, self.info)


def load_resume(resume: str) -> tuple[str, dict]:
    """``--resume RUN_OR_CKPT`` -> (checkpoint path, the loaded detection checkpoint)."""
    path = ckpt_io.resolve_resume_path(resume)
    payload = ckpt_io.load_file(path)
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise ConfigError(f"'{path}' is not a vig-pyg detection checkpoint: resume a run of "
                          f"vig-pyg detect train (RUN or RUN/checkpoints/last.pt)")
    return path, payload


__all__ = ["FORMAT", "VERSION", "DetectState", "DetectRun", "load_resume"]
