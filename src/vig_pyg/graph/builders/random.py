r"""``random``: ``k`` random patches of the same image, the null model of graph construction.

Every centre draws ``k`` distinct nodes of its own image uniformly (itself as likely as any
other; Floyd's algorithm, ``k`` vectorised steps), in the order drawn. In training mode the
draw uses the global torch generator, so it is fresh at every step and reproducible under
``torch.manual_seed``; in eval mode it uses a generator seeded with ``seed`` and the block's
index, so evaluation sees the same graph every time. Degree ``k``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import BlockInfo, GraphBuilder, check_map, table_edges
from .registry import GraphBuilderError, register_graph_builder


def distinct_draws(rows: int, n: int, k: int, generator=None, device=None) -> Tensor:
    """``[rows, k]``: for every row ``k`` distinct integers of ``[0, n)``, each subset equally
    likely (Floyd: for ``t = n-k .. n-1`` draw ``v`` in ``[0, t]``, take ``t`` if ``v`` was
    taken already, else ``v``)."""
    out = torch.empty(rows, k, dtype=torch.long, device=device)
    for step, t in enumerate(range(n - k, n)):
        v = torch.randint(0, t + 1, (rows,), generator=generator, device=device)
        taken = (out[:, :step] == v.unsqueeze(1)).any(1)
        out[:, step] = torch.where(taken, torch.full_like(v, t), v)
    return out


@register_graph_builder("random")
class RandomBuilder(GraphBuilder):
    """Args: ``seed`` of the evaluation graph (default 0)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise GraphBuilderError(f"graph builder 'random': seed must be an int, got {seed!r}")
        self.seed, self.block_index = seed, 0

    def bind_block(self, info: BlockInfo, shared: dict) -> None:
        self.block_index = info.block_index

    def extra_repr(self) -> str:
        return f"seed={self.seed}"

    def check_grid(self, h: int, w: int, k: int) -> None:
        if k > h * w:
            raise GraphBuilderError(f"graph builder 'random': k = {k} exceeds the {h * w} "
                                    f"nodes of the {h}x{w} grid; use a smaller k")

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        b, _, h, w = check_map(x, "random")
        n = h * w
        self.check_grid(h, w, k)
        generator = None
        if not self.training:
            generator = torch.Generator(device=x.device)
            generator.manual_seed(self.seed * 1_000_003 + self.block_index)
        table = distinct_draws(b * n, n, k, generator, x.device).view(b, n, k)
        return table_edges(table, b, n)
