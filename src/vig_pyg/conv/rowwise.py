r"""Parts of a :class:`~.projection.GroupedProjection` applied to rows, for the cheaper
evaluations of ``edge`` and ``sage`` (same results as the projection on every edge).

The projection's grouped 1x1 convolution on ``[M, C]`` rows (or any slice of its output
channels whose groups it owns) is :func:`vig_pyg.layers.grouped_linear.grouped_linear`;
this module holds the rest:

- :func:`batch_norm_rows` is its BatchNorm on a slice of the channels, with the batch
  statistics taken over *weighted* rows: row ``m`` stands for ``w_m`` rows of the
  per-edge tensor the official code normalises (``w_m = k`` for a centre node repeated on
  its ``k`` edges, the out-degree for a neighbour gathered onto edges). With
  :math:`W = \sum_m w_m` the statistics are

  .. math::
      \mu = \frac{1}{W}\sum_m w_m y_m, \quad
      \sigma^2 = \frac{1}{W}\sum_m w_m (y_m - \mu)^2,

  the running variance gets the unbiased :math:`\sigma^2 W / (W - 1)`, exactly as
  BatchNorm over the ``W`` per-edge rows would.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fast_paths import cpu_path

__all__ = ["batch_norm_step", "batch_norm_rows", "batch_norm_affine", "uses_batch_stats",
           "per_node_statistics"]


def uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    """BatchNorm normalises with the batch's statistics (training, or no running ones)."""
    return bn.training or bn.running_mean is None


def per_node_statistics(bn: nn.BatchNorm2d, x: Tensor) -> bool:
    """Whether ``edge`` and ``sage`` apply their per-edge projection per node while ``bn``
    takes batch statistics (training): on the CPU, where the ``k``-fold fewer
    multiply-accumulates bound the step. Off the CPU (a GPU) the projection runs on every
    edge row, as the release does: the weighted statistics and the sliced weights of the
    per-node form cost about 50 (edge) and 40 (sage) more kernel launches per block, and a
    GPU running ViG's small models is bound by its launches
    (``benchmarks/bench_models.py --ops``). With running statistics (inference) the
    per-node form is pure per-row arithmetic and runs everywhere."""
    return cpu_path(x) or not uses_batch_stats(bn)


def batch_norm_step(bn: nn.BatchNorm2d) -> float:
    """What ``bn.forward`` does once per call in training before normalising: count the
    batch and return the running-average factor (``momentum``, or ``1 / batches`` for
    a cumulative average when ``momentum`` is ``None``)."""
    if not (bn.training and bn.track_running_stats and bn.num_batches_tracked is not None):
        return 0.0 if bn.momentum is None else bn.momentum
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked)
    return bn.momentum


def _part(t: Optional[Tensor], part: slice) -> Optional[Tensor]:
    return None if t is None else t[part]


def batch_norm_rows(y: Tensor, bn: nn.BatchNorm2d, part: slice, factor: float,
                    weight: Optional[Tensor] = None,
                    total: Optional[int | Tensor] = None) -> Tensor:
    """``bn`` on rows ``y [M, len(part)]`` holding channels ``part``, batch statistics.

    Without ``weight`` every row counts once (BatchNorm's own kernel, updating the running
    statistics of ``part`` in place). With ``weight [M]`` (see the module docstring) the
    statistics are weighted and stand for ``total = sum(weight)`` rows; ``total`` may be a
    tensor on the device (nothing is read back), and a total of 0 gives zero statistics."""
    gamma, beta = _part(bn.weight, part), _part(bn.bias, part)
    running = bn.training and bn.running_mean is not None
    rm = _part(bn.running_mean, part) if running else None
    rv = _part(bn.running_var, part) if running else None
    if weight is None:
        m = y.size(0)
        view = y.contiguous().view(1, m, 1, -1).permute(0, 3, 1, 2)
        out = F.batch_norm(view, rm, rv, gamma, beta, True, factor, bn.eps)
        return out.permute(0, 2, 3, 1).reshape(m, -1)
    # statistics in float64: BatchNorm's own kernels accumulate in double too, and the
    # gradient through them is ill-conditioned (large cancellations) in single precision
    y64, w64 = y.double(), weight.double()
    if isinstance(total, Tensor):
        share = w64 / total.clamp_min(1)
        unbiased = (total / (total - 1).clamp_min(1)).to(y.dtype)
    else:
        share, unbiased = w64 / max(total, 1), total / max(total - 1, 1)
    mean64 = share @ y64
    var = (share @ (y64 - mean64).square()).to(y.dtype)
    mean = mean64.to(y.dtype)
    centred = y - mean
    if rm is not None:  # through .data, like BatchNorm's kernel: no version bump, which
        # would invalidate another call's saved slices of the same buffers (double forward)
        rm.data.mul_(1 - factor).add_(mean.detach(), alpha=factor)
        rv.data.mul_(1 - factor).add_(var.detach() * unbiased, alpha=factor)
    scale = torch.rsqrt(var + bn.eps)
    if gamma is not None:
        scale = scale * gamma
    out = centred * scale
    return out if beta is None else out + beta


def batch_norm_affine(bn: nn.BatchNorm2d, part: slice) -> tuple[Tensor, Tensor]:
    """``(a, c)`` with ``bn(y) = a * y + c`` on channels ``part`` (running statistics)."""
    a = torch.rsqrt(bn.running_var[part] + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight[part]
    c = -a * bn.running_mean[part]
    if bn.bias is not None:
        c = c + bn.bias[part]
    return a, c
