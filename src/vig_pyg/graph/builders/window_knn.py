r"""``window_knn``: WiGNet's windowed kNN, the ViG kNN restricted to ``w x w`` windows.

The grid is cut into non-overlapping ``w x w`` windows (default ``w = 7``); every node takes
its ``k`` nearest nodes of its own window (L2-normalised squared distance, itself included,
ascending, ties as :func:`torch.topk` breaks them). With ``shift=True`` (default) every
second block of a stage (odd index within the stage) shifts the windows by ``w // 2``
cyclically, as Swin does: node ``(r, c)`` lies in window
``(((r - s) mod H) // w, ((c - s) mod W) // w)`` with ``s = w // 2`` (nodes that wrap around
share a window; there is no Swin attention mask). When ``H`` or ``W`` is not a multiple of
``w`` the last windows are smaller; a node whose window holds fewer than ``k`` nodes is joined
to all of them (variable degree). Otherwise the degree is ``k`` everywhere. Neither dilation
nor relative positions apply.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .base import BlockInfo, GraphBuilder, check_map, grid_rows_cols, node_rows
from .registry import GraphBuilderError, register_graph_builder


@lru_cache(maxsize=32)
def window_members(h: int, w: int, size: int, shift: int, device: torch.device) -> Tensor:
    """``[num_windows, size * size]`` node indices of each window, ``-1`` where a partial
    window has no node; members in row-major order of their shifted position."""
    rows, cols = grid_rows_cols(h, w, device)
    sr, sc = (rows - shift).remainder(h), (cols - shift).remainder(w)   # shifted positions
    nw = -(-w // size)
    window = (sr // size) * nw + sc // size
    slot = (sr % size) * size + sc % size
    table = torch.full((-(-h // size) * nw, size * size), -1, dtype=torch.long, device=device)
    table[window, slot] = torch.arange(h * w, device=device)
    return table


@register_graph_builder("window_knn")
class WindowKNNBuilder(GraphBuilder):
    """Args: ``window`` w (default 7), ``shift`` (default True: odd blocks of a stage shift
    by ``w // 2``)."""

    def __init__(self, window: int = 7, shift: bool = True):
        super().__init__()
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise GraphBuilderError(f"graph builder 'window_knn': window must be an int >= 1, "
                                    f"got {window!r}")
        self.window, self.shift = window, bool(shift)
        self.shifted = False   # set per block by bind_block

    def bind_block(self, info: BlockInfo, shared: dict) -> None:
        self.shifted = self.shift and info.index_in_stage % 2 == 1

    def extra_repr(self) -> str:
        return f"window={self.window}, shifted={self.shifted}"

    def check_grid(self, h: int, w: int, k: int) -> None:
        size = self.window
        if size > h or size > w:
            raise GraphBuilderError(f"graph builder 'window_knn': window {size} is larger than "
                                    f"the {h}x{w} node grid; use window <= {min(h, w)}")
        if k > size * size:
            raise GraphBuilderError(f"graph builder 'window_knn': k = {k} exceeds the "
                                    f"{size * size} nodes of a {size}x{size} window; use a "
                                    f"larger window or a smaller k")

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        b, c, h, w = check_map(x, "window_knn")
        self.check_grid(h, w, k)
        size = self.window
        members = window_members(h, w, size, size // 2 if self.shifted else 0, x.device)
        with torch.no_grad():
            return _window_edges(node_rows(x), members, k, h * w)


def _window_edges(nodes: Tensor, members: Tensor, k: int, n: int) -> Tensor:
    b, _, c = nodes.shape
    nwin, m = members.shape
    valid = members >= 0                                          # [nwin, m]
    q = torch.nn.functional.normalize(nodes, dim=-1)
    q = q[:, members.clamp_min(0)].reshape(b * nwin, m, c)       # [B*nwin, m, C]
    sq = (q * q).sum(-1).unsqueeze(1)                             # |y_j|^2, [B*nwin, 1, m]
    dist = torch.baddbmm(sq, q, q.transpose(1, 2), alpha=-2.0)
    dist = dist.view(b, nwin, m, m).masked_fill(~valid.view(1, nwin, 1, m), float("inf"))
    rank = dist.topk(k, dim=-1, largest=False, sorted=True).indices   # [B, nwin, m, k]
    neighbour = members[torch.arange(nwin, device=members.device).view(1, nwin, 1, 1), rank]
    keep = neighbour >= 0
    # back to node order: the window slot of every node, then image offsets
    order = torch.empty(n, dtype=torch.long, device=members.device)
    order[members[valid]] = torch.arange(nwin * m, device=members.device)[valid.view(-1)]
    neighbour = neighbour.view(b, nwin * m, k)[:, order]          # [B, N, k]
    keep = keep.view(b, nwin * m, k)[:, order]
    src = neighbour + torch.arange(b, device=nodes.device).mul_(n).view(b, 1, 1)
    centre = torch.arange(b * n, device=nodes.device).view(b, n, 1).expand(b, n, k)
    if bool(keep.all()):
        return torch.stack([src.reshape(-1), centre.reshape(-1)])
    return torch.stack([src[keep], centre[keep]])
