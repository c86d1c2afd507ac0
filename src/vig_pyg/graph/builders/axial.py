r"""``axial``: MobileViG's static axial graph (SVGA), the same for every image and block.

With hop :math:`K` on an :math:`H \times W` grid, centre :math:`(r, c)` is joined to itself
and to

.. math::
    ((r - i) \bmod H,\ c),\ i = K, 2K, \dots < H \qquad
    (r,\ (c - j) \bmod W),\ j = K, 2K, \dots < W

(cyclic; for :math:`H` not a multiple of :math:`K` the graph is not symmetric). The self edge
is the release's always-present zero: its max-relative takes
:math:`\max(0, \max_j \dots)`. Degree :math:`1 + \lfloor (H-1)/K \rfloor +
\lfloor (W-1)/K \rfloor` for every node, so the convolutions keep their fixed-degree path.
Edge order per centre: self, then rows by increasing :math:`i`, then columns by :math:`j`.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .base import GraphBuilder, check_map, grid_rows_cols, table_edges
from .registry import GraphBuilderError, register_graph_builder


def check_hop(hop, who: str) -> int:
    if not isinstance(hop, int) or isinstance(hop, bool) or hop < 1:
        raise GraphBuilderError(f"graph builder {who!r}: hop must be an int >= 1, got {hop!r}")
    return hop


def check_hop_fits(hop: int, h: int, w: int, who: str) -> None:
    if hop >= h or hop >= w:
        raise GraphBuilderError(
            f"graph builder {who!r}: hop {hop} is not smaller than the {h}x{w} node grid "
            f"(no neighbour along an axis); use hop < {min(h, w)} or larger images")


@lru_cache(maxsize=32)
def axial_table(h: int, w: int, hop: int, device: torch.device) -> Tensor:
    """``[H*W, D]`` neighbour table: column 0 the node itself, then the row offsets
    ``i = hop, 2 hop, ... < H``, then the column offsets ``j = hop, ... < W``."""
    rows, cols = grid_rows_cols(h, w, device)
    rows, cols = rows.unsqueeze(1), cols.unsqueeze(1)
    i = torch.arange(hop, h, hop, device=device).unsqueeze(0)
    j = torch.arange(hop, w, hop, device=device).unsqueeze(0)
    vertical = (rows - i).remainder(h) * w + cols
    horizontal = rows * w + (cols - j).remainder(w)
    return torch.cat([rows * w + cols, vertical, horizontal], dim=1)


@register_graph_builder("axial")
class AxialBuilder(GraphBuilder):
    """Args: ``hop`` K (default 2, MobileViG's)."""

    def __init__(self, hop: int = 2):
        super().__init__()
        self.hop = check_hop(hop, "axial")

    def extra_repr(self) -> str:
        return f"hop={self.hop}"

    def check_grid(self, h: int, w: int, k: int) -> None:
        check_hop_fits(self.hop, h, w, "axial")

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        b, _, h, w = check_map(x, "axial")
        self.check_grid(h, w, k)
        return table_edges(axial_table(h, w, self.hop, x.device), b, h * w)
