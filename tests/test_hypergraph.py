"""ViHGNN's hypergraph (SPEC "More graphs of the family"): fuzzy c-means, the membership rule,
the ``hypergraph_fcm`` builder and the ``vihgnn`` aggregator, against brute-force float64
references written here from SPEC's rules."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from vig_pyg.conv import build_conv
from vig_pyg.conv.hypergraph import ViHGNNConv
from vig_pyg.errors import VigPygError
from vig_pyg.graph import graph_builder, list_graph_builders
from vig_pyg.graph.builders import BlockInfo, BuiltGraph
from vig_pyg.graph.fuzzy_c_means import (fuzzy_c_means, hyperedge_incidence, membership_mask,
                                         padded_incidence)
from vig_pyg.models import create_model

from graph_helpers import trains_then_evaluates_deterministically

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_ISO = dict(num_classes=3, k=3, img_size=32, channels=32, depth=4, stem_stride=4)
SMALL_PYR = dict(num_classes=3, k=3, img_size=128, channels=[16, 32, 48, 64],
                 blocks=[2, 1, 2, 1])


# ------------------------------------------------------------------ brute force from SPEC
def brute_fcm(x, u0, max_iter=15, tol=1e-3):
    """One image: x [N, C], u0 [N, K] (NumPy float64). Returns (U, iterations)."""
    n, k = u0.shape
    u = u0.copy()
    for it in range(1, max_iter + 1):
        centres = []
        for j in range(k):
            w = [u[p, j] ** 2 for p in range(n)]
            centres.append(sum(w[p] * x[p] for p in range(n)) / sum(w))
        d = np.empty((n, k))
        for p in range(n):
            for j in range(k):
                d[p, j] = max(float(((x[p] - centres[j]) ** 2).sum()), 1e-10)
        new = np.empty((n, k))
        for p in range(n):
            for j in range(k):
                new[p, j] = (1 / d[p, j]) / sum(1 / d[p, q] for q in range(k))
        change = math.sqrt(((new - u) ** 2).sum())
        u = new
        if change < tol:
            return u, it
    return u, max_iter


def brute_members(u):
    """One image: U [N, K] -> list of sets (the hyperedges of every node)."""
    n, k = u.shape
    u = [list(map(float, row)) for row in u]
    argmax = [row.index(max(row)) for row in u]       # first maximum
    weak = [max(row) < 0.1 for row in u]
    thr = 0.5 if any(weak) else 0.01
    out = []
    for p in range(n):
        row = [1.0 if j == argmax[p] else 0.0 for j in range(k)] if weak[p] else u[p]
        s = {j for j in range(k) if row[j] > thr}
        out.append(s or {argmax[p]})
    return out


def brute_incidence(us):
    """Images' U [B, N, K] -> set of (node b*N+p, hyperedge b*K+k)."""
    b, n, k = us.shape
    return {(im * n + p, im * k + j) for im in range(b)
            for p, s in enumerate(brute_members(us[im])) for j in s}


def pairs(incidence):
    return set(map(tuple, incidence.t().tolist()))


def rows(seed, *shape):
    g = np.random.default_rng(seed)
    u = g.random(shape)
    return u / u.sum(-1, keepdims=True)


def clustered(seed, n, c, centres):
    g = np.random.default_rng(seed)
    means = g.normal(size=(centres, c)) * 6
    return means[np.arange(n) % centres] + 0.3 * g.normal(size=(n, c))


# ------------------------------------------------------------------ fuzzy c-means
def test_fcm_matches_brute_force_with_per_image_stop_and_cap():
    n, c, k = 24, 3, 3
    x = np.stack([clustered(0, n, c, 3),                       # converges in a few steps
                  np.random.default_rng(1).random((n, c)),     # needs more than 15
                  clustered(2, n, c, 2)])
    u0 = rows(3, 3, n, k)
    u, its = fuzzy_c_means(torch.from_numpy(x), torch.from_numpy(u0), return_iterations=True)
    assert u.dtype == torch.float64
    refs = [brute_fcm(x[b], u0[b]) for b in range(3)]
    assert its.tolist() == [it for _, it in refs]
    for b, (ref, it) in enumerate(refs):
        np.testing.assert_allclose(u[b].numpy(), ref, rtol=0, atol=1e-10)
    # the stop test binds for image 0 (iterating on would move U), the cap for image 1
    assert refs[0][1] < 15
    longer, _ = brute_fcm(x[0], u0[0], max_iter=refs[0][1] + 1, tol=0.0)
    assert np.abs(longer - refs[0][0]).max() > 1e-7
    assert refs[1][1] == 15
    _, uncapped = brute_fcm(x[1], u0[1], max_iter=100)
    assert uncapped > 15
    # a batch-wide stop test would have run image 0 as long as image 1
    alone = fuzzy_c_means(torch.from_numpy(x[:1]), torch.from_numpy(u0[:1]))
    assert torch.equal(alone[0], u[0])


def test_fcm_iteration_cap_is_an_argument_and_first_change_is_from_u0():
    n, c, k = 12, 2, 3
    x = torch.from_numpy(np.random.default_rng(4).random((1, n, c)))
    u0 = rows(5, 1, n, k)
    u, its = fuzzy_c_means(x, torch.from_numpy(u0), max_iter=2, return_iterations=True)
    ref, it = brute_fcm(x[0].numpy(), u0[0], max_iter=2)
    assert its.tolist() == [it] == [2]
    np.testing.assert_allclose(u[0].numpy(), ref, rtol=0, atol=1e-12)
    # memberships that are already a fixed point stop after the first iteration
    fixed, _ = brute_fcm(x[0].numpy(), u0[0], max_iter=500, tol=1e-14)
    _, its = fuzzy_c_means(x, torch.from_numpy(fixed[None]), return_iterations=True)
    assert its.tolist() == [1]


def test_fcm_distance_floor():
    # every node on one of two points: centres land on them, distances hit the floor
    x = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    u0 = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    u = fuzzy_c_means(x, u0)
    ref, _ = brute_fcm(x[0].numpy(), u0[0].numpy())
    np.testing.assert_allclose(u[0].numpy(), ref, rtol=0, atol=1e-12)
    assert torch.isfinite(u).all() and u[0, 0, 0] > 1 - 1e-9


def test_fcm_bad_input_one_line():
    for call in (lambda: fuzzy_c_means(torch.zeros(4, 3), torch.zeros(4, 2)),
                 lambda: fuzzy_c_means(torch.zeros(1, 4, 3), torch.zeros(1, 5, 2))):
        with pytest.raises(ValueError) as info:
            call()
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------ membership rule
def test_membership_rule_on_hand_made_memberships():
    k = 12
    def row(**entries):        # the rest spread evenly so that the row sums to 1
        r = np.zeros(k)
        for j, v in entries.items():
            r[int(j[1:])] = v
        rest = [j for j in range(k) if f"k{j}" not in entries]
        r[rest] = (1 - r.sum()) / len(rest)
        return r
    strong = np.stack([
        row(k0=0.5, k1=0.3, k2=0.195, k3=0.005),   # 0.0 rest: {0, 1, 2}
        row(k4=0.45, k5=0.46, k6=0.01),            # 0.01 is not > 0.01: 0.08/9 each (<0.01)
        row(k7=0.12),                               # rest 0.08 > 0.01: all 12
    ])
    weak = np.stack([
        row(k0=0.09, k3=0.095),                     # weak: one-hot at 3
        row(k2=0.6),                                # {2}
        row(k5=0.4, k6=0.3),                        # nothing > 0.5: attached to 5
        row(k8=0.5, k9=0.5),                        # nothing > 0.5, tie: attached to 8
        row(k0=0.09, k1=0.09),                      # weak, all equal ~0.0818 < 0.09: 0
    ])
    expected_strong = [{0, 1, 2}, {4, 5}, set(range(k))]
    expected_weak = [{3}, {2}, {5}, {8}, {0}]
    # the weak image does not raise the strong image's threshold (per image, not per batch)
    us = np.stack([np.concatenate([strong, strong[:2]]), weak])
    mask = membership_mask(torch.from_numpy(us))
    got = [[set(np.flatnonzero(m).tolist()) for m in img] for img in mask.numpy()]
    assert got[0] == expected_strong + expected_strong[:2]
    assert got[1] == expected_weak
    assert [brute_members(img) for img in us] == got


def test_membership_rule_random_against_brute_force():
    g = np.random.default_rng(7)
    for concentration, k in ((0.05, 20), (1.0, 12), (50.0, 12), (0.3, 4)):
        us = g.dirichlet([concentration] * k, size=(3, 15))
        mask = membership_mask(torch.from_numpy(us)).numpy()
        for b in range(3):
            assert [set(np.flatnonzero(m).tolist()) for m in mask[b]] == brute_members(us[b])


def test_incidence_numbering_over_several_images():
    b, n, k = 3, 7, 5
    us = np.random.default_rng(8).dirichlet([0.4] * k, size=(b, n))
    us[1, 2] = 1 / k                                # a weak node in image 1 only
    inc = hyperedge_incidence(torch.from_numpy(us))
    assert inc.dtype == torch.long and inc.shape[0] == 2
    assert pairs(inc) == brute_incidence(us)
    assert inc.size(1) == len(pairs(inc))            # no duplicates
    assert inc.t().tolist() == sorted(inc.t().tolist())   # by node, then hyperedge
    assert (inc[0] // n == inc[1] // k).all()       # a node's hyperedges are its image's


# ------------------------------------------------------------------ builder
def eval_memberships(n, k, seed=0, block_index=0):
    """SPEC-side description of the builder's evaluation draw (see hypergraph_fcm docs)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + block_index)
    u = torch.rand(1, n, k, generator=g)
    return (u / u.sum(-1, keepdim=True))[0].double().numpy()


def fmap(b, c, h, w, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g, dtype=dtype)


@pytest.mark.parametrize("h,w,k", [(5, 7, 6), (4, 4, 3), (3, 5, 15)])
def test_builder_matches_brute_force_in_eval(h, w, k):
    x = fmap(3, 4, h, w, seed=h * w)
    builder = graph_builder("hypergraph_fcm", hyperedges=k).eval()
    built = builder(x)
    assert isinstance(built, BuiltGraph) and built.num_hyperedges == 3 * k
    assert built.edge_attr is None
    u0 = eval_memberships(h * w, k)
    us = []
    for b in range(3):
        nodes = x[b].permute(1, 2, 0).reshape(h * w, 4).numpy()   # node row*W + col
        us.append(brute_fcm(nodes, u0)[0])
    assert pairs(built.edge_index) == brute_incidence(np.stack(us))


def test_builder_image_does_not_depend_on_the_batch():
    h, w, k = 6, 5, 7
    x = fmap(4, 8, h, w, seed=11, dtype=torch.float32)
    x[2] *= 0.01          # an image of small features next to the others
    builder = graph_builder("hypergraph_fcm", hyperedges=k).eval()
    batch = builder(x).edge_index
    n = h * w
    for b in range(4):
        alone = builder(x[b:b + 1]).edge_index
        mine = batch[:, batch[0] // n == b] - torch.tensor([[b * n], [b * k]])
        assert torch.equal(mine, alone)
    # and not on its position either (the same initial memberships for every image)
    swapped = builder(x.flip(0)).edge_index
    first = swapped[:, swapped[0] < n]
    last = batch[:, batch[0] >= 3 * n] - torch.tensor([[3 * n], [3 * k]])
    assert torch.equal(first, last)


def test_builder_eval_deterministic_training_varies():
    x = fmap(2, 6, 6, 6, seed=3, dtype=torch.float32).requires_grad_()
    builder = graph_builder("hypergraph_fcm", hyperedges=12)
    builder.eval()
    a, b = builder(x).edge_index, builder(x).edge_index
    assert torch.equal(a, b)
    other = graph_builder("hypergraph_fcm", hyperedges=12, seed=1).eval()
    bound = graph_builder("hypergraph_fcm", hyperedges=12).eval()
    bound.bind_block(BlockInfo(3, 3, 9, 1, 1, depth=4), {})
    assert not torch.equal(other(x).edge_index, a)      # seed and block change the draw
    assert not torch.equal(bound(x).edge_index, a)
    builder.train()
    torch.manual_seed(0)
    t1 = builder(x).edge_index
    t2 = builder(x).edge_index
    torch.manual_seed(0)
    t3 = builder(x).edge_index
    assert not torch.equal(t1, t2) and torch.equal(t1, t3)
    assert not t1.requires_grad


def test_builder_runs_in_float32_under_bfloat16_autocast():
    x = fmap(2, 4, 5, 5, seed=5, dtype=torch.float32)
    builder = graph_builder("hypergraph_fcm", hyperedges=4).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = builder(x.bfloat16()).edge_index
    assert torch.equal(got, builder(x.bfloat16().float()).edge_index)


def test_hyperedge_schedule_from_bind_block():
    def bound(kind, depth, index, **options):
        b = graph_builder("hypergraph_fcm", **options)
        b.bind_block(BlockInfo(index, index, 9, 1, 1, depth=depth, kind=kind), {})
        return b.num_hyperedges
    assert graph_builder("hypergraph_fcm").num_hyperedges == 25          # unbound
    assert [bound("isotropic", 12, i) for i in range(12)] == \
        [25, 27, 29, 31, 34, 36, 38, 40, 43, 45, 47, 50]
    assert [bound("isotropic", 4, i) for i in range(4)] == [25, 33, 41, 50]
    assert [bound("pyramid", 6, i) for i in range(6)] == [25] * 6
    assert [bound("isotropic", 12, i, hyperedges=9) for i in (0, 11)] == [9, 9]
    # in a model
    model = create_model("vig_ti", graph="hypergraph_fcm", conv="vihgnn", **SMALL_ISO)
    ks = [m.num_hyperedges for m in model.modules() if type(m).__name__ == "HypergraphFCMBuilder"]
    assert ks == [25, 33, 41, 50]


def one_line_error(fn, match):
    with pytest.raises(VigPygError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_builder_bad_input_one_line_each():
    assert "hypergraph_fcm" in list_graph_builders()
    for bad in (0, -1, True, 2.0, "25"):
        one_line_error(lambda: graph_builder("hypergraph_fcm", hyperedges=bad),
                       "hyperedges must be an int >= 1")
    one_line_error(lambda: graph_builder("hypergraph_fcm", seed="a"), "seed must be an int")
    one_line_error(lambda: graph_builder("hypergraph_fcm", k=3), "takes no option")
    one_line_error(lambda: graph_builder("hypergraph_fcm", hyperedges=13)(fmap(1, 2, 3, 4)),
                   r"13 hyperedges \(set\) exceed the 12 nodes of the 3x4 grid; pass "
                   r"graph_options=\{'hyperedges': K\} with K <= 12")
    # the pyramid's 25 hyperedges do not fit its last 4x4 stage at 128 px
    one_line_error(lambda: create_model("pvig_ti", graph="hypergraph_fcm", conv="vihgnn",
                                        **SMALL_PYR), "pvig_ti: .*25 hyperedges")


# ------------------------------------------------------------------ vihgnn
def ref_projection(proj, x):
    """GroupedProjection [M, in] -> [M, out] by hand: grouped matmul, BatchNorm, act."""
    conv, bn, act = proj
    g, w = conv.groups, conv.weight[:, :, 0, 0]
    gi, go = x.size(1) // g, w.size(0) // g
    z = torch.cat([x[:, i * gi:(i + 1) * gi] @ w[i * go:(i + 1) * go].t() for i in range(g)], 1)
    z = z + conv.bias
    if bn.training:
        mean, var = z.mean(0), z.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return act((z - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias)


def ref_vihgnn(conv, x, incidence, num_hyperedges):
    nodes, edges = incidence.tolist()
    members = {e: [p for p, q in zip(nodes, edges) if q == e] for e in range(num_hyperedges)}
    used = [e for e in range(num_hyperedges) if members[e]]
    means = torch.stack([x[members[e]].mean(0) for e in used])
    e_rows = dict(zip(used, ref_projection(conv.nn1, means)))
    out = []
    for p in range(x.size(0)):
        mine = [q for n, q in zip(nodes, edges) if n == p]
        m = torch.stack([e_rows[q] for q in mine]).mean(0) if mine else torch.zeros_like(x[p])
        out.append((1 + conv.eps) * x[p] + m)
    return ref_projection(conv.nn2, torch.stack(out))


def hand_incidence():
    # 7 nodes, 5 hyperedges; hyperedge 2 is empty, node 6 is in none, node 0 in three
    links = [(0, 0), (0, 1), (0, 3), (1, 0), (2, 1), (3, 1), (3, 4), (4, 3), (5, 4), (5, 0)]
    return torch.tensor(links).t(), 7, 5


@pytest.mark.parametrize("training", [True, False])
def test_vihgnn_matches_loop_over_hyperedges(training):
    torch.manual_seed(0)
    incidence, n, m = hand_incidence()
    conv = build_conv("vihgnn", 8, 12, groups=2).double()
    assert type(conv) is ViHGNNConv and conv.graph_kind == "hypergraph"
    with torch.no_grad():
        conv.eps.fill_(0.3)
        for bn in (conv.nn1[1], conv.nn2[1]):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    state = copy.deepcopy(conv.state_dict())

    def fresh():
        layer = build_conv("vihgnn", 8, 12, groups=2).double()
        layer.load_state_dict(state)
        return layer.train(training)

    x = torch.randn(n, 8, dtype=torch.float64)
    conv = fresh()
    ref = ref_vihgnn(conv, x, incidence, m)
    got = conv(x, incidence, num_hyperedges=m)
    assert got.shape == (n, 12)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # an empty hyperedge changes nothing: drop hyperedge 2 and renumber the others
    squeezed = incidence.clone()
    squeezed[1] -= (squeezed[1] > 2).long()
    other = fresh()
    torch.testing.assert_close(other(x, squeezed, num_hyperedges=m - 1), got,
                               rtol=1e-12, atol=1e-12)
    for a, b in zip(conv.buffers(), other.buffers()):     # running statistics too
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # nor do empty hyperedges past the last used one; num_hyperedges defaults to the
    # largest index + 1
    torch.testing.assert_close(fresh()(x, incidence, num_hyperedges=m + 3), got,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fresh()(x, incidence), got, rtol=1e-12, atol=1e-12)
    if training:   # the running statistics moved: BatchNorm did see batch statistics
        assert not torch.equal(conv.nn1[1].running_mean, state["nn1.1.running_mean"])


def test_vihgnn_gradients_and_keys():
    incidence, n, m = hand_incidence()
    conv = build_conv("vihgnn", 8)
    assert conv.out_channels == 16
    assert set(conv.state_dict()) >= {"eps", "nn1.0.weight", "nn1.0.bias", "nn1.1.weight",
                                      "nn2.0.weight", "nn2.1.running_mean"}
    assert conv.nn1[0].weight.shape == (8, 2, 1, 1) and conv.nn2[0].weight.shape == (16, 2, 1, 1)
    assert conv.eps.item() == 0.0
    x = torch.randn(n, 8, requires_grad=True)
    conv(x, incidence, num_hyperedges=m).square().sum().backward()
    assert x.grad is not None and conv.eps.grad is not None
    assert all(p.grad is not None for p in conv.parameters())


def test_vihgnn_bad_input_one_line():
    incidence, n, _ = hand_incidence()
    conv = build_conv("vihgnn", 8)
    x = torch.randn(n, 8)
    for call, match in ((lambda: conv((x, x), incidence), "does not support bipartite"),
                        (lambda: conv(x, incidence[0]), r"incidence \[2, nnz\]")):
        with pytest.raises(ValueError, match=match) as info:
            call()
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------ models
def test_grapher_refuses_mismatched_pairs_one_line_each():
    one_line_error(lambda: create_model("vig_ti", graph="hypergraph_fcm", conv="mr",
                                        **SMALL_ISO),
                   "'mr' runs on a graph but graph builder 'hypergraph_fcm' builds a hypergraph")
    one_line_error(lambda: create_model("vig_ti", graph="knn", conv="vihgnn", **SMALL_ISO),
                   "'vihgnn' runs on a hypergraph but graph builder 'knn' builds a graph")


PYR_OPTIONS = [{}, {}, {}, {"hyperedges": 8}]     # 4x4 last stage at 128 px


@pytest.mark.parametrize("conv", ["vihgnn", "pyg:HypergraphConv"])
@pytest.mark.parametrize("name,kw,options", [("vig_ti", SMALL_ISO, None),
                                             ("pvig_ti", SMALL_PYR, PYR_OPTIONS)])
def test_tiny_models_train_and_evaluate(conv, name, kw, options):
    torch.manual_seed(0)
    model = create_model(name, graph="hypergraph_fcm", graph_options=options, conv=conv, **kw)
    x = torch.randn(2, 3, kw["img_size"], kw["img_size"])
    trains_then_evaluates_deterministically(model, x)
    with torch.no_grad():                   # an image's graph does not depend on its batch
        a, single = model(x), model(x[1:])
    torch.testing.assert_close(single[0], a[1], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ off the CPU: no read back
def test_fcm_without_the_early_stop_is_the_same():
    # the form run off the CPU: all 15 iterations, none read back; an image that has
    # stopped keeps its U, so the result equals the early-stopping one exactly
    n, c, k = 24, 3, 3
    u0 = torch.from_numpy(rows(3, 3, n, k))
    x = torch.from_numpy(np.stack([clustered(0, n, c, 3), clustered(1, n, c, 3),
                                   clustered(2, n, c, 2)]))     # the last one runs 15
    for images in (slice(0, 2), slice(0, 3)):
        early = fuzzy_c_means(x[images], u0[images], return_iterations=True, early_stop=True)
        full = fuzzy_c_means(x[images], u0[images], return_iterations=True, early_stop=False)
        assert torch.equal(early[0], full[0]) and torch.equal(early[1], full[1])
    assert early[1].tolist()[2] == 15 and len(set(early[1].tolist())) == 3
    # with the first two alone every image stopped: the loop did leave before the cap
    assert int(fuzzy_c_means(x[:2], u0[:2], return_iterations=True)[1].max()) < 15


def test_padded_incidence_holds_the_memberships_in_a_fixed_size():
    us = torch.from_numpy(rows(6, 3, 10, 4))
    us[1, :, :] = torch.from_numpy(rows(7, 10, 4)) * 0.0 + 0.25   # a weak image: one-hot
    padded = padded_incidence(us)
    assert padded.shape == (2, 3 * 10 * 4)
    real = padded[0] < 30
    assert torch.equal(padded[:, real], hyperedge_incidence(us))   # the same, in order
    assert bool((padded[:, ~real] == torch.tensor([[30], [12]])).all())
    assert pairs(padded[:, real]) == brute_incidence(us.numpy())


PROJECT = ViHGNNConv._project_hyperedges


def vihgnn_step(conv, x, incidence, m, select=None, monkeypatch=None):
    """vihgnn's output, gradients and running statistics; ``select=False`` runs the
    form taken off the CPU (statistics weighted by membership)."""
    if select is not None:
        monkeypatch.setattr(ViHGNNConv, "_project_hyperedges",
                            lambda self, means, kept, **_: PROJECT(self, means, kept,
                                                                  select=select))
    x = x.detach().requires_grad_(True)
    out = conv(x, incidence, num_hyperedges=m)
    (out * torch.randn(out.shape, dtype=out.dtype,
                       generator=torch.Generator().manual_seed(1))).sum().backward()
    return ([out.detach(), x.grad] + [p.grad for p in conv.parameters()]
            + [b.clone() for b in conv.buffers()])


@pytest.mark.parametrize("training", [True, False])
def test_vihgnn_off_the_cpu_form_is_the_same(training, monkeypatch):
    # the padded incidence, and h_1 on every hyperedge with membership-weighted BatchNorm
    # statistics, give what the exact incidence and the selected rows give
    torch.manual_seed(0)
    b, n, k = 2, 9, 5
    us = torch.from_numpy(rows(8, b, n, k))
    us[0, :, 4] = 0.0                                   # hyperedge 4 of image 0: empty
    us = us / us.sum(-1, keepdim=True)
    exact, padded = hyperedge_incidence(us), padded_incidence(us)
    assert 4 not in exact[1].tolist()
    conv = build_conv("vihgnn", 8, 12, groups=2).double().train(training)
    state = copy.deepcopy(conv.state_dict())
    x = torch.randn(b * n, 8, dtype=torch.float64)
    ref = vihgnn_step(conv, x, exact, b * k)
    for select in (True, False):
        conv.load_state_dict(state)
        conv.zero_grad()
        got = vihgnn_step(conv, x, padded, b * k, select, monkeypatch)
        for a, r in zip(got, ref):
            torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_pyg_hypergraph_conv_on_the_padded_incidence():
    # what the pyg:HypergraphConv adapter does with the padding entries: one zero node
    # and one hyperedge appended, the extra node's row dropped; then PyG's own layer
    # gives what it gives on the exact incidence
    from torch_geometric.nn import HypergraphConv

    torch.manual_seed(0)
    us = torch.from_numpy(rows(9, 2, 9, 4))
    layer = HypergraphConv(8, 6).double()
    x = torch.randn(18, 8, dtype=torch.float64)
    want = layer(x, hyperedge_incidence(us), num_edges=8)
    got = layer(torch.cat([x, x.new_zeros(1, 8)]), padded_incidence(us), num_edges=9)[:18]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_pyg_adapter_gives_the_exact_result_on_either_incidence():
    # the adapter itself on the padded (off the CPU) and the exact (CPU) incidence, against
    # PyG's own layer on the exact one
    torch.manual_seed(0)
    us = torch.from_numpy(rows(9, 2, 9, 4))
    module = build_conv("pyg:HypergraphConv", 8, 6).double().eval()
    x = torch.randn(18, 8, dtype=torch.float64)
    with torch.no_grad():
        want = module.act(module.norm(module.conv(x, hyperedge_incidence(us), num_edges=8)))
        for incidence in (padded_incidence(us), hyperedge_incidence(us)):
            got = module(x, incidence, num_hyperedges=8)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
