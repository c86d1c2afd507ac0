r"""PyG aggregations reduced as a dense ``[N, k, ...]`` view on fixed-degree graphs.

On the Grapher's graphs (:func:`~vig_pyg.graph.knn_edges`: ``k`` edges per target, grouped
by target in order) the messages of target ``i`` are rows ``i k, ..., i k + k - 1``, so a
PyG aggregation over ``E = N k`` messages is a reduction of the view ``m.view(N, k, ...)``
over its second axis:

- sum: :math:`\sum_r m_{i r}`; mean: :math:`\frac{1}{k} \sum_r m_{i r}`;
  max / min: :math:`\max_r m_{i r}` / :math:`\min_r m_{i r}`;
- softmax (:class:`~torch_geometric.nn.aggr.SoftmaxAggregation` with a fixed ``t``):
  :math:`\sum_r \alpha_{i r} m_{i r}`, :math:`\alpha_{i r} = \operatorname{softmax}_r(t\, m_{i r})`
  per channel.

PyG's generic path scatters by the target index instead (``scatter_add_`` / ``scatter_reduce_``,
and in backward a ``gather`` with the index broadcast to the messages' shape, or an index
softmax of seven passes); the view needs neither. :class:`FixedDegreeAggregation` wraps a
convolution's ``aggr_module``: when the index it is given is the fixed-degree layout
(:func:`~vig_pyg.graph.fixed_degree`, an O(E) comparison; a convolution that adds or
reorders edges, e.g. with ``add_self_loops=True``, hands it another index) it reduces the
view, otherwise (and while tracing: ``torch.compile``, export) it calls the wrapped PyG
aggregation unchanged. Set
``FixedDegreeAggregation.fast_path = False`` (class or instance) for PyG's path everywhere.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch_geometric.nn import aggr as pyg_aggr

from ..graph import fixed_degree

__all__ = ["FixedDegreeAggregation", "wrap_aggregation"]

#: Aggregations reduced on the view (exact types: subclasses may change the formula).
_REDUCE = {pyg_aggr.SumAggregation: "sum", pyg_aggr.MeanAggregation: "mean",
           pyg_aggr.MaxAggregation: "max", pyg_aggr.MinAggregation: "min",
           pyg_aggr.SoftmaxAggregation: "softmax"}


class FixedDegreeAggregation(pyg_aggr.Aggregation):
    """``inner`` (a PyG aggregation without parameters) with a dense fixed-degree path.

    Args:
        inner: the aggregation it replaces (one of sum, mean, max, min, softmax with a
            fixed temperature).
    """

    #: Reduce the dense view when the index has the fixed-degree layout.
    fast_path: bool = True

    def __init__(self, inner: pyg_aggr.Aggregation):
        super().__init__()
        self.inner = inner
        self.reduction = _REDUCE[type(inner)]

    def reset_parameters(self):
        self.inner.reset_parameters()

    def forward(self, x: Tensor, index: Optional[Tensor] = None, ptr: Optional[Tensor] = None,
                dim_size: Optional[int] = None, dim: int = -2) -> Tensor:
        d = dim % x.dim()
        k = self._fixed_degree(index, dim_size, x.size(d))
        if k is None:
            return self.inner(x, index, ptr=ptr, dim_size=dim_size, dim=dim)
        view = x.view(*x.shape[:d], dim_size, k, *x.shape[d + 1:])
        if self.reduction == "sum":
            return view.sum(d + 1)
        if self.reduction == "mean":
            return view.mean(d + 1)
        if self.reduction == "max":
            return view.amax(d + 1)
        if self.reduction == "min":
            return view.amin(d + 1)
        return self._softmax(view, d + 1)

    def _fixed_degree(self, index: Optional[Tensor], dim_size: Optional[int],
                      num_messages: int) -> Optional[int]:
        """``k`` if ``index`` is ``[0]*k + [1]*k + ... + [dim_size - 1]*k``, else ``None``."""
        if not self.fast_path or index is None or dim_size is None or index.dim() != 1 \
                or index.numel() != num_messages or _tracing():
            return None
        # fixed_degree reads row 1 of an edge_index; a [2, E] view of the index is one
        return fixed_degree(index.expand(2, -1), dim_size)

    def _softmax(self, view: Tensor, axis: int) -> Tensor:
        """PyG's ``SoftmaxAggregation`` (``learn=False``) on the view: weights
        ``softmax(t m)`` over the neighbours, detached when ``semi_grad``."""
        t = self.inner.t
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.inner.semi_grad):
            alpha = torch.softmax(view * t if t != 1 else view, dim=axis)
        return (view * alpha).sum(axis)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner})"


def _tracing() -> bool:
    # A trace cannot compare the index's values (fixed_degree would trust the edge count,
    # wrong for a conv that reorders edges): traced models keep PyG's aggregation.
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def _wrappable(module: nn.Module) -> bool:
    # Aggregations with parameters or buffers (a learnt softmax temperature) stay PyG's:
    # wrapping would move their state_dict keys under ``inner``.
    if type(module) not in _REDUCE:
        return False
    if isinstance(module, pyg_aggr.SoftmaxAggregation) and module.learn:
        return False
    return not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


def wrap_aggregation(conv: nn.Module) -> Optional[FixedDegreeAggregation]:
    """Replace ``conv.aggr_module`` by a :class:`FixedDegreeAggregation` around it and
    return the wrapper, or ``None`` (left as it is) where there is none or it cannot be
    wrapped."""
    inner = getattr(conv, "aggr_module", None)
    if isinstance(inner, FixedDegreeAggregation):
        return inner
    if not isinstance(inner, pyg_aggr.Aggregation) or not _wrappable(inner):
        return None
    conv.aggr_module = FixedDegreeAggregation(inner)
    return conv.aggr_module
