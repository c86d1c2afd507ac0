from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

from torch import Tensor, nn

from .base import GrapherConv, interleave
from .functional import gather_max
from .projection import GroupedProjection
from .registry import register_conv

#: The message signs: neighbour minus centre (ViG's) or centre minus neighbour.
SIGNS = ("j-i", "i-j")


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

    The axial releases of the ViG family differ in two details, which two options
    reproduce (``docs/graph_builders.md``):

    - ``sign="i-j"`` takes :math:`\max_j (\mathbf{x}_i - \mathbf{x}_j)` (SVGA, LogViG)
      instead of :math:`\max_j (\mathbf{x}_j - \mathbf{x}_i)` (ViG, MobileViGv2, AdaptViG);
    - ``zero_start=True`` starts the running maximum at zero,
      :math:`\mathbf{m}_i = \max(0, \max_j \dots)`, which is what a self-loop gives the
      maximum; a builder without self-loops (``mgc``, ``lsgc``) needs it to match its release.

    Args:
        in_channels (int): node feature width :math:`C`.
        out_channels (int, optional): output width (default :math:`2C`).
        groups (int): groups of the projection. (default: :obj:`4`)
        act (str or nn.Module, optional): activation. (default: :obj:`"gelu"`)
        bias (bool): projection bias. (default: :obj:`True`)
        sign (str): ``"j-i"`` (neighbour minus centre) or ``"i-j"``. (default: ``"j-i"``)
        zero_start (bool): :math:`\max(0, \cdot)` of the maximum. (default: :obj:`False`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)` or
          :math:`((|\mathcal{V}_s|, C), (|\mathcal{V}_t|, C))` if bipartite (neighbours
          :math:`\mathbf{x}_j` from the first), edge indices :math:`(2, |\mathcal{E}|)`
        - **output:** :math:`(|\mathcal{V}_t|, F_{out})`
    """

    repeat_invariant = True  # a maximum over the neighbours; BatchNorm sees the nodes

    #: the padded-table path of variable-degree graphs computes max_j x_j - x_i directly
    padded_kind = "relative_max"

    def __init__(self, in_channels: int, out_channels: Optional[int] = None,
                 groups: int = 4, act: Union[str, Callable, nn.Module, None] = "gelu",
                 bias: bool = True, sign: str = "j-i", zero_start: bool = False):
        super().__init__(in_channels, out_channels, aggr="max")
        if sign not in SIGNS:
            raise ValueError(f"MRConv: sign must be one of {SIGNS} (neighbour minus centre, or "
                             f"centre minus neighbour), got {sign!r}")
        if not isinstance(zero_start, bool):
            raise ValueError(f"MRConv: zero_start must be True or False, got {zero_start!r}")
        self.groups, self.sign, self.zero_start = groups, sign, bool(zero_start)
        if sign == "i-j":  # the padded table's closed form is max_j x_j - x_i only
            self.padded_kind = None
        self.nn = GroupedProjection(2 * in_channels, self.out_channels, groups, act, bias)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor) -> Tensor:
        x_src, x_dst = self._unpack(x)
        k = self._fixed_degree(edge_index, x_dst.size(0))
        if k is None:
            m = self._propagate(edge_index, x_src, x_dst)
        elif self.sign == "j-i":
            m = gather_max(x_src, edge_index[0], k) - x_dst
        else:  # max_j (x_i - x_j) = x_i - min_j x_j
            m = x_dst + gather_max(-x_src, edge_index[0], k)
        if self.zero_start:
            m = m.clamp_min(0.0)
        return self.nn(interleave(x_dst, m))

    def message(self, x_i: Tensor, x_j: Tensor) -> Tensor:
        return x_j - x_i if self.sign == "j-i" else x_i - x_j

    def extra_repr(self) -> str:
        return (f"sign={self.sign!r}, zero_start={self.zero_start}"
                if (self.sign, self.zero_start) != ("j-i", False) else "")
