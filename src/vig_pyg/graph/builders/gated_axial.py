r"""``gated_axial``: AdaptViG's gated axial graph (static), with the edge kind as ``edge_attr``.

On an :math:`H \times W` grid with hop :math:`K`, centre :math:`(r, c)` has, in one direction
only (cyclic),

.. math::
    \text{local:}\quad ((r - K) \bmod H,\ c),\ (r,\ (c - K) \bmod W) \qquad
    \text{long:}\quad ((r - d) \bmod H,\ c),\ d = 2^n,\ n = 1 \dots \mathrm{bitlen}(H) - 1;
    \quad (r,\ (c - d) \bmod W),\ d = 2^n,\ n = 1 \dots \mathrm{bitlen}(W) - 1

(``bitlen`` is :meth:`int.bit_length`); a shift :math:`s \ge` its dimension is skipped (the
release's roll by :math:`s` then gives the node itself, whose message is zero). Edge order
per centre: local row, local column, long rows by increasing :math:`d`, long columns by
increasing :math:`d`. Every node has the same degree, so the fixed-degree fast path holds.

The builder returns a :class:`~.base.BuiltGraph` whose ``edge_attr`` ``[E, 1]`` (x's float
dtype) is the edge's kind: ``0.0`` local, ``1.0`` long-range. A node that is both a local and
a long neighbour (:math:`K` equal to some :math:`2^n`) appears twice, once of each kind: the
release takes both maxima, the ungated and the gated one. The ``gated_mr`` aggregator gates
the long edges; ``mr`` and PyG convolutions (``edge_dim = 1``) run on the same edges. There
is no self edge: the release's running max starts at zero, which ``gated_mr`` does itself
and ``mr`` does with ``conv_options={"zero_start": True}`` (then it is the ungated graph).

``global_attention=True`` (AdaptViG's last stage, chosen per stage with a list of
``graph_options``) instead returns the complete graph of each image (every node, itself
included, in node order) with ``edge_attr`` ``2.0``, and asks its aggregator for
``global_attention=True`` (:meth:`GatedAxialBuilder.conv_options`). That ``edge_index`` is
marked as the complete graph (:func:`mark_complete`), so that ``gated_mr`` takes it as such
without comparing its values (which off the CPU would be read back to the host).

Hop: ``None`` (default) is the release's per-stage value, :math:`K = 8, 4, 2, 1` at grids
56, 28, 14, 7, i.e. :math:`K = \max(1, \lfloor \min(H, W) / 7 \rfloor)` at any grid; an int
fixes it. An int hop not smaller than either dimension would leave no local neighbour and is
refused; the default rule is not (on a 1 x 1 grid it gives an empty graph, ``m = 0``).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ...tracing import tracing
from .axial import check_hop
from .base import BuiltGraph, GraphBuilder, check_map, grid_rows_cols, table_edges
from .registry import GraphBuilderError, register_graph_builder

#: ``edge_attr`` values: the kind of every edge.
LOCAL, LONG, GLOBAL = 0.0, 1.0, 2.0


def mark_complete(edge_index: Tensor, nodes: int) -> Tensor:
    """``edge_index``, recorded as the complete graph of every image of ``nodes`` nodes
    (each centre's neighbours all nodes of its image, in node order, centres in order) for
    as long as nothing writes to it (its version counter unchanged), as
    :func:`~vig_pyg.graph.knn.mark_fixed_degree` records a fixed degree. Not while tracing,
    nor for inference tensors (no version counter)."""
    if not tracing() and not edge_index.is_inference():
        edge_index._vig_complete = (nodes, edge_index._version)
    return edge_index


def marked_complete(edge_index: Tensor, nodes: int) -> bool:
    """Whether :func:`mark_complete` recorded ``edge_index`` with ``nodes`` nodes per image
    and nothing has written to it since."""
    mark = getattr(edge_index, "_vig_complete", None)
    return mark is not None and mark == (nodes, edge_index._version)


def default_hop(h: int, w: int) -> int:
    """The release's hop, 8, 4, 2, 1 at 56, 28, 14, 7: ``max(1, min(H, W) // 7)``."""
    return max(1, min(h, w) // 7)


def long_shifts(size: int) -> list[int]:
    """``2^n`` for ``n = 1 .. bitlen(size) - 1`` below ``size`` (a shift >= size is skipped)."""
    return [2 ** n for n in range(1, size.bit_length()) if 2 ** n < size]


@lru_cache(maxsize=32)
def gated_axial_table(h: int, w: int, hop: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``([H*W, D] neighbour table, [D] kinds)``: columns local row, local column (each only
    when ``hop`` is below its dimension), then long rows and long columns."""
    rows, cols = grid_rows_cols(h, w, device)
    rows, cols = rows.unsqueeze(1), cols.unsqueeze(1)
    row_shifts = [s for s in [hop] if s < h] + long_shifts(h)
    col_shifts = [s for s in [hop] if s < w] + long_shifts(w)
    n_row_local, n_col_local = int(hop < h), int(hop < w)
    i = torch.tensor(row_shifts, dtype=torch.long, device=device).view(1, -1)
    j = torch.tensor(col_shifts, dtype=torch.long, device=device).view(1, -1)
    vertical = (rows - i).remainder(h) * w + cols
    horizontal = rows * w + (cols - j).remainder(w)
    # local row, local column, long rows, long columns
    table = torch.cat([vertical[:, :n_row_local], horizontal[:, :n_col_local],
                       vertical[:, n_row_local:], horizontal[:, n_col_local:]], dim=1)
    kinds = torch.tensor([LOCAL] * (n_row_local + n_col_local)
                         + [LONG] * (len(row_shifts) - n_row_local + len(col_shifts) - n_col_local),
                         device=device)
    return table, kinds


@register_graph_builder("gated_axial")
class GatedAxialBuilder(GraphBuilder):
    """Args: ``hop`` K (default ``None``: ``max(1, min(H, W) // 7)``, the release's 8, 4, 2
    at 56, 28, 14), ``global_attention`` (default False: the complete graph of each image,
    for AdaptViG's last stage; ``hop`` must then be left unset)."""

    edge_dim = 1
    provides = ("edge_attr",)

    def __init__(self, hop: int | None = None, global_attention: bool = False):
        super().__init__()
        if not isinstance(global_attention, bool):
            raise GraphBuilderError(f"graph builder 'gated_axial': global_attention must be "
                                    f"True or False, got {global_attention!r}")
        if global_attention and hop is not None:
            raise GraphBuilderError(f"graph builder 'gated_axial': hop={hop!r} does nothing with "
                                    f"global_attention=True (the complete graph); remove hop")
        self.hop = None if hop is None else check_hop(hop, "gated_axial")
        self.global_attention = global_attention

    def extra_repr(self) -> str:
        if self.global_attention:
            return "global_attention=True"
        return f"hop={'auto' if self.hop is None else self.hop}"

    def conv_options(self) -> dict:
        return {"global_attention": True} if self.global_attention else {}

    def hop_for(self, h: int, w: int) -> int:
        """The hop used on an ``h x w`` grid."""
        return default_hop(h, w) if self.hop is None else self.hop

    def check_grid(self, h: int, w: int, k: int) -> None:
        if self.global_attention or self.hop is None:
            return
        if self.hop >= h and self.hop >= w:
            raise GraphBuilderError(
                f"graph builder 'gated_axial': hop {self.hop} is not smaller than either side of "
                f"the {h}x{w} node grid (no local neighbour); use hop < {max(h, w)}, or "
                f"hop=None for the release's max(1, min(H, W) // 7)")

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> BuiltGraph:
        b, _, h, w = check_map(x, "gated_axial")
        self.check_grid(h, w, k)
        n = h * w
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        if self.global_attention:
            table = torch.arange(n, device=x.device).expand(n, n)
            edge_index = mark_complete(table_edges(table, b, n), n)
            edge_attr = torch.full((edge_index.size(1), 1), GLOBAL, dtype=dtype, device=x.device)
            return BuiltGraph(edge_index, edge_attr=edge_attr)
        table, kinds = gated_axial_table(h, w, self.hop_for(h, w), x.device)
        edge_index = table_edges(table, b, n)
        edge_attr = kinds.to(dtype).repeat(b * n).view(-1, 1)
        return BuiltGraph(edge_index, edge_attr=edge_attr)
