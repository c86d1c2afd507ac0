"""A run's records: its directory, ``config.yaml``, ``metrics.csv``, TensorBoard events and
``summary.json``.

The rule that keeps them right across kills and resumes, in one place
(:meth:`Records.open`): **after a resume the records hold exactly the epochs the restored
state has completed, each once.** ``metrics.csv`` keeps the rows of epochs
1..``state.recorded_epochs`` (rows are numbered from 1; that count is the completed epochs,
plus the last partial epoch of a run that stopped at ``train.max_steps``) and drops any
later row, such as the row of an epoch whose checkpoint never got written; the TensorBoard
scalars are derived from those rows, so they are rewritten from the kept rows and hold one
value per step. Every file is replaced atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from typing import Optional, Sequence

from .config import Config

#: The columns of metrics.csv, in order (the one list; TensorBoard tags derive from it).
CSV_FIELDS = ["epoch", "global_step", "lr", "train_loss", "train_img_per_s", "skipped_images",
              "val_loss", "val_top1", "val_top5", "ema_val_loss", "ema_val_top1", "ema_val_top5",
              "test_loss", "test_top1", "test_top5", "ema_test_loss", "ema_test_top1",
              "ema_test_top5", "epoch_time_s", "elapsed_s"]
#: Columns that measure time: the only ones a resumed run may differ in.
TIMING_FIELDS = ("train_img_per_s", "epoch_time_s", "elapsed_s")
#: summary.json keys that measure time or name places.
SUMMARY_VOLATILE = ("train_img_per_s", "eval_img_per_s", "train_time_s", "wall_time_s",
                    "run_dir", "checkpoint", "weights_file", "resumes")
_SCALARS = ("train_loss", "lr", "val_loss", "val_top1", "val_top5", "ema_val_loss",
            "ema_val_top1", "ema_val_top5", "test_loss", "test_top1", "test_top5",
            "ema_test_loss", "ema_test_top1", "ema_test_top5")


def completed_rows(rows: list, completed_epochs: int) -> list:
    """The rule: the rows of the epochs a state has completed (1-based row numbers)."""
    return [r for r in rows if int(r["epoch"]) <= completed_epochs]


def read_rows(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _atomic_text(path: str, write) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Records:
    """The files of one run directory (written by the main rank only); classification's
    columns unless ``fields`` / ``scalars`` name others (detection's)."""

    def __init__(self, run_dir: str, cfg: Config, enabled: bool = True,
                 fields: Sequence[str] = CSV_FIELDS, scalars: Sequence[str] = _SCALARS):
        """``fields``: the CSV's columns; ``scalars``: the columns also sent to TensorBoard
        (tag: the first ``_`` becomes ``/``). The defaults are classification's."""
        self.run_dir, self.cfg, self.enabled = run_dir, cfg, enabled
        self.fields, self.scalars = list(fields), tuple(scalars)
        self.csv_path = os.path.join(run_dir, "metrics.csv")
        self.checkpoint_dir = os.path.join(run_dir, "checkpoints")
        self.rows: list = []
        self.writer = None

    def open(self, completed_epochs: Optional[int]) -> "Records":
        """Create the records, or on a resume (``completed_epochs``: the restored state's
        ``recorded_epochs``) reconcile them with the state."""
        if not self.enabled:
            return self
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        _atomic_text(os.path.join(self.run_dir, "config.yaml"),
                     lambda fh: fh.write(self.cfg.to_yaml()))
        self.rows = [] if completed_epochs is None else completed_rows(
            read_rows(self.csv_path), completed_epochs)
        self._write_csv()
        if self.cfg.log.tensorboard:
            self._open_tensorboard()
        return self

    def _open_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        tb = os.path.join(self.run_dir, "tb")
        shutil.rmtree(tb, ignore_errors=True)  # derived from the rows: rebuilt, never appended
        self.writer = SummaryWriter(tb)
        for row in self.rows:
            self._scalars(row)
        self.writer.flush()

    def _scalars(self, row: dict) -> None:
        step = int(row["global_step"])
        for key in self.scalars:
            if row.get(key) not in (None, ""):
                self.writer.add_scalar(key.replace("_", "/", 1), float(row[key]), step)

    def _write_csv(self) -> None:
        def write(fh):
            w = csv.DictWriter(fh, fieldnames=self.fields)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: r.get(k, "") for k in self.fields})
        _atomic_text(self.csv_path, write)

    def add_epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        self._write_csv()
        if self.writer is not None:
            self._scalars(row)
            self.writer.flush()

    def write_summary(self, summary: dict) -> None:
        if self.enabled:
            _atomic_text(os.path.join(self.run_dir, "summary.json"),
                         lambda fh: json.dump(summary, fh, indent=2))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
