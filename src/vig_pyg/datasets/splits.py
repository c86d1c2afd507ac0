"""Seeded stratified splits of a labelled set: a held-out part (validation) and a subset.

Both draw with one ``numpy.random.RandomState(seed)``, class by class in ascending label
order, so the same labels and seed give the same indices on every machine. Indices are
returned sorted (int64 arrays).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset


def _by_class(labels: Sequence[int]):
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    return labels, [np.flatnonzero(labels == c) for c in classes]


def held_count(fraction: float, count: int) -> int:
    """Items a class of ``count`` gives to the held-out part: ``fraction * count`` rounded
    half up, at least 1 when ``fraction > 0`` and ``count >= 2``, at most ``count - 1``
    (every class keeps one item)."""
    if fraction <= 0 or count < 2:
        return 0
    return min(max(int(np.floor(fraction * count + 0.5)), 1), count - 1)


def stratified_split(labels: Sequence[int], fraction: float, seed: int):
    """``(keep_idx, held_idx)``: disjoint, together every index; each class holds out
    :func:`held_count` ``(fraction, its count)`` of its items, drawn at random."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    labels, groups = _by_class(labels)
    rng = np.random.RandomState(seed)
    held = [rng.permutation(g)[:held_count(fraction, len(g))] for g in groups]
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[held_idx] = False
    return np.flatnonzero(keep).astype(np.int64), held_idx.astype(np.int64)


def subset_quotas(counts: Sequence[int], n: int) -> np.ndarray:
    """Items per class in a subset of ``n``: ``n * count / total`` rounded down, the
    remaining items going one each to the classes with the largest remainders (ties: the
    lower label)."""
    counts = np.asarray(counts, dtype=np.int64)
    exact = counts * n / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:n - quotas.sum()]] += 1
    return quotas


def stratified_subset(labels: Sequence[int], n: int, seed: int) -> np.ndarray:
    """``n`` indices drawn at random, each class contributing :func:`subset_quotas`."""
    labels, groups = _by_class(labels)
    if not 0 < n <= len(labels):
        raise ValueError(f"subset size must be in [1, {len(labels)}], got {n}")
    rng = np.random.RandomState(seed)
    quotas = subset_quotas([len(g) for g in groups], n)
    chosen = [rng.permutation(g)[:q] for g, q in zip(groups, quotas)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


class TransformedSubset(Dataset):
    """Items ``indices`` of ``base`` (loaded without a transform), with ``transform``; so the
    training part and the validation part of one set can have different transforms."""

    def __init__(self, base, indices: Sequence[int], transform: Optional[Callable] = None,
                 targets: Optional[Sequence[int]] = None):
        self.base, self.indices, self.transform = base, [int(i) for i in indices], transform
        if targets is not None:
            self.targets = [int(targets[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[self.indices[i]]
        if self.transform is not None:
            img = self.transform(img)
        return img, label
