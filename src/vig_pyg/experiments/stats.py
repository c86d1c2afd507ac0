"""Seed statistics of a study: mean, standard deviation, paired differences with a
Student-t confidence interval.

For a configuration with top-1 values ``a_s`` and the reference with ``r_s`` over the seeds
``s`` both finished, ``d_s = a_s - r_s`` (paired: same seed, same data order and init
stream), ``n = |s|``, ``mean = sum(d) / n``, ``sd = sqrt(sum((d - mean)^2) / (n - 1))`` and
the 95% interval is ``mean +- t_{0.975, n-1} * sd / sqrt(n)``. With one seed there is no
interval (None).
"""
from __future__ import annotations

import math
from typing import Optional


def mean_std(values: list) -> tuple:
    """(mean, sample standard deviation (n - 1); None for one value)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def paired_difference(values: dict, reference: dict, level: float = 0.95) -> Optional[dict]:
    """``values``/``reference``: seed -> top-1. Returns {mean, low, high, n} over the common
    seeds (low/high None with one seed), or None without a common seed."""
    from scipy import stats

    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    diffs = [values[s] - reference[s] for s in seeds]
    mean, sd = mean_std(diffs)
    if sd is None:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(diffs)}
