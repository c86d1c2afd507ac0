r"""``static_knn``: the kNN graph built once per forward pass and reused by a whole stage.

The model hands the map a stage starts with (for the first stage: the stem output plus the
position embedding) to the stage's shared state, through hooks on the stage's first block
(:func:`attach_stage_hooks`; released by a hook on its last block). The first Grapher of the
stage to run ranks, once, the candidates of every node on that map with the ``knn`` rules
(L2-normalised squared distances, the relative-position term of the calling block, pooled
keys where the blocks have them) up to the largest ``k * d`` of the stage; every block then
keeps ranks ``0, d, 2d, ... < k d`` of that ranking for its own ``k`` and ``d``, which is
:func:`~vig_pyg.graph.knn_edges` on the stage input with the block's schedule (the same
neighbours up to ties). Stochastic dilation does not apply. Used outside a model (no hooks),
the builder ranks the map it is given, like ``knn``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..knn import BACKENDS, _target_index, knn_edges, mark_fixed_degree
from .base import BlockInfo, GraphBuilder, check_map
from .registry import GraphBuilderError, register_graph_builder


class StageInput:
    """Forward pre-hook of a stage's first block: records the stage input (a class, not a
    closure, so that ``copy.deepcopy`` of the model, e.g. for EMA, copies the shared state
    along with the builders that read it)."""

    def __init__(self, shared: dict):
        self.shared = shared

    def __call__(self, module, args):
        self.shared.pop("ranked", None)
        self.shared["source"] = args[0]


class StageEnd:
    """Forward hook of a stage's last block: drops the stage input and its ranking."""

    def __init__(self, shared: dict):
        self.shared = shared

    def __call__(self, module, args, output):
        self.shared.pop("source", None)
        self.shared.pop("ranked", None)


def attach_stage_hooks(first_block, last_block, shared: dict) -> None:
    first_block.register_forward_pre_hook(StageInput(shared))
    last_block.register_forward_hook(StageEnd(shared))


@register_graph_builder("static_knn")
class StaticKNNBuilder(GraphBuilder):
    """Args: ``backend`` of the ranking (as ``knn``)."""

    uses_keys = True
    uses_dilation = True
    needs_stage_input = True

    def __init__(self, backend: str = "auto"):
        super().__init__()
        if backend not in BACKENDS:
            raise GraphBuilderError(f"static_knn backend must be one of {BACKENDS}, got "
                                    f"{backend!r}")
        self.backend = backend
        self.shared: dict = {}
        self.reduce_ratio = 1

    def bind_block(self, info: BlockInfo, shared: dict) -> None:
        self.shared, self.reduce_ratio = shared, info.reduce_ratio
        shared["max_kd"] = max(shared.get("max_kd", 0), info.k * info.dilation)

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        check_map(x, "static_knn")
        source = self.shared.get("source")
        if source is None or source.shape[0] != x.shape[0] or source.shape[2:] != x.shape[2:]:
            return knn_edges(x, k, dilation=dilation, keys=keys, relative_pos=relative_pos,
                             backend=self.backend)
        num_keys = keys.shape[2] * keys.shape[3] if keys is not None else x.shape[2] * x.shape[3]
        ranked = self.shared.get("ranked")
        if ranked is None:
            kd = min(num_keys, max(self.shared.get("max_kd", 0), k * dilation))
            src_keys = (F.avg_pool2d(source, self.reduce_ratio, self.reduce_ratio)
                        if keys is not None else None)
            edges = knn_edges(source, kd, keys=src_keys, relative_pos=relative_pos,
                              backend=self.backend)
            ranked = self.shared["ranked"] = (edges, kd)
        edges, kd = ranked
        if k * dilation > kd:
            raise GraphBuilderError(f"static_knn: block asks for k * d = {k * dilation} but the "
                                    f"stage ranked {kd}; bind every block of the stage")
        src = edges[0].view(-1, kd)[:, :k * dilation:dilation]
        return mark_fixed_degree(
            torch.stack([src.reshape(-1), _target_index(src.size(0), k, src.device)]), k)
