r"""``mgc``: MobileViGv2's static graph (MGC), the same for every image and block.

With hop :math:`K` on an :math:`H \times W` grid, centre :math:`(r, c)` is joined to

.. math::
    ((r - K) \bmod H,\ c),\quad ((r + K) \bmod H,\ c),\quad
    (r,\ (c - K) \bmod W),\quad (r,\ (c + K) \bmod W)

(cyclic), as a set of edges: where :math:`2K = H` the two row neighbours are one node and
give one edge (columns alike), and a hop :math:`K \ge H` contributes nothing along the rows
(:math:`K \ge W`: nothing along the columns), as the release's roll by :math:`K` does.
No self-loop: the release's running maximum starts at zero, which is ``mr``'s option
``zero_start=True`` (its sign, :math:`x_j - x_i`, is ``mr``'s default).

The default hop (``hop=None``) is the release's per-stage rule, :math:`K = \max(1,
\lfloor \min(H, W) / 7 \rfloor)`: 8, 4, 2 at grids 56, 28, 14. An int fixes :math:`K`; a
pyramid model takes one per stage as ``graph_options=[{"hop": 8}, {"hop": 4}, ...]``.

The neighbour offsets are the same for every centre of the cyclic grid, so every node has
the same degree (0, 1 or 2 per axis) and the convolutions keep their fixed-degree path.
Edge order per centre: :math:`r - K`, :math:`r + K`, :math:`c - K`, :math:`c + K`, each
left out where it repeats an earlier one or its axis is too short.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .base import GraphBuilder, check_map, grid_rows_cols, table_edges
from .registry import GraphBuilderError, register_graph_builder


def axis_offsets(shifts, size: int) -> list[int]:
    """The distinct nonzero offsets ``-s, +s`` (mod ``size``) of the shifts ``s < size``, in
    order of first appearance (``-s`` before ``+s``); shifts ``>= size`` are skipped."""
    out: list[int] = []
    for s in shifts:
        if s >= size:
            continue
        for off in ((-s) % size, s % size):
            if off and off not in out:
                out.append(off)
    return out


@lru_cache(maxsize=64)
def shift_table(h: int, w: int, row_offsets: tuple, col_offsets: tuple,
                device: torch.device) -> Tensor:
    """``[H*W, D]`` neighbour table: ``((r + o) mod H, c)`` for the row offsets, then
    ``(r, (c + o) mod W)`` for the column offsets (offsets already reduced mod the axis)."""
    rows, cols = grid_rows_cols(h, w, device)
    rows, cols = rows.unsqueeze(1), cols.unsqueeze(1)
    ro = torch.tensor(row_offsets, dtype=torch.long, device=device).view(1, -1)
    co = torch.tensor(col_offsets, dtype=torch.long, device=device).view(1, -1)
    vertical = (rows + ro).remainder(h) * w + cols
    horizontal = rows * w + (cols + co).remainder(w)
    return torch.cat([vertical, horizontal], dim=1)


def check_no_edges(row_offsets, col_offsets, h: int, w: int, what: str, fix: str) -> None:
    if not row_offsets and not col_offsets:
        raise GraphBuilderError(f"{what} gives no neighbour on the {h}x{w} node grid (every "
                                f"shift reaches past both axes); {fix}")


@register_graph_builder("mgc")
class MGCBuilder(GraphBuilder):
    """Args: ``hop`` K (default ``None``: ``max(1, min(H, W) // 7)`` of the grid, the
    release's per-stage rule; an int >= 1 fixes it)."""

    def __init__(self, hop: int | None = None):
        super().__init__()
        if hop is not None and (not isinstance(hop, int) or isinstance(hop, bool) or hop < 1):
            raise GraphBuilderError(f"graph builder 'mgc': hop must be an int >= 1 or None (the "
                                    f"release's rule max(1, min(H, W) // 7)), got {hop!r}")
        self.hop = hop

    def extra_repr(self) -> str:
        return f"hop={self.hop}" if self.hop is not None else "hop=max(1, min(H, W) // 7)"

    def hop_for(self, h: int, w: int) -> int:
        """The hop used on an ``h x w`` grid."""
        return self.hop if self.hop is not None else max(1, min(h, w) // 7)

    def offsets(self, h: int, w: int) -> tuple[tuple, tuple]:
        hop = self.hop_for(h, w)
        return tuple(axis_offsets([hop], h)), tuple(axis_offsets([hop], w))

    def check_grid(self, h: int, w: int, k: int) -> None:
        rows, cols = self.offsets(h, w)
        hop = self.hop_for(h, w)
        check_no_edges(rows, cols, h, w, f"graph builder 'mgc': hop {hop}",
                       f"use hop < {max(h, w)} or larger images")

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        b, _, h, w = check_map(x, "mgc")
        self.check_grid(h, w, k)
        rows, cols = self.offsets(h, w)
        return table_edges(shift_table(h, w, rows, cols, x.device), b, h * w)
