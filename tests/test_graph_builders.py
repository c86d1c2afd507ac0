"""Graph builders against brute-force implementations written here from SPEC's rules
("Other graphs of the ViG family"), the knn path unchanged, and bad input."""
from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from vig_pyg.errors import VigPygError
from vig_pyg.graph import fixed_degree, graph_builder, knn_edges, list_graph_builders
from vig_pyg.conv import build_conv
from vig_pyg.graph.builders import BlockInfo
from vig_pyg.graph.builders.base import padded_table_edges
from vig_pyg.graph.builders.base import node_rows
from vig_pyg.graph.builders.random import distinct_draws
from vig_pyg.graph.builders.window_knn import (_window_edges, _window_edges_fixed, window_layout,
                                               window_members)
from vig_pyg.graph.knn import marked_max_degree
from vig_pyg.models import create_model

from graph_helpers import neighbour_lists

BUILTINS = ["knn", "static_knn", "axial", "axial_threshold", "window_knn", "spatial_knn",
            "random"]


def fmap(b, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=torch.float64)


def node(b, r, c, h, w):
    return b * h * w + r * w + c


def feat(x, b, r, c):
    return x[b, :, r, c]


# ------------------------------------------------------------------ brute force from SPEC
def brute_axial(b, h, w, hop):
    out = {}
    for im in range(b):
        for r in range(h):
            for c in range(w):
                nb = [node(im, r, c, h, w)]
                nb += [node(im, (r - i) % h, c, h, w) for i in range(hop, h, hop)]
                nb += [node(im, r, (c - j) % w, h, w) for j in range(hop, w, hop)]
                out[node(im, r, c, h, w)] = nb
    return out


def brute_axial_threshold(x, hop, self_loop):
    b, _, h, w = x.shape
    out = {}
    for im in range(b):
        def l1(p, q):
            return float((feat(x, im, *p) - feat(x, im, *q)).abs().sum())
        opposite = [l1((r, c), ((r - math.ceil(h / 2)) % h, (c - math.ceil(w / 2)) % w))
                    for r in range(h) for c in range(w)]
        thr = statistics.mean(opposite) - statistics.stdev(opposite)
        for r in range(h):
            for c in range(w):
                cands = [((r - i) % h, c) for i in range(0, h, hop)]
                cands += [(r, (c - j) % w) for j in range(0, w, hop)]
                kept = []
                for p in cands:
                    n = node(im, *p, h, w)
                    if l1((r, c), p) < thr and n not in kept:
                        kept.append(n)
                me = node(im, r, c, h, w)
                if self_loop and me not in kept:
                    kept.insert(0, me)
                out[me] = kept
    return out


def brute_window(x, k, size, shift):
    b, _, h, w = x.shape
    xn = F.normalize(x, dim=1)
    out = {}
    for im in range(b):
        def win(r, c):
            return (((r - shift) % h) // size, ((c - shift) % w) // size)
        for r in range(h):
            for c in range(w):
                mates = [(r2, c2) for r2 in range(h) for c2 in range(w) if win(r2, c2) == win(r, c)]
                d = {p: float(((xn[im, :, r, c] - xn[im, :, p[0], p[1]]) ** 2).sum()) for p in mates}
                best = sorted(mates, key=lambda p: d[p])[:k]
                out[node(im, r, c, h, w)] = [node(im, *p, h, w) for p in best]
    return out


def brute_spatial(b, h, w, k):
    out = {}
    for im in range(b):
        for r in range(h):
            for c in range(w):
                cells = sorted(((r - r2) ** 2 + (c - c2) ** 2, r2 * w + c2)
                               for r2 in range(h) for c2 in range(w))
                out[node(im, r, c, h, w)] = [im * h * w + n for _, n in cells[:k]]
    return out


# ------------------------------------------------------------------ edge sets
def test_registry_lists_the_builtins_knn_first():
    assert list_graph_builders()[:len(BUILTINS)] == BUILTINS


@pytest.mark.parametrize("h,w,hop", [(6, 6, 2), (7, 5, 2), (5, 7, 3), (4, 9, 1)])
def test_axial_matches_spec(h, w, hop):
    x = fmap(2, 3, h, w)
    ei = graph_builder("axial", hop=hop)(x)
    assert neighbour_lists(ei, 2 * h * w) == brute_axial(2, h, w, hop)
    assert fixed_degree(ei, 2 * h * w) == 1 + (h - 1) // hop + (w - 1) // hop


@pytest.mark.parametrize("h,w,hop", [(6, 6, 2), (7, 5, 2), (5, 8, 3)])
@pytest.mark.parametrize("self_loop", [True, False])
def test_axial_threshold_matches_spec(h, w, hop, self_loop):
    x = fmap(3, 5, h, w, seed=h * w + hop)
    ei = graph_builder("axial_threshold", hop=hop, self_loop=self_loop)(x)
    got = neighbour_lists(ei, 3 * h * w)
    want = brute_axial_threshold(x, hop, self_loop)
    assert {i: sorted(v) for i, v in got.items()} == {i: sorted(v) for i, v in want.items()}
    assert got == want  # and the documented order: self, rows, columns
    degrees = {len(v) for v in got.values()}
    assert len(degrees) > 1, "random features should give a variable degree"


def test_axial_threshold_keeping_nothing():
    # constant features: every distance is 0, mu - sigma = 0, and 0 < 0 keeps nothing
    x = torch.ones(2, 4, 4, 6, dtype=torch.float64)
    with_self = graph_builder("axial_threshold")(x)
    assert with_self.tolist() == [list(range(48)), list(range(48))]   # the release's zero
    bare = graph_builder("axial_threshold", self_loop=False)(x)
    assert bare.shape == (2, 0)
    # one image constant, one not: the degree varies between images
    x[1] = fmap(1, 4, 4, 6)[0]
    got = neighbour_lists(graph_builder("axial_threshold", self_loop=False)(x), 48)
    assert all(not got[i] for i in range(24))
    assert got == brute_axial_threshold(x, 2, False)


@pytest.mark.parametrize("h,w,size,k", [(6, 6, 3, 4), (8, 7, 3, 5), (7, 7, 7, 9), (5, 9, 4, 6)])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_knn_matches_brute_force(h, w, size, k, shifted):
    x = fmap(2, 6, h, w, seed=size + k)
    builder = graph_builder("window_knn", window=size)
    builder.bind_block(BlockInfo(3, 1 if shifted else 0, k, 1, 1), {})
    ei = builder(x, k=k)
    got = neighbour_lists(ei, 2 * h * w)
    want = brute_window(x, k, size, size // 2 if shifted else 0)
    assert {i: sorted(v) for i, v in got.items()} == {i: sorted(v) for i, v in want.items()}
    # full windows everywhere (shifted or not): degree k; partial windows smaller than k
    # at the border: variable degree
    assert fixed_degree(ei, 2 * h * w) == (k if h % size == 0 and w % size == 0 else None)


def test_window_knn_shift_alternates_within_a_stage():
    model = create_model("pvig_ti", num_classes=3, k=4, img_size=128, graph="window_knn",
                         graph_options={"window": 4},
                         channels=[16, 32, 48, 64], blocks=[2, 1, 3, 1])
    shifted = [m.shifted for m in model.modules() if type(m).__name__ == "WindowKNNBuilder"]
    assert shifted == [False, True, False, False, True, False, False]


@pytest.mark.parametrize("h,w,k", [(5, 5, 9), (4, 7, 13), (6, 3, 5), (3, 3, 9)])
def test_spatial_knn_matches_brute_force(h, w, k):
    ei = graph_builder("spatial_knn")(fmap(2, 2, h, w), k=k)
    assert neighbour_lists(ei, 2 * h * w) == brute_spatial(2, h, w, k)
    assert fixed_degree(ei, 2 * h * w) == k


def test_spatial_knn_nine_is_the_3x3_square_inside():
    nb = neighbour_lists(graph_builder("spatial_knn")(fmap(1, 1, 6, 6), k=9), 36)
    r, c = 2, 3
    assert sorted(nb[r * 6 + c]) == sorted((r + dr) * 6 + c + dc
                                           for dr in (-1, 0, 1) for dc in (-1, 0, 1))


def test_random_eval_reproducible_training_fresh():
    x = fmap(2, 3, 5, 6)
    builder = graph_builder("random", seed=7)
    builder.bind_block(BlockInfo(4, 0, 5, 1, 1), {})
    builder.eval()
    a, b = builder(x, k=5), builder(x, k=5)
    assert torch.equal(a, b) and fixed_degree(a, 60) == 5
    other = graph_builder("random", seed=7)
    other.bind_block(BlockInfo(5, 1, 5, 1, 1), {})
    assert not torch.equal(other.eval()(x, k=5), a)           # another block, another graph
    builder.train()
    torch.manual_seed(0)
    t1, t2 = builder(x, k=5), builder(x, k=5)
    assert not torch.equal(t1, t2)
    torch.manual_seed(0)
    assert torch.equal(builder(x, k=5), t1)                    # reproducible under a seed
    for ei in (a, t1):
        nb = neighbour_lists(ei, 60)
        for i, js in nb.items():
            assert len(set(js)) == 5 and all(j // 30 == i // 30 for j in js)


def test_random_draws_are_uniform_subsets():
    g = torch.Generator().manual_seed(0)
    draws = distinct_draws(40000, 10, 3, g)
    assert bool((draws.sort(1).values.diff(dim=1) > 0).all())      # distinct
    freq = torch.bincount(draws.view(-1), minlength=10).double() / 40000
    assert torch.allclose(freq, torch.full((10,), 0.3, dtype=torch.float64), atol=0.015)


def test_knn_builder_is_knn_edges():
    x = fmap(2, 8, 6, 6)
    keys = F.avg_pool2d(x, 2, 2)
    rel = torch.randn(36, 9, dtype=torch.float64)
    got = graph_builder("knn")(x, keys, k=4, dilation=2, relative_pos=rel)
    assert torch.equal(got, knn_edges(x, 4, dilation=2, keys=keys, relative_pos=rel))


# ------------------------------------------------------------------ static_knn in a model
SMALL_ISO = dict(num_classes=3, k=3, img_size=32, channels=32, depth=4, stem_stride=4)
SMALL_PYR = dict(num_classes=3, k=3, img_size=128, channels=[16, 32, 48, 64],
                 blocks=[2, 1, 2, 1])


def capture_edges(model):
    """[(stage input seen by the hooks, grapher, edge_index)] of one forward pass."""
    records = []
    for m in model.modules():
        if type(m).__name__ == "Grapher":
            def hook(mod, args, out, m=m):
                records.append((m, out))
            m.graph_builder.register_forward_hook(hook)
    return records


@pytest.mark.parametrize("name,kw", [("vig_ti", SMALL_ISO), ("pvig_ti", SMALL_PYR)])
def test_static_knn_is_knn_on_the_stage_input(name, kw):
    torch.manual_seed(0)
    model = create_model(name, graph="static_knn", **kw).double().eval()
    stage_inputs = []
    blocks = [m for m in model.backbone if type(m).__name__ == "ViGBlock"]
    specs = model.config.block_specs()
    firsts = [b for s, b in zip(specs, blocks) if s.index == 0 or s.stage != specs[s.index - 1].stage]
    for b in firsts:
        b.register_forward_pre_hook(lambda mod, args: stage_inputs.append(args[0]))
    records = capture_edges(model)
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"], dtype=torch.float64)
    model(x)
    assert len(records) == model.config.depth
    for spec, (grapher, ei) in zip(specs, records):
        src = stage_inputs[spec.stage]
        r = spec.reduce_ratio
        keys = F.avg_pool2d(src, r, r) if r > 1 else None
        rel = grapher._relative_pos(src.shape[2] * src.shape[3],
                                    (keys if keys is not None else src)[0, 0].numel())
        want = knn_edges(src, spec.k, dilation=spec.dilation, keys=keys, relative_pos=rel)
        assert torch.equal(ei, want), spec
    # the cache is released after the pass, and an EMA-style deep copy works on its own
    assert all("source" not in b[0].graph_builder.shared for b in blocks)
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), model(x))


def test_knn_default_is_unchanged_bitwise():
    # the same weights under graph="knn" and the default: identical logits, and the knn
    # path calls knn_edges with the arguments it always did (test_models checks it against
    # the official reference)
    torch.manual_seed(0)
    a = create_model("pvig_ti", **SMALL_PYR).eval()
    b = create_model("pvig_ti", graph="knn", **SMALL_PYR).eval()
    b.load_state_dict(a.state_dict())
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(2, 3, 128, 128)
    assert torch.equal(a(x), b(x))


# ------------------------------------------------------------------ models, every builder
@pytest.mark.parametrize("graph", BUILTINS)
@pytest.mark.parametrize("name,kw", [("vig_ti", SMALL_ISO), ("pvig_ti", SMALL_PYR)])
def test_every_builder_trains_in_both_model_kinds(graph, name, kw):
    options = {"window_knn": {"window": 4}, "axial": {"hop": 2}}.get(graph)
    if name == "pvig_ti" and graph == "window_knn":
        options = [{"window": 8}, {"window": 4}, {"window": 4}, {"window": 4}]
    torch.manual_seed(0)
    model = create_model(name, graph=graph, graph_options=options, **kw)
    reference = create_model(name, **kw)
    assert model.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"])
    loss = model(x).logsumexp(1).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_per_stage_graph_options():
    model = create_model("pvig_ti", graph="axial",
                         graph_options=[{"hop": 8}, {"hop": 4}, {"hop": 2}, {"hop": 1}],
                         **SMALL_PYR)
    hops = [m.hop for m in model.modules() if type(m).__name__ == "AxialBuilder"]
    assert hops == [8, 8, 4, 2, 2, 1]
    model = create_model("pvig_ti", graph=["spatial_knn", "knn", "axial", "random"],
                         **SMALL_PYR)
    names = [m.graph_builder.name for m in model.modules() if type(m).__name__ == "Grapher"]
    assert names == ["spatial_knn", "spatial_knn", "knn", "axial", "axial", "random"]


# ------------------------------------------------------------------ bad input
def one_line_error(fn, match):
    with pytest.raises(VigPygError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_input_one_line_each():
    msg = one_line_error(lambda: graph_builder("axal"), "unknown graph builder 'axal'")
    assert all(name in msg for name in BUILTINS)
    one_line_error(lambda: graph_builder("axial", k=3), r"takes no option\(s\) \['k'\]; its "
                                                         r"options: \['hop'\]")
    one_line_error(lambda: graph_builder("spatial_knn", hop=2), "options: none")
    one_line_error(lambda: graph_builder("axial", hop=0), "hop must be an int >= 1")
    one_line_error(lambda: graph_builder("axial", hop=6)(fmap(1, 2, 6, 8)), "hop 6 is not smaller")
    one_line_error(lambda: graph_builder("axial_threshold", hop=9)(fmap(1, 2, 6, 8)),
                   "use hop < 6")
    one_line_error(lambda: graph_builder("window_knn", window=7)(fmap(1, 2, 6, 8), k=4),
                   "window 7 is larger than the 6x8")
    one_line_error(lambda: graph_builder("spatial_knn")(fmap(1, 2, 2, 2), k=5), "exceeds")
    # through create_model: the model configuration error names the model
    one_line_error(lambda: create_model("vig_ti", graph="nope", **SMALL_ISO), "vig_ti: unknown")
    one_line_error(lambda: create_model("vig_ti", graph="axial", graph_options={"hop": 8},
                                        **SMALL_ISO), "vig_ti: graph builder 'axial': hop 8")
    one_line_error(lambda: create_model("vig_ti", graph="axial", graph_options={"window": 2},
                                        **SMALL_ISO), "takes no option")
    one_line_error(lambda: create_model("pvig_ti", graph="axial", graph_options=[{}, {}],
                                        **SMALL_PYR), "one entry per stage")


# ------------------------------------------------------------------ model card
def test_info_counts_only_the_distances_a_builder_computes(capsys):
    import argparse

    from vig_pyg.models.info import add_info_parser, model_card, run_info

    small = dict(img_size=32, channels=32, depth=4, stem_stride=4, k=4)
    per_block = 64 * 64 * 32          # one [64 x 32] x [32 x 64] distance matmul, 8x8 nodes
    cards = {g: model_card("vig_ti", graph=g, graph_options=o, **small) for g, o in
             [("knn", None), ("static_knn", None), ("axial", None), ("window_knn", {"window": 4})]}
    assert cards["knn"]["knn_macs"] == 4 * per_block
    assert cards["static_knn"]["knn_macs"] == per_block          # ranked once for the stage
    assert cards["axial"]["knn_macs"] == 0
    assert cards["window_knn"]["knn_macs"] == 4 * 4 * (16 * 16 * 32)   # 4 windows of 16 nodes
    assert len({c["params"] for c in cards.values()}) == 1
    for g in ("static_knn", "axial", "window_knn"):
        assert (cards["knn"]["macs"] - cards[g]["macs"]
                == cards["knn"]["knn_macs"] - cards[g]["knn_macs"])
    parser = argparse.ArgumentParser(prog="vig-pyg")
    add_info_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["info", "--model", "vig_ti", "--graph", "axial",
                              "--graph-option", "hop=3", "--no-macs"])
    assert run_info(args) == 0
    assert "graph axial {'hop': 3}" in capsys.readouterr().out
    args = parser.parse_args(["info", "--model", "vig_ti", "--graph", "axal", "--no-macs"])
    assert run_info(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vig-pyg info: error: vig_ti: unknown graph builder 'axal'")
    assert "\n" not in err


def test_register_a_builder_and_use_it_in_a_model():
    from vig_pyg.graph import GraphBuilder, register_graph_builder
    from vig_pyg.graph.builders import registry

    @register_graph_builder("ring_test")
    class Ring(GraphBuilder):
        """Each node and the next one in row-major order (cyclic per image)."""

        def __init__(self, step: int = 1):
            super().__init__()
            self.step = step

        def forward(self, x, keys=None, *, k=9, dilation=1, relative_pos=None):
            b, _, h, w = x.shape
            n = torch.arange(b * h * w)
            nxt = n - n % (h * w) + (n % (h * w) + self.step) % (h * w)
            return torch.stack([torch.stack([n, nxt], 1).view(-1), n.repeat_interleave(2)])

    try:
        assert "ring_test" in list_graph_builders()
        one_line_error(lambda: register_graph_builder("ring_test")(Ring), "already registered")
        model = create_model("vig_ti", graph="ring_test", graph_options={"step": 3}, **SMALL_ISO)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
        one_line_error(lambda: create_model("vig_ti", graph="ring_test",
                                            graph_options={"hop": 3}, **SMALL_ISO),
                       r"options: \['step'\]")
    finally:
        registry._REGISTRY.pop("ring_test", None)


# ------------------------------------------------------------------ off the CPU: no read back
def mr_step(edge_index, x, **options):
    """``mr``'s output and gradients (input and parameters) in training, float64."""
    torch.manual_seed(0)
    conv = build_conv("mr", x.size(1), 2 * x.size(1), **options).double().train()
    nodes = x.permute(0, 2, 3, 1).reshape(-1, x.size(1)).detach().requires_grad_(True)
    out = conv(nodes, edge_index)
    (out * torch.randn(out.shape, dtype=out.dtype,
                       generator=torch.Generator().manual_seed(1))).sum().backward()
    return [out.detach(), nodes.grad] + [p.grad for p in conv.parameters()]


@pytest.mark.parametrize("self_loop", [True, False])
def test_axial_threshold_off_the_cpu_form(self_loop):
    # image 0 constant (nothing passes the threshold), image 1 random: every case
    h, w, hop = 6, 7, 2
    x = fmap(2, 8, h, w, seed=3)
    x[0] = 1.0
    builder = graph_builder("axial_threshold", hop=hop, self_loop=self_loop)
    table, mask = builder.candidates(x)
    padded = padded_table_edges(table, 2, h * w, mask)
    # the rule: every candidate column, a dropped one naming the first kept candidate,
    # or the centre itself where none is kept
    kept, candidates = brute_axial_threshold(x, hop, self_loop), brute_axial(2, h, w, hop)
    want = {i: [c if c in kept[i] else (kept[i][0] if kept[i] else i) for c in cand]
            for i, cand in candidates.items()}
    assert neighbour_lists(padded, 2 * h * w) == want
    assert fixed_degree(padded, 2 * h * w) == table.size(1)
    assert any(not v for v in kept.values()) != self_loop   # some centre keeps nothing
    # mr gives what it gives on the CPU's graph, forward and backward
    cpu = builder(x)
    for options in ({}, {"sign": "i-j"}, {"zero_start": True}):
        for a, b in zip(mr_step(padded, x, **options), mr_step(cpu, x, **options)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_axial_threshold_builds_the_padded_form_off_the_cpu():
    x = fmap(2, 5, 6, 7).to("meta")
    builder = graph_builder("axial_threshold")
    builder.repeats_harmless = True  # what a Grapher sets for a maximum (mr, cluster_mr)
    edge_index = builder(x)
    d = 1 + 5 // 2 + 6 // 2
    assert edge_index.shape == (2, 2 * 42 * d) and fixed_degree(edge_index, 84) == d


@pytest.mark.parametrize("conv, padded", [("mr", True), ("gin", False), ("edge", False),
                                         ("sage", False)])
def test_only_a_maximum_lets_a_builder_pad_with_repeats(conv, padded):
    # a sum (gin) or statistics over the edges (edge, sage in training) count a repeated
    # edge, so their builders keep the exact variable-degree edges off the CPU too
    from vig_pyg.models.grapher import Grapher

    grapher = Grapher(8, k=3, conv=conv, graph="axial_threshold")
    assert grapher.graph_builder.repeats_harmless is padded


@pytest.mark.parametrize("h,w,size,k", [(6, 6, 3, 4), (8, 7, 3, 5), (5, 9, 4, 6),
                                        (14, 14, 5, 17)])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_knn_off_the_cpu_gives_the_same_edges(h, w, size, k, shifted):
    x = fmap(2, 6, h, w, seed=size + k)
    shift, n = (size // 2 if shifted else 0), h * w
    members = window_members(h, w, size, shift, torch.device("cpu"))
    order, kept, max_degree = window_layout(h, w, size, shift, k, torch.device("cpu"))
    nodes = node_rows(x)
    cpu = _window_edges(nodes, members, order, k, n)
    fixed = _window_edges_fixed(nodes, members, order, kept, max_degree, k, n)
    assert torch.equal(fixed, cpu)
    degree = torch.bincount(cpu[1], minlength=2 * n)
    if kept is None:
        assert bool((degree == k).all()) and fixed_degree(fixed, 2 * n) == k
    else:   # variable degree: its largest, for the padded table, known without a read
        assert marked_max_degree(fixed) == int(degree.max()) and int(degree.min()) < k
    # on meta (no values): the same number of edges
    builder = graph_builder("window_knn", window=size)
    builder.bind_block(BlockInfo(3, 1 if shifted else 0, k, 1, 1), {})
    assert builder(x.to("meta"), k=k).shape == cpu.shape
