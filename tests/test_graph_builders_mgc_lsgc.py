"""The ``mgc`` (MobileViGv2) and ``lsgc`` (LogViG) graph builders against brute-force edge
sets written here from SPEC's rules ("More graphs of the family"), ``mr``'s sign and
zero-start options against each axial release's max-relative formula, and bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vig_pyg import fast_paths
from vig_pyg.conv import MRConv
from vig_pyg.conv.padded import padded_propagate
from vig_pyg.errors import VigPygError
from vig_pyg.graph import fixed_degree, graph_builder, list_graph_builders
from vig_pyg.models import create_model

SMALL_ISO = dict(num_classes=3, k=3, img_size=32, channels=32, depth=4, stem_stride=4)
SMALL_PYR = dict(num_classes=3, k=3, img_size=128, channels=[16, 32, 48, 64],
                 blocks=[2, 1, 2, 1])
#: what each release's max-relative needs of ``mr`` (SPEC: the zero start, the sign)
RELEASE_CONV = {"mgc": {"zero_start": True}, "lsgc": {"sign": "i-j", "zero_start": True}}


def fmap(b, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=torch.float64)


def node(b, r, c, h, w):
    return b * h * w + r * w + c


def one_line_error(fn, match, kind=VigPygError):
    with pytest.raises(kind, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------ brute force from SPEC
def spec_mgc_hop(h, w):
    """SPEC: K = 8, 4, 2 at grids 56 / 28 / 14 (the release's rule min(H, W) // 7, >= 1)."""
    return {56: 8, 28: 4, 14: 2}.get(min(h, w), max(1, min(h, w) // 7))


def spec_mgc_neighbours(r, c, h, w, hop):
    """((r +- K) mod H, c) and (r, (c +- K) mod W); a hop >= the axis gives nothing there."""
    out = []
    if hop < h:
        out += [((r - hop) % h, c), ((r + hop) % h, c)]
    if hop < w:
        out += [(r, (c - hop) % w), (r, (c + hop) % w)]
    return out


def spec_lsgc_shifts(base, size):
    """s_n = K^n - 1, n = 1 .. bitlen(size) - 1, the shifts >= size skipped."""
    return [base ** n - 1 for n in range(1, size.bit_length()) if base ** n - 1 < size]


def spec_lsgc_neighbours(r, c, h, w, base):
    out = []
    for s in spec_lsgc_shifts(base, h):
        out += [((r - s) % h, c), ((r + s) % h, c)]
    for s in spec_lsgc_shifts(base, w):
        out += [(r, (c - s) % w), (r, (c + s) % w)]
    return out


def spec_svga_neighbours(r, c, h, w, hop):
    """SPEC's SVGA (the release's own zero is added by the formula, not listed here)."""
    return ([((r - i) % h, c) for i in range(hop, h, hop)]
            + [(r, (c - j) % w) for j in range(hop, w, hop)])


def brute_edges(b, h, w, neighbours):
    """{(j, i)} over every image: a set, so a node named twice is one edge."""
    return {(node(im, *p, h, w), node(im, r, c, h, w))
            for im in range(b) for r in range(h) for c in range(w) for p in neighbours(r, c)}


def check_layout(edge_index, num_nodes):
    """Grouped by centre in node order, no edge twice, the fixed-degree layout (so the
    convolutions take their fixed-degree path). Returns {(j, i)} and the degree."""
    src, dst = edge_index.tolist()
    pairs = list(zip(src, dst))
    assert len(pairs) == len(set(pairs)), "an edge appears twice"
    assert dst == sorted(dst)
    degree = len(pairs) // num_nodes
    assert len(pairs) == degree * num_nodes
    assert fixed_degree(edge_index, num_nodes) == degree
    return set(pairs), degree


# ------------------------------------------------------------------ exact edge sets
MGC_CASES = [  # (b, h, w, hop)
    (2, 6, 6, 1),     # hop divides the grid
    (2, 7, 5, 2),     # neither axis a multiple, non-square
    (1, 6, 8, 3),     # hop = H / 2: one row neighbour
    (1, 8, 8, 4),     # hop = H / 2 = W / 2: degree 2
    (2, 4, 9, 5),     # hop past the rows
    (1, 3, 10, 5),    # hop past the rows and W / 2 along the columns: degree 1
    (2, 9, 4, 4),     # hop = W: nothing along the columns
    (2, 5, 7, None),  # the release's rule: max(1, 5 // 7) = 1
    (1, 14, 15, None),
    (1, 28, 28, None),
    (1, 56, 56, None),
    (2, 1, 6, None),  # one row: hop 1 reaches past it
]


@pytest.mark.parametrize("b,h,w,hop", MGC_CASES)
def test_mgc_edges_are_spec_rule(b, h, w, hop):
    builder = graph_builder("mgc") if hop is None else graph_builder("mgc", hop=hop)
    got, degree = check_layout(builder(fmap(b, 2, h, w)), b * h * w)
    k = spec_mgc_hop(h, w) if hop is None else hop
    want = brute_edges(b, h, w, lambda r, c: spec_mgc_neighbours(r, c, h, w, k))
    assert got == want
    assert all(j != i for j, i in got)                       # no self-loop
    rows = 0 if k >= h else (1 if 2 * k == h else 2)
    cols = 0 if k >= w else (1 if 2 * k == w else 2)
    assert degree == rows + cols


def test_mgc_default_hop_is_the_release_per_stage_rule():
    builder = graph_builder("mgc")
    assert builder.hop is None
    assert [builder.hop_for(g, g) for g in (56, 28, 14, 7, 3)] == [8, 4, 2, 1, 1]
    # the rule reads the shorter side of a non-square grid
    got, _ = check_layout(builder(fmap(1, 1, 28, 60)), 28 * 60)
    assert got == brute_edges(1, 28, 60, lambda r, c: spec_mgc_neighbours(r, c, 28, 60, 4))


def test_mgc_edge_order_per_centre():
    # documented: r - K, r + K, c - K, c + K (repeats and too-short axes left out)
    ei = graph_builder("mgc", hop=2)(fmap(1, 1, 7, 5))
    assert ei[0, :4].tolist() == [node(0, 5, 0, 7, 5), node(0, 2, 0, 7, 5),
                                  node(0, 0, 3, 7, 5), node(0, 0, 2, 7, 5)]
    ei = graph_builder("mgc", hop=3)(fmap(1, 1, 6, 8))          # 2K = H: one row edge
    assert ei[0, :3].tolist() == [node(0, 3, 0, 6, 8), node(0, 0, 5, 6, 8),
                                  node(0, 0, 3, 6, 8)]


LSGC_CASES = [  # (b, h, w, base)
    (2, 8, 8, 2),     # a power of the base: 7 = -1 mod 8 repeats the +-1 neighbours
    (2, 6, 10, 2),    # not powers, non-square
    (1, 9, 9, 3),     # a power of 3
    (2, 10, 7, 3),
    (1, 28, 28, 3),   # SPEC: 26 = -2 mod 28
    (1, 2, 5, 2),     # H = 2: shift 1 names one node
    (2, 1, 16, 2),    # one row: no row shift
    (1, 5, 6, 4),     # shift 3 < 5 both ways; 3 = W / 2: one column edge
    (1, 16, 3, 5),    # base 5: shift 4 at 16 only (24 skipped), nothing along 3 columns
    (1, 56, 7, 2),
]


@pytest.mark.parametrize("b,h,w,base", LSGC_CASES)
def test_lsgc_edges_are_spec_rule(b, h, w, base):
    got, _ = check_layout(graph_builder("lsgc", base=base)(fmap(b, 2, h, w)), b * h * w)
    want = brute_edges(b, h, w, lambda r, c: spec_lsgc_neighbours(r, c, h, w, base))
    assert got == want
    assert all(j != i for j, i in got)


def row_and_col_offsets(edge_index, h, w):
    """The row offsets (column 0) and column offsets (row 0) of centre (0, 0), one image."""
    nb = [j for j, i in edge_index.t().tolist() if i == 0]
    return ({j // w for j in nb if j % w == 0}, {j % w for j in nb if j // w == 0})


@pytest.mark.parametrize("h,w,base,rows,cols", [
    (56, 28, 2, [1, 3, 7, 15, 31], [1, 3, 7, 15]),
    (14, 7, 2, [1, 3, 7], [1, 3]),
    (7, 14, 2, [1, 3], [1, 3, 7]),
    (28, 5, 3, [2, 8, 26], [2]),
])
def test_lsgc_spec_worked_examples(h, w, base, rows, cols):
    # SPEC, at 224 px: 56 -> {1, 3, 7, 15, 31}, 28 -> {1, 3, 7, 15}, 14 -> {1, 3, 7},
    # 7 -> {1, 3}; K = 3 at 28: {2, 8, 26}
    assert spec_lsgc_shifts(base, h) == rows and spec_lsgc_shifts(base, w) == cols
    ei = graph_builder("lsgc", base=base)(fmap(1, 1, h, w))
    got_rows, got_cols = row_and_col_offsets(ei, h, w)
    assert got_rows == {s % h for s in rows} | {-s % h for s in rows}
    assert got_cols == {s % w for s in cols} | {-s % w for s in cols}
    if base == 3:   # 26 repeats the +-2 neighbours: 4 row edges, not 6
        assert len(got_rows) == 4 and fixed_degree(ei, h * w) == 4 + 2


def test_lsgc_edge_order_per_centre():
    # documented: rows by increasing shift, -s before +s, repeats left out; then columns
    h, w = 28, 5
    ei = graph_builder("lsgc", base=3)(fmap(1, 1, h, w))
    assert ei[0, :6].tolist() == [node(0, 26, 0, h, w), node(0, 2, 0, h, w),
                                  node(0, 20, 0, h, w), node(0, 8, 0, h, w),
                                  node(0, 0, 3, h, w), node(0, 0, 2, h, w)]


# ------------------------------------------------------------------ the releases' max-relative
def release_m(x, neighbours, sign):
    """float64 loop: m_i = max(0, max_j d_ij), d = x_j - x_i or x_i - x_j, node rows."""
    b, c, h, w = x.shape
    m = torch.zeros(b * h * w, c, dtype=torch.float64)
    for im in range(b):
        for r in range(h):
            for col in range(w):
                xi = x[im, :, r, col]
                best = torch.zeros(c, dtype=torch.float64)          # the zero start
                for p in neighbours(r, col):
                    xj = x[im, :, p[0], p[1]]
                    best = torch.maximum(best, xj - xi if sign == "j-i" else xi - xj)
                m[node(im, r, col, h, w)] = best
    return m


def conv_m(conv, x_nodes, edge_index):
    """The m the conv feeds its projection: the input to ``nn`` is interleave(x, m)."""
    conv.nn = nn.Identity()
    out = conv(x_nodes, edge_index)
    assert torch.equal(out[:, 0::2], x_nodes)
    return out[:, 1::2]


@pytest.mark.parametrize("graph,options,conv_options,sign,neighbours", [
    ("axial", {"hop": 2}, {"sign": "i-j"}, "i-j", spec_svga_neighbours),       # SVGA
    ("axial", {"hop": 3}, {"sign": "i-j"}, "i-j", spec_svga_neighbours),
    ("mgc", {"hop": 2}, RELEASE_CONV["mgc"], "j-i", spec_mgc_neighbours),       # MobileViGv2
    ("mgc", {"hop": 3}, RELEASE_CONV["mgc"], "j-i", spec_mgc_neighbours),       # 2K = H
    ("lsgc", {"base": 2}, RELEASE_CONV["lsgc"], "i-j", spec_lsgc_neighbours),   # LogViG
    ("lsgc", {"base": 3}, RELEASE_CONV["lsgc"], "i-j", spec_lsgc_neighbours),
])
@pytest.mark.parametrize("fast_path", [True, False])
def test_mr_options_reproduce_each_release_max_relative(graph, options, conv_options, sign,
                                                        neighbours, fast_path):
    b, c, h, w = 2, 4, 6, 7
    x = fmap(b, c, h, w, seed=3)
    x_nodes = x.permute(0, 2, 3, 1).reshape(-1, c)
    edge_index = graph_builder(graph, **options)(x)
    conv = MRConv(c, **conv_options).double()
    (arg,) = options.values()
    want = release_m(x, lambda r, col: neighbours(r, col, h, w, arg), sign)
    with fast_paths.disabled(*(() if fast_path else ("fixed_degree", "padded"))):
        assert (conv._fixed_degree(edge_index, b * h * w) is not None) == fast_path
        got = conv_m(conv, x_nodes, edge_index)
    assert torch.equal(got, want)
    assert (want == 0).any()   # the zero start matters on this input


# ------------------------------------------------------------------ MRConv's options alone
def variable_graph(n=8, seed=0, grouped=True):
    """Edges j -> i with degrees 2, 0, 3, 1, 4, 2, 3, 1 (target 1 has none)."""
    g = torch.Generator().manual_seed(seed)
    degrees = [2, 0, 3, 1, 4, 2, 3, 1][:n]
    dst = torch.tensor([i for i, d in enumerate(degrees) for _ in range(d)])
    src = torch.randint(0, n, (dst.numel(),), generator=g)
    edge_index = torch.stack([src, dst])
    if not grouped:
        edge_index = edge_index[:, torch.randperm(dst.numel(), generator=g)]
    return edge_index


def loop_m(x, edge_index, sign, zero_start):
    n, c = x.shape
    pairs = edge_index.t().tolist()
    m = torch.zeros(n, c, dtype=torch.float64)
    for i in range(n):
        msgs = [(x[j] - x[i]) if sign == "j-i" else (x[i] - x[j]) for j, t in pairs if t == i]
        if not msgs:
            continue                               # no neighbour: m_i = 0
        best = torch.stack(msgs).amax(0)
        m[i] = best.clamp_min(0.0) if zero_start else best
    return m


@pytest.mark.parametrize("sign", ["j-i", "i-j"])
@pytest.mark.parametrize("zero_start", [False, True])
@pytest.mark.parametrize("path", ["padded", "propagate", "ungrouped"])
def test_mr_sign_and_zero_start_on_a_variable_degree_graph(sign, zero_start, path):
    n, c = 8, 4
    x = torch.randn(n, c, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    edge_index = variable_graph(n, grouped=path != "ungrouped")
    conv = MRConv(c, sign=sign, zero_start=zero_start).double()
    assert conv._fixed_degree(edge_index, n) is None
    # the padded table applies to the grouped graph, not to the shuffled one (the dense
    # paths off skip it), so the three cases cover the padded table and propagate
    assert (padded_propagate(conv, edge_index, x, x) is not None) == (path != "ungrouped")
    want = loop_m(x, edge_index, sign, zero_start)
    with fast_paths.disabled(*(("fixed_degree", "padded") if path == "propagate" else ())):
        got = conv_m(conv, x, edge_index)
    assert torch.equal(got, want)
    assert torch.equal(got[1], torch.zeros(c, dtype=torch.float64))
    assert (want < 0).any() != zero_start      # the options change the result here


def test_mr_bad_sign_one_line():
    one_line_error(lambda: MRConv(4, sign="x"), r"sign must be one of \('j-i', 'i-j'\)",
                   ValueError)
    conv = MRConv(4, sign="i-j", zero_start=True)
    assert "sign='i-j', zero_start=True" in repr(conv)


# ------------------------------------------------------------------ options and models
def test_registered():
    names = list_graph_builders()
    assert "mgc" in names and "lsgc" in names


@pytest.mark.parametrize("graph,options,match", [
    ("mgc", {"hop": 0}, "hop must be an int >= 1 or None"),
    ("mgc", {"hop": -2}, "hop must be an int >= 1 or None"),
    ("mgc", {"hop": 2.0}, "hop must be an int >= 1 or None"),
    ("mgc", {"hop": True}, "hop must be an int >= 1 or None"),
    ("mgc", {"hop": [2]}, "hop must be an int >= 1 or None"),
    ("mgc", {"base": 2}, r"takes no option\(s\) \['base'\]; its options: \['hop'\]"),
    ("lsgc", {"base": 1}, "base must be an int >= 2"),
    ("lsgc", {"base": 0}, "base must be an int >= 2"),
    ("lsgc", {"base": 2.0}, "base must be an int >= 2"),
    ("lsgc", {"base": True}, "base must be an int >= 2"),
    ("lsgc", {"base": None}, "base must be an int >= 2"),
    ("lsgc", {"hop": 2}, r"takes no option\(s\) \['hop'\]; its options: \['base'\]"),
])
def test_bad_options_one_line(graph, options, match):
    one_line_error(lambda: graph_builder(graph, **options), match)


def test_grids_without_any_neighbour_one_line():
    one_line_error(lambda: graph_builder("mgc", hop=6)(fmap(1, 2, 6, 6)),
                   r"hop 6 gives no neighbour on the 6x6 node grid.*use hop < 6")
    one_line_error(lambda: graph_builder("mgc")(fmap(1, 2, 1, 1)), "no neighbour on the 1x1")
    one_line_error(lambda: graph_builder("lsgc", base=3)(fmap(1, 2, 2, 2)),
                   r"base 3 gives no neighbour on the 2x2 node grid.*; use a smaller base")
    one_line_error(lambda: create_model("vig_ti", graph="mgc", graph_options={"hop": 8},
                                        **SMALL_ISO), "vig_ti: graph builder 'mgc': hop 8")
    one_line_error(lambda: create_model("pvig_ti", graph="lsgc",
                                        graph_options=[{}, {}, {}, {"base": 5}], **SMALL_PYR),
                   "pvig_ti: graph builder 'lsgc': base 5 gives no neighbour on the 4x4")


def test_conv_option_the_aggregator_does_not_take_one_line():
    msg = one_line_error(lambda: create_model("vig_ti", graph="mgc", conv_options={"nope": 1},
                                              **SMALL_ISO),
                         r"aggregator 'mr' takes no option\(s\) \['nope'\]")
    assert msg.startswith("vig_ti:")


def record_graphs(model):
    """[(builder, (h, w), edge_index)] of one forward pass, in block order."""
    records = []
    for m in model.modules():
        if type(m).__name__ == "Grapher":
            def hook(mod, args, out):
                records.append((mod, tuple(args[0].shape[2:]), out))
            m.graph_builder.register_forward_hook(hook)
    return records


@pytest.mark.parametrize("graph,per_stage,arg,spec", [
    ("mgc", [{"hop": 8}, {"hop": 4}, {}, {"hop": 1}], "hop", spec_mgc_neighbours),
    ("lsgc", [{"base": 3}, {}, {"base": 2}, {"base": 3}], "base", spec_lsgc_neighbours),
])
def test_per_stage_options_in_a_pyramid(graph, per_stage, arg, spec):
    torch.manual_seed(0)
    model = create_model("pvig_ti", graph=graph, graph_options=per_stage, **SMALL_PYR).eval()
    records = record_graphs(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 128, 128))
    stages = [s.stage for s in model.config.block_specs()]
    assert len(records) == len(stages) == 6
    default = {"hop": None, "base": 2}[arg]
    for stage, (builder, (h, w), edge_index) in zip(stages, records):
        value = per_stage[stage].get(arg, default)
        assert getattr(builder, arg) == value
        if value is None:
            value = spec_mgc_hop(h, w)
        assert (h, w) == (32 // 2 ** stage,) * 2
        got, _ = check_layout(edge_index, 2 * h * w)
        assert got == brute_edges(2, h, w, lambda r, c: spec(r, c, h, w, value))


@pytest.mark.parametrize("graph", ["mgc", "lsgc"])
@pytest.mark.parametrize("name,kw", [("vig_ti", SMALL_ISO), ("pvig_ti", SMALL_PYR)])
def test_builder_trains_in_both_model_kinds(graph, name, kw):
    torch.manual_seed(0)
    model = create_model(name, graph=graph, conv_options=RELEASE_CONV[graph], **kw)
    reference = create_model(name, **kw)
    assert model.state_dict().keys() == reference.state_dict().keys()
    convs = [m for m in model.modules() if isinstance(m, MRConv)]
    assert convs and all(
        (c.sign, c.zero_start) == (RELEASE_CONV[graph].get("sign", "j-i"), True) for c in convs)
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"])
    loss = model(x).logsumexp(1).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
