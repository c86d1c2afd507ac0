from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..layers.grouped_linear import grouped_linear
from .base import GrapherConv
from .functional import gather_max, neighbour_max
from .projection import GroupedProjection
from .registry import register_conv
from .rowwise import batch_norm_rows, batch_norm_step, per_node_statistics, uses_batch_stats


@register_conv("sage")
class ViGSAGEConv(GrapherConv):
    r"""The GraphSAGE-style convolution of ViG (official ``GraphSAGE``; after `"Inductive
    Representation Learning on Large Graphs" <https://arxiv.org/abs/1706.02216>`_):

    .. math::
        \mathbf{a}_i = \max_{j \in \mathcal{N}(i)} h_{\mathbf{\Theta}_1}(\mathbf{x}_j),
        \qquad
        \mathbf{x}^{\prime}_i = h_{\mathbf{\Theta}_2}\left(\mathbf{x}_i \, \Vert \,
        \mathbf{a}_i\right),

    :math:`h_{\mathbf{\Theta}_1}` the grouped projection :math:`C \to C` applied to every
    *edge* (``self.nn1``; BatchNorm statistics over all edges, as in the official code,
    which is what makes vig_ti-sage 1.58 GMACs) and :math:`h_{\mathbf{\Theta}_2}` the
    grouped projection :math:`2C \to` ``out_channels`` on the concatenation (``self.nn2``).

    In eval mode with ``act="relu"`` this is ``relu`` of
    :class:`torch_geometric.nn.conv.SAGEConv` (``aggr="max", project=True``) with weights
    folded from the grouped convolutions and BatchNorms; named ``ViGSAGEConv`` to keep the
    two apart.

    **Cheaper, equal evaluation** (fixed-degree graphs): the edge rows of ``nn1`` are the
    source rows :math:`\mathbf{x}_j` repeated, so ``nn1`` runs once per source node and
    the result is gathered, :math:`\mathbf{a}_i = \max_j \mathbf{h}_j`; in training its
    BatchNorm takes the statistics of the edge rows by weighting node :math:`j` with its
    out-degree (see :mod:`.rowwise`); training off the CPU applies ``nn1`` per edge
    (:func:`~.rowwise.per_node_statistics`). ``vig_pyg.fast_paths.disabled("fixed_degree",
    "padded")`` gives the per-edge form (the official count, 1.58 GMACs for vig_ti, is what
    ``vig-pyg info`` reports).

    Args:
        in_channels (int): node feature width :math:`C`.
        out_channels (int, optional): output width (default :math:`2C`).
        groups (int): groups of both projections. (default: :obj:`4`)
        act (str or nn.Module, optional): activation of both. (default: :obj:`"gelu"`)
        bias (bool): projection biases. (default: :obj:`True`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)` or
          :math:`((|\mathcal{V}_s|, C), (|\mathcal{V}_t|, C))` if bipartite,
          edge indices :math:`(2, |\mathcal{E}|)`
        - **output:** :math:`(|\mathcal{V}_t|, F_{out})`; a target without neighbours gets
          :math:`\mathbf{a}_i = 0`
    """

    def __init__(self, in_channels: int, out_channels: Optional[int] = None,
                 groups: int = 4, act: Union[str, Callable, nn.Module, None] = "gelu",
                 bias: bool = True):
        super().__init__(in_channels, out_channels, aggr="max")
        self.groups = groups
        self.nn1 = GroupedProjection(in_channels, in_channels, groups, act, bias)
        self.nn2 = GroupedProjection(2 * in_channels, self.out_channels, groups, act, bias)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor) -> Tensor:
        x_src, x_dst = self._unpack(x)
        n = x_dst.size(0)
        k = self._fixed_degree(edge_index, n)
        if k is not None and not per_node_statistics(self.nn1[1], x_src):
            a = neighbour_max(self.nn1(x_src.index_select(0, edge_index[0])), k)
        elif k is not None:
            a = gather_max(self._project_sources(x_src, edge_index[0], n * k), edge_index[0], k)
        else:
            a = self._propagate(edge_index, x_src, x_dst)
        return self.nn2(torch.cat((x_dst, a), dim=1))

    def _project_sources(self, x_src: Tensor, src: Tensor, num_edges: int) -> Tensor:
        """``nn1`` of every source row, normalised as the ``num_edges`` edge rows would be."""
        if not uses_batch_stats(self.nn1[1]):
            return self.nn1(x_src)
        conv, bn, act = self.nn1[0], self.nn1[1], self.nn1[2]
        y = grouped_linear(x_src, conv.weight, conv.bias, self.groups)
        degree = y.new_zeros(y.size(0)).index_add_(0, src, y.new_ones(src.numel()))
        return act(batch_norm_rows(y, bn, slice(None), batch_norm_step(bn), degree,
                                   num_edges))

    def message(self, x_j: Tensor) -> Tensor:
        return self.nn1(x_j)
