"""What a builder can hand its aggregator beyond the edges (BuiltGraph: edge attributes,
hypergraph incidences), the aggregator options (conv_options), the pairing check between
graph and hypergraph, and how diagnostics and studies see the new outputs."""
from __future__ import annotations

import itertools

import pytest
import torch

from vig_pyg.conv import conv_graph_kind, conv_takes, register_conv
from vig_pyg.conv import registry as conv_registry
from vig_pyg.conv.max_relative import MRConv
from vig_pyg.diagnostics.capture import BlockGraph, GraphCapture, clique_expansion
from vig_pyg.diagnostics.stats import block_stats
from vig_pyg.errors import VigPygError
from vig_pyg.graph import BuiltGraph, GraphBuilder, register_graph_builder
from vig_pyg.graph.builders import registry as builder_registry
from vig_pyg.models import create_model

SMALL = dict(num_classes=3, img_size=32, channels=16, depth=2, stem_stride=4, k=3)


def one_line_error(fn, match):
    with pytest.raises(VigPygError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


@pytest.fixture
def ring_builders():
    """A graph builder returning edge attributes (the edge's step) and a hypergraph
    builder (one hyperedge per grid row), registered for the test only."""

    @register_graph_builder("ring_attr_test")
    class RingAttr(GraphBuilder):
        edge_dim = 1
        provides = ("edge_attr",)

        def forward(self, x, keys=None, *, k=9, dilation=1, relative_pos=None):
            b, _, h, w = x.shape
            n = torch.arange(b * h * w)
            nxt = n - n % (h * w) + (n % (h * w) + 1) % (h * w)
            edges = torch.stack([torch.stack([n, nxt], 1).view(-1), n.repeat_interleave(2)])
            attr = torch.tensor([0.0, 1.0]).repeat(b * h * w).unsqueeze(1)
            return BuiltGraph(edges, edge_attr=attr)

    @register_graph_builder("rows_hyper_test")
    class Rows(GraphBuilder):
        graph_kind = "hypergraph"
        provides = ("num_hyperedges",)

        def forward(self, x, keys=None, *, k=9, dilation=1, relative_pos=None):
            b, _, h, w = x.shape
            n = torch.arange(b * h * w)
            return BuiltGraph(torch.stack([n, n // w]), num_hyperedges=b * h)

    seen = {}

    @register_conv("attr_sum_test")
    class AttrSum(MRConv):
        graph_inputs = ("edge_attr",)

        def forward(self, x, edge_index, edge_attr=None):
            seen["edge_attr"] = edge_attr
            return super().forward(x, edge_index)

    @register_conv("hyper_mean_test")
    class HyperMean(torch.nn.Module):
        graph_kind = "hypergraph"
        graph_inputs = ("num_hyperedges",)

        def __init__(self, i, o, **kw):
            super().__init__()
            self.lin = torch.nn.Linear(i, o)

        def forward(self, x, incidence, num_hyperedges=None):
            seen["num_hyperedges"] = num_hyperedges
            # the mean of each hyperedge's members, back to its members
            e = torch.zeros(num_hyperedges, x.size(1)).index_add_(0, incidence[1], x[incidence[0]])
            count = torch.bincount(incidence[1], minlength=num_hyperedges).clamp_min(1)
            return self.lin((e / count.unsqueeze(1))[incidence[1]])

    HyperMean.graph_kind = "hypergraph"
    yield seen
    for name in ("ring_attr_test", "rows_hyper_test"):
        builder_registry._REGISTRY.pop(name, None)
    for name in ("attr_sum_test", "hyper_mean_test"):
        conv_registry._REGISTRY.pop(name, None)


def test_edge_attributes_reach_an_aggregator_that_takes_them(ring_builders):
    model = create_model("vig_ti", graph="ring_attr_test", conv="attr_sum_test", **SMALL)
    model(torch.randn(2, 3, 32, 32))
    attr = ring_builders["edge_attr"]
    assert attr is not None and attr.shape == (2 * 8 * 8 * 2, 1)
    # an aggregator without graph_inputs ignores them: mr runs on the edges alone
    create_model("vig_ti", graph="ring_attr_test", conv="mr", **SMALL)(torch.randn(2, 3, 32, 32))


def test_hypergraph_reaches_a_hypergraph_aggregator_and_is_refused_by_others(ring_builders):
    model = create_model("vig_ti", graph="rows_hyper_test", conv="hyper_mean_test", **SMALL)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert ring_builders["num_hyperedges"] == 2 * 8
    one_line_error(lambda: create_model("vig_ti", graph="rows_hyper_test", conv="mr", **SMALL),
                   "aggregator 'mr' runs on a graph but graph builder 'rows_hyper_test' builds "
                   "a hypergraph; use a hypergraph aggregator")
    one_line_error(lambda: create_model("vig_ti", graph="knn", conv="hyper_mean_test", **SMALL),
                   "runs on a hypergraph but graph builder 'knn' builds a graph")
    assert conv_graph_kind("hyper_mean_test") == "hypergraph"
    assert conv_graph_kind("pyg:HypergraphConv") == "hypergraph"
    assert conv_graph_kind("pyg:GATv2Conv") == conv_graph_kind("mr") == "graph"


def test_an_aggregator_missing_its_builders_output_is_refused_naming_the_builders(ring_builders):
    # attr_sum_test takes edge_attr: only a builder that provides it will do
    one_line_error(lambda: create_model("vig_ti", graph="knn", conv="attr_sum_test", **SMALL),
                   "aggregator 'attr_sum_test' needs edge_attr from its graph builder, which "
                   "'knn' does not give; use graph=.*'ring_attr_test'")
    one_line_error(lambda: create_model("vig_ti", graph="knn", conv="gated_mr", **SMALL),
                   "needs edge_attr .* use graph=.*'gated_axial'")
    one_line_error(lambda: create_model("vig_ti", graph="axial", conv="cluster_mr", **SMALL),
                   "needs centroids and partition .* use graph='clustered_knn'")


def test_conv_options_reach_the_aggregator_and_unknown_ones_are_refused():
    model = create_model("vig_ti", conv_options={"sign": "i-j", "zero_start": True}, **SMALL)
    convs = [m for m in model.modules() if isinstance(m, MRConv)]
    assert len(convs) == 2 and all(c.sign == "i-j" and c.zero_start for c in convs)
    one_line_error(lambda: create_model("vig_ti", conv_options={"sing": "i-j"}, **SMALL),
                   r"aggregator 'mr' takes no option\(s\) \['sing'\]")
    one_line_error(lambda: create_model("vig_ti", conv_options=[1], **SMALL), "conv_options")


def test_conv_takes_reads_the_constructor():
    assert conv_takes("mr", "sign") and not conv_takes("mr", "edge_dim")
    # PyG's own constructors decide for the adapters
    assert conv_takes("pyg:GATv2Conv", "edge_dim") and conv_takes("pyg:GENConv", "edge_dim")
    assert not conv_takes("pyg:GCNConv", "edge_dim") and conv_takes("pyg:GCNConv", "act")


def brute_clique(pairs, num_nodes):
    members = {}
    for node, edge in pairs:
        members.setdefault(edge, set()).add(node)
    out = set()
    for group in members.values():
        out |= set(itertools.product(group, group))
    return sorted(out, key=lambda e: (e[1], e[0]))   # grouped by centre, then neighbour


def test_clique_expansion_and_hypergraph_statistics():
    pairs = [(0, 0), (1, 0), (2, 0), (2, 1), (3, 1), (4, 2), (5, 2), (5, 3)]  # hyperedge 4 empty
    incidence = torch.tensor(pairs).t()
    edges = clique_expansion(incidence, 6, 5)
    assert [tuple(e) for e in edges.t().tolist()] == brute_clique(pairs, 6)
    block = BlockGraph(0, "h", 1, (2, 3), (2, 3), 1, edges, incidence=incidence,
                       num_hyperedges=5)
    row = block_stats(block)
    assert row["hyperedge_size"] == pytest.approx(8 / 4)        # 8 memberships, 4 used
    assert row["hyperedges_per_node"] == pytest.approx(8 / 6)
    graph = BlockGraph(0, "g", 1, (2, 3), (2, 3), 1, edges)
    assert all(v != v for k, v in block_stats(graph).items() if k.startswith("hyperedge"))


def test_capture_reads_a_hypergraph_per_image(ring_builders):
    model = create_model("vig_ti", graph="rows_hyper_test", conv="hyper_mean_test", **SMALL)
    model.eval()
    with torch.no_grad(), GraphCapture(model) as cap:
        model(torch.randn(2, 3, 32, 32))
    block = cap.blocks[0]
    assert block.is_hypergraph and block.num_hyperedges == 16
    one = block.images()[1]
    # image 1 alone: hyperedge r holds row r; the expansion joins each node to its row
    assert one.incidence.tolist() == [list(range(64)), [n // 8 for n in range(64)]]
    expected = [(j, i) for i in range(64) for j in range(64) if j // 8 == i // 8]
    assert [tuple(e) for e in one.edge_index.t().tolist()] == expected
