r"""``lsgc``: LogViG's static logarithmic graph (LSGC), the same for every image and block.

With base :math:`K` on an :math:`H \times W` grid the row shifts are
:math:`s_n = K^n - 1` for :math:`n = 1, \dots, \operatorname{bitlen}(H) - 1`
(``int.bit_length``; the column shifts likewise with :math:`W`), and centre :math:`(r, c)`
is joined to

.. math::
    ((r \pm s_n) \bmod H,\ c) \quad (s_n < H), \qquad
    (r,\ (c \pm s'_n) \bmod W) \quad (s'_n < W)

(cyclic, both directions), as a set of edges: a shift :math:`\ge` its axis is skipped, and a
node named twice (e.g. :math:`K = 3` at :math:`H = 28`: shifts 2, 8, 26, and
:math:`26 \equiv -2`) gives one edge. At :math:`K = 2`: 56 -> {1, 3, 7, 15, 31},
28 -> {1, 3, 7, 15}, 14 -> {1, 3, 7}, 7 -> {1, 3}. The range of :math:`n` is the release
code's (SPEC: the paper's goes one further; :math:`n = \operatorname{bitlen}(H)` would give
:math:`K^n - 1 \ge 2^n - 1 \ge H`, skipped anyway). No self-loop: the release's running
maximum starts at zero and takes :math:`x_i - x_j`, which is ``mr`` with ``sign="i-j",
zero_start=True``.

The offsets are the same for every centre of the cyclic grid, so every node has the same
degree and the convolutions keep their fixed-degree path. Edge order per centre: rows, by
increasing :math:`s_n`, :math:`-s_n` before :math:`+s_n`; then columns alike; an offset
that repeats an earlier one (mod the axis) is left out.
"""
from __future__ import annotations

from torch import Tensor

from .base import GraphBuilder, check_map, table_edges
from .mgc import axis_offsets, check_no_edges, shift_table
from .registry import GraphBuilderError, register_graph_builder


def log_shifts(base: int, size: int) -> list[int]:
    """``K^n - 1`` for ``n = 1 .. bitlen(size) - 1`` (before skipping shifts >= size)."""
    return [base ** n - 1 for n in range(1, size.bit_length())]


@register_graph_builder("lsgc")
class LSGCBuilder(GraphBuilder):
    """Args: ``base`` K (default 2; an int >= 2, LogViG uses 2 or 3 per stage)."""

    def __init__(self, base: int = 2):
        super().__init__()
        if not isinstance(base, int) or isinstance(base, bool) or base < 2:
            raise GraphBuilderError(f"graph builder 'lsgc': base must be an int >= 2 (shifts "
                                    f"base**n - 1), got {base!r}")
        self.base = base

    def extra_repr(self) -> str:
        return f"base={self.base}"

    def offsets(self, h: int, w: int) -> tuple[tuple, tuple]:
        return (tuple(axis_offsets(log_shifts(self.base, h), h)),
                tuple(axis_offsets(log_shifts(self.base, w), w)))

    def check_grid(self, h: int, w: int, k: int) -> None:
        rows, cols = self.offsets(h, w)
        check_no_edges(rows, cols, h, w, f"graph builder 'lsgc': base {self.base}",
                       "use a smaller base or larger images")

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        b, _, h, w = check_map(x, "lsgc")
        self.check_grid(h, w, k)
        rows, cols = self.offsets(h, w)
        return table_edges(shift_table(h, w, rows, cols, x.device), b, h * w)
