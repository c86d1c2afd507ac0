"""ClusterViG's clustered kNN (SPEC, "More graphs of the family"): the k-means, the builder
``clustered_knn`` and the aggregator ``cluster_mr``, each against a float64 brute force
written here from SPEC's rule with plain loops (the GATv2 part through PyG's own GATv2Conv
with the same weights); eval determinism, bad input, tiny models."""
from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.nn import GATv2Conv

from vig_pyg import fast_paths
from vig_pyg.conv import ClusterMRConv, build_conv
from vig_pyg.errors import VigPygError
from vig_pyg.graph import fixed_degree, graph_builder
from vig_pyg.graph.builders.base import padded_table_edges
from vig_pyg.graph.builders.clustered_knn import (clustered_knn_edges, initial_centres,
                                                  partition_knn)
from vig_pyg.graph.kmeans import batched_kmeans, kmeans
from vig_pyg.models import create_model

from graph_helpers import neighbour_lists, trains_then_evaluates_deterministically

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SMALL_ISO = dict(num_classes=3, k=3, img_size=32, channels=32, depth=4, stem_stride=4)
SMALL_PYR = dict(num_classes=3, k=3, img_size=64, channels=[16, 32, 48, 64],
                 blocks=[1, 1, 1, 1])
BN_EPS = 1e-5


# ------------------------------------------------------------------ brute force from SPEC
def sqdist(a, b):
    return sum((u - v) ** 2 for u, v in zip(a, b))


def brute_kmeans(x, init, max_iter=25, tol=1e-3):
    """Lloyd on rows ``x`` (list of lists) from centres ``x[init]``: returns (labels,
    centres, inertia, shifts), ``shifts`` the mean centre movement of every iteration run."""
    k = len(init)
    centres = [list(x[i]) for i in init]
    labels, shifts = None, []
    for _ in range(max_iter):
        labels = []
        for p in x:
            best, best_d = 0, math.inf
            for j, c in enumerate(centres):
                d = sqdist(p, c)
                if d < best_d:          # strict: a tie keeps the lower centre
                    best, best_d = j, d
            labels.append(best)
        new = []
        for j in range(k):
            members = [p for p, lab in zip(x, labels) if lab == j]
            new.append([sum(col) / len(members) for col in zip(*members)] if members
                       else [0.0] * len(x[0]))
        shifts.append(sum(math.sqrt(sqdist(a, b)) for a, b in zip(new, centres)) / k)
        centres = new
        if shifts[-1] < tol:
            break
    inertia = sum(sqdist(p, centres[lab]) for p, lab in zip(x, labels))
    return labels, centres, inertia, shifts


def brute_restarts(x, inits, max_iter=25, tol=1e-3):
    """The restart rule: the run of lowest inertia, the first on a tie."""
    runs = [brute_kmeans(x, init, max_iter, tol) for init in inits]
    best = 0
    for r, run in enumerate(runs):
        if run[2] < runs[best][2]:
            best = r
    return runs[best], best, runs


def brute_partition_knn(x, labels, k):
    """{centre: neighbours} of node rows ``x [B, N, C]`` (tensor) with partitions
    ``labels [B, N]``: the min(k, |P|) nearest of the own partition by squared L2 of the
    L2-normalised rows, ascending, ties to the lower index; nodes numbered b*N + p."""
    b, n, _ = x.shape
    out = {}
    for im in range(b):
        rows = x[im].tolist()
        unit = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]
        lab = labels[im].tolist()
        for i in range(n):
            cand = [j for j in range(n) if lab[j] == lab[i]]
            cand.sort(key=lambda j: (sqdist(unit[i], unit[j]), j))
            out[im * n + i] = [im * n + j for j in cand[:k]]
    return out


def rows_of(x):
    """[B, C, H, W] -> [B, H*W, C] (node r*W + c)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


# ------------------------------------------------------------------ k-means
@pytest.mark.parametrize("n,c,k,seed", [(12, 3, 2, 0), (30, 5, 4, 1), (17, 2, 5, 2),
                                        (9, 4, 9, 3)])
def test_kmeans_matches_brute_force(n, c, k, seed):
    x = randn(n, c, seed=seed)
    init = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    labels, centres, inertia = kmeans(x, init)
    ref_labels, ref_centres, ref_inertia, _ = brute_kmeans(x.tolist(), init.tolist())
    assert labels.tolist() == ref_labels
    torch.testing.assert_close(centres, torch.tensor(ref_centres, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    assert inertia.dim() == 0
    assert inertia.item() == pytest.approx(ref_inertia, rel=1e-12)


def slow_converging():
    """Nodes evenly spread along a line, all three centres starting at one end: Lloyd
    moves the centres for a dozen iterations."""
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.linspace(0, 1, 40, dtype=torch.float64).unsqueeze(1),
                   0.01 * torch.randn(40, 1, generator=g, dtype=torch.float64)], 1)
    return x, torch.tensor([0, 1, 2])


def test_kmeans_stop_rule_and_cap():
    x, init = slow_converging()
    _, _, _, shifts = brute_kmeans(x.tolist(), init.tolist(), max_iter=100, tol=0.0)
    assert all(v > 0 for v in shifts[:6]), "the data must need several iterations"
    seen = set()
    # the cap, then the threshold just above / below the movement of iteration 3
    settings = [(1, 0.0), (2, 0.0), (3, 0.0), (100, 0.0),
                (25, shifts[2] * (1 + 1e-9)), (25, shifts[2] * (1 - 1e-9)), (25, 1e9),
                (25, 1e-3), (25, 1e-12)]
    for max_iter, tol in settings:
        labels, centres, inertia = kmeans(x, init, max_iter=max_iter, tol=tol)
        ref_labels, ref_centres, ref_inertia, ref_shifts = brute_kmeans(
            x.tolist(), init.tolist(), max_iter, tol)
        assert labels.tolist() == ref_labels, (max_iter, tol)
        torch.testing.assert_close(centres, torch.tensor(ref_centres, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
        assert inertia.item() == pytest.approx(ref_inertia, rel=1e-12)
        seen.add((len(ref_shifts), round(ref_inertia, 9)))
    runs = {steps for steps, _ in seen}
    # the cap and both sides of the threshold gave different runs: the test can fail
    assert {1, 2, 3, 4, 100}.issubset(runs) and len(runs) >= 6
    # in a batch every image stops on its own test: image 0 stops after iteration 3 while
    # image 1 (the same nodes scaled by 100, moving 100 times more) goes on
    tol = shifts[2] * (1 + 1e-9)
    batch = torch.stack([x, 100 * x])
    labels, centres, _ = batched_kmeans(batch, torch.stack([init, init]), 25, tol)
    steps = []
    for im in range(2):
        ref_labels, ref_centres, _, ref_shifts = brute_kmeans(batch[im].tolist(),
                                                              init.tolist(), 25, tol)
        steps.append(len(ref_shifts))
        assert labels[im].tolist() == ref_labels
        torch.testing.assert_close(centres[im], torch.tensor(ref_centres, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-9)
    assert steps[0] == 3 < steps[1]


def test_kmeans_empty_cluster_is_zero_and_ties_go_to_the_lower_centre():
    # nodes 0 and 5 are equal: centres 1 and 2 start equal, every tie goes to centre 1,
    # centre 2 is empty from the first iteration and stays at zero (far from every node)
    x = randn(10, 3, seed=4) + 10.0
    x[5] = x[0]
    init = torch.tensor([7, 0, 5])
    labels, centres, inertia = kmeans(x, init)
    ref_labels, ref_centres, ref_inertia, _ = brute_kmeans(x.tolist(), init.tolist())
    assert labels.tolist() == ref_labels
    assert 2 not in ref_labels
    assert torch.equal(centres[2], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(centres, torch.tensor(ref_centres, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    assert inertia.item() == pytest.approx(ref_inertia, rel=1e-12)
    # an exact tie between two distinct centres: 1-D nodes 1, 3 as centres, node 2 between
    x = torch.tensor([[3.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    for init in ([0, 1], [1, 0]):
        labels, _, _ = kmeans(x, torch.tensor(init), max_iter=1)
        assert labels[2].item() == 0 == brute_kmeans(x.tolist(), init, 1)[0][2]


def test_batched_kmeans_is_per_image_and_restart_rule():
    b, n, c, k = 6, 20, 3, 3
    x = randn(b, n, c, seed=7)
    g = torch.Generator().manual_seed(3)
    inits = torch.stack([torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b)])
                         for _ in range(2)])                        # [R, B, K]
    inits[1, 0] = inits[0, 0].flip(0)   # image 0: the same centres in another order, a tie
    labels, centres, inertia = batched_kmeans(x, inits)
    chosen = []
    for im in range(b):
        (ref_labels, ref_centres, ref_inertia, _), best, runs = brute_restarts(
            x[im].tolist(), inits[:, im].tolist())
        chosen.append(best)
        assert labels[im].tolist() == ref_labels
        torch.testing.assert_close(centres[im], torch.tensor(ref_centres, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
        assert inertia[im].item() == pytest.approx(ref_inertia, rel=1e-12)
    assert chosen[0] == 0   # the tie: the first restart, in its centre order
    assert set(chosen) == {0, 1}, "both restarts must win somewhere for the test to bite"
    # each image as if alone: the batch does not change a result (each stops on its own)
    for im in range(b):
        alone = batched_kmeans(x[im:im + 1], inits[:, im:im + 1])
        assert torch.equal(alone[0][0], labels[im])


def test_kmeans_without_the_early_stop_is_the_same():
    # the form run off the CPU: every iteration, none read back; an image that has
    # stopped is masked out, so the result equals the early-stopping one exactly
    x, init = slow_converging()
    batch = torch.stack([x, 100 * x, x.flip(0)])
    inits = torch.stack([init, init, init + 5])
    _, _, _, shifts = brute_kmeans(x.tolist(), init.tolist(), max_iter=100, tol=0.0)
    stopped_early = []
    for max_iter, tol in [(25, shifts[2] * (1 + 1e-9)), (25, 1e-3), (4, 0.0), (100, 1e-12)]:
        early = batched_kmeans(batch, inits, max_iter, tol, early_stop=True)
        full = batched_kmeans(batch, inits, max_iter, tol, early_stop=False)
        for a, b in zip(early, full):
            assert torch.equal(a, b), (max_iter, tol)
        steps = [len(brute_kmeans(batch[i].tolist(), inits[i].tolist(), max_iter, tol)[3])
                 for i in range(3)]
        stopped_early.append(max(steps) < max_iter)    # the loop left before the cap
    assert any(stopped_early) and not all(stopped_early)
    # with restarts
    g = torch.Generator().manual_seed(3)
    xs = randn(4, 20, 3, seed=7)
    restarts = torch.stack([torch.stack([torch.randperm(20, generator=g)[:3]
                                         for _ in range(4)]) for _ in range(2)])
    for a, b in zip(batched_kmeans(xs, restarts, early_stop=True),
                    batched_kmeans(xs, restarts, early_stop=False)):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ edges given a partition
@pytest.mark.parametrize("b,h,w,k,parts", [(2, 3, 5, 4, 3), (3, 4, 4, 3, 2), (1, 2, 3, 9, 2),
                                           (2, 5, 2, 1, 4)])
def test_edges_match_brute_force_given_the_partition(b, h, w, k, parts):
    n = h * w
    x = randn(b, 6, h, w, seed=b * 10 + h)
    rows = rows_of(x)
    rows[0, 3] = rows[0, 1]            # exact ties: duplicates of node 1 ...
    rows[0, n - 1] = rows[0, 1] * 2.0  # ... also after normalisation
    g = torch.Generator().manual_seed(n)
    labels = torch.randint(0, parts, (b, n), generator=g)
    labels[0, :3] = parts - 1          # node 1 and its duplicates share a partition
    labels[0, 3] = parts - 1
    labels[0, n - 1] = parts - 1
    labels[-1, :] = 0
    labels[-1, -2:] = 1                # a partition of two nodes (fewer than most k)
    ei = clustered_knn_edges(rows, labels, k)
    got = neighbour_lists(ei, b * n)
    ref = brute_partition_knn(rows, labels, k)
    assert got == ref
    sizes = [[labels[im].tolist().count(v) for v in labels[im].tolist()] for im in range(b)]
    full = all(s >= k for row in sizes for s in row)
    assert (fixed_degree(ei, b * n) == k) if full else (fixed_degree(ei, b * n) is None)


def test_edges_ties_in_a_uniform_region_go_to_the_lower_index():
    # a uniform region (equal features, as in a flat background) of 150 nodes: every one
    # of them is at distance 0 from all the others; the k kept are the lowest indices
    x = randn(1, 4, 10, 20, seed=3)
    rows = rows_of(x)
    region = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:150]
    rows[0, region] = rows[0, region[0]]
    labels = (torch.arange(200) % 7 == 0).long().view(1, 200)    # two partitions
    ei = clustered_knn_edges(rows, labels, 6)
    got = neighbour_lists(ei, 200)
    assert got == brute_partition_knn(rows, labels, 6)
    members = sorted(i for i in region.tolist() if labels[0, i] == 0)
    assert got[members[-1]] == members[:6]


def test_edges_fixed_degree_when_every_partition_has_k():
    x = randn(2, 4, 4, 4, seed=9)
    labels = torch.arange(16).remainder(2).repeat(2, 1)   # two partitions of 8
    ei = clustered_knn_edges(rows_of(x), labels, 5)
    assert fixed_degree(ei, 32) == 5
    assert getattr(ei, "_vig_fixed_degree", None) is not None   # marked: the fixed-degree path
    assert neighbour_lists(ei, 32) == brute_partition_knn(rows_of(x), labels, 5)


def test_edges_off_the_cpu_repeat_the_first_neighbour():
    # the padded form (partitions smaller than k): every column, one outside the centre's
    # partition naming its first neighbour; mr gives what it gives on the CPU's edges
    b, h, w, k = 2, 3, 5, 4
    n = h * w
    x = randn(b, 8, h, w, seed=21)
    rows = rows_of(x)
    labels = torch.randint(0, 3, (b, n), generator=torch.Generator().manual_seed(2))
    labels[-1, -2:] = 3                      # a partition of two nodes
    table, keep = partition_knn(rows, labels, k)
    assert keep is not None and not bool(keep.all())
    padded = padded_table_edges(table, b, n, keep)
    ref = brute_partition_knn(rows, labels, k)
    want = {i: v + [v[0]] * (k - len(v)) for i, v in ref.items()}
    assert neighbour_lists(padded, b * n) == want and fixed_degree(padded, b * n) == k
    cpu = clustered_knn_edges(rows, labels, k)
    for a, b_ in zip(mr_step(padded, x), mr_step(cpu, x)):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)
    # every partition with k nodes or more: the CPU's fixed-degree edges exactly
    labels = torch.arange(n).remainder(2).repeat(b, 1)
    table, _ = partition_knn(rows, labels, k)
    keep = torch.ones(b, n, k, dtype=torch.bool)
    assert torch.equal(padded_table_edges(table, b, n, keep),
                       clustered_knn_edges(rows, labels, k))


def mr_step(edge_index, x):
    """``mr``'s output and gradients (input and parameters) in training, float64."""
    torch.manual_seed(0)
    conv = build_conv("mr", x.size(1), 2 * x.size(1)).double().train()
    nodes = x.permute(0, 2, 3, 1).reshape(-1, x.size(1)).detach().requires_grad_(True)
    out = conv(nodes, edge_index)
    (out * torch.randn(out.shape, dtype=out.dtype,
                       generator=torch.Generator().manual_seed(1))).sum().backward()
    return [out.detach(), nodes.grad] + [p.grad for p in conv.parameters()]


# ------------------------------------------------------------------ the builder
def brute_builder(x, clusters, k, inits):
    """The whole rule from the initial centres ``inits [R, B, K]``."""
    b, c, h, w = x.shape
    rows = rows_of(x)
    labels, centroids = [], []
    for im in range(b):
        r = rows[im]
        centred = (r - r.mean(0)).tolist()
        (lab, cen, _, _), _, _ = brute_restarts(centred, inits[:, im].tolist())
        labels.append(lab)
        centroids += cen
    labels = torch.tensor(labels)
    return labels, torch.tensor(centroids, dtype=torch.float64), brute_partition_knn(
        rows, labels, k)


@pytest.mark.parametrize("b,h,w,clusters,k", [(2, 4, 5, 3, 4), (3, 3, 3, 4, 3),
                                              (1, 6, 4, 2, 13)])
def test_builder_matches_brute_force_in_eval(b, h, w, clusters, k):
    x = randn(b, 5, h, w, seed=h * w)
    builder = graph_builder("clustered_knn", clusters=clusters, seed=3).eval()
    built = builder(x, k=k)
    inits = initial_centres(b, h * w, clusters, 2, torch.Generator().manual_seed(3 * 1_000_003),
                            shared=True)
    labels, centroids, nbrs = brute_builder(x, clusters, k, inits)
    n = h * w
    offsets = torch.arange(b).mul(clusters).unsqueeze(1)
    assert torch.equal(built.partition, (labels + offsets).view(-1))
    torch.testing.assert_close(built.centroids, centroids, rtol=1e-12, atol=1e-12)
    assert neighbour_lists(built.edge_index, b * n) == nbrs
    assert built.edge_attr is None and built.num_hyperedges is None


def test_initial_centres_are_distinct_nodes():
    d = initial_centres(50, 7, 4, 2, torch.Generator().manual_seed(0))
    assert d.shape == (2, 50, 4) and int(d.min()) >= 0 and int(d.max()) < 7
    assert all(len(set(row)) == 4 for row in d.reshape(-1, 4).tolist())
    assert len({tuple(row) for row in d.reshape(-1, 4).tolist()}) > 10   # not one draw
    s = initial_centres(5, 7, 4, 2, torch.Generator().manual_seed(0), shared=True)
    assert torch.equal(s[:, :1].expand(2, 5, 4), s)


def test_eval_is_deterministic_and_independent_of_the_batch():
    x = randn(3, 6, 5, 5, seed=11)
    builder = graph_builder("clustered_knn", clusters=4).eval()
    a, b = builder(x, k=5), builder(x, k=5)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.partition, b.partition)
    assert torch.equal(a.centroids, b.centroids)
    alone = builder(x[2:3], k=5)       # image 2 alone: the same partition and edges
    assert torch.equal(alone.partition + 8, a.partition[50:])
    assert neighbour_lists(alone.edge_index, 25) == {
        i - 50: [j - 50 for j in v] for i, v in neighbour_lists(a.edge_index, 75).items()
        if i >= 50}
    # the seed is per block: another block draws other initial centres
    from vig_pyg.graph.builders import BlockInfo
    other = graph_builder("clustered_knn", clusters=4).eval()
    other.bind_block(BlockInfo(5, 5, 5, 1, 1), {})
    assert not torch.equal(other.initial_centres(3, 25, "cpu"),
                           builder.initial_centres(3, 25, "cpu"))


def test_training_draws_from_the_global_generator():
    builder = graph_builder("clustered_knn", clusters=3).train()
    torch.manual_seed(4)
    first = builder.initial_centres(4, 30, "cpu")
    second = builder.initial_centres(4, 30, "cpu")
    torch.manual_seed(4)
    assert torch.equal(builder.initial_centres(4, 30, "cpu"), first)
    assert not torch.equal(first, second)
    assert not torch.equal(first[:, 0], first[:, 1])        # per image
    x = randn(2, 4, 5, 6, seed=2)
    torch.manual_seed(0)
    one = builder(x, k=4)
    torch.manual_seed(0)
    assert torch.equal(builder(x, k=4).partition, one.partition)


# ------------------------------------------------------------------ cluster_mr
def ref_gelu(y):
    return 0.5 * y * (1.0 + torch.erf(y / math.sqrt(2.0)))


def ref_cluster_mr(conv, x, nbrs, partition, centroids, clusters, training):
    """Float64 loops; the centroid update through a fresh PyG GATv2Conv holding conv.gat's
    weights, on the complete graph (self-loops included) of each image's centroids."""
    n, c = x.shape
    gat = GATv2Conv(c, c, heads=1, add_self_loops=False).double()
    gat.load_state_dict(conv.gat.state_dict())
    pairs = [(j, i) for i in range(centroids.size(0))
             for j in range(centroids.size(0)) if i // clusters == j // clusters]
    updated = gat(centroids, torch.tensor(pairs).t())
    rows = []
    for i in range(n):
        m = [max(x[j, ch] - x[i, ch] for j in nbrs[i]) for ch in range(c)]
        inter = [v for ch in range(c) for v in (x[i, ch], m[ch])]
        rows.append(torch.stack(inter + list(updated[partition[i]])))
    z = torch.stack(rows)                                            # [N, 3C]
    w = conv.nn[0].weight.detach()[:, :, 0, 0]
    out_ch, cin_g = w.shape
    groups = z.size(1) // cin_g
    og = out_ch // groups
    y = torch.stack([(z[:, (o // og) * cin_g:(o // og + 1) * cin_g] * w[o]).sum(1)
                     + conv.nn[0].bias.detach()[o] for o in range(out_ch)], dim=1)
    bn = conv.nn[1]
    if training:
        mean, var = y.mean(0), y.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    y = (y - mean) / torch.sqrt(var + BN_EPS) * bn.weight.detach() + bn.bias.detach()
    return ref_gelu(y), gat


def randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var") or (name.endswith("weight") and t.dim() == 1):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.5)
    return module


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("k,fast", [(3, True), (3, False), (6, True)])
def test_cluster_mr_matches_brute_force(k, fast, training):
    c, clusters, b, h, w = 8, 3, 2, 3, 4
    torch.manual_seed(0)
    x = randn(b, c, h, w, seed=21)
    built = graph_builder("clustered_knn", clusters=clusters).eval()(x, k=k)
    n = b * h * w
    nbrs = neighbour_lists(built.edge_index, n)
    assert (fixed_degree(built.edge_index, n) is not None) == all(len(v) == k
                                                                  for v in nbrs.values())
    conv = randomize(ClusterMRConv(c, 2 * c, groups=4, clusters=clusters).double()).train(
        training)
    rows = rows_of(x).reshape(n, c).clone().requires_grad_()
    with fast_paths.disabled(*(() if fast else ("fixed_degree", "padded"))):
        out = conv(rows, built.edge_index, partition=built.partition,
                   centroids=built.centroids)
    ref_rows = rows.detach().clone().requires_grad_()
    ref, gat = ref_cluster_mr(conv, ref_rows, nbrs, built.partition.tolist(), built.centroids,
                              clusters, training)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    # gradients: the nodes, and the GATv2 weights through the centroid path
    grad = randn(n, 2 * c, seed=5)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(rows.grad, ref_rows.grad, rtol=1e-8, atol=1e-10)
    for (name, p), q in zip(conv.gat.named_parameters(), gat.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10)


def test_cluster_mr_uses_the_centroids():
    c = 8
    x = randn(1, c, 4, 4, seed=1)
    built = graph_builder("clustered_knn", clusters=2).eval()(x, k=3)
    conv = randomize(ClusterMRConv(c, clusters=2).double()).eval()
    rows = rows_of(x).reshape(16, c)
    a = conv(rows, built.edge_index, partition=built.partition, centroids=built.centroids)
    b = conv(rows, built.edge_index, partition=built.partition,
             centroids=built.centroids.flip(0))
    assert not torch.allclose(a, b)
    assert conv(rows, built.edge_index, partition=built.partition,
                centroids=built.centroids).shape == (16, 2 * c)
    assert set(dict(conv.named_parameters())) >= {"gat.att", "gat.lin_l.weight", "nn.0.weight"}


# ------------------------------------------------------------------ bad input
def one_line_error(fn, match, kind=VigPygError):
    with pytest.raises(kind, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_bad_input_one_line_each():
    one_line_error(lambda: graph_builder("clustered_knn", clusters=0),
                   "clusters must be an int")
    one_line_error(lambda: graph_builder("clustered_knn", clusters=True), "clusters must be")
    one_line_error(lambda: graph_builder("clustered_knn", seed=1.5), "seed must be an int")
    one_line_error(lambda: graph_builder("clustered_knn", k=3), r"takes no option\(s\)")
    one_line_error(lambda: graph_builder("clustered_knn", clusters=7)(randn(1, 2, 2, 3), k=2),
                   r"clusters = 7 exceeds the 6 nodes of the 2x3 grid; use clusters <= 6")
    one_line_error(lambda: create_model("vig_ti", graph="clustered_knn",
                                        graph_options={"clusters": 65}, **SMALL_ISO),
                   "vig_ti: graph builder 'clustered_knn': clusters = 65 exceeds")
    x = randn(4, 3)
    one_line_error(lambda: kmeans(x, torch.tensor([0, 1]), max_iter=0), "max_iter", ValueError)
    one_line_error(lambda: kmeans(x, torch.tensor([0, 1]), tol=-1.0), "tol", ValueError)
    one_line_error(lambda: kmeans(x, torch.arange(5)), "1 <= K <= N", ValueError)
    one_line_error(lambda: batched_kmeans(x.view(1, 4, 3), torch.zeros(2, 2, 1).long()),
                   r"init must be node indices \[restarts, B, K\]", ValueError)
    # cluster_mr without a clustered graph names the fix
    conv = ClusterMRConv(8, clusters=2)
    ei = torch.tensor([[0, 1], [1, 0]])
    one_line_error(lambda: conv(torch.randn(2, 8), ei), "use graph='clustered_knn'", ValueError)
    one_line_error(lambda: conv(torch.randn(2, 8), ei, partition=torch.zeros(2).long(),
                                centroids=torch.randn(3, 8)), "set clusters", ValueError)
    # a K that divides the centroid rows but is not the builder's: caught by the partition
    built = graph_builder("clustered_knn", clusters=4).eval()(randn(1, 8, 4, 4), k=3)
    one_line_error(lambda: conv(torch.randn(16, 8).double(), built.edge_index,
                                partition=built.partition, centroids=built.centroids),
                   "set clusters to the builder's", ValueError)
    one_line_error(lambda: ClusterMRConv(6, 12), "divisible by groups", ValueError)
    one_line_error(lambda: ClusterMRConv(8, clusters=0), "clusters must be", ValueError)
    # ... and a model refuses it on another builder when it is built
    one_line_error(lambda: create_model("vig_ti", conv="cluster_mr", **SMALL_ISO),
                   "vig_ti: aggregator 'cluster_mr' needs centroids and partition .* 'knn' "
                   "does not give; use graph='clustered_knn'")


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("conv", ["mr", "cluster_mr"])
def test_tiny_isotropic_model_trains(conv):
    torch.manual_seed(0)
    model = create_model("vig_ti", graph="clustered_knn", graph_options={"clusters": 3},
                         conv=conv, **SMALL_ISO)
    graphers = [m for m in model.modules() if type(m).__name__ == "Grapher"]
    assert [g.graph_builder.block_index for g in graphers] == list(range(4))
    if conv == "mr":   # just the edges: the same parameters as the plain model
        plain = create_model("vig_ti", **SMALL_ISO)
        assert model.state_dict().keys() == plain.state_dict().keys()
    else:              # the aggregator's K is the builder's
        assert all(g.graph_conv.clusters == 3 for g in graphers)
    trains_then_evaluates_deterministically(model, torch.randn(2, 3, 32, 32))


def test_tiny_pyramid_model_runs():
    # allowed beyond the release: every stage clusters its own grid (K per stage)
    torch.manual_seed(0)
    model = create_model("pvig_ti", graph="clustered_knn", conv="cluster_mr",
                         graph_options=[{"clusters": 4}, {"clusters": 3}, {"clusters": 2},
                                        {"clusters": 2}], **SMALL_PYR)
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert build_conv("cluster_mr", 8, clusters=2).clusters == 2
