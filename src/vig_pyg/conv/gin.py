from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .base import GrapherConv
from .functional import gather_sum
from .projection import GroupedProjection
from .registry import register_conv


@register_conv("gin")
class ViGGINConv(GrapherConv):
    r"""The graph isomorphism convolution of ViG (official ``GINConv2d``; `"How Powerful
    are Graph Neural Networks?" <https://arxiv.org/abs/1810.00826>`_):

    .. math::
        \mathbf{x}^{\prime}_i = h_{\mathbf{\Theta}}\left((1 + \epsilon) \cdot
        \mathbf{x}_i + \sum_{j \in \mathcal{N}(i)} \mathbf{x}_j\right),

    :math:`\epsilon` a learnable scalar (``self.eps``, shape ``[1]``, 0 at init) and
    :math:`h_{\mathbf{\Theta}}` the grouped projection :math:`C \to` ``out_channels``
    (``self.nn``). Equals :class:`torch_geometric.nn.conv.GINConv` with ``nn=self.nn,
    train_eps=True``; named ``ViGGINConv`` to keep the two apart.

    Args:
        in_channels (int): node feature width :math:`C`.
        out_channels (int, optional): output width (default :math:`2C`).
        groups (int): groups of the projection. (default: :obj:`4`)
        act (str or nn.Module, optional): activation. (default: :obj:`"gelu"`)
        bias (bool): projection bias. (default: :obj:`True`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)` or
          :math:`((|\mathcal{V}_s|, C), (|\mathcal{V}_t|, C))` if bipartite,
          edge indices :math:`(2, |\mathcal{E}|)`
        - **output:** :math:`(|\mathcal{V}_t|, F_{out})`
    """

    #: the padded-table path of variable-degree graphs computes sum_j x_j directly
    padded_kind = "neighbour_sum"

    def __init__(self, in_channels: int, out_channels: Optional[int] = None,
                 groups: int = 4, act: Union[str, Callable, nn.Module, None] = "gelu",
                 bias: bool = True):
        super().__init__(in_channels, out_channels, aggr="sum")
        self.groups = groups
        self.nn = GroupedProjection(in_channels, self.out_channels, groups, act, bias)
        self.eps = nn.Parameter(torch.zeros(1))

    def reset_parameters(self):
        super().reset_parameters()
        nn.init.zeros_(self.eps)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor) -> Tensor:
        x_src, x_dst = self._unpack(x)
        k = self._fixed_degree(edge_index, x_dst.size(0))
        if k is not None:
            s = gather_sum(x_src, edge_index[0], k)
        else:
            s = self._propagate(edge_index, x_src, x_dst)
        return self.nn(torch.addcmul(s, x_dst, 1 + self.eps))

    def message(self, x_j: Tensor) -> Tensor:
        return x_j
