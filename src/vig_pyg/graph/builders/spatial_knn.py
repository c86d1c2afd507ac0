r"""``spatial_knn``: the ``k`` spatially nearest patches, a fixed CNN-like neighbourhood.

Centre :math:`(r, c)` is joined to the ``k`` nodes :math:`(r', c')` of the grid with the
smallest :math:`(r - r')^2 + (c - c')^2` (itself first), ties broken by the neighbour's node
index :math:`r' W + c'` (smaller first): with ``k = 9`` the 3 x 3 square around an inner
node, shifted inwards at the border (never fewer than ``k``). The same graph for every image
and block, degree ``k`` (the block's scheduled ``k``; no dilation, no features).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .base import GraphBuilder, check_map, grid_rows_cols, table_edges
from .registry import GraphBuilderError, register_graph_builder

_ROWS_PER_CHUNK = 512


@lru_cache(maxsize=32)
def spatial_table(h: int, w: int, k: int, device: torch.device) -> Tensor:
    """``[H*W, k]``: the ``k`` nearest nodes of every node, in (distance, index) order."""
    n = h * w
    rows, cols = grid_rows_cols(h, w, device)
    index = torch.arange(n, device=device, dtype=torch.float64)
    out = torch.empty(n, k, dtype=torch.long, device=device)
    for s in range(0, n, _ROWS_PER_CHUNK):
        r, c = rows[s:s + _ROWS_PER_CHUNK, None], cols[s:s + _ROWS_PER_CHUNK, None]
        d2 = ((r - rows) ** 2 + (c - cols) ** 2).double()
        # distance first, node index second: exact in float64 for any realistic grid
        out[s:s + _ROWS_PER_CHUNK] = (d2 * n + index).topk(k, dim=1, largest=False,
                                                           sorted=True).indices
    return out


@register_graph_builder("spatial_knn")
class SpatialKNNBuilder(GraphBuilder):
    """No options: ``k`` is the block's."""

    def check_grid(self, h: int, w: int, k: int) -> None:
        if k > h * w:
            raise GraphBuilderError(f"graph builder 'spatial_knn': k = {k} exceeds the "
                                    f"{h * w} nodes of the {h}x{w} grid; use a smaller k")

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        b, _, h, w = check_map(x, "spatial_knn")
        self.check_grid(h, w, k)
        return table_edges(spatial_table(h, w, k, x.device), b, h * w)
