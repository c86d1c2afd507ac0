"""Seed statistics of a study: mean, standard deviation, paired differences with a
Student-t confidence interval and p-value, and their adjustment for many comparisons.

For a configuration with top-1 values ``a_s`` and the reference with ``r_s`` over the seeds
``s`` both finished, ``d_s = a_s - r_s`` (paired: same seed, same data order and init
stream), ``n = |s|``, ``mean = sum(d) / n``, ``sd = sqrt(sum((d - mean)^2) / (n - 1))``,
``se = sd / sqrt(n)``. The interval at level ``L`` is ``mean +- t_{(1+L)/2, n-1} * se`` and
the two-sided p-value of "no difference" is ``2 * P(T_{n-1} > |mean| / se)`` (the paired
t-test, ``scipy.stats.ttest_rel``). With one seed there is neither (None).

A zero-variance difference (every seed differs by the same amount; spreads below
``ZERO_SD`` points are float rounding of equal differences) has ``p = 0`` when the mean is
not 0 and ``p = 1`` when it is, and its intervals collapse to the mean: the t statistic is
``+-inf`` or ``0/0``, and these are its limits.

Against one reference, ``m`` rows each tested at 5% find a difference by chance with
probability up to ``1 - 0.95^m`` (34% for ``m = 8``). :func:`holm` adjusts the p-values so
that the chance of any false "differs" among the ``m`` stays at most 5% (Holm 1979); the
simultaneous intervals are Bonferroni's, each at level ``1 - 0.05 / m``.
"""
from __future__ import annotations

import math
from typing import Optional

ALPHA = 0.05
#: A standard deviation of the differences below this (in top-1 points) is zero.
ZERO_SD = 1e-9


def mean_std(values: list) -> tuple:
    """(mean, sample standard deviation (n - 1); None for one value)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def paired_difference(values: dict, reference: dict, level: float = 1 - ALPHA) -> Optional[dict]:
    """``values``/``reference``: seed -> top-1. Returns {mean, low, high, p, n} over the
    common seeds (low/high/p None with one seed), or None without a common seed."""
    from scipy import stats

    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    diffs = [values[s] - reference[s] for s in seeds]
    n = len(diffs)
    mean, sd = mean_std(diffs)
    if sd is None:
        return {"mean": mean, "low": None, "high": None, "p": None, "n": 1}
    if sd < ZERO_SD:
        return {"mean": mean, "low": mean, "high": mean, "p": 0.0 if mean != 0 else 1.0, "n": n}
    se = sd / math.sqrt(n)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return {"mean": mean, "low": mean - half, "high": mean + half, "p": p, "n": n}


def holm(pvalues: list) -> list:
    """Holm-Bonferroni adjusted p-values, in the order given. With ``p_(1) <= ... <= p_(m)``
    sorted, ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``: the step-down procedure
    that rejects ``H_(i)`` at level alpha exactly when ``adj_(i) < alpha``."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def bonferroni_level(m: int, alpha: float = ALPHA) -> float:
    """The per-row confidence level whose ``m`` intervals hold together with 1 - alpha."""
    return 1 - alpha / m


def adjust(deltas: dict, values: dict, reference: dict) -> int:
    """Adds ``p_holm``, ``sim_low``/``sim_high`` (Bonferroni) and ``differs`` to every delta
    of ``deltas`` (key -> paired_difference result or None) that has a p-value; ``values``
    maps the same keys to their seed -> top-1. Returns the family size m."""
    family = [k for k, d in deltas.items() if d is not None and d["p"] is not None]
    m = len(family)
    for key, p_adj in zip(family, holm([deltas[k]["p"] for k in family])):
        sim = paired_difference(values[key], reference, bonferroni_level(m))
        deltas[key].update(p_holm=p_adj, sim_low=sim["low"], sim_high=sim["high"],
                           differs=p_adj < ALPHA)
    return m
