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

Which neighbours a node keeps (the first ``min(k, |window|)`` of its ranking) depends on the
grid alone, so the edge count is known before any feature is: off the CPU the edges are
taken at those fixed positions, with no read back to the host, and a variable-degree result
carries its largest degree (:func:`~vig_pyg.graph.knn.mark_max_degree`) for the aggregators' padded table
(:mod:`vig_pyg.conv.padded`); on the CPU they come from the ranking itself (the same edges
for finite features).
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ..knn import _target_index, mark_fixed_degree, mark_max_degree
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


@lru_cache(maxsize=32)
def window_layout(h: int, w: int, size: int, shift: int, k: int,
                  device: torch.device) -> tuple[Tensor, Tensor | None, int]:
    """``(order [N], kept, max_degree)`` of the grid, computed on the CPU and moved to
    ``device``: ``order[p]`` is node ``p``'s position in the flattened
    ``[num_windows, size * size]`` member table, ``kept`` the flat positions in a
    node-ordered ``[N, k]`` neighbour table of the slots a node keeps,
    ``r < min(k, |window|)`` (``None`` when every window holds ``k`` nodes or more), and
    ``max_degree`` the largest ``min(k, |window|)``."""
    members = window_members(h, w, size, shift, torch.device("cpu"))
    valid = members >= 0
    order = torch.empty(h * w, dtype=torch.long)
    order[members[valid]] = torch.arange(valid.numel())[valid.view(-1)]
    population = valid.sum(1, keepdim=True).expand_as(members).reshape(-1)[order]   # [N]
    if bool((population >= k).all()):
        return order.to(device), None, k
    keep = torch.arange(k).unsqueeze(0) < population.unsqueeze(1)
    return (order.to(device), keep.view(-1).nonzero().view(-1).to(device),
            int(population.clamp_max(k).max()))


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
        shift = size // 2 if self.shifted else 0
        members = window_members(h, w, size, shift, x.device)
        order, kept, max_degree = window_layout(h, w, size, shift, k, x.device)
        with torch.no_grad():
            if x.is_cpu:
                return _window_edges(node_rows(x), members, order, k, h * w)
            return _window_edges_fixed(node_rows(x), members, order, kept, max_degree, k,
                                       h * w)


def _ranked(nodes: Tensor, members: Tensor, order: Tensor, k: int) -> Tensor:
    """``[B, N, k]`` every node's ``k`` nearest members of its window, ascending (node
    indices within the image; ``-1`` after the last member of a window smaller than
    ``k``)."""
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
    # back to node order: the window slot of every node
    return neighbour.view(b, nwin * m, k)[:, order]


def _window_edges(nodes: Tensor, members: Tensor, order: Tensor, k: int, n: int) -> Tensor:
    """The edges (grouped by centre) from the ranking itself: the CPU's form."""
    b = nodes.size(0)
    neighbour = _ranked(nodes, members, order, k)
    keep = neighbour >= 0
    src = neighbour + torch.arange(b, device=nodes.device).mul_(n).view(b, 1, 1)
    centre = torch.arange(b * n, device=nodes.device).view(b, n, 1).expand(b, n, k)
    if bool(keep.all()):
        return torch.stack([src.reshape(-1), centre.reshape(-1)])
    return torch.stack([src[keep], centre[keep]])


def _window_edges_fixed(nodes: Tensor, members: Tensor, order: Tensor, kept: Tensor | None,
                        max_degree: int, k: int, n: int) -> Tensor:
    """The same edges taken at the positions :func:`window_layout` knows from the grid: no
    read back. With finite features the ``min(k, |window|)`` finite distances rank first,
    so these are the ranking's own ``neighbour >= 0``; a slot that is not (a non-finite
    feature) names the centre, so that no index leaves the image. Marked with the fixed
    degree ``k``, or with ``max_degree`` where windows are smaller."""
    b = nodes.size(0)
    device = nodes.device
    centre = torch.arange(n, device=device).view(1, n, 1)
    neighbour = _ranked(nodes, members, order, k)
    neighbour = torch.where(neighbour >= 0, neighbour, centre)
    offsets = torch.arange(b, device=device).mul_(n).view(b, 1)
    if kept is None:
        src = (neighbour.view(b, n * k) + offsets).view(-1)
        return mark_fixed_degree(torch.stack([src, _target_index(b * n, k, device)]), k)
    src = neighbour.view(b, n * k).index_select(1, kept) + offsets
    centre = kept.div(k, rounding_mode="floor").unsqueeze(0) + offsets
    return mark_max_degree(torch.stack([src.view(-1), centre.view(-1)]), max_degree)
