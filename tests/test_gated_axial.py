"""AdaptViG's gated axial graph (``gated_axial``) and its aggregator (``gated_mr``) against
brute force written here from SPEC ("More graphs of the family"), PyG convolutions with
``edge_dim`` on it, bad input, and tiny models."""
from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.nn.conv import GATv2Conv

from vig_pyg import fast_paths
from vig_pyg.conv import build_conv
from vig_pyg.conv.base import interleave
from vig_pyg.errors import VigPygError
from vig_pyg.graph import fixed_degree, graph_builder
from vig_pyg.graph.builders import BuiltGraph
from vig_pyg.models import create_model
from vig_pyg.models.grapher import Grapher

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_ISO = dict(num_classes=3, k=3, img_size=32, channels=32, depth=2, stem_stride=4)  # 8x8
TINY_PYR = dict(num_classes=3, k=3, img_size=64, channels=[16, 32, 48, 64],
                blocks=[1, 1, 1, 1])                                   # 16, 8, 4, 2


def fmap(b, c, h, w, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=dtype)


def rows_of(x):
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w, c)


def node(b, r, c, h, w):
    return b * h * w + r * w + c


# ------------------------------------------------------------------ brute force from SPEC
def brute_gated_axial(b, h, w, hop):
    """{centre: [(neighbour, kind), ...]} in the documented order: local row, local column,
    long rows, long columns; a shift >= its dimension skipped."""
    out = {}
    for im in range(b):
        for r in range(h):
            for c in range(w):
                nb = []
                if hop < h:
                    nb.append((node(im, (r - hop) % h, c, h, w), 0.0))
                if hop < w:
                    nb.append((node(im, r, (c - hop) % w, h, w), 0.0))
                for n in range(1, h.bit_length()):
                    if 2 ** n < h:
                        nb.append((node(im, (r - 2 ** n) % h, c, h, w), 1.0))
                for n in range(1, w.bit_length()):
                    if 2 ** n < w:
                        nb.append((node(im, r, (c - 2 ** n) % w, h, w), 1.0))
                out[node(im, r, c, h, w)] = nb
    return out


def edge_lists(built: BuiltGraph, num_nodes):
    """{centre: [(neighbour, kind), ...] in stored order}; checks the grouped layout."""
    src, dst = built.edge_index.tolist()
    assert dst == sorted(dst), "edges must be grouped by centre, centres in order"
    assert built.edge_attr.shape == (len(src), 1)
    kinds = built.edge_attr[:, 0].tolist()
    out = {i: [] for i in range(num_nodes)}
    for j, i, t in zip(src, dst, kinds):
        out[i].append((j, t))
    return out


@pytest.mark.parametrize("b,h,w,hop", [
    (2, 8, 8, 2),     # powers of 2; hop 2 is also the long shift 2: that node twice
    (3, 6, 5, 1),     # neither a power of 2; three images
    (2, 5, 12, 4),    # hop 4 = long shift 4 along the columns only
    (2, 3, 10, 4),    # hop past the rows (skipped there), kept along the columns
    (1, 9, 2, 3),     # hop past the columns; W = 2: its only long shift (2) skipped
    (2, 1, 8, 2),     # one row: nothing along the rows
    (2, 7, 7, None),  # default rule: max(1, 7 // 7) = 1
    (1, 5, 15, None),  # default rule: max(1, 5 // 7) = 1
    (1, 14, 28, None),  # default rule: 14 // 7 = 2
])
def test_edges_and_kinds_match_brute_force(b, h, w, hop):
    options = {} if hop is None else {"hop": hop}
    built = graph_builder("gated_axial", **options)(fmap(b, 3, h, w))
    assert isinstance(built, BuiltGraph)
    rule = max(1, min(h, w) // 7) if hop is None else hop
    want = brute_gated_axial(b, h, w, rule)
    assert edge_lists(built, b * h * w) == want
    degree = len(want[0])
    assert fixed_degree(built.edge_index, b * h * w) == degree   # the fixed-degree path holds
    assert built.edge_attr.dtype == torch.float64                 # x's dtype


def test_duplicate_neighbour_appears_once_of_each_kind():
    built = graph_builder("gated_axial", hop=2)(fmap(1, 2, 8, 8))
    got = edge_lists(built, 64)[node(0, 5, 5, 8, 8)]
    assert got.count((node(0, 3, 5, 8, 8), 0.0)) == 1 and got.count((node(0, 3, 5, 8, 8), 1.0)) == 1
    assert got.count((node(0, 5, 3, 8, 8), 0.0)) == 1 and got.count((node(0, 5, 3, 8, 8), 1.0)) == 1
    assert len(got) == 2 + 2 + 2   # locals; long 2, 4 per axis (8 = H skipped)


@pytest.mark.parametrize("size,hop", [(56, 8), (28, 4), (14, 2), (7, 1)])
def test_default_hop_is_the_release_schedule(size, hop):
    x = torch.zeros(1, 1, size, size)
    auto, fixed = graph_builder("gated_axial")(x), graph_builder("gated_axial", hop=hop)(x)
    assert torch.equal(auto.edge_index, fixed.edge_index)
    assert torch.equal(auto.edge_attr, fixed.edge_attr)
    # and it is not some other hop's graph
    other = graph_builder("gated_axial", hop=hop + 1)(x)
    assert not torch.equal(auto.edge_index, other.edge_index)


def test_global_attention_is_the_complete_graph_of_each_image():
    builder = graph_builder("gated_axial", global_attention=True)
    assert builder.conv_options() == {"global_attention": True}
    assert graph_builder("gated_axial").conv_options() == {}
    assert builder.edge_dim == 1
    b, h, w = 3, 2, 3
    built = builder(fmap(b, 2, h, w, dtype=torch.float32))
    want = {node(im, r, c, h, w): [(im * h * w + j, 2.0) for j in range(h * w)]
            for im in range(b) for r in range(h) for c in range(w)}
    assert edge_lists(built, b * h * w) == want
    assert built.edge_attr.dtype == torch.float32


def test_one_by_one_grid_under_the_default_rule_is_empty():
    built = graph_builder("gated_axial")(fmap(2, 2, 1, 1))
    assert built.edge_index.shape == (2, 0) and built.edge_attr.shape == (0, 1)


# ------------------------------------------------------------------ gated_mr, brute force
def brute_gated_m(x, edges, temperature):
    """m of SPEC's formula, float64 loops. edges: [(j, i, kind)], x [N, C] float64."""
    n, c = x.shape
    m = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        for ch in range(c):
            best = 0.0
            for j, centre, kind in edges:
                if centre != i:
                    continue
                diff = float(x[j, ch] - x[i, ch])
                if kind == 1.0:
                    l1 = sum(abs(float(x[i, q] - x[j, q])) for q in range(c))
                    diff *= math.exp(-l1 / (abs(temperature) + 1e-6))
                best = max(best, diff)
            m[i, ch] = best
    return m


def hand_graph():
    # variable degrees (node 3 has none, node 0 has a duplicate neighbour of both kinds)
    edges = [(1, 0, 0.0), (1, 0, 1.0), (4, 0, 1.0), (0, 1, 1.0), (2, 1, 0.0),
             (0, 2, 0.0), (3, 2, 1.0), (4, 2, 1.0), (2, 4, 0.0)]
    ei = torch.tensor([[j for j, _, _ in edges], [i for _, i, _ in edges]])
    ea = torch.tensor([[t] for _, _, t in edges], dtype=torch.float64)
    return edges, ei, ea


def gated_conv(c, temperature):
    conv = build_conv("gated_mr", c, 2 * c, groups=1).double()
    with torch.no_grad():
        conv.temperature.fill_(temperature)
    return conv


@pytest.mark.parametrize("temperature", [0.8, -2.5])   # |T| is used
def test_gated_mr_matches_the_formula_on_a_hand_made_graph(temperature):
    edges, ei, ea = hand_graph()
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.6
    conv = gated_conv(4, temperature)
    want = brute_gated_m(x, edges, temperature)
    assert (want[3] == 0).all() and (want > 0).any()
    torch.testing.assert_close(conv.relative(x, ei, ea), want, rtol=1e-12, atol=1e-12)
    # the output is the grouped projection of interleave(x, m)
    conv.eval()
    torch.testing.assert_close(conv(x, ei, edge_attr=ea), conv.nn(interleave(x, want)))


@pytest.mark.parametrize("fast", [True, False])
def test_gated_mr_matches_the_formula_on_the_builders_graph(fast):
    x = fmap(2, 3, 5, 6, seed=3) * 0.5
    built = graph_builder("gated_axial", hop=2)(x)
    rows = rows_of(x)
    edges = list(zip(*built.edge_index.tolist(), built.edge_attr[:, 0].tolist()))
    conv = gated_conv(3, 1.7)
    with fast_paths.disabled(*(() if fast else ("fixed_degree", "padded"))):
        got = conv.relative(rows, built.edge_index, built.edge_attr)
    want = brute_gated_m(rows, edges, 1.7)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the gate matters here: with it ignored (T huge) the result is different
    assert not torch.allclose(got, brute_gated_m(rows, edges, 1e12))


def test_gradient_reaches_the_temperature():
    x = fmap(1, 3, 6, 6, seed=4) * 0.5
    built = graph_builder("gated_axial", hop=1)(x)
    rows = rows_of(x)
    w = torch.randn(rows.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    conv = gated_conv(3, 1.3)
    loss = (conv.relative(rows, built.edge_index, built.edge_attr) * w).sum()
    loss.backward()
    grad = conv.temperature.grad
    assert grad is not None and grad.shape == () and grad != 0
    # against a central difference of the float64 brute force
    edges = list(zip(*built.edge_index.tolist(), built.edge_attr[:, 0].tolist()))
    h = 1e-6
    num = ((brute_gated_m(rows, edges, 1.3 + h) * w).sum()
           - (brute_gated_m(rows, edges, 1.3 - h) * w).sum()) / (2 * h)
    torch.testing.assert_close(grad, num, rtol=1e-5, atol=1e-8)


def test_gated_mr_checkpoint_keys():
    keys = set(build_conv("gated_mr", 8, 16).state_dict())
    mr = set(build_conv("mr", 8, 16).state_dict())
    assert keys == mr | {"temperature"}
    glob = set(build_conv("gated_mr", 8, 16, global_attention=True).state_dict())
    assert glob == mr | {"q_proj.weight", "k_proj.weight", "v_proj.weight", "q_norm.weight",
                         "q_norm.bias", "k_norm.weight", "k_norm.bias"}


# ------------------------------------------------------------------ global attention
def brute_attention_m(x_map, conv):
    """Dense float64 attention per image from SPEC: q = LN(W_q x), k = LN(W_k x), v = W_v x,
    A = softmax(q k^T / sqrt(C // 4)), m = max(0, A v - x)."""
    b, c, h, w = x_map.shape
    qk = c // 4

    def ln(z, norm):
        mu = z.mean(-1, keepdim=True)
        var = ((z - mu) ** 2).mean(-1, keepdim=True)
        return (z - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    out = []
    for im in range(b):
        xs = x_map[im].reshape(c, h * w).T                     # [n, C]
        q = ln(xs @ conv.q_proj.weight.T, conv.q_norm)
        k = ln(xs @ conv.k_proj.weight.T, conv.k_norm)
        v = xs @ conv.v_proj.weight.T
        s = q @ k.T / math.sqrt(qk)
        a = torch.exp(s - s.max(1, keepdim=True).values)
        a = a / a.sum(1, keepdim=True)
        out.append(torch.clamp(a @ v - xs, min=0.0))
    return torch.cat(out)


@pytest.mark.parametrize("path", ["complete", "table", "scatter"])
def test_global_attention_matches_dense_softmax_per_image(path):
    c = 10                                  # C // 4 = 2 (floor)
    x = fmap(3, c, 2, 3, seed=6)
    torch.manual_seed(0)
    conv = build_conv("gated_mr", c, 2 * c, global_attention=True).double()
    with torch.no_grad():                   # the LayerNorms' affine parameters take part
        for norm in (conv.q_norm, conv.k_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    built = graph_builder("gated_axial", global_attention=True)(x)
    ei, ea = built.edge_index, built.edge_attr
    if path == "table":                     # same neighbours, reversed order: not "complete"
        n, d = x.shape[0] * 6, 6
        ei = torch.stack([ei[0].view(n, d).flip(1).reshape(-1), ei[1]])
    with fast_paths.disabled(*(("fixed_degree", "padded") if path == "scatter" else ())):
        got = conv.relative(rows_of(x), ei, ea)
    want = brute_attention_m(x, conv)
    assert (want > 0).any() and (want == 0).any()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_complete_graph_is_known_off_the_cpu_from_the_builders_mark():
    # off the CPU gated_mr takes the complete graph from the builder's mark, not from
    # comparing the edges (meta tensors hold no values: any read raises)
    from vig_pyg.conv.gated_max_relative import GatedMRConv
    from vig_pyg.graph.builders.gated_axial import marked_complete

    b, h, w = 3, 2, 3
    n = h * w
    x = fmap(b, 4, h, w)
    cpu = graph_builder("gated_axial", global_attention=True)(x).edge_index
    assert marked_complete(cpu, n) and GatedMRConv._complete(cpu, b * n, n)   # compared
    meta = graph_builder("gated_axial", global_attention=True)(x.to("meta")).edge_index
    assert meta.device.type == "meta" and GatedMRConv._complete(meta, b * n, n)
    assert not marked_complete(meta, n + 1)
    reordered = torch.stack([meta[0].flip(0), meta[1]])    # a graph nobody marked
    assert not GatedMRConv._complete(reordered, b * n, n)
    meta[0].add_(0)                                        # a write drops the mark
    assert not GatedMRConv._complete(meta, b * n, n)
    # the local/long graph is not the complete graph, on either device
    for device in ("cpu", "meta"):
        ei = graph_builder("gated_axial")(fmap(b, 4, 4, 4).to(device)).edge_index
        d = ei.size(1) // (b * 16)
        assert not marked_complete(ei, d)


# ------------------------------------------------------------------ bad input
def one_line(fn, exc, match):
    with pytest.raises(exc, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_bad_input_one_line_each():
    for hop in (0, -1, 2.5, True):
        one_line(lambda: graph_builder("gated_axial", hop=hop), VigPygError,
                 "hop must be an int >= 1")
    one_line(lambda: graph_builder("gated_axial", hop=2, global_attention=True), VigPygError,
             "does nothing with global_attention=True")
    one_line(lambda: graph_builder("gated_axial", global_attention=1), VigPygError,
             "global_attention must be True or False")
    one_line(lambda: graph_builder("gated_axial", hop=5)(fmap(1, 2, 4, 5)), VigPygError,
             "hop 5 is not smaller than either side of the 4x5")
    one_line(lambda: create_model("vig_ti", graph="gated_axial", graph_options={"hop": 8},
                                  **TINY_ISO), VigPygError, "vig_ti: graph builder 'gated_axial'")

    x = fmap(1, 4, 4, 4)
    rows = rows_of(x)
    local = graph_builder("gated_axial")(x)
    complete = graph_builder("gated_axial", global_attention=True)(x)
    glob = build_conv("gated_mr", 4, 8, global_attention=True).double()
    gated = build_conv("gated_mr", 4, 8).double()
    one_line(lambda: glob(rows, local.edge_index, edge_attr=local.edge_attr), ValueError,
             "global_attention=True\\) runs on the complete graph")
    one_line(lambda: gated(rows, complete.edge_index, edge_attr=complete.edge_attr),
             ValueError, "build the aggregator with global_attention=True")
    one_line(lambda: gated(rows, local.edge_index), ValueError, "use graph='gated_axial'")
    one_line(lambda: gated((rows, rows), local.edge_index, edge_attr=local.edge_attr),
             ValueError, "not on a bipartite pair")
    one_line(lambda: gated(rows, local.edge_index, edge_attr=local.edge_attr[:-1]),
             ValueError, "edge_attr must be \\[num_edges, 1\\]")
    one_line(lambda: build_conv("gated_mr", 3, 6, groups=1, global_attention=True),
             ValueError, "in_channels >= 4")
    # in a model: an aggregator that needs the kinds, on a graph without them, is refused
    # when the model is built
    one_line(lambda: create_model("vig_ti", conv="gated_mr", **TINY_ISO), ValueError,
             "needs edge_attr from its graph builder, which 'knn' does not give; use "
             "graph='gated_axial'")


# ------------------------------------------------------------------ PyG convs with edge_dim
def test_gatv2_gets_edge_dim_and_edge_attr_in_a_model():
    torch.manual_seed(0)
    model = create_model("vig_ti", graph="gated_axial", conv="pyg:GATv2Conv", **TINY_ISO)
    graphers = [m for m in model.modules() if isinstance(m, Grapher)]
    seen = []
    for g in graphers:
        assert g.graph_conv.conv.edge_dim == 1 and g.graph_conv.conv.lin_edge is not None
        g.graph_conv.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append(kwargs.get("edge_attr")), with_kwargs=True)
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum()
    loss.backward()
    assert len(seen) == len(graphers)
    for ea in seen:
        assert ea is not None and ea.shape == (2 * 64 * 6, 1)    # 8x8: 2 local + 2 + 2 long
    assert all(g.graph_conv.conv.lin_edge.weight.grad is not None for g in graphers)


def test_gatv2_adapter_equals_pyg_called_directly():
    c = 8
    x = fmap(2, c, 4, 4, seed=7, dtype=torch.float32)
    built = graph_builder("gated_axial", hop=1)(x)
    rows = rows_of(x)
    torch.manual_seed(1)
    adapter = build_conv("pyg:GATv2Conv", c, 2 * c, edge_dim=1).eval()
    ref = GATv2Conv(c, 2 * c, heads=1, add_self_loops=False, edge_dim=1).eval()
    ref.load_state_dict(adapter.conv.state_dict())
    got = adapter(rows, built.edge_index, edge_attr=built.edge_attr)
    want = adapter.act(adapter.norm(ref(rows, built.edge_index, edge_attr=built.edge_attr)))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # the kinds change the attention: dropping them is visible
    blind = adapter(rows, built.edge_index, edge_attr=torch.zeros_like(built.edge_attr))
    assert not torch.allclose(got, blind, atol=1e-4)


# ------------------------------------------------------------------ tiny models
def test_tiny_pyramid_with_gated_mr_and_a_global_stage_trains():
    torch.manual_seed(0)
    model = create_model("pvig_ti", graph="gated_axial", conv="gated_mr",
                         graph_options=[{}, {}, {}, {"global_attention": True}], **TINY_PYR)
    convs = [m.graph_conv for m in model.modules() if isinstance(m, Grapher)]
    assert [c.global_attention for c in convs] == [False, False, False, True]
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(c.temperature.grad is not None for c in convs[:3])
    # checkpoint keys: mr's plus the temperatures and the last stage's attention
    mr = set(create_model("pvig_ti", graph="gated_axial", **TINY_PYR).state_dict())
    extra = set(model.state_dict()) - mr
    assert mr <= set(model.state_dict())
    assert sum(k.endswith(".temperature") for k in extra) == 3
    assert sum(k.endswith(".q_proj.weight") for k in extra) == 1


@pytest.mark.parametrize("conv", ["mr", "gated_mr"])
def test_tiny_isotropic_on_gated_axial_trains(conv):
    torch.manual_seed(0)
    model = create_model("vig_ti", graph="gated_axial", conv=conv, **TINY_ISO)
    inputs = []
    for g in (m for m in model.modules() if isinstance(m, Grapher)):
        g.graph_conv.register_forward_pre_hook(
            lambda mod, args, kwargs: inputs.append(kwargs.get("edge_attr")), with_kwargs=True)
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # gated_mr is handed the edge kinds, mr only the edges
    assert all((ea is not None) == (conv == "gated_mr") for ea in inputs) and inputs
