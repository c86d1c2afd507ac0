from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..layers.grouped_linear import grouped_linear
from .base import GrapherConv
from .functional import map_target_chunks, neighbour_max, tracing
from .projection import GroupedProjection
from .registry import register_conv
from .rowwise import (batch_norm_affine, batch_norm_rows, batch_norm_step, per_node_statistics,
                      uses_batch_stats)


@register_conv("edge")
class ViGEdgeConv(GrapherConv):
    r"""The edge convolution of ViG (official ``EdgeConv2d``; the operator of `"Dynamic
    Graph CNN for Learning on Point Clouds" <https://arxiv.org/abs/1801.07829>`_ with
    ViG's grouped projection):

    .. math::
        \mathbf{x}^{\prime}_i = \max_{j \in \mathcal{N}(i)}
        h_{\mathbf{\Theta}}\left(\mathbf{x}_i \, \Vert \, \mathbf{x}_j - \mathbf{x}_i\right),

    :math:`\Vert` concatenation (not interleaving) and :math:`h_{\mathbf{\Theta}}` the
    grouped projection :math:`2C \to` ``out_channels`` applied to every *edge*
    (BatchNorm statistics over all edges; ``self.nn``), as in the official code (whose
    count, 2.35 GMACs for vig_ti, is the one ``vig-pyg info`` reports).

    **Cheaper, equal evaluation** (fixed-degree graphs, an even number of groups). The
    groups of :math:`\mathbf{W}` split the input ``[x_i ; x_j - x_i]`` at its middle, so
    with :math:`\mathbf{W} = \mathrm{diag}(\mathbf{W}_a, \mathbf{W}_b)` (each
    ``groups / 2`` groups) the output halves are

    .. math::
        \mathbf{x}^{\prime}_{i,a} = \sigma(\mathrm{BN}_a(\mathbf{W}_a \mathbf{x}_i +
        \mathbf{b}_a)), \qquad
        \mathbf{x}^{\prime}_{i,b} = \max_j \sigma(\mathrm{BN}_b(\mathbf{z}_j -
        \mathbf{z}_i + \mathbf{b}_b)), \quad \mathbf{z} = \mathbf{W}_b \mathbf{x}:

    the first half is a per-node projection (each node stands for its ``k`` equal edge rows
    in the BatchNorm statistics), the second a per-node projection followed by a gather and
    a subtraction per edge; no matrix product runs per edge. In inference the BatchNorm
    scale is folded into :math:`\mathbf{z}` and the edges are processed a few hundred
    targets at a time. ``vig_pyg.fast_paths.disabled("fixed_degree", "padded")`` gives the
    literal per-edge evaluation; so does training off the CPU
    (:func:`~.rowwise.per_node_statistics`: there the per-edge rows launch fewer kernels).

    Equals :class:`torch_geometric.nn.conv.EdgeConv` with ``nn=self.nn, aggr="max"``;
    named ``ViGEdgeConv`` to keep the two apart. On a fixed-degree graph the ``[N*k, 2C]``
    edge rows are built from one gather and reduced as a dense ``[N, k, F]`` block.

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
        - **output:** :math:`(|\mathcal{V}_t|, F_{out})`; a target without neighbours
          gets zeros
    """

    def __init__(self, in_channels: int, out_channels: Optional[int] = None,
                 groups: int = 4, act: Union[str, Callable, nn.Module, None] = "gelu",
                 bias: bool = True):
        super().__init__(in_channels, out_channels, aggr="max")
        self.groups = groups
        self.nn = GroupedProjection(2 * in_channels, self.out_channels, groups, act, bias)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor) -> Tensor:
        x_src, x_dst = self._unpack(x)
        n, c = x_dst.shape
        k = self._fixed_degree(edge_index, n)
        if k is None:
            return self._propagate(edge_index, x_src, x_dst)
        src = edge_index[0]
        if self.groups % 2 == 0 and per_node_statistics(self.nn[1], x_dst):
            return self._split(x_src, x_dst, src, k)
        if self._rows_independent(x_src, x_dst) and not tracing():  # inference: chunks
            width = max(2 * c, self.out_channels) * k * x_dst.element_size()

            def chunk(s: int, e: int, out: Tensor):
                rows = self.nn(self._edge_rows(x_src, x_dst[s:e], src[s * k:e * k], k))
                torch.amax(rows.view(e - s, k, -1), 1, out=out)

            return map_target_chunks(chunk, n, self.out_channels, width, x_dst)
        return neighbour_max(self.nn(self._edge_rows(x_src, x_dst, src, k)), k)

    def _split(self, x_src: Tensor, x_dst: Tensor, src: Tensor, k: int) -> Tensor:
        """The per-node / per-edge halves of the class docstring, ``[N, out]``."""
        conv, bn, act = self.nn[0], self.nn[1], self.nn[2]
        n, h, g = x_dst.size(0), self.out_channels // 2, self.groups // 2
        centre, rel = slice(0, h), slice(h, self.out_channels)
        b = conv.bias
        node = grouped_linear(x_dst, conv.weight[centre], None if b is None else b[centre], g)
        z_dst = grouped_linear(x_dst, conv.weight[rel], None, g)
        z_src = z_dst if x_src is x_dst else grouped_linear(x_src, conv.weight[rel], None, g)
        if uses_batch_stats(bn):
            f = batch_norm_step(bn)
            node = act(batch_norm_rows(node, bn, centre, f, node.new_full((n,), float(k)),
                                       n * k))
            shift = z_dst if b is None else z_dst - b[rel]
            rows = z_src.index_select(0, src).view(n, k, h).sub_(shift.unsqueeze(1))
            rows = act(batch_norm_rows(rows.view(n * k, h), bn, rel, f))
            return torch.cat((node, neighbour_max(rows, k)), dim=1)
        a, c = batch_norm_affine(bn, slice(None))
        node = act(torch.addcmul(c[centre], node, a[centre]))
        zs = z_src * a[rel]  # BN(z_j - z_i + b) = a z_j - t_i, t_i = a (z_i - b) - c
        t = z_dst * a[rel] if x_src is not x_dst else zs
        t = t - (c[rel] if b is None else torch.addcmul(c[rel], b[rel], a[rel]))
        if self._rows_independent(x_src, x_dst) and not tracing():
            def chunk(s: int, e: int, out: Tensor):
                rows = zs.index_select(0, src[s * k:e * k]).view(e - s, k, h)
                torch.amax(act(rows.sub_(t[s:e].unsqueeze(1))), 1, out=out)

            out = map_target_chunks(chunk, n, h, k * h * zs.element_size(), zs)
        else:
            rows = zs.index_select(0, src).view(n, k, h).sub_(t.unsqueeze(1))
            out = neighbour_max(act(rows.view(n * k, h)), k)
        return torch.cat((node, out), dim=1)

    @staticmethod
    def _edge_rows(x_src: Tensor, x_dst: Tensor, src: Tensor, k: int) -> Tensor:
        """``[x_i ; x_j - x_i]`` for every edge, ``[N * k, 2C]``, grouped by target."""
        n, c = x_dst.shape
        x_i = x_dst.unsqueeze(1).expand(n, k, c)
        # index_select's backward does not need its output, so subtracting in place is safe
        diff = x_src.index_select(0, src).view(n, k, c).sub_(x_i)
        return torch.cat((x_i, diff), dim=2).view(n * k, 2 * c)

    def message(self, x_i: Tensor, x_j: Tensor) -> Tensor:
        return self.nn(torch.cat((x_i, x_j - x_i), dim=1))
