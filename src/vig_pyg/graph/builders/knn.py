"""``knn``: the dynamic k-nearest-neighbour graph of ViG, rebuilt in every block (the default).

Exactly :func:`~vig_pyg.graph.knn_edges` on the block's features: L2-normalised squared
distances (+ the relative-position term of pyramid models), the ``k * d`` nearest, every
``d``-th kept (optionally stochastic), pooled keys as candidates when the block has them.
"""
from __future__ import annotations

from torch import Tensor

from ..knn import BACKENDS, knn_edges
from .base import GraphBuilder
from .registry import GraphBuilderError, register_graph_builder


@register_graph_builder("knn")
class KNNBuilder(GraphBuilder):
    """Args: ``stochastic``, ``epsilon`` (stochastic dilation, training only) and
    ``backend`` (``auto``/``dense``/``cluster``), as in :func:`~vig_pyg.graph.knn_edges`."""

    uses_keys = True
    uses_dilation = True

    def __init__(self, stochastic: bool = False, epsilon: float = 0.2, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise GraphBuilderError(f"knn backend must be one of {BACKENDS}, got {backend!r}")
        if not 0.0 <= float(epsilon) <= 1.0:
            raise GraphBuilderError(f"knn epsilon must be in [0, 1], got {epsilon}")
        self.stochastic, self.epsilon, self.backend = bool(stochastic), float(epsilon), backend

    def extra_repr(self) -> str:
        return (f"stochastic={self.stochastic}, epsilon={self.epsilon}" if self.stochastic
                else "")

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        return knn_edges(x, k, dilation=dilation, keys=keys, relative_pos=relative_pos,
                         stochastic=self.stochastic, epsilon=self.epsilon,
                         training=self.training, backend=self.backend)
