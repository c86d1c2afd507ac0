r"""``axial_threshold``: GreedyViG's dynamic axial graph (DAGC), per image and block.

Candidates of centre :math:`(r, c)` (hop :math:`K`): :math:`((r - i) \bmod H, c)` for
:math:`i = 0, K, 2K, \dots < H` and :math:`(r, (c - j) \bmod W)` for
:math:`j = 0, K, \dots < W` (``i = 0`` and ``j = 0`` both name the node itself, kept once).
With :math:`d_{ij} = \lVert x_i - x_j \rVert_1` (features as they are, not normalised), a
candidate is kept where :math:`d_{ij} < \mu - \sigma` (strict), :math:`\mu` and
:math:`\sigma` being the mean and unbiased standard deviation, over the image's
:math:`H W` nodes, of the distance from every node to its "opposite" node
:math:`((r - \lceil H/2 \rceil) \bmod H, (c - \lceil W/2 \rceil) \bmod W)`.

The release computes :math:`\max(0, \max_{\text{kept } j} (x_j - x_i))`: the zero is
always there. ``self_loop=True`` (default) gives it the same way to every aggregator: the
centre is always its own first neighbour, so a node with nothing kept has exactly one edge
(itself: ``m_i = 0`` under ``mr``, as in SPEC). With ``self_loop=False`` the graph is the
bare kept set; the centre is included only when :math:`0 < \mu - \sigma`, and a node with
nothing kept has no edge (the aggregators give it ``m_i = 0`` / an empty sum).
The degree varies from node to node and image to image. Edge order per centre: self, rows
by increasing ``i``, columns by increasing ``j``.

Off the CPU the kept set is not read back to the host (its size would have to be, at a
synchronisation in every block): the builder returns instead every candidate, ``D`` per
centre in the order above (the fixed-degree layout, :func:`~.base.padded_table_edges`), a dropped
candidate naming again the centre's first kept one (itself with ``self_loop=True``), or
the centre itself when nothing is kept. A repeated neighbour changes no maximum and
:math:`x_i - x_i = 0` is the empty maximum, so aggregators of the form
:math:`\max_j (x_j - x_i)` (``mr``, either sign, ``zero_start``) give exactly what they give
on the CPU's graph; a sum (``gin``), or BatchNorm statistics over the edges (``edge`` and
``sage`` in training), count the repeats.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ...fast_paths import cpu_path
from .axial import axial_table, check_hop, check_hop_fits
from .base import (GraphBuilder, check_map, grid_rows_cols, node_rows, padded_table_edges,
                   table_edges)
from .registry import register_graph_builder


@lru_cache(maxsize=32)
def opposite_index(h: int, w: int, device: torch.device) -> Tensor:
    """Node at ``((r - ceil(H/2)) mod H, (c - ceil(W/2)) mod W)`` for every node: the value
    that rolling the map by ``ceil(H/2)`` rows and ``ceil(W/2)`` columns puts at ``(r, c)``."""
    rows, cols = grid_rows_cols(h, w, device)
    return (rows - (h + 1) // 2).remainder(h) * w + (cols - (w + 1) // 2).remainder(w)


def axial_threshold(x_nodes: Tensor, h: int, w: int) -> Tensor:
    """``mu - sigma`` per image, ``[B, 1]``, from node rows ``[B, H*W, C]``."""
    d = (x_nodes - x_nodes[:, opposite_index(h, w, x_nodes.device)]).abs().sum(-1)
    return (d.mean(1) - d.std(1, unbiased=True)).unsqueeze(1)


@register_graph_builder("axial_threshold")
class AxialThresholdBuilder(GraphBuilder):
    """Args: ``hop`` K (default 2), ``self_loop`` (default True, see above)."""

    def __init__(self, hop: int = 2, self_loop: bool = True):
        super().__init__()
        self.hop = check_hop(hop, "axial_threshold")
        self.self_loop = bool(self_loop)

    def extra_repr(self) -> str:
        return f"hop={self.hop}, self_loop={self.self_loop}"

    def check_grid(self, h: int, w: int, k: int) -> None:
        check_hop_fits(self.hop, h, w, "axial_threshold")

    def candidates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(table [N, D], kept [B, N, D])``: every centre's candidates (column 0 itself)
        and which of them the threshold keeps."""
        b, _, h, w = x.shape
        table = axial_table(h, w, self.hop, x.device)           # [N, D], column 0 = self
        with torch.no_grad():
            nodes = node_rows(x)
            thr = axial_threshold(nodes, h, w)                   # [B, 1]
            mask = torch.empty(b, h * w, table.size(1), dtype=torch.bool, device=x.device)
            mask[..., 0] = (thr > 0) | self.self_loop            # d_ii = 0
            for col in range(1, table.size(1)):                  # one [B, N, C] op per offset
                d = (nodes - nodes[:, table[:, col]]).abs().sum(-1)
                mask[..., col] = d < thr
        return table, mask

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        b, _, h, w = check_map(x, "axial_threshold")
        self.check_grid(h, w, k)
        table, mask = self.candidates(x)
        if cpu_path(x) or not self.repeats_harmless:
            return table_edges(table, b, h * w, mask)
        return padded_table_edges(table, b, h * w, mask)
