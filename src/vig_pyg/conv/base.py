"""What the Grapher convolutions share: input unpacking and the choice of dense path."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from .. import fast_paths
from ..graph import fixed_degree
from .projection import GroupedProjection


class GrapherConv(MessagePassing):
    """Base of the ViG graph convolutions (``in_channels -> out_channels`` on node rows).

    Subclasses call :meth:`_fixed_degree` in ``forward``: it returns ``k`` when
    ``edge_index`` has the layout of :func:`~vig_pyg.graph.knn_edges` (``k`` edges per
    target, grouped by target in order), in which case the fixed-degree dense path runs;
    otherwise it returns ``None`` and :meth:`_propagate` runs: the padded table of
    :mod:`.padded` where it pays, else PyG's :meth:`propagate`. The fast paths
    ``"fixed_degree"`` and ``"padded"`` (:mod:`vig_pyg.fast_paths`) switch the two dense
    paths; ``fast_paths.disabled("fixed_degree", "padded")`` evaluates the literal
    per-edge formula (tests, benchmarks, the release's MAC count).
    """

    #: What the aggregator runs on: ``"graph"`` (edges j -> i) or ``"hypergraph"`` (a
    #: node -> hyperedge incidence); the Grapher refuses a builder of the other kind.
    graph_kind: str = "graph"
    #: Fields of the builder's :class:`~vig_pyg.graph.builders.BuiltGraph` that ``forward``
    #: takes as keyword arguments (``edge_attr``, ``num_hyperedges``, ...), when set.
    graph_inputs: tuple = ()
    #: Whether a repeated edge leaves the output unchanged (a maximum of neighbour terms,
    #: with no statistics over the edges): builders may then pad to a fixed degree.
    repeat_invariant: bool = False

    def __init__(self, in_channels: int, out_channels: Optional[int], aggr: str):
        super().__init__(aggr=aggr, flow="source_to_target", node_dim=0)
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if out_channels is None else out_channels

    def reset_parameters(self):
        """Resets the aggregation and every grouped projection (``nn``, ``nn1``, ...)."""
        super().reset_parameters()
        for module in self.children():
            if isinstance(module, GroupedProjection):
                module.reset_parameters()

    def _unpack(self, x: Union[Tensor, Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
        """``(x_src, x_dst)`` from node features or a bipartite pair, checked."""
        if isinstance(x, Tensor):
            x_src = x_dst = x
        elif isinstance(x, (tuple, list)) and len(x) == 2:
            x_src, x_dst = x
        else:
            raise TypeError(f"{type(self).__name__} expects x as a tensor [N, C] or a pair "
                            f"(x_src [M, C], x_dst [N, C]), got {type(x).__name__}")
        for name, t in (("x_src", x_src), ("x_dst", x_dst)):
            if not isinstance(t, Tensor) or t.dim() != 2 or t.size(1) != self.in_channels:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{type(self).__name__}: {name} must be [num_nodes, "
                                 f"{self.in_channels}], got {shape}")
        return x_src, x_dst

    def _fixed_degree(self, edge_index, num_targets: int) -> Optional[int]:
        if (not fast_paths.enabled("fixed_degree") or not isinstance(edge_index, Tensor)
                or edge_index.is_sparse):
            return None
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must be [2, num_edges], got "
                             f"{tuple(edge_index.shape)}")
        return fixed_degree(edge_index, num_targets)

    def _propagate(self, edge_index: Tensor, x_src: Tensor, x_dst: Tensor) -> Tensor:
        """The generic path (any degree): the padded-table fast path of :mod:`.padded`
        where it pays and the fast path ``"padded"`` is on, else :meth:`propagate`."""
        if (fast_paths.enabled("padded") and isinstance(edge_index, Tensor)
                and not edge_index.is_sparse):
            from .padded import padded_propagate

            out = padded_propagate(self, edge_index, x_src, x_dst)
            if out is not None:
                return out
        return self.propagate(edge_index, x=(x_src, x_dst), size=(x_src.size(0), x_dst.size(0)))

    def _rows_independent(self, *inputs: Tensor) -> bool:
        """True when per-edge rows can be processed in chunks: every submodule is in eval
        mode (BatchNorm uses its running statistics) and no gradient is needed."""
        if any(m.training for m in self.modules()):
            return False
        if not torch.is_grad_enabled():
            return True
        return not any(t.requires_grad for t in (*inputs, *self.parameters()))

    def __repr__(self) -> str:
        extra = self.extra_repr()
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
                f"groups={self.groups}{', ' + extra if extra else ''})")


def interleave(a: Tensor, b: Tensor) -> Tensor:
    """``[a_0, b_0, a_1, b_1, ...]`` along the channels of two ``[N, C]`` tensors."""
    return torch.stack((a, b), dim=2).view(a.size(0), 2 * a.size(1))
