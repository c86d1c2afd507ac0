"""Pieces the graph-builder tests share (pytest puts tests/ on ``sys.path``)."""
from __future__ import annotations

import torch


def neighbour_lists(edge_index, num_nodes):
    """{centre: [neighbours in stored order]}; also checks the grouped-by-centre layout."""
    src, dst = edge_index.tolist()
    assert dst == sorted(dst), "edges must be grouped by centre, centres in order"
    out = {i: [] for i in range(num_nodes)}
    for j, i in zip(src, dst):
        out[i].append(j)
    return out


def trains_then_evaluates_deterministically(model, x):
    """One forward + backward: a finite loss and a gradient for every trainable parameter;
    then two eval-mode forwards that agree exactly (eval graphs are seeded)."""
    loss = model(x).logsumexp(1).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
