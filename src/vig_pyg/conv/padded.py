r"""Variable-degree graphs on the dense path: a padded neighbour table.

Graphs whose degree varies (``axial_threshold``, windows at a border, any user graph) cannot
use the fixed-degree kernels directly. With edges grouped by target (``edge_index[1]``
non-decreasing, the layout of every graph builder) the neighbours of target ``i`` fill row
``i`` of a table ``[N, kmax]``; the free slots repeat the target's first neighbour, which
changes no maximum (nor, as it is the same row, where a maximum's gradient goes), or, for
sums and for targets without neighbours, point at one appended zero row. Then

- ``mr``: :math:`m_i = \max_r x_{T[i, r]} - x_i` (one chunked gather, ``gather_max``) and
  :math:`m_i = 0` for a target without neighbours (what ``propagate``'s max gives);
- ``gin``: :math:`\sum_r x_{T[i, r]}` (``gather_sum``, the zero row for free slots);
- any other max/sum convolution (``edge``, ``sage``): its messages are computed on the real
  edges exactly as ``propagate`` computes them (so BatchNorm sees the same rows), then
  reduced through the table of edge positions instead of a scatter.

:func:`padded_propagate` returns ``None`` where the table would not pay (targets out of
order, or fewer than :data:`MIN_FILL` of the ``N * kmax`` slots used); the caller then runs
``propagate``. Order and ``kmax`` are read from the targets on the CPU; elsewhere, where
that read would stop the device, they are taken from the builder's mark
(:func:`~vig_pyg.graph.knn.mark_max_degree`, set by ``window_knn`` on its
smaller windows), and an unmarked graph runs ``propagate`` (no read either). A max table
beats PyG's scatter-max well below full (max needs 20 % of its slots used); a sum table
pays only when nearly full, since scatter-add is cheap (75 %).
``python benchmarks/bench_graphs.py --graphs axial_threshold axial_threshold/propagate``
times the table against ``propagate`` in a whole model.
"""
from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor

from ..fast_paths import cpu_path
from ..graph.counting import count_values
from ..graph.knn import marked_max_degree
from .functional import gather_max, gather_sum

__all__ = ["padded_table", "padded_propagate", "MIN_FILL"]

#: Use the table when at least this share of its slots holds real edges, per aggregation.
MIN_FILL = {"max": 0.2, "sum": 0.75}


def padded_table(dst: Tensor, values: Tensor, num_targets: int, pad: str,
                 zero_row: int, kmax: int | None = None) -> tuple[Tensor, Tensor]:
    """``(table [N, kmax], degree [N])``: ``values`` (one per edge, edges grouped by target)
    laid out by target; free slots hold the target's first value (``pad="first"``) or
    ``zero_row`` (``pad="zero"``); targets without edges get ``zero_row`` everywhere.
    ``kmax`` (at least the largest degree) is read from ``dst`` where not given."""
    if kmax is None:
        degree = torch.bincount(dst, minlength=num_targets)
        kmax = int(degree.max()) if degree.numel() else 0
    else:  # counted into a known size: nothing is read back
        degree = count_values(dst, num_targets)
    start = torch.cumsum(degree, 0) - degree
    slot = torch.arange(dst.numel(), device=dst.device) - start[dst]
    table = torch.full((num_targets, max(kmax, 1)), zero_row, dtype=torch.long,
                       device=dst.device)
    table[dst, slot] = values
    if pad == "first":
        free = torch.arange(table.size(1), device=dst.device).unsqueeze(0) >= degree.unsqueeze(1)
        table = torch.where(free, table[:, :1], table)
    return table, degree


@lru_cache(maxsize=None)
def _message_args(cls) -> tuple[str, ...]:
    return tuple(p for p in inspect.signature(cls.message).parameters if p != "self")


def _with_zero_row(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros(1, x.size(1))])


def padded_propagate(conv, edge_index: Tensor, x_src: Tensor,
                     x_dst: Tensor) -> Optional[Tensor]:
    """What ``conv.propagate(edge_index, x=(x_src, x_dst))`` returns, on the padded table;
    ``None`` when the table does not apply or would not pay."""
    aggr = getattr(conv, "aggr", None)
    n, num_edges = x_dst.size(0), edge_index.size(1)
    if aggr not in ("max", "sum") or n == 0 or num_edges == 0:
        return None
    src, dst = edge_index[0], edge_index[1]
    if cpu_path(edge_index):
        if num_edges > 1 and bool((dst[1:] < dst[:-1]).any()):
            return None
        degree_max = int(torch.bincount(dst, minlength=n).max())
    else:
        degree_max = marked_max_degree(edge_index)
        if degree_max is None:
            return None
    return _padded(conv, aggr, src, dst, x_src, x_dst, degree_max)


def _padded(conv, aggr: str, src: Tensor, dst: Tensor, x_src: Tensor, x_dst: Tensor,
            degree_max: int) -> Optional[Tensor]:
    """:func:`padded_propagate` for edges grouped by target with at most ``degree_max``
    per target: nothing more is read back."""
    n, num_edges = x_dst.size(0), src.numel()
    if num_edges < MIN_FILL[aggr] * n * degree_max:
        return None
    kind = getattr(conv, "padded_kind", None)  # set by convs with a closed-form table
    if kind == "relative_max":
        table, degree = padded_table(dst, src, n, "first", x_src.size(0), degree_max)
        m = gather_max(_with_zero_row(x_src), table.view(-1), table.size(1)) - x_dst
        empty = degree == 0
        if cpu_path(m) and not bool(empty.any()):  # read on the CPU only, to skip a pass
            return m
        return m.masked_fill(empty.unsqueeze(1), 0.0)
    if kind == "neighbour_sum":
        table, _ = padded_table(dst, src, n, "zero", x_src.size(0), degree_max)
        return gather_sum(_with_zero_row(x_src), table.view(-1), table.size(1))
    names = _message_args(type(conv))
    if not set(names) <= {"x_i", "x_j"}:
        return None
    rows = {"x_j": x_src.index_select(0, src), "x_i": x_dst.index_select(0, dst)}
    messages = conv.message(**{name: rows[name] for name in names})
    table, _ = padded_table(dst, torch.arange(num_edges, device=dst.device), n,
                            "first" if aggr == "max" else "zero", num_edges, degree_max)
    reduce = gather_max if aggr == "max" else gather_sum
    return reduce(_with_zero_row(messages), table.view(-1), table.size(1))
