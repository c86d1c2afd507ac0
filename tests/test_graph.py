"""Patch graphs and kNN edges against brute-force float64 references."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch_geometric.data import Batch, Data

from vig_pyg import fast_paths
from vig_pyg.graph import (PatchGraph, fixed_degree, knn_edges, relative_position_features,
                           relative_position_table, resize_relative_position)


# ---------------------------------------------------------------- references
def brute_knn(queries, keys, q_batch, k_batch, k, d, bias=None):
    """Edge list [(src, dst)] by explicit per-query sorting in float64.

    queries/keys: [N, C] / [M, C]; bias: callable(i_local, j_local) or None.
    """
    q = queries.double()
    y = keys.double()
    q = q / q.norm(dim=1, keepdim=True)
    y = y / y.norm(dim=1, keepdim=True)
    edges = []
    for i in range(q.size(0)):
        cand = [j for j in range(y.size(0)) if k_batch[j] == q_batch[i]]
        q0 = min(ii for ii in range(q.size(0)) if q_batch[ii] == q_batch[i])
        dist = []
        for j in cand:
            dd = float(((q[i] - y[j]) ** 2).sum())
            if bias is not None:
                dd += float(bias[i - q0, j - cand[0]])
            dist.append((dd, j))
        dist.sort()
        edges += [(j, i) for _, j in dist[: k * d][::d]]
    return torch.tensor(edges, dtype=torch.long).T


def map_nodes(fmap):
    b, c, h, w = fmap.shape
    return fmap.permute(0, 2, 3, 1).reshape(b * h * w, c), torch.arange(b).repeat_interleave(h * w)


def pool(fmap, r):
    b, c, h, w = fmap.shape
    return fmap.reshape(b, c, h // r, r, w // r, r).mean(dim=(3, 5))


def sincos_by_hand(gh, gw, dim):
    p = np.zeros((gh * gw, dim))
    q = dim // 4
    for row in range(gh):
        for col in range(gw):
            n = row * gw + col
            for m in range(q):
                w = 10000 ** (-m / q)
                p[n, m], p[n, q + m] = math.sin(col * w), math.cos(col * w)
                p[n, 2 * q + m], p[n, 3 * q + m] = math.sin(row * w), math.cos(row * w)
    return p


def bicubic_by_hand(a, out_h, out_w, A=-0.75):
    """Separable Keys-cubic resize, align_corners=False, edge indices clamped."""
    def weights(t):
        t = abs(t)
        if t <= 1:
            return (A + 2) * t ** 3 - (A + 3) * t ** 2 + 1
        if t < 2:
            return A * t ** 3 - 5 * A * t ** 2 + 8 * A * t - 4 * A
        return 0.0

    def resize_axis(arr, out, axis):
        n = arr.shape[axis]
        scale = n / out
        res = []
        for o in range(out):
            src = (o + 0.5) * scale - 0.5
            f = math.floor(src)
            acc = 0
            for t in range(f - 1, f + 3):
                idx = min(max(t, 0), n - 1)
                acc = acc + weights(src - t) * np.take(arr, idx, axis=axis)
            res.append(acc)
        return np.stack(res, axis=axis)

    return resize_axis(resize_axis(a, out_h, 0), out_w, 1)


def as_set(edge_index):
    return set(map(tuple, edge_index.T.tolist()))


# ---------------------------------------------------------------- patch graph
def test_patch_graph_layout_and_roundtrip_without_copy():
    fmap = torch.randn(2, 5, 3, 4).to(memory_format=torch.channels_last)
    g = PatchGraph.from_feature_map(fmap)
    assert g.num_graphs == 2 and g.grid_size == (3, 4)
    assert g.x.shape == (24, 5) and g.x.data_ptr() == fmap.data_ptr()  # a view
    for b in range(2):
        for r in range(3):
            for c in range(4):
                n = b * 12 + r * 4 + c
                assert torch.equal(g.x[n], fmap[b, :, r, c])
                assert g.pos[n].tolist() == [r, c] and int(g.batch[n]) == b
    assert g.ptr.tolist() == [0, 12, 24]
    back = g.to_feature_map(g.x * 2)
    assert torch.equal(back, fmap * 2)
    out = torch.randn(24, 7)
    assert g.to_feature_map(out).data_ptr() == out.data_ptr()
    with pytest.raises(ValueError, match=r"\[24, C\]"):
        g.to_feature_map(torch.randn(23, 5))


def test_patch_graph_from_contiguous_map_and_pyg_batch_api():
    fmap = torch.randn(3, 4, 2, 2)
    g = PatchGraph.from_feature_map(fmap)
    assert torch.equal(g.to_feature_map(), fmap)
    assert isinstance(g, Batch) and isinstance(g, Data) and g.num_nodes == 12
    with pytest.raises(ValueError, match="feature map"):
        PatchGraph.from_feature_map(torch.randn(4, 4))


def test_patch_graph_made_directly_is_what_pyg_makes():
    """After the first, graphs skip PyG's Batch metaclass; each is still what the
    metaclass makes (same class, same fields), and a subclass gets its own class."""
    class Sub(PatchGraph):
        pass

    fmap = torch.randn(2, 3, 2, 3).to(memory_format=torch.channels_last)
    made = {}
    for cls in (PatchGraph, Sub, PatchGraph, Sub):
        g = cls.from_feature_map(fmap)
        ref = cls(x=g.x, pos=g.pos, batch=g.batch, ptr=g.ptr, grid_size=(2, 3))  # PyG's way
        assert type(g) is type(ref) and isinstance(g, cls) and isinstance(g, Data)
        assert made.setdefault(cls, type(g)) is type(g)
        assert sorted(g.keys()) == sorted(ref.keys()) == ["batch", "grid_size", "pos", "ptr",
                                                          "x"]
        assert g.num_graphs == 2 and g.num_nodes == 12 and g.grid_size == (2, 3)
        assert torch.equal(g.to_feature_map(), fmap)
    assert made[Sub] is not made[PatchGraph]


# ---------------------------------------------------------------- kNN edges
@pytest.mark.parametrize("backend", ["dense", "cluster"])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_knn_matches_brute_force(backend, b, d):
    torch.manual_seed(d + 10 * b)
    fmap = torch.randn(b, 6, 5, 5, dtype=torch.float64)
    k = 4
    ei = knn_edges(fmap, k, dilation=d, backend=backend)
    nodes, batch = map_nodes(fmap)
    ref = brute_knn(nodes, nodes, batch, batch, k, d)
    assert torch.equal(ei, ref)  # same edges, same order


@pytest.mark.parametrize("backend", ["dense", "cluster"])
@pytest.mark.parametrize("r", [2, 4])
def test_knn_bipartite_pooled_keys(backend, r):
    torch.manual_seed(r)
    fmap = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    ei = knn_edges(fmap, 3, dilation=1, reduce_ratio=r, backend=backend)
    nodes, batch = map_nodes(fmap)
    keys, kbatch = map_nodes(pool(fmap, r))
    assert torch.equal(ei, brute_knn(nodes, keys, batch, kbatch, 3, 1))


@pytest.mark.parametrize("r", [1, 2])
def test_knn_relative_position_bias_dense(r):
    torch.manual_seed(5)
    c, g = 8, 4
    fmap = torch.randn(2, c, g, g, dtype=torch.float64) * 0.3
    table = relative_position_table(g, c, r, dtype=torch.float64)
    ei = knn_edges(fmap, 3, dilation=2 if r == 1 else 1, reduce_ratio=r, relative_pos=table)
    nodes, batch = map_nodes(fmap)
    keys, kbatch = map_nodes(pool(fmap, r)) if r > 1 else (nodes, batch)
    ref = brute_knn(nodes, keys, batch, kbatch, 3, 2 if r == 1 else 1, bias=table)
    assert torch.equal(ei, ref)
    # the bias matters: without it the graph differs
    assert not torch.equal(ei, knn_edges(fmap, 3, dilation=2 if r == 1 else 1, reduce_ratio=r))


def test_knn_relative_position_cluster_uses_exact_identity_and_refuses_otherwise():
    torch.manual_seed(6)
    c, g = 8, 5
    fmap = torch.randn(2, c, g, g, dtype=torch.float64) * 0.3
    table = relative_position_table(g, c, dtype=torch.float64)
    dense = knn_edges(fmap, 4, dilation=2, relative_pos=table, backend="dense")
    cluster = knn_edges(fmap, 4, dilation=2, relative_pos=table, backend="cluster")
    assert torch.equal(dense, cluster)
    with pytest.raises(ValueError, match="backend='dense'"):
        knn_edges(fmap[..., :4, :4], 2, reduce_ratio=2, backend="cluster",
                  relative_pos=relative_position_table(4, c, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="backend='dense'"):
        knn_edges(fmap, 2, backend="cluster", relative_pos=table + 0.1)


@pytest.mark.parametrize("backend", ["auto", "cluster"])
def test_knn_variable_node_counts(backend):
    torch.manual_seed(7)
    counts = [5, 9, 7]
    x = torch.randn(sum(counts), 4, dtype=torch.float64)
    batch = torch.arange(3).repeat_interleave(torch.tensor(counts))
    ei = knn_edges(x, 2, batch=batch, dilation=2, backend=backend)
    assert torch.equal(ei, brute_knn(x, x, batch, batch, 2, 2))
    with pytest.raises(ValueError, match="same number of nodes"):
        knn_edges(x, 2, batch=batch, backend="dense")


@pytest.mark.parametrize("backend", ["dense", "cluster"])
def test_knn_kd_equal_to_node_count(backend):
    torch.manual_seed(8)
    fmap = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    ei = knn_edges(fmap, 3, dilation=3, backend=backend)  # k*d = 9 = nodes per image
    nodes, batch = map_nodes(fmap)
    assert torch.equal(ei, brute_knn(nodes, nodes, batch, batch, 3, 3))
    # the node itself is its own nearest candidate: rank 0 is the self-loop
    assert torch.equal(ei[0, ::3], ei[1, ::3])


@pytest.mark.parametrize("max_elements", [1, 20, 100, 10 ** 6])
@fast_paths.disabled("single_pass")  # chunks are the matmul path's
def test_dense_chunking_gives_identical_edges(max_elements):
    torch.manual_seed(9)
    fmap = torch.randn(3, 6, 8, 8)
    full = knn_edges(fmap, 5, dilation=2, reduce_ratio=2, backend="dense")
    chunked = knn_edges(fmap, 5, dilation=2, reduce_ratio=2, backend="dense",
                        max_chunk_elements=max_elements)
    assert torch.equal(full, chunked)


@fast_paths.disabled("single_pass")  # the buffer is the matmul path's
def test_reused_distance_buffer_across_modes_sizes_and_threads():
    """The dense backend's per-thread distance buffer: created in inference mode and reused
    outside it (and back), grown for a larger call, one per thread; edges always those of
    the brute-force float64 rule."""
    import threading

    from vig_pyg.graph import knn

    torch.manual_seed(12)
    small, large = torch.randn(2, 5, 6, 6), torch.randn(3, 5, 9, 9)
    expect = {}
    for name, fmap in (("small", small), ("large", large)):
        nodes, batch = map_nodes(fmap)
        expect[name] = brute_knn(nodes, nodes, batch, batch, 4, 2)
    knn._buffers.__dict__.pop("dist", None)
    with torch.inference_mode():
        assert torch.equal(knn_edges(small, 4, dilation=2, backend="dense"), expect["small"])
    assert not knn._buffers.dist.is_inference()
    with torch.no_grad():
        assert torch.equal(knn_edges(large, 4, dilation=2, backend="dense"), expect["large"])
    assert knn._buffers.dist.numel() == 3 * 81 * 81
    # bipartite (pooled keys), in the buffer the larger call left
    nodes, batch = map_nodes(large)
    keys, key_batch = map_nodes(pool(large, 3))
    with torch.inference_mode():
        got = knn_edges(large, 4, reduce_ratio=3, backend="dense")
    assert torch.equal(got, brute_knn(nodes, keys, batch, key_batch, 4, 1))
    with torch.inference_mode():
        assert torch.equal(knn_edges(small, 4, dilation=2, backend="dense"), expect["small"])
    results = {}

    def build(name, fmap):
        results[name] = [knn_edges(fmap, 4, dilation=2, backend="dense") for _ in range(20)]

    threads = [threading.Thread(target=build, args=item)
               for item in (("small", small), ("large", large))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ("small", "large"):
        assert all(torch.equal(ei, expect[name]) for ei in results[name])


def test_dense_equals_cluster_edge_for_edge_float32():
    torch.manual_seed(10)
    fmap = torch.randn(4, 32, 14, 14)
    for d in (1, 2):
        assert torch.equal(knn_edges(fmap, 9, dilation=d, backend="dense"),
                           knn_edges(fmap, 9, dilation=d, backend="cluster"))


def test_stochastic_dilation_draws_from_kd_set_and_is_off_in_eval():
    torch.manual_seed(11)
    fmap = torch.randn(2, 8, 5, 5)
    k, d = 3, 3
    full = knn_edges(fmap, k * d, backend="dense")[0].view(-1, k * d)
    det = knn_edges(fmap, k, dilation=d)
    # eval (training=False) never draws, whatever epsilon says
    assert torch.equal(knn_edges(fmap, k, dilation=d, stochastic=True, epsilon=1.0), det)
    seen_other = False
    for _ in range(5):
        ei = knn_edges(fmap, k, dilation=d, stochastic=True, epsilon=1.0, training=True)
        src = ei[0].view(-1, k)
        pos = [full[0].tolist().index(j) for j in src[0].tolist()]
        assert pos == sorted(pos) and len(set(pos)) == k
        for i in range(src.size(0)):  # same ranks for every node, all from the k*d set
            assert [full[i].tolist().index(j) for j in src[i].tolist()] == pos
        seen_other |= pos != list(range(0, k * d, d))
    assert seen_other
    # epsilon = 0 never draws, even in training
    assert torch.equal(knn_edges(fmap, k, dilation=d, stochastic=True, epsilon=0.0,
                                 training=True), det)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(2, 5), w=st.integers(2, 5), c=st.integers(1, 6),
       k=st.integers(1, 4), d=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_property_in_degree_and_same_image(b, h, w, c, k, d, seed):
    if k * d > h * w:
        return
    torch.manual_seed(seed)
    fmap = torch.randn(b, c, h, w)
    ei = knn_edges(fmap, k, dilation=d)
    n = h * w
    assert ei.shape == (2, b * n * k)
    assert torch.equal(torch.bincount(ei[1], minlength=b * n), torch.full((b * n,), k))
    assert torch.equal(ei[0] // n, ei[1] // n)
    assert fixed_degree(ei, b * n) == k


@settings(max_examples=15, deadline=None)
@given(counts=st.lists(st.integers(4, 9), min_size=1, max_size=4), k=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16))
def test_property_ragged_in_degree_and_same_graph(counts, k, seed):
    torch.manual_seed(seed)
    batch = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    x = torch.randn(len(batch), 3)
    ei = knn_edges(x, k, batch=batch)
    assert torch.equal(torch.bincount(ei[1], minlength=len(batch)), torch.full((len(batch),), k))
    assert torch.equal(batch[ei[0]], batch[ei[1]])


def test_fixed_degree_detection():
    ei = torch.tensor([[1, 2, 0, 2, 0, 1], [0, 0, 1, 1, 2, 2]])
    assert fixed_degree(ei, 3) == 2
    assert fixed_degree(ei[:, [1, 0, 2, 3, 4, 5]], 3) == 2
    assert fixed_degree(ei[:, [2, 0, 1, 3, 4, 5]], 3) is None  # not grouped by target
    assert fixed_degree(ei[:, :5], 3) is None


def test_fixed_degree_trusts_knn_edges_until_written(monkeypatch):
    """knn_edges marks its result, so fixed_degree does not read the target row back
    (torch.equal is made to fail here), until an in-place write bumps the tensor's version;
    inference tensors carry no version and are always read."""
    fmap = torch.randn(2, 8, 4, 4)
    ei = knn_edges(fmap, 3)
    with torch.inference_mode():
        ei_inference = knn_edges(fmap, 3)
    real_equal = torch.equal

    def no_reading(*args):
        raise AssertionError("fixed_degree read a marked edge_index back")
    monkeypatch.setattr(torch, "equal", no_reading)
    assert fixed_degree(ei, 32) == 3
    monkeypatch.setattr(torch, "equal", real_equal)
    assert fixed_degree(ei, 48) is None  # another target count: read, not the layout
    assert fixed_degree(ei_inference, 32) == 3  # read, and right
    ei[0, 0] = ei[0, 0]  # same layout, but written: read again
    monkeypatch.setattr(torch, "equal", no_reading)
    with pytest.raises(AssertionError, match="read a marked"):
        fixed_degree(ei, 32)
    monkeypatch.setattr(torch, "equal", real_equal)
    assert fixed_degree(ei, 32) == 3
    ei[1, :3] = torch.tensor([1, 0, 0])  # the target row no longer in order
    assert fixed_degree(ei, 32) is None


# ---------------------------------------------------------------- bad input
def test_bad_input_errors():
    fmap = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="exceeds the 9 candidate"):
        knn_edges(fmap, 5, dilation=2)
    with pytest.raises(ValueError, match="exceeds the 4 candidate"):
        knn_edges(torch.randn(2, 4, 4, 4), 5, reduce_ratio=2)
    with pytest.raises(ValueError, match="3-D tensor"):
        knn_edges(torch.randn(2, 4, 3), 2)
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match="length 6"):
        knn_edges(x, 2, batch=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="sorted"):
        knn_edges(x, 2, batch=torch.tensor([0, 1, 0, 1, 0, 1]))
    for bad in (float("nan"), float("inf")):
        y = fmap.clone()
        y[1, 2, 0, 1] = bad
        for backend in ("dense", "cluster"):
            with pytest.raises(ValueError, match="NaN or Inf"):
                knn_edges(y, 2, backend=backend)
    with pytest.raises(ValueError, match="relative_pos must be"):
        knn_edges(fmap, 2, relative_pos=torch.zeros(9, 8))
    with pytest.raises(ValueError, match=r"`keys` must be on x's device with its dtype .*"
                                         r"keys\.to\(x\)"):
        knn_edges(fmap, 2, keys=fmap.double())
    with pytest.raises(ValueError, match="`keys` must be on x's device"):
        knn_edges(fmap.flatten(2).transpose(1, 2).reshape(-1, fmap.size(1)), 2,
                  keys=torch.zeros(4, fmap.size(1), dtype=torch.float16))
    with pytest.raises(ValueError, match="unknown kNN backend"):
        knn_edges(fmap, 2, backend="faiss")


# ---------------------------------------------------------------- relative position
def test_relative_position_table_matches_hand_formula_and_identity():
    g, dim = 4, 8
    p = sincos_by_hand(g, g, dim)
    expected = -2 * p @ p.T / dim
    table = relative_position_table(g, dim, dtype=torch.float64)
    np.testing.assert_allclose(table.numpy(), expected, atol=1e-6)  # stored as float32
    assert table.dtype == torch.float64
    # positional-feature identity: |f_i - f_j|^2 - 1 = table
    f = relative_position_features((g, g), dim, dtype=torch.float64)
    np.testing.assert_allclose((torch.cdist(f, f) ** 2 - 1).numpy(), expected, atol=1e-9)


def test_relative_position_resize_matches_hand_bicubic():
    g, dim, r = 4, 8, 2
    square = relative_position_table(g, dim, dtype=torch.float64)
    resized = relative_position_table(g, dim, r, dtype=torch.float64)
    assert resized.shape == (16, 4)
    np.testing.assert_allclose(resized.numpy(), bicubic_by_hand(square.numpy(), 16, 4),
                               atol=1e-6)
    other = resize_relative_position(square.unsqueeze(0), 36, 9)
    assert other.shape == (1, 36, 9)
    np.testing.assert_allclose(other[0].numpy(), bicubic_by_hand(square.numpy(), 36, 9),
                               atol=1e-9)
