"""``data.val_fraction``: a stratified, seeded validation split carved out of the training
data; training evaluates on it and evaluates the test split once, at the end."""
import csv
import json

import numpy as np
import pytest
import torch

from vig_pyg.datasets.digits import digits_split
from vig_pyg.datasets.splits import held_count
from vig_pyg.models import load_model
from vig_pyg.train import fit
from vig_pyg.train.config import ConfigError, build_config
from vig_pyg.train.data import build_datasets, labels_of

# 2 blocks of 32 channels on a 4x4 node grid; 64 training images = 2 steps per epoch.
TINY = ["model.channels=32", "model.depth=2", "model.stem_stride=8", "model.k=4",
        "data.batch_size=32", "log.progress=false", "sched.warmup_epochs=0",
        "train.device=cpu", "train.amp=none", "train.threads=1", "aug.mixup=0", "aug.cutmix=0"]


def _digit_labels():
    train_idx, _, labels = digits_split(0.2, 0)
    return labels[train_idx]


def test_split_is_stratified_disjoint_and_seeded():
    labels = _digit_labels()
    train, val, test, n = build_datasets(build_config(None, ["data.val_fraction=0.1"]))
    assert n == 10 and len(test) == 360
    held, kept = set(val.indices), set(train.indices)
    assert not held & kept and len(held | kept) == len(labels)  # disjoint, together all
    for c in range(10):  # each class holds out its rounded share (rule: splits.held_count)
        assert sum(labels[i] == c for i in held) == held_count(0.1, int((labels == c).sum()))
    x1, x2 = val[0][0], val[0][0]
    assert torch.equal(x1, x2)  # test-time transform: no random augmentation
    again = build_datasets(build_config(None, ["data.val_fraction=0.1"])).val
    other = build_datasets(build_config(None, ["data.val_fraction=0.1",
                                               "data.split_seed=1"])).val
    assert again.indices == val.indices and other.indices != val.indices


def test_subset_comes_from_the_rest_and_leaves_validation_alone():
    labels = _digit_labels()
    full = build_datasets(build_config(None, ["data.val_fraction=0.1"]))
    small = build_datasets(build_config(None, ["data.val_fraction=0.1",
                                               "data.train_subset=100"]))
    assert small.val.indices == full.val.indices  # the budget does not move the validation set
    assert len(small.train) == 100 and set(small.train.indices) <= set(full.train.indices)
    assert np.bincount(labels[small.train.indices], minlength=10).min() >= 9  # stratified
    assert labels_of(small.train).tolist() == labels[small.train.indices].tolist()
    rest = len(full.train)
    with pytest.raises(ConfigError, match=f"above the {rest} training images of digits left "
                                          "after data.val_fraction=0.1"):
        build_datasets(build_config(None, ["data.val_fraction=0.1",
                                           f"data.train_subset={rest + 1}"]))


@pytest.mark.parametrize("bad", ["1", "1.5", "-0.1"])
def test_val_fraction_out_of_range(bad):
    with pytest.raises(ConfigError, match=r"data.val_fraction must be in \[0, 1\)"):
        build_config(None, [f"data.val_fraction={bad}"])


def _accuracy(model, dataset) -> float:
    model.eval()
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).double().mean().item()


def test_training_validates_and_tests_once(tmp_path):
    over = TINY + ["data.val_fraction=0.1", "data.train_subset=64", "train.epochs=3",
                   "train.eval_every=1"]
    summary = fit(None, over, output=str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert all(r["val_top1"] and r["ema_val_top1"] for r in rows)
    assert [bool(r["test_top1"]) for r in rows] == [False, False, True]  # test once, at the end
    assert summary["selected_on"] == "val" and summary["weights"] == "ema"
    best = max(float(r["ema_val_top1"]) for r in rows)
    assert summary["best_top1"] == pytest.approx(best, abs=5e-4)  # the CSV rounds to 3 places
    # The recorded numbers are the saved weights' accuracy on each split, recomputed here.
    splits = build_datasets(build_config(None, over))
    model = load_model(str(tmp_path / "run" / "model.pt"))
    assert summary["val_top1"] == pytest.approx(_accuracy(model, splits.val), abs=1e-6)
    assert summary["top1"] == pytest.approx(_accuracy(model, splits.test), abs=1e-6)
    assert float(rows[-1]["ema_test_top1"]) == pytest.approx(summary["top1"], abs=1e-3)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["val_top1"] == summary["val_top1"]


def test_without_validation_nothing_changes(tmp_path):
    summary = fit(None, TINY + ["data.train_subset=64", "train.epochs=2", "train.eval_every=1"],
                  output=str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["test_top1"] and not r["val_top1"] for r in rows)
    assert summary["selected_on"] == "test" and summary["val_top1"] is None
