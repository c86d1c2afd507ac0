from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .base import GrapherConv
from .functional import map_target_chunks, neighbour_max
from .projection import GroupedProjection
from .registry import register_conv


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
    two apart. In inference (eval mode, no gradient) a fixed-degree graph's edges go
    through ``nn1`` a few hundred targets at a time.

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
        if k is not None and self._rows_independent(x_src, x_dst):  # inference: chunks
            src = edge_index[0]

            def chunk(s: int, e: int, out: Tensor):
                rows = self.nn1(x_src.index_select(0, src[s * k:e * k]))
                torch.amax(rows.view(e - s, k, -1), 1, out=out)

            a = map_target_chunks(chunk, n, self.in_channels,
                                  k * self.in_channels * x_dst.element_size(), x_dst)
        elif k is not None:
            a = neighbour_max(self.nn1(x_src.index_select(0, edge_index[0])), k)
        else:
            a = self._propagate(edge_index, x_src, x_dst)
        return self.nn2(torch.cat((x_dst, a), dim=1))

    def message(self, x_j: Tensor) -> Tensor:
        return self.nn1(x_j)
