r"""PyG's ``EdgeConv`` with the first layer of its MLP applied per node, not per edge.

:class:`~torch_geometric.nn.conv.EdgeConv` computes
:math:`x'_i = \max_{j \in N(i)} h_\Theta([x_i,\; x_j - x_i])` by running the whole MLP
:math:`h_\Theta` on every edge. When its first layer is a ``Linear`` with weight
:math:`W = [W_a \; W_b]` (the ``pyg:EdgeConv`` recipe's MLP is ``Linear -> act -> Linear``),

.. math::
    W [x_i;\, x_j - x_i] + b = \underbrace{(W_a - W_b)\, x_i + b}_{p_i \text{ per target}}
                              + \underbrace{W_b\, x_j}_{q_j \text{ per source}},

so :class:`SplitEdgeConv` projects the ``N`` targets and ``M`` sources once and runs only the
rest of the MLP on the ``E`` edges, :math:`x'_i = \max_j h_{\Theta}^{2..}(p_i + q_j)`: the first
layer costs ``N + M`` rows instead of ``E = k N`` (half the MLP's multiply-adds for
``Linear(2 C, O) -> act -> Linear(O, O)`` with ``O = 2 C``). The parameters, their names and
the result are PyG's (up to rounding). With the fast path ``"split_edge_conv"`` off
(:mod:`vig_pyg.fast_paths`), an MLP that does not start with a ``Linear`` of ``2 C``
inputs, a sparse ``edge_index`` or ``flow="target_to_source"`` it runs PyG's
``EdgeConv.forward``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.conv import EdgeConv

from .. import fast_paths

__all__ = ["SplitEdgeConv"]


class SplitEdgeConv(EdgeConv):
    """:class:`~torch_geometric.nn.conv.EdgeConv` (same arguments) evaluated as above."""

    def _first_linear(self, channels: int) -> Optional[nn.Linear]:
        layers = self.nn
        if not (isinstance(layers, nn.Sequential) and len(layers) > 0):
            return None
        first = layers[0]
        if isinstance(first, nn.Linear) and first.in_features == 2 * channels:
            return first
        return None

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index) -> Tensor:
        x_src, x_dst = (x, x) if isinstance(x, Tensor) else x
        first = self._first_linear(x_dst.size(-1))
        if (not fast_paths.enabled("split_edge_conv") or first is None
                or self.flow != "source_to_target" or type(edge_index) is not Tensor
                or edge_index.is_sparse):
            return super().forward(x, edge_index)
        c = x_dst.size(-1)
        w_dst, w_src = first.weight[:, :c], first.weight[:, c:]
        p = F.linear(x_dst, w_dst - w_src, first.bias)  # per target
        q = F.linear(x_src, w_src)  # per source
        src, dst = edge_index[0], edge_index[1]
        h = p.index_select(0, dst) + q.index_select(0, src)
        for layer in list(self.nn)[1:]:
            h = layer(h)
        # the conv's aggregation module (max; a dense view on fixed-degree graphs)
        return self.aggr_module(h, dst, dim_size=x_dst.size(0), dim=0)
