"""``torch.compile`` for the zoo (the training side's ``--compile`` switch).

Every zoo model compiles as it is, in training and inference. What changes while Dynamo
traces (see :func:`vig_pyg.conv.functional.tracing`):

- the fixed-degree reductions run as plain ``index_select`` + ``amax``/``sum`` (the
  chunk loops and the hand-written backward are eager-CPU devices; Inductor fuses the
  plain form itself);
- :func:`~vig_pyg.graph.knn_edges` builds the distance block in one piece (no chunk loop
  over a batch size that may be symbolic), does not read values (no NaN/Inf check) and
  :func:`~vig_pyg.graph.fixed_degree` trusts the edge count (the Grapher's kNN graphs
  always have the fixed-degree layout);
- :meth:`~vig_pyg.graph.PatchGraph.from_feature_map` returns a plain stand-in with the
  same ``x`` / ``edge_index`` / ``to_feature_map`` (Dynamo cannot trace PyG's ``Batch``).

Graph breaks (``torch._dynamo.explain``, printed by ``benchmarks/bench_models.py
--compile``): none, for vig_ti and pvig_ti in training and inference (one graph each).
A new input size recompiles (Dynamo specialises shapes it has not seen vary).
"""
from __future__ import annotations

from torch import nn

__all__ = ["maybe_compile"]


def maybe_compile(model: nn.Module, enabled: bool = True, **options) -> nn.Module:
    """``torch.compile(model, **options)`` when ``enabled``, else ``model`` unchanged.

    The compiled module shares the parameters (and ``state_dict`` keys, under
    ``_orig_mod.``) with ``model``: save checkpoints from ``model``, not from the result."""
    if not enabled:
        return model
    import torch

    return torch.compile(model, **options)
