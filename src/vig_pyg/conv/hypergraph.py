from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fast_paths import cpu_path
from ..graph.counting import count_values
from ..layers.grouped_linear import grouped_linear
from .base import GrapherConv
from .projection import GroupedProjection
from .registry import register_conv
from .rowwise import batch_norm_rows, batch_norm_step, uses_batch_stats


def _mean_by(index: Tensor, src: Tensor, size: int, count: Tensor) -> Tensor:
    """Rows of ``src`` averaged by ``index`` (``size`` groups, ``count`` rows each; a group
    without rows gives 0)."""
    total = src.new_zeros(size, src.size(1)).index_add_(0, index, src)
    return total / count.clamp_min(1).unsqueeze(1).to(total.dtype)


def _project_rows_where(projection: GroupedProjection, rows: Tensor, kept: Tensor) -> Tensor:
    """``projection`` of every row, its BatchNorm taking batch statistics (training) over
    the rows where ``kept`` only, as if the others were not there (the running statistics
    too: the unbiased variance of the ``W = sum(kept)`` rows). Rows not kept get values
    that mean nothing. ``W`` stays on the device: nothing is read back."""
    conv, bn, act = projection[0], projection[1], projection[2]
    if not uses_batch_stats(bn):
        return projection(rows)
    factor = batch_norm_step(bn)
    y = grouped_linear(rows, conv.weight, conv.bias, projection.groups)
    weight = kept.to(y.dtype)
    return act(batch_norm_rows(y, bn, slice(None), factor, weight, weight.sum()))


@register_conv("vihgnn")
class ViHGNNConv(GrapherConv):
    r"""The hypergraph convolution of ViHGNN (Han et al., "Vision HGNN: An Image is More
    than a Graph of Nodes", ICCV 2023; the release's ``HypergraphConv2d``), on the node ->
    hyperedge incidence of a hypergraph builder (``hypergraph_fcm``):

    .. math::
        \mathbf{e}_k = h_1\Big(\frac{1}{|k|} \sum_{p \in k} \mathbf{x}_p\Big), \qquad
        \mathbf{m}_p = \frac{1}{|\mathcal{E}(p)|} \sum_{k \in \mathcal{E}(p)} \mathbf{e}_k,
        \qquad
        \mathbf{x}^{\prime}_p = h_2\big((1 + \epsilon)\, \mathbf{x}_p + \mathbf{m}_p\big),

    :math:`|k|` the members of hyperedge :math:`k`, :math:`\mathcal{E}(p)` the hyperedges of
    node :math:`p` (a node in none gets :math:`\mathbf{m}_p = 0`), :math:`\epsilon` a
    learnable scalar (``self.eps``, shape ``[1]``, 0 at init), :math:`h_1` the grouped
    projection :math:`C \to C` (``self.nn1``: 1x1 grouped conv, BatchNorm, activation) and
    :math:`h_2` the grouped projection :math:`C \to` ``out_channels`` (``self.nn2``).
    Checkpoint keys: ``eps``, ``nn1.0.weight``, ``nn1.0.bias``, ``nn1.1.*`` (BatchNorm),
    ``nn2.*`` alike.

    **Hyperedges without members.** :math:`h_1` runs on the rows of the hyperedges that have
    members only: in training its BatchNorm takes its batch statistics (and updates its
    running statistics) over those rows, so an empty hyperedge changes no output and no
    running statistic, as if it were not there (SPEC's rule is over hyperedges with members;
    with ``hypergraph_fcm`` a hyperedge is empty where no node passes the threshold). On the
    CPU the rows are selected; elsewhere, where their number would have to be read back,
    :math:`h_1` runs on every row with the statistics weighted by membership (the same
    values, up to rounding).

    **Padding entries.** An entry ``(num_nodes, num_hyperedges)``, one past the last node
    and the last hyperedge, is no membership (the fixed-size incidence ``hypergraph_fcm``
    builds off the CPU, :func:`~vig_pyg.graph.fuzzy_c_means.padded_incidence`): it goes to
    one extra hyperedge and one extra node that are dropped. ``num_hyperedges`` must then be
    given.

    Args:
        in_channels (int): node feature width :math:`C`.
        out_channels (int, optional): output width (default :math:`2C`).
        groups (int): groups of both projections. (default: :obj:`4`)
        act (str or nn.Module, optional): activation of both. (default: :obj:`"gelu"`)
        bias (bool): projection biases. (default: :obj:`True`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)` (no bipartite pair: a
          hypergraph has one node set), the incidence :math:`(2, \text{nnz})` (row 0 the
          node, row 1 the hyperedge) and ``num_hyperedges`` (default: the largest hyperedge
          index + 1, which reads it back to the host; the Grapher passes the builder's)
        - **output:** :math:`(|\mathcal{V}|, F_{out})`
    """

    graph_kind = "hypergraph"
    graph_inputs = ("num_hyperedges",)

    def __init__(self, in_channels: int, out_channels: Optional[int] = None,
                 groups: int = 4, act: Union[str, Callable, nn.Module, None] = "gelu",
                 bias: bool = True):
        super().__init__(in_channels, out_channels, aggr="mean")
        self.groups = groups
        self.nn1 = GroupedProjection(in_channels, in_channels, groups, act, bias)
        self.nn2 = GroupedProjection(in_channels, self.out_channels, groups, act, bias)
        self.eps = nn.Parameter(torch.zeros(1))

    def reset_parameters(self):
        super().reset_parameters()
        nn.init.zeros_(self.eps)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor,
                num_hyperedges: Optional[int] = None) -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError("vihgnn does not support bipartite input (x_src, x_dst): a "
                             "hypergraph has one node set; pass the node features [N, C] "
                             "(a hypergraph builder such as 'hypergraph_fcm' takes no keys)")
        x, _ = self._unpack(x)
        if (not isinstance(edge_index, Tensor) or edge_index.dim() != 2
                or edge_index.size(0) != 2):
            shape = (tuple(edge_index.shape) if isinstance(edge_index, Tensor)
                     else type(edge_index).__name__)
            raise ValueError(f"vihgnn: edge_index must be the incidence [2, nnz] (row 0 node, "
                             f"row 1 hyperedge), got {shape}")
        nodes, edges = edge_index[0], edge_index[1]
        n = x.size(0)
        if num_hyperedges is None:
            num_hyperedges = int(edges.max()) + 1 if edges.numel() else 0
        # one extra hyperedge and one extra node take the padding entries (class docstring)
        size = num_hyperedges + 1
        members = count_values(edges, size)                                     # |k|
        means = _mean_by(edges, F.pad(x, (0, 0, 0, 1)).index_select(0, nodes), size,
                         members)[:num_hyperedges]
        e = self._project_hyperedges(means, members[:num_hyperedges] > 0, select=cpu_path(x))
        degree = count_values(nodes, n + 1)                                     # |E(p)|
        m = _mean_by(nodes, e.index_select(0, edges), n + 1, degree)[:n]
        return self.nn2(torch.addcmul(m, x.to(m.dtype), 1 + self.eps))

    def _project_hyperedges(self, means: Tensor, kept: Tensor, select: bool) -> Tensor:
        """:math:`h_1` of the hyperedges with members (``kept``), ``[M + 1, C]`` with a
        last row for the padding hyperedge: ``select`` picks their rows (a read back, the
        CPU's way), else every row runs with membership-weighted statistics. Rows of other
        hyperedges mean nothing: no entry reads them."""
        if not select:
            return F.pad(_project_rows_where(self.nn1, means, kept), (0, 0, 0, 1))
        rows = self.nn1(means[kept])
        e = rows.new_zeros(means.size(0) + 1, rows.size(1))
        e[:-1][kept] = rows
        return e
