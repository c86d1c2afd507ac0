"""Seeded stratified splits (a held-out part, a training subset) and data.train_subset."""
import numpy as np
import pytest

from vig_pyg.datasets import digits_split
from vig_pyg.datasets.splits import held_count, stratified_split, stratified_subset, subset_quotas
from vig_pyg.train.config import ConfigError, build_config
from vig_pyg.train.data import build_datasets

# class c has COUNTS[c] items, interleaved
COUNTS = {0: 10, 1: 5, 2: 2, 3: 1}
LABELS = np.array(sum(([c] * n for c, n in COUNTS.items()), []))[np.random.default_rng(0).permutation(18)]


def _per_class(idx):
    return {c: int((LABELS[idx] == c).sum()) for c in COUNTS}


@pytest.mark.parametrize("fraction, held", [
    # round(fraction * count) half up; at least 1 for a class of >= 2; a class of 1 keeps its item
    (0.2, {0: 2, 1: 1, 2: 1, 3: 0}),
    (0.5, {0: 5, 1: 3, 2: 1, 3: 0}),
    (0.0, {0: 0, 1: 0, 2: 0, 3: 0}),
])
def test_split_counts_disjoint_union(fraction, held):
    keep, out = stratified_split(LABELS, fraction, seed=0)
    assert not set(keep) & set(out) and sorted([*keep, *out]) == list(range(18))
    assert _per_class(out) == held
    assert _per_class(keep) == {c: COUNTS[c] - held[c] for c in COUNTS}
    assert held_count(0.9, 2) == 1 and held_count(0.3, 1) == 0


def test_split_is_seeded():
    labels = np.arange(200) % 7
    a, b = stratified_split(labels, 0.25, 3), stratified_split(labels, 0.25, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], stratified_split(labels, 0.25, 4)[1])
    with pytest.raises(ValueError):
        stratified_split(labels, 1.0, 0)


def test_subset_quotas_and_seed():
    # 9 of 18: exact shares 5, 2.5, 1, 0.5; the one left over goes to the lower of the tied labels
    assert subset_quotas(list(COUNTS.values()), 9).tolist() == [5, 3, 1, 0]
    sub = stratified_subset(LABELS, 9, seed=0)
    assert len(set(sub)) == 9 and _per_class(sub) == {0: 5, 1: 3, 2: 1, 3: 0}
    assert np.array_equal(sub, stratified_subset(LABELS, 9, seed=0))
    labels = np.arange(300) % 3
    assert not np.array_equal(stratified_subset(labels, 30, 0), stratified_subset(labels, 30, 1))
    assert len(stratified_subset(LABELS, 18, 0)) == 18


@pytest.mark.parametrize("item, fragment", [
    ("data.train_subset=0", "data.train_subset must be a positive number"),
    ("data.train_subset=-3", "data.train_subset must be a positive number"),
])
def test_config_errors(item, fragment):
    with pytest.raises(ConfigError) as err:
        build_config(None, [item])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_digits_training_subset():
    train_idx, _, labels = digits_split(0.2, 0)
    counts = np.bincount(labels[train_idx])  # the 1437 training digits per class
    train, _, test, n = build_datasets(build_config(None, ["data.train_subset=100"]))
    assert len(train) == 100 and len(test) == 360 and n == 10
    assert np.bincount(train.targets).tolist() == subset_quotas(counts, 100).tolist()
    assert train[0][0].shape == (3, 32, 32)
    again, _, _, _ = build_datasets(build_config(None, ["data.train_subset=100"]))
    assert again.indices == train.indices  # seeded by data.split_seed
    other, _, _, _ = build_datasets(build_config(None, ["data.train_subset=100",
                                                     "data.split_seed=1"]))
    assert other.indices != train.indices
    with pytest.raises(ConfigError) as err:
        build_datasets(build_config(None, ["data.train_subset=1438"]))
    assert "data.train_subset=1438 is above the 1437" in str(err.value)
