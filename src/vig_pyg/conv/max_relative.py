from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

from torch import Tensor, nn

from .base import GrapherConv, interleave
from .functional import gather_max
from .projection import GroupedProjection
from .registry import register_conv


@register_conv("mr")
class MRConv(GrapherConv):
    r"""The max-relative graph convolution of ViG (`"Vision GNN: An Image is Worth Graph of
    Nodes" <https://arxiv.org/abs/2206.00272>`_; official ``MRConv2d``), the default
    Grapher aggregator:

    .. math::
        \mathbf{m}_i = \max_{j \in \mathcal{N}(i)} \left(\mathbf{x}_j - \mathbf{x}_i\right),
        \qquad
        \mathbf{x}^{\prime}_i = h_{\mathbf{\Theta}}\left(x_{i,0}, m_{i,0}, x_{i,1},
        m_{i,1}, \dots\right),

    a channel-wise maximum, the channels of :math:`\mathbf{x}_i` and
    :math:`\mathbf{m}_i` interleaved, and :math:`h_{\mathbf{\Theta}}` the grouped
    projection :math:`2C \to` ``out_channels`` (1x1 grouped conv + BatchNorm over nodes +
    activation; ``self.nn``, keys ``nn.0.*``, ``nn.1.*`` as in the official checkpoints).

    On a fixed-degree graph (the layout of :func:`~vig_pyg.graph.knn_edges`) it computes
    :math:`\max_j \mathbf{x}_j - \mathbf{x}_i` on the dense ``[N, k, C]`` neighbour block
    (equal in floating point, as rounding is monotone); otherwise it runs
    :meth:`propagate` with ``aggr="max"`` (a target without neighbours gets
    :math:`\mathbf{m}_i = 0`).

    Args:
        in_channels (int): node feature width :math:`C`.
        out_channels (int, optional): output width (default :math:`2C`).
        groups (int): groups of the projection. (default: :obj:`4`)
        act (str or nn.Module, optional): activation. (default: :obj:`"gelu"`)
        bias (bool): projection bias. (default: :obj:`True`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)` or
          :math:`((|\mathcal{V}_s|, C), (|\mathcal{V}_t|, C))` if bipartite (neighbours
          :math:`\mathbf{x}_j` from the first), edge indices :math:`(2, |\mathcal{E}|)`
        - **output:** :math:`(|\mathcal{V}_t|, F_{out})`
    """

    #: the padded-table path of variable-degree graphs computes max_j x_j - x_i directly
    padded_kind = "relative_max"

    def __init__(self, in_channels: int, out_channels: Optional[int] = None,
                 groups: int = 4, act: Union[str, Callable, nn.Module, None] = "gelu",
                 bias: bool = True):
        super().__init__(in_channels, out_channels, aggr="max")
        self.groups = groups
        self.nn = GroupedProjection(2 * in_channels, self.out_channels, groups, act, bias)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor) -> Tensor:
        x_src, x_dst = self._unpack(x)
        k = self._fixed_degree(edge_index, x_dst.size(0))
        if k is not None:
            m = gather_max(x_src, edge_index[0], k) - x_dst
        else:
            m = self._propagate(edge_index, x_src, x_dst)
        return self.nn(interleave(x_dst, m))

    def message(self, x_i: Tensor, x_j: Tensor) -> Tensor:
        return x_j - x_i
