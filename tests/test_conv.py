"""The four ViG graph convolutions against an independent dense float64 reference.

The reference below is written from docs/architecture.md ("Graph convolutions", "Layers") with
plain loops over explicit neighbour lists and an explicit per-group matmul; it shares no
code with vig_pyg.conv (it only reads the layer's parameters).
"""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vig_pyg.conv import (GroupedProjection, MRConv, ViGEdgeConv, ViGGINConv, ViGSAGEConv,
                          build_conv)
from vig_pyg import fast_paths
from vig_pyg.graph import fixed_degree, knn_edges

C, OUT, GROUPS = 8, 16, 4
#: The dense paths of the Grapher convolutions: with both off, PyG's propagate runs.
DENSE = ("fixed_degree", "padded")
BN_EPS, BN_MOMENTUM = 1e-5, 0.1
LAYERS = {"mr": MRConv, "edge": ViGEdgeConv, "sage": ViGSAGEConv, "gin": ViGGINConv}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------ the reference
def ref_gelu(y):
    return 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))


def ref_projection(rows, p, training):
    """Grouped 1x1 conv (+bias) -> BatchNorm -> GELU on rows [M, Cin], float64.

    ``p``: dict of float64 tensors w [out, cin/g], b [out], gamma, beta, rm, rv.
    Returns (out, batch mean, unbiased batch var) (the statistics for running-stat checks).
    """
    w = p["w"]
    out_ch, cin_g = w.shape
    groups = rows.size(1) // cin_g
    og = out_ch // groups
    cols = []
    for g in range(groups):
        xin = rows[:, g * cin_g:(g + 1) * cin_g]
        for o in range(g * og, (g + 1) * og):
            cols.append((xin * w[o]).sum(1) + p["b"][o])
    y = torch.stack(cols, dim=1)
    mean = y.mean(0)
    var_b = ((y - mean) ** 2).mean(0)
    var_u = var_b * y.size(0) / max(y.size(0) - 1, 1)
    if training:
        yn = (y - mean) / torch.sqrt(var_b + BN_EPS)
    else:
        yn = (y - p["rm"]) / torch.sqrt(p["rv"] + BN_EPS)
    return ref_gelu(yn * p["gamma"] + p["beta"]), mean.detach(), var_u.detach()


def proj_params(proj):
    conv, bn = proj[0], proj[1]
    return {"w": conv.weight.detach().double()[:, :, 0, 0].clone().requires_grad_(),
            "b": conv.bias.detach().double().clone().requires_grad_(),
            "gamma": bn.weight.detach().double().clone().requires_grad_(),
            "beta": bn.bias.detach().double().clone().requires_grad_(),
            "rm": bn.running_mean.detach().double().clone(),
            "rv": bn.running_var.detach().double().clone()}


def reference(name, layer, x_src, x_dst, nbrs, training):
    """Returns (output [N, out], {param name: leaf}, {projection prefix: (mean, var)})."""
    n = x_dst.size(0)
    stats, leaves = {}, {}
    if name == "sage":
        p1, p2 = proj_params(layer.nn1), proj_params(layer.nn2)
        leaves.update({f"nn1.{k}": v for k, v in p1.items()})
        leaves.update({f"nn2.{k}": v for k, v in p2.items()})
    else:
        p = proj_params(layer.nn)
        leaves.update({f"nn.{k}": v for k, v in p.items()})
    if name == "mr":
        m = torch.stack([torch.stack([x_src[j] - x_dst[i] for j in nbrs[i]]).max(0).values
                         for i in range(n)])
        z = torch.zeros(n, 2 * x_dst.size(1), dtype=torch.float64)
        z = z.index_put((torch.arange(n)[:, None], torch.arange(0, z.size(1), 2)[None]), x_dst)
        z = z.index_put((torch.arange(n)[:, None], torch.arange(1, z.size(1), 2)[None]), m)
        out, mu, var = ref_projection(z, p, training)
        stats["nn"] = (mu, var)
    elif name == "edge":
        rows, owner = [], []
        for i in range(n):
            for j in nbrs[i]:
                rows.append(torch.cat([x_dst[i], x_src[j] - x_dst[i]]))
                owner.append(i)
        h, mu, var = ref_projection(torch.stack(rows), p, training)
        stats["nn"] = (mu, var)
        out = torch.stack([torch.stack([h[e] for e in range(len(owner)) if owner[e] == i])
                           .max(0).values for i in range(n)])
    elif name == "sage":
        edges = [(i, j) for i in range(n) for j in nbrs[i]]
        h, mu1, var1 = ref_projection(torch.stack([x_src[j] for _, j in edges]), p1, training)
        a = torch.stack([torch.stack([h[e] for e, (t, _) in enumerate(edges) if t == i])
                         .max(0).values for i in range(n)])
        out, mu2, var2 = ref_projection(torch.cat([x_dst, a], dim=1), p2, training)
        stats["nn1"], stats["nn2"] = (mu1, var1), (mu2, var2)
    elif name == "gin":
        eps = layer.eps.detach().double().clone().requires_grad_()
        leaves["eps"] = eps
        s = torch.stack([sum(x_src[j] for j in nbrs[i]) for i in range(n)])
        out, mu, var = ref_projection((1 + eps) * x_dst + s, p, training)
        stats["nn"] = (mu, var)
    return out, leaves, stats


# ------------------------------------------------------------------------ helpers
def edge_index_of(nbrs, shuffle=False, seed=0):
    pairs = [(j, i) for i in range(len(nbrs)) for j in nbrs[i]]
    if shuffle:
        random.Random(seed).shuffle(pairs)
    return torch.tensor(pairs, dtype=torch.long).t().contiguous()


def random_nbrs(n_dst, n_src, degrees, seed):
    rng = random.Random(seed)
    return [rng.sample(range(n_src), d) for d in degrees]


def randomize(layer, seed=0):
    """Random parameters and running statistics, so that biases, BN affine terms, the
    running statistics and gin's eps all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(layer.named_parameters()) + list(layer.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("weight") and t.dim() == 1:  # BN gamma
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 if t.dim() > 1 else 0.3))
    return layer


def make_layer(name, seed=0, **kw):
    torch.manual_seed(seed)
    return randomize(LAYERS[name](C, OUT, groups=GROUPS, **kw), seed).double()


def run_layer(layer, x_src, x_dst, edge_index, bipartite, grad_out):
    xs = x_src.clone().requires_grad_()
    xd = x_dst.clone().requires_grad_() if bipartite else xs
    out = layer((xs, xd) if bipartite else xs, edge_index)
    layer.zero_grad()
    out.backward(grad_out)
    grads = {"x_src": xs.grad} if not bipartite else {"x_src": xs.grad, "x_dst": xd.grad}
    return out.detach(), grads


# graphs: (name, n_dst, n_src (None: same nodes), degrees, shuffle)
GRAPHS = {
    "fixed": (10, None, [3] * 10, False),
    "ragged": (10, None, [1, 4, 2, 3, 5, 1, 2, 4, 3, 2], False),
    "ragged_shuffled": (9, None, [2, 3, 1, 4, 2, 2, 3, 1, 5], True),
    "bipartite_fixed": (9, 5, [3] * 9, False),
    "bipartite_ragged": (8, 6, [1, 3, 2, 4, 2, 1, 3, 2], True),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("graph", list(GRAPHS))
@pytest.mark.parametrize("name", list(LAYERS))
def test_against_dense_reference(name, graph, training, monkeypatch):
    n_dst, n_src, degrees, shuffle = GRAPHS[graph]
    bipartite = n_src is not None
    n_src = n_src or n_dst
    nbrs = random_nbrs(n_dst, n_src, degrees, seed=len(graph))
    ei = edge_index_of(nbrs, shuffle)
    expect_fast = graph.endswith("fixed")
    assert (fixed_degree(ei, n_dst) is not None) == expect_fast

    gen = torch.Generator().manual_seed(1)
    x_src = torch.randn(n_src, C, generator=gen, dtype=torch.float64)
    x_dst = torch.randn(n_dst, C, generator=gen, dtype=torch.float64) if bipartite else x_src
    grad_out = torch.randn(n_dst, OUT, generator=gen, dtype=torch.float64)

    layer = make_layer(name).train(training)
    before = {k: v.clone() for k, v in layer.state_dict().items() if "running" in k}
    out, grads = run_layer(layer, x_src, x_dst, ei, bipartite, grad_out)

    xs = x_src.clone().requires_grad_()
    xd = x_dst.clone().requires_grad_() if bipartite else xs
    ref, leaves, stats = reference(name, layer, xs, xd, nbrs, training)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-9, atol=1e-10)

    ref_grads = torch.autograd.grad(ref, [xs] + ([xd] if bipartite else [])
                                    + [v for v in leaves.values() if v.requires_grad],
                                    grad_out)
    torch.testing.assert_close(grads["x_src"], ref_grads[0], rtol=1e-8, atol=1e-10)
    if bipartite:
        torch.testing.assert_close(grads["x_dst"], ref_grads[1], rtol=1e-8, atol=1e-10)
    params = dict(layer.named_parameters())
    trainable = [k for k, v in leaves.items() if v.requires_grad]
    for key, g in zip(trainable, ref_grads[1 + bipartite:]):
        pkey = {"w": "0.weight", "b": "0.bias", "gamma": "1.weight", "beta": "1.bias"}
        pname = key if key == "eps" else key.rsplit(".", 1)[0] + "." + pkey[key.rsplit(".", 1)[1]]
        torch.testing.assert_close(params[pname].grad.reshape(g.shape), g, rtol=1e-8,
                                   atol=1e-10, msg=lambda m: f"{pname}: {m}")

    if not training:  # inference without autograd: per-edge rows go in chunks of 2 targets
        from vig_pyg.conv import functional

        monkeypatch.setattr(functional, "CHUNK_BYTES_PER_THREAD", 1)
        with torch.no_grad():
            out_ng = layer((x_src, x_dst) if bipartite else x_src, ei)
        torch.testing.assert_close(out_ng, ref.detach(), rtol=1e-9, atol=1e-10)

    # BatchNorm running statistics: momentum 0.1, unbiased variance, over nodes or edges
    for prefix, (mu, var) in stats.items():
        rm, rv = before[f"{prefix}.1.running_mean"], before[f"{prefix}.1.running_var"]
        now = layer.state_dict()
        if training:
            torch.testing.assert_close(now[f"{prefix}.1.running_mean"],
                                       (1 - BN_MOMENTUM) * rm + BN_MOMENTUM * mu)
            torch.testing.assert_close(now[f"{prefix}.1.running_var"],
                                       (1 - BN_MOMENTUM) * rv + BN_MOMENTUM * var)
        else:
            torch.testing.assert_close(now[f"{prefix}.1.running_mean"], rm)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bipartite", [False, True])
@pytest.mark.parametrize("name", list(LAYERS))
def test_fast_path_equals_generic(name, bipartite, dtype):
    """Same layer, same knn graph: fixed-degree dense path vs propagate()."""
    torch.manual_seed(0)
    fmap = torch.randn(2, C, 5, 5, dtype=dtype)
    x = fmap.permute(0, 2, 3, 1).reshape(-1, C)
    if bipartite:
        keys = F.avg_pool2d(fmap, 2)
        ei = knn_edges(fmap, 4, keys=keys)
        x_src = keys.permute(0, 2, 3, 1).reshape(-1, C)
    else:
        ei = knn_edges(fmap, 5, dilation=2)
        x_src = x
    assert fixed_degree(ei, x.size(0)) is not None
    layer = randomize(LAYERS[name](C, OUT, groups=GROUPS)).to(dtype).train()
    grad_out = torch.randn(x.size(0), OUT, dtype=dtype)
    results = []
    for fast in (True, False):
        with fast_paths.disabled(*(() if fast else DENSE)):
            out, grads = run_layer(layer, x_src, x, ei, bipartite, grad_out)
        pgrads = {k: p.grad.clone() for k, p in layer.named_parameters()}
        results.append((out, grads, pgrads))
    if dtype == torch.float64:
        (o1, g1, p1), (o2, g2, p2) = results
        torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-12)
        for k in g1:
            torch.testing.assert_close(g1[k], g2[k], rtol=1e-10, atol=1e-12)
        for k in p1:
            torch.testing.assert_close(p1[k], p2[k], rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{k}: {m}")
        return
    # float32: both paths against the float64 generic result. edge and sage evaluate the
    # same formula in another order (per node, then gathered), and behind two training-mode
    # BatchNorms many gradients are small differences of large terms (the conv biases'
    # cancel to ~0), whose float32 rounding noise depends on that order. So each tensor is
    # held to 2e-3 of its own largest entry plus 2e-5 of the layer's largest gradient
    # (float32 rounding of sums over the ~400 edge rows of these graphs).
    layer.double()
    with fast_paths.disabled(*DENSE):
        truth = run_layer(layer, x_src.double(), x.double(), ei, bipartite, grad_out.double())
    truth = (truth[0], truth[1], {k: p.grad for k, p in layer.named_parameters()})
    floor = 2e-5 * max(t.abs().max().item() for t in [*truth[1].values(),
                                                        *truth[2].values()])
    for out, grads, pgrads in results:
        pairs = [(out, truth[0], "out")] + [(grads[k], truth[1][k], k) for k in grads] + [
            (pgrads[k], truth[2][k], k) for k in pgrads]
        for got, want, key in pairs:
            err = (got.double() - want).abs().max().item()
            assert err <= 2e-3 * want.abs().max().item() + floor, (key, err)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_gradcheck(name, fast):
    torch.manual_seed(0)
    layer = randomize(LAYERS[name](4, 8, groups=2)).double().train()
    x_src = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    x_dst = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    nbrs = random_nbrs(6, 7, [3] * 6, seed=3)
    ei = edge_index_of(nbrs)
    with fast_paths.disabled(*(() if fast else DENSE)):
        assert torch.autograd.gradcheck(lambda a, b: layer((a, b), ei), (x_src, x_dst))
        ei_self = knn_edges(x_src.detach(), 3)
        assert torch.autograd.gradcheck(lambda a: layer(a, ei_self), (x_src,))


# ------------------------------------------------------------- PyG's own operators
class _Relative(torch.nn.Module):
    """[x_i ; x_j - x_i] -> x_j - x_i: turns PyG's EdgeConv into max_j (x_j - x_i)."""

    def forward(self, h):
        return h[:, h.size(1) // 2:]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("graph", ["fixed", "ragged_shuffled", "bipartite_ragged"])
def test_edge_gin_mr_match_pyg(graph, training):
    from torch_geometric.nn import EdgeConv, GINConv

    n_dst, n_src, degrees, shuffle = GRAPHS[graph]
    bipartite = n_src is not None
    n_src = n_src or n_dst
    ei = edge_index_of(random_nbrs(n_dst, n_src, degrees, seed=7), shuffle)
    x_src = torch.randn(n_src, C, dtype=torch.float64)
    x_dst = torch.randn(n_dst, C, dtype=torch.float64) if bipartite else x_src
    x = (x_src, x_dst) if bipartite else x_src

    # edge == PyG EdgeConv(nn = the same grouped projection, aggr="max"), BN over edges
    # (PyG resets the nn it is given, so the weights are loaded afterwards)
    edge = make_layer("edge").train(training)
    state = {k: v.clone() for k, v in edge.state_dict().items()}
    ours = edge(x, ei)
    theirs = EdgeConv(nn=edge.nn, aggr="max")
    edge.load_state_dict(state)  # the same weights and running statistics again
    torch.testing.assert_close(ours, theirs(x, ei), rtol=1e-12, atol=1e-12)

    # gin == PyG GINConv(nn = the same projection, train_eps=True) with the same eps
    gin = make_layer("gin", seed=1).train(training)
    state = {k: v.clone() for k, v in gin.state_dict().items()}
    ours = gin(x, ei)
    theirs = GINConv(nn=gin.nn, train_eps=True).double()
    gin.load_state_dict(state)
    with torch.no_grad():
        theirs.eps.copy_(gin.eps)
    assert gin.eps.abs().item() > 0
    torch.testing.assert_close(ours, theirs(x, ei), rtol=1e-12, atol=1e-12)

    # mr == projection of interleave(x_i, EdgeConv(nn=take x_j - x_i, aggr="max"))
    mr = make_layer("mr", seed=2).train(training)
    state = {k: v.clone() for k, v in mr.state_dict().items()}
    ours = mr(x, ei)
    mr.load_state_dict(state)
    m = EdgeConv(nn=_Relative(), aggr="max")(x, ei)
    torch.testing.assert_close(ours, mr.nn(torch.stack([x_dst, m], 2).flatten(1)),
                               rtol=1e-12, atol=1e-12)


def dense_weight(conv):
    """The grouped 1x1 conv weight [out, in/g, 1, 1] as a dense block-diagonal [out, in]."""
    w = conv.weight[:, :, 0, 0]
    out_ch, cin_g = w.shape
    og = out_ch // conv.groups
    dense = torch.zeros(out_ch, cin_g * conv.groups, dtype=w.dtype)
    for g in range(conv.groups):
        dense[g * og:(g + 1) * og, g * cin_g:(g + 1) * cin_g] = w[g * og:(g + 1) * og]
    return dense


def folded(proj):
    """Eval-mode conv + BN as one affine map (W, b)."""
    conv, bn = proj[0], proj[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return dense_weight(conv) * scale[:, None], (conv.bias - bn.running_mean) * scale + bn.bias


@pytest.mark.parametrize("graph", ["fixed", "ragged", "bipartite_ragged"])
def test_sage_matches_pyg_sageconv(graph):
    """Eval mode, act=relu: ours == relu(SAGEConv(aggr="max", project=True)) with
    lin = folded nn1, lin_r / lin_l = the x_i / a_i halves of folded nn2."""
    from torch_geometric.nn import SAGEConv

    n_dst, n_src, degrees, shuffle = GRAPHS[graph]
    bipartite = n_src is not None
    n_src = n_src or n_dst
    ei = edge_index_of(random_nbrs(n_dst, n_src, degrees, seed=11), shuffle)
    x_src = torch.randn(n_src, C, dtype=torch.float64)
    x_dst = torch.randn(n_dst, C, dtype=torch.float64) if bipartite else x_src
    x = (x_src, x_dst) if bipartite else x_src
    sage = make_layer("sage", act="relu").eval()
    theirs = SAGEConv(C, OUT, aggr="max", project=True).double()
    with torch.no_grad():
        w1, b1 = folded(sage.nn1)
        w2, b2 = folded(sage.nn2)
        theirs.lin.weight.copy_(w1)
        theirs.lin.bias.copy_(b1)
        theirs.lin_r.weight.copy_(w2[:, :C])
        theirs.lin_l.weight.copy_(w2[:, C:])
        theirs.lin_l.bias.copy_(b2)
        torch.testing.assert_close(sage(x, ei), theirs(x, ei).relu(), rtol=1e-10,
                                   atol=1e-12)


# ------------------------------------------------------------- layout, size, MACs
def test_checkpoint_layout_and_init():
    c, o = 192, 384
    expected = {
        "mr": {"nn.0.weight": (o, 2 * c // 4, 1, 1), "nn.0.bias": (o,), "nn.1.weight": (o,)},
        "edge": {"nn.0.weight": (o, 2 * c // 4, 1, 1), "nn.0.bias": (o,)},
        "sage": {"nn1.0.weight": (c, c // 4, 1, 1), "nn1.1.bias": (c,),
                 "nn2.0.weight": (o, 2 * c // 4, 1, 1), "nn2.1.running_var": (o,)},
        "gin": {"nn.0.weight": (o, c // 4, 1, 1), "eps": (1,)},
    }
    for name, shapes in expected.items():
        layer = build_conv(name, c, o)
        sd = layer.state_dict()
        prefixes = ["nn1", "nn2"] if name == "sage" else ["nn"]
        keys = {f"{p}.{s}" for p in prefixes for s in
                ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                 "1.running_var", "1.num_batches_tracked")}
        assert set(sd) == keys | ({"eps"} if name == "gin" else set())
        for key, shape in shapes.items():
            assert tuple(sd[key].shape) == shape, key
        for p in prefixes:
            proj = getattr(layer, p)
            assert isinstance(proj, GroupedProjection) and isinstance(proj[2], torch.nn.GELU)
            w = proj[0].weight
            assert torch.all(proj[0].bias == 0) and torch.all(proj[1].weight == 1)
            assert torch.all(proj[1].bias == 0)
            # Kaiming normal (fan_in = in/groups, gain sqrt 2)
            assert abs(w.std().item() / math.sqrt(2 / w[0].numel()) - 1) < 0.05
        if name == "gin":
            assert layer.eps.item() == 0 and layer.eps.requires_grad


def vig_ti_k_schedule(depth=12, k=9):
    return [int(v) for v in torch.linspace(k, 2 * k, depth)]


def conv_macs(layer, n, k):
    x = torch.randn(n, layer.in_channels)
    ei = torch.stack([torch.randint(0, n, (n * k,)), torch.arange(n).repeat_interleave(k)])
    layer.eval()
    # the release's evaluation (and count); the cheaper one: tests/test_fast_paths.py
    with fast_paths.disabled(*DENSE), torch.no_grad(), \
            FlopCounterMode(display=False) as counter:
        layer(x, ei)
    return counter.get_total_flops() // 2


def test_vig_ti_parameter_counts_and_macs():
    """At vig_ti width (C 192 -> 384, groups 4; "docs" = docs/architecture.md), per Grapher:
    projection 2C -> 2C: 384*384/4 weights + 384 bias + 2*384 BN = 38016 (mr, edge);
    sage adds nn1 C -> C: 192*192/4 + 192 + 2*192 = 9792, so 12 blocks add 0.118 M
    (docs: 7.30 - 7.18 = 0.12 M); gin's C -> 2C projection has 192*384/4 = 18432 fewer
    weights than mr's, plus eps: 38016 - 18432 + 1 = 19585, 12 blocks: -0.221 M
    (docs: 6.96 - 7.18 = -0.22 M); edge = mr (docs: 7.18 both).
    MACs on 196 nodes with k_i = int(linspace(9, 18, 12)) (sum 157): mr 196*384*96 per
    block; edge projects every edge: + 196*36864*(157 - 12) = 1.048 G (docs: 2.35 - 1.30);
    sage + nn1 on every edge: 196*9216*157 = 0.284 G (docs: 1.58 - 1.30); gin 196*18432
    fewer per block: -0.043 G (docs: 1.26 - 1.30)."""
    c, o, blocks = 192, 384, 12
    params = {n: sum(p.numel() for p in build_conv(n, c, o).parameters()) for n in LAYERS}
    assert params["mr"] == params["edge"] == o * (2 * c // 4) + o + 2 * o == 38016
    spec_params = {"mr": 7.18, "edge": 7.18, "sage": 7.30, "gin": 6.96}
    for n in LAYERS:
        delta = (params[n] - params["mr"]) * blocks / 1e6
        assert abs(delta - (spec_params[n] - spec_params["mr"])) <= 0.0101, (n, delta)
    assert params["gin"] == params["mr"] - c * o // 4 + 1

    ks = vig_ti_k_schedule()
    assert ks == [9, 9, 10, 11, 12, 13, 13, 14, 15, 16, 17, 18]
    spec_gmacs = {"mr": 1.30, "edge": 2.35, "sage": 1.58, "gin": 1.26}
    macs = {}
    for n in LAYERS:
        layer = build_conv(n, c, o)
        per_k = {k: conv_macs(layer, 196, k) for k in set(ks)}
        macs[n] = sum(per_k[k] for k in ks)
    assert macs["mr"] == blocks * 196 * o * (2 * c // 4)
    for n in LAYERS:
        delta = (macs[n] - macs["mr"]) / 1e9
        assert abs(delta - (spec_gmacs[n] - spec_gmacs["mr"])) <= 0.0101, (n, delta)


# ------------------------------------------------------------- edge cases
def test_isolated_targets_and_errors():
    layer = MRConv(C, OUT).double().eval()
    x = torch.randn(4, C, dtype=torch.float64)
    ei = torch.tensor([[1, 2, 3], [0, 0, 1]])  # targets 2 and 3 have no neighbours
    out = layer(x, ei)
    expect = layer.nn(torch.stack([x, torch.zeros_like(x)], 2).flatten(1))
    torch.testing.assert_close(out[2:], expect[2:])
    with pytest.raises(ValueError, match=r"\[num_nodes, 8\]"):
        layer(torch.randn(4, 5, dtype=torch.float64), ei)
    with pytest.raises(TypeError, match="pair"):
        layer([x, x, x], ei)
    with pytest.raises(ValueError, match="divisible"):
        MRConv(5, 12, groups=4)  # 2 * 5 input channels in 4 groups


def test_projection_rows_view_is_grouped_and_copy_free():
    proj = GroupedProjection(8, 12, groups=4).eval()
    x = torch.randn(10, 8)
    y = proj(x)
    assert y.shape == (10, 12)
    assert y._base is not None  # a view of the channels-last map, not a copy
    with torch.no_grad():  # same as the 4-D conv path on an NCHW map
        ref = proj(x.t().reshape(1, 8, 10, 1))[0, :, :, 0].t()
    torch.testing.assert_close(y, ref)
    with FlopCounterMode(display=False) as counter:
        proj(x)
    assert counter.get_total_flops() == 2 * 10 * 12 * 8 // 4


# ------------------------------------------------------------- the fixed-degree primitives
@pytest.mark.parametrize("chunk_bytes", [1, 200, None], ids=["1-target", "few", "default"])
@pytest.mark.parametrize("k", [1, 4, 300])
def test_fixed_degree_reductions_match_plain_torch(monkeypatch, k, chunk_bytes):
    """gather_max / gather_sum / neighbour_max, chunked or not, k above the uint8 range
    too, against plain gathers with autograd (forward and input gradients)."""
    from vig_pyg.conv import functional

    if chunk_bytes is not None:
        monkeypatch.setattr(functional, "CHUNK_BYTES_PER_THREAD", chunk_bytes)
    gen = torch.Generator().manual_seed(k)
    n, m, c = 7, max(k, 5) + 3, 6
    index = torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(n)]).view(-1)
    x = torch.randn(m, c, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(n, c, generator=gen, dtype=torch.float64)
    rows = torch.randn(n * k, c, generator=gen, dtype=torch.float64, requires_grad=True)
    cases = [
        (lambda: functional.gather_max(x, index, k),
         lambda: torch.stack([x[index[i * k:(i + 1) * k]].max(0).values for i in range(n)]),
         x),
        (lambda: functional.gather_sum(x, index, k),
         lambda: torch.stack([x[index[i * k:(i + 1) * k]].sum(0) for i in range(n)]), x),
        (lambda: functional.neighbour_max(rows, k),
         lambda: torch.stack([rows[i * k:(i + 1) * k].max(0).values for i in range(n)]),
         rows),
    ]
    for ours, plain, leaf in cases:
        out, expect = ours(), plain()
        torch.testing.assert_close(out, expect, rtol=0, atol=1e-12)
        g1, = torch.autograd.grad(out, leaf, grad)
        g2, = torch.autograd.grad(expect, leaf, grad)
        torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(ours(), expect.detach(), rtol=0, atol=1e-12)


def test_layer_with_many_chunks_equals_generic(monkeypatch):
    from vig_pyg.conv import functional

    monkeypatch.setattr(functional, "CHUNK_BYTES_PER_THREAD", 300)  # a few targets each
    torch.manual_seed(0)
    fmap = torch.randn(3, C, 5, 5, dtype=torch.float64)
    x = fmap.permute(0, 2, 3, 1).reshape(-1, C).requires_grad_()
    ei = knn_edges(fmap, 6)
    for name in LAYERS:
        layer = randomize(LAYERS[name](C, OUT, groups=GROUPS)).double()
        outs = []
        for fast in (True, False):
            with fast_paths.disabled(*(() if fast else DENSE)):
                out = layer(x, ei)
                outs.append((out, torch.autograd.grad(out.square().sum(), x)[0]))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-10, atol=1e-12)
        layer.eval()
        with torch.no_grad():
            chunked = layer(x, ei)
            with fast_paths.disabled(*DENSE):
                torch.testing.assert_close(chunked, layer(x, ei), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["mr", "edge", "sage", "gin"])
def test_reset_parameters_reaches_every_projection(name):
    layer = make_layer(name)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(0.5)
        for b in layer.buffers():
            if b.is_floating_point():
                b.fill_(0.5)
    layer.reset_parameters()
    projections = [m for m in layer.modules() if isinstance(m, torch.nn.Sequential)]
    assert projections
    for proj in projections:
        conv, bn = proj[0], proj[1]
        assert torch.count_nonzero(conv.bias) == 0 and not torch.all(conv.weight == 0.5)
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    if name == "gin":
        assert float(layer.eps.detach()) == 0.0
