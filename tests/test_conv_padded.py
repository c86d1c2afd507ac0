"""Every aggregator on every graph builder: the fast paths (fixed degree, padded table) equal
``propagate`` in float64, forward and backward; PyG adapters run through ``propagate``."""
from __future__ import annotations

import pytest
import torch

from vig_pyg import fast_paths
from vig_pyg.conv import build_conv, padded
from vig_pyg.conv.padded import padded_propagate, padded_table
from vig_pyg.graph import graph_builder
from vig_pyg.graph.builders import BlockInfo

BUILDERS = {
    "knn": {}, "static_knn": {}, "axial": {"hop": 2}, "axial_threshold": {"hop": 2},
    "axial_threshold_bare": {"hop": 2, "self_loop": False}, "window_knn": {"window": 3},
    "spatial_knn": {}, "random": {},
}
CONVS = ("mr", "edge", "sage", "gin")
B, C, H, W, K = 2, 8, 5, 7, 4


def build_edges(name):
    builder = graph_builder(name.replace("_bare", ""), **BUILDERS[name]).eval()
    builder.bind_block(BlockInfo(1, 1, K, 1, 1), {})
    x = torch.randn(B, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return x, builder(x, k=K)


def run(conv, x, edge_index, fast):
    nodes = x.permute(0, 2, 3, 1).reshape(-1, C).detach().requires_grad_(True)
    with fast_paths.disabled(*(() if fast else ("fixed_degree", "padded"))):
        out = conv(nodes, edge_index)
        weight = torch.randn(out.shape, dtype=out.dtype,
                             generator=torch.Generator().manual_seed(2))
        (out * weight).sum().backward()
    grads = [nodes.grad] + [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    return out.detach(), grads


@pytest.mark.parametrize("graph", list(BUILDERS))
@pytest.mark.parametrize("name", CONVS)
def test_fast_paths_equal_propagate(graph, name, monkeypatch):
    # the padded table for every variable-degree graph
    monkeypatch.setattr(padded, "MIN_FILL", {"max": 0.0, "sum": 0.0})
    torch.manual_seed(0)
    conv = build_conv(name, C, 2 * C).double().train()
    x, edge_index = build_edges(graph)
    calls = []
    real = padded.padded_propagate
    monkeypatch.setattr(padded, "padded_propagate",
                        lambda *a: calls.append(1) or real(*a))
    out_fast, g_fast = run(conv, x, edge_index, True)
    out_ref, g_ref = run(conv, x, edge_index, False)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    degrees = torch.bincount(edge_index[1], minlength=B * H * W)
    variable = edge_index.numel() > 0 and bool((degrees != degrees[0]).any())
    assert bool(calls) == variable, "variable-degree graphs take the padded table"


def test_padded_table_layout():
    # targets 0: [5, 6], 1: [], 2: [7, 8, 9]
    dst = torch.tensor([0, 0, 2, 2, 2])
    src = torch.tensor([5, 6, 7, 8, 9])
    table, degree = padded_table(dst, src, 3, "first", 10)
    assert table.tolist() == [[5, 6, 5], [10, 10, 10], [7, 8, 9]]
    assert degree.tolist() == [2, 0, 3]
    table, _ = padded_table(dst, src, 3, "zero", 10)
    assert table.tolist() == [[5, 6, 10], [10, 10, 10], [7, 8, 9]]


def test_padded_declines_unsorted_or_sparse_graphs():
    conv = build_conv("mr", C, 2 * C)
    x = torch.randn(12, C)
    unsorted = torch.tensor([[0, 1, 2], [3, 1, 2]])
    assert padded_propagate(conv, unsorted, x, x) is None
    hub = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 1]])   # 6 edges, 12 x 5 table
    assert padded_propagate(conv, hub, x, x) is None
    # still correct through propagate
    out = conv(x, unsorted)
    with fast_paths.disabled("fixed_degree", "padded"):
        torch.testing.assert_close(out, conv(x, unsorted))


@pytest.mark.parametrize("graph", ["axial_threshold", "axial_threshold_bare", "window_knn"])
def test_pyg_adapter_on_variable_degree(graph):
    torch.manual_seed(0)
    conv = build_conv("pyg:GATv2Conv", C, 2 * C).double()
    x, edge_index = build_edges(graph)
    nodes = x.permute(0, 2, 3, 1).reshape(-1, C).requires_grad_(True)
    out = conv(nodes, edge_index)
    out.square().sum().backward()
    assert out.shape == (B * H * W, 2 * C) and bool(torch.isfinite(nodes.grad).all())


def window_edges_off_the_cpu(x, size, k):
    """``window_knn``'s edges as it builds them off the CPU (at positions known from the
    grid, marked with their largest degree), here on the CPU."""
    from vig_pyg.graph.builders.base import node_rows
    from vig_pyg.graph.builders.window_knn import (_window_edges_fixed, window_layout,
                                                   window_members)

    b, _, h, w = x.shape
    cpu = torch.device("cpu")
    order, kept, max_degree = window_layout(h, w, size, 0, k, cpu)
    return _window_edges_fixed(node_rows(x), window_members(h, w, size, 0, cpu), order,
                               kept, max_degree, k, h * w)


@pytest.mark.parametrize("name", CONVS)
def test_the_marked_table_equals_propagate(name, monkeypatch):
    # the branch taken off the CPU: order and largest degree from the builder's mark
    from vig_pyg.graph.knn import marked_max_degree

    monkeypatch.setattr(padded, "MIN_FILL", {"max": 0.0, "sum": 0.0})
    torch.manual_seed(0)
    conv = build_conv(name, C, 2 * C).double().train()
    x = torch.randn(B, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    edge_index = window_edges_off_the_cpu(x, 3, K)     # 5 x 7 grid, 3 x 3 windows: 9 to 1
    degree_max = marked_max_degree(edge_index)
    assert degree_max == int(torch.bincount(edge_index[1]).max())
    calls = []
    monkeypatch.setattr(padded, "padded_propagate", lambda conv, ei, xs, xd: calls.append(1)
                        or padded._padded(conv, conv.aggr, ei[0], ei[1], xs, xd, degree_max))
    out_fast, g_fast = run(conv, x, edge_index, True)
    assert calls
    out_ref, g_ref = run(conv, x, edge_index, False)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_off_the_cpu_the_table_needs_the_mark():
    # meta tensors hold no values: any read would raise
    from vig_pyg.graph.knn import mark_max_degree

    conv = build_conv("mr", C, 2 * C).to("meta")
    x = torch.randn(6, C, device="meta")
    edge_index = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 2, 2]]).to("meta")
    assert padded_propagate(conv, edge_index, x, x) is None    # unmarked: propagate
    out = padded_propagate(conv, mark_max_degree(edge_index, 2), x, x)
    assert out.shape == (6, C) and out.device.type == "meta"
    edge_index.add_(0)                                         # a write drops the mark
    assert padded_propagate(conv, edge_index, x, x) is None
