"""The pyg: adapters' fast paths (FastAggregation, EdgeConv's per-node first layer) against PyG's own evaluation of the same module (float64, forward and gradients), on
fixed-degree, bipartite, variable-degree and unsorted graphs."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import aggr as pyg_aggr

from vig_pyg import fast_paths
from vig_pyg.conv import PYG_PREFIX, build_conv
from vig_pyg.conv.fast_aggregation import FastAggregation
from vig_pyg.conv.pyg_adapter import RECIPES
from vig_pyg.conv.split_edge_conv import SplitEdgeConv
from vig_pyg.graph import fixed_degree, knn_edges

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

C = 8


def _graphs(kind: str):
    """``(x, edge_index, fixed)``: x a tensor or a pair (x_src, x_dst), float64."""
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(2, C, 4, 4, generator=g, dtype=torch.float64)
    x = fmap.permute(0, 2, 3, 1).reshape(-1, C)
    if kind == "bipartite":
        keys = F.avg_pool2d(fmap, 2)
        return (keys.permute(0, 2, 3, 1).reshape(-1, C), x), knn_edges(fmap, 3, keys=keys)
    edge_index = knn_edges(fmap, 5)
    if kind == "variable":  # drop a third of the edges: still grouped by target, degree 1..5
        keep = torch.rand(edge_index.size(1), generator=g) > 0.33
        keep[::5] = True
        return x, edge_index[:, keep]
    if kind == "unsorted":  # the fixed-degree edges in random order
        return x, edge_index[:, torch.randperm(edge_index.size(1), generator=g)]
    return x, edge_index


def _count_inner_calls(module):
    """Counts the calls that reach PyG's own aggregation inside the wrapper."""
    inner = module.conv.aggr_module.inner
    calls = []
    inner.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def _plain(module):
    """The same module with PyG's own aggregation (unwrapped); run inside
    ``fast_paths.disabled("split_edge_conv")``, a ``SplitEdgeConv`` runs
    ``EdgeConv.forward``, so the whole is PyG's code."""
    plain = copy.deepcopy(module)
    if isinstance(plain.conv.aggr_module, FastAggregation):
        plain.conv.aggr_module = plain.conv.aggr_module.inner
    return plain


def _first_layer_rows(module):
    """Rows seen by the first layer of an EdgeConv's MLP, per call as a module (the split
    path uses its weight directly)."""
    rows = []
    module.conv.nn[0].register_forward_hook(lambda m, args, out: rows.append(args[0].size(0)))
    return rows


def _out_and_grads(module, x, edge_index):
    xs = [t.detach().clone().requires_grad_(True) for t in (x if isinstance(x, tuple) else [x])]
    out = module(tuple(xs) if len(xs) == 2 else xs[0], edge_index)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    return out.detach(), [t.grad for t in xs], {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("kind", ["fixed", "bipartite", "variable", "unsorted"])
@pytest.mark.parametrize("name", list(RECIPES))
def test_fast_aggregation_matches_pyg(name, kind):
    if kind == "bipartite" and not RECIPES[name][1]:
        pytest.skip(f"{name} does not take (x_src, x_dst)")
    x, edge_index = _graphs(kind)
    torch.manual_seed(0)
    kwargs = {"heads": 2} if name in ("GATConv", "GATv2Conv", "TransformerConv") else {}
    module = build_conv(PYG_PREFIX + name, C, 2 * C, **kwargs).double()
    aggr = module.conv.aggr_module
    wrapped = isinstance(aggr, FastAggregation)
    # sums and means stay PyG's (index_add_ measured no faster); the others are wrapped
    assert wrapped != isinstance(aggr, (pyg_aggr.SumAggregation, pyg_aggr.MeanAggregation))
    plain = _plain(module)
    calls = _count_inner_calls(module) if wrapped else None
    rows = _first_layer_rows(module) if name == "EdgeConv" else None
    plain_rows = _first_layer_rows(plain) if name == "EdgeConv" else None

    out, grads_x, grads_p = _out_and_grads(module, x, edge_index)
    with fast_paths.disabled("split_edge_conv"):
        ref, ref_x, ref_p = _out_and_grads(plain, x, edge_index)

    num_targets = (x[1] if isinstance(x, tuple) else x).size(0)
    dense = fixed_degree(edge_index, num_targets) is not None
    assert dense == (kind in ("fixed", "bipartite"))
    if wrapped:  # max / softmax: the view where it applies, PyG's aggregation elsewhere
        assert (len(calls) == 0) == dense
    if rows is not None:  # EdgeConv's first layer: its weight used per node, never per edge
        assert rows == [] and plain_rows == [edge_index.size(1)]
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads_x, ref_x):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    assert grads_p.keys() == ref_p.keys()
    for n in grads_p:
        torch.testing.assert_close(grads_p[n], ref_p[n], rtol=1e-10, atol=1e-10, msg=n)
    with torch.no_grad():  # inference (max / min: PyG's scatter, the faster forward)
        fast = module(x, edge_index)
        with fast_paths.disabled("split_edge_conv"):
            torch.testing.assert_close(fast, plain(x, edge_index), rtol=1e-10, atol=1e-10)


def test_switch_off_runs_pyg_aggregation():
    x, edge_index = _graphs("fixed")
    module = build_conv("pyg:GENConv", C, 2 * C).double()
    calls = _count_inner_calls(module)
    fast = module(x, edge_index)
    assert not calls
    with fast_paths.disabled("pyg_aggregation"):
        torch.testing.assert_close(module(x, edge_index), fast, rtol=1e-10, atol=1e-10)
    assert len(calls) == 1


def test_reordered_edges_of_equal_count_use_pyg():
    """GATConv(add_self_loops=True) on a kNN graph (self-loops included) removes the N loops
    and appends N new ones: as many messages as k * N, no longer grouped by target (with
    aggr="max" the view would apply if only the count were checked)."""
    x, edge_index = _graphs("fixed")
    torch.manual_seed(0)
    module = build_conv("pyg:GATConv", C, 2 * C, add_self_loops=True, aggr="max").double()
    plain = _plain(module)
    calls = _count_inner_calls(module)
    torch.testing.assert_close(module(x, edge_index), plain(x, edge_index))
    assert len(calls) == 1


def test_what_is_wrapped():
    sage = build_conv("pyg:SAGEConv", C, aggr="max")
    assert isinstance(sage.conv.aggr_module.inner, pyg_aggr.MaxAggregation)
    # a learnt temperature stays PyG's (its parameter keeps its state_dict key)
    gen = build_conv("pyg:GENConv", C, learn_t=True)
    assert isinstance(gen.conv.aggr_module, pyg_aggr.SoftmaxAggregation)
    assert "conv.aggr_module.t" in gen.state_dict()
    # several aggregations at once: not a single reduction
    multi = build_conv("pyg:SAGEConv", C, aggr=["mean", "max"])
    assert not isinstance(multi.conv.aggr_module, FastAggregation)
    # the wrapper holds no state of its own: the state_dict is that of PyG's module
    gen = build_conv("pyg:GENConv", C)
    plain = copy.deepcopy(gen)
    plain.conv.aggr_module = plain.conv.aggr_module.inner
    assert list(gen.state_dict()) == list(plain.state_dict())


def test_split_edge_conv_keeps_pyg_edgeconv():
    from torch_geometric.nn.conv import EdgeConv

    module = build_conv("pyg:EdgeConv", C, 2 * C)
    assert isinstance(module.conv, EdgeConv)
    reference = EdgeConv(copy.deepcopy(module.conv.nn), aggr="max")
    assert list(module.conv.state_dict()) == list(reference.state_dict())
    # an MLP that does not start with Linear(2 C, .): PyG's forward, unchanged
    other = SplitEdgeConv(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2 * C, C)))
    pyg = EdgeConv(other.nn)  # (its constructor resets the shared MLP: build it first)
    x, edge_index = _graphs("fixed")
    x = x.float()
    torch.testing.assert_close(other(x, edge_index), pyg(x, edge_index))



def test_both_switches_off_run_pyg_and_come_back():
    x, edge_index = _graphs("fixed")
    module = build_conv("pyg:EdgeConv", C, 2 * C).double()
    calls, rows = _count_inner_calls(module), _first_layer_rows(module)
    with fast_paths.disabled("pyg_aggregation", "split_edge_conv"):
        module(x, edge_index)
    assert len(calls) == 1 and rows == [edge_index.size(1)]  # PyG's aggregation and MLP
    module(x, edge_index)
    assert len(calls) == 1 and rows == [edge_index.size(1)]  # restored: neither ran again
    assert fast_paths.enabled("pyg_aggregation") and fast_paths.enabled("split_edge_conv")


def test_split_edge_conv_macs_and_the_release_count():
    """n nodes, k neighbours, C -> O = 2C, MLP Linear(2C, O) -> act -> Linear(O, O). PyG's
    EdgeConv: n k (2C) O + n k O O. Split: the first layer per node, (W_a - W_b) x_i and
    W_b x_j: 2 n C O, then n k O O. count_macs reports PyG's as the total."""
    from torch.utils.flop_counter import FlopCounterMode

    from vig_pyg.models import create_model
    from vig_pyg.models.info import count_macs

    x, edge_index = _graphs("fixed")
    n, k, o = x.size(0), edge_index.size(1) // x.size(0), 2 * C
    module = build_conv("pyg:EdgeConv", C, o).double().eval()

    def macs():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x, edge_index)
        return counter.get_total_flops() // 2

    assert macs() == 2 * n * C * o + n * k * o * o
    with fast_paths.disabled("pyg_aggregation", "split_edge_conv"):
        assert macs() == n * k * 2 * C * o + n * k * o * o
    model = create_model("vig_ti", conv="pyg:EdgeConv", channels=16, depth=2, stem_stride=8,
                         k=4, img_size=64, num_classes=10)
    counted = count_macs(model, 64)
    with fast_paths.disabled("pyg_aggregation", "split_edge_conv"):
        generic = count_macs(model, 64)
    assert counted["total"] == generic["total"] == generic["executed"] > counted["executed"]
