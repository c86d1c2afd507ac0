r"""PyG aggregations evaluated faster on the Grapher's graphs, same results.

A convolution's ``aggr_module`` reduces the ``E`` messages :math:`m_e` by their target
``index``. PyG's generic path scatters (``scatter_add_`` / ``scatter_reduce_`` with the index
broadcast to the messages' shape, whose backward is a ``gather`` as wide; the index softmax
of :class:`~torch_geometric.nn.aggr.SoftmaxAggregation` takes seven such passes).
:class:`FastAggregation` wraps it and computes instead

- on fixed-degree graphs (:func:`~vig_pyg.graph.fixed_degree`: ``k`` messages per target,
  grouped by target in order, so target ``i`` owns rows ``i k .. i k + k - 1``) a dense view
  ``m.view(N, k, ...)``: max / min :math:`\max_r m_{ir}` / :math:`\min_r m_{ir}` when a
  gradient is needed, and softmax (fixed temperature ``t``)
  :math:`\sum_r \operatorname{softmax}_r(t\, m_{ir})\, m_{ir}` per channel;
- everything else with the wrapped PyG aggregation, unchanged: variable-degree or unsorted
  graphs, max / min without gradient (PyG's scatter-max is the
  faster forward), while tracing (``torch.compile``, export: the index's values cannot be
  checked) or under deterministic algorithms, and with the fast path ``"pyg_aggregation"``
  off (:mod:`vig_pyg.fast_paths`).

Sums and means are not wrapped: PyG's scatter-add is as fast as a dense view's sum, and the
convolutions that sum (GATv2, Transformer, GIN) gain nothing. PyG's
``EdgeIndex(..., sort_order="col")`` (CSR pointers for the aggregations and the attention
softmax) was no faster either, so it is not used. ``python benchmarks/bench_pyg_convs.py
--compare-generic`` times the adapters against PyG's own path.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch_geometric.nn import aggr as pyg_aggr

from .. import fast_paths
from ..graph import fixed_degree
from ..tracing import tracing

__all__ = ["FastAggregation", "wrap_aggregation"]

#: Aggregations it evaluates (exact types: subclasses may change the formula).
_REDUCE = {pyg_aggr.MaxAggregation: "max", pyg_aggr.MinAggregation: "min",
           pyg_aggr.SoftmaxAggregation: "softmax"}


class FastAggregation(pyg_aggr.Aggregation):
    """``inner`` (a PyG aggregation without parameters) evaluated as above.

    Args:
        inner: the aggregation it replaces (max, min, or softmax with a fixed temperature).
    """

    def __init__(self, inner: pyg_aggr.Aggregation):
        super().__init__()
        self.inner = inner
        self.reduction = _REDUCE[type(inner)]

    def reset_parameters(self):
        self.inner.reset_parameters()

    def forward(self, x: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                dim_size: Optional[int] = None, dim: int = -2) -> Tensor:
        d = dim % x.dim()
        if self._applies(x, index, dim_size, d):
            k = fixed_degree(index.expand(2, -1), dim_size)  # row 1 of a [2, E] view: index
            grad = torch.is_grad_enabled() and x.requires_grad
            if k is not None and (self.reduction == "softmax" or grad):
                view = x.view(*x.shape[:d], dim_size, k, *x.shape[d + 1:])
                if self.reduction == "max":
                    return view.amax(d + 1)
                if self.reduction == "min":
                    return view.amin(d + 1)
                return self._softmax(view, d + 1)
        return self.inner(x, index, ptr=ptr, dim_size=dim_size, dim=dim)

    def _applies(self, x: Tensor, index: Optional[Tensor], dim_size: Optional[int],
                 d: int) -> bool:
        return (fast_paths.enabled("pyg_aggregation") and index is not None and dim_size is not None
                and index.dim() == 1 and index.numel() == x.size(d)
                # a trace cannot compare the index's values (fixed_degree would trust the
                # edge count, wrong for a conv that reorders edges): PyG's aggregation then
                and not tracing()
                and not torch.are_deterministic_algorithms_enabled())

    def _softmax(self, view: Tensor, axis: int) -> Tensor:
        """PyG's ``SoftmaxAggregation`` (``learn=False``) on the view: weights
        ``softmax(t m)`` over the neighbours, detached when ``semi_grad``."""
        t = self.inner.t
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.inner.semi_grad):
            alpha = torch.softmax(view * t if t != 1 else view, dim=axis)
        return (view * alpha).sum(axis)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner})"


def _wrappable(module: nn.Module) -> bool:
    # Aggregations with parameters or buffers (a learnt softmax temperature) stay PyG's:
    # wrapping would move their state_dict keys under ``inner``.
    if type(module) not in _REDUCE:
        return False
    if isinstance(module, pyg_aggr.SoftmaxAggregation) and module.learn:
        return False
    return not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


def wrap_aggregation(conv: nn.Module) -> Optional[FastAggregation]:
    """Replace ``conv.aggr_module`` by a :class:`FastAggregation` around it and return the
    wrapper, or ``None`` (left as it is) where there is none or it cannot be wrapped."""
    inner = getattr(conv, "aggr_module", None)
    if isinstance(inner, FastAggregation):
        return inner
    if not isinstance(inner, pyg_aggr.Aggregation) or not _wrappable(inner):
        return None
    conv.aggr_module = FastAggregation(inner)
    return conv.aggr_module
