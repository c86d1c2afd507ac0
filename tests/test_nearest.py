"""The dense kNN's fused distance + selection pass (``graph/_nearest.c``, used by
``knn._fused_nearest``): against the float64 rule written out here, against the matmul +
selection path it replaces, on every thread split and in the build without AVX-512."""
from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from native_helpers import spy_native
from vig_pyg.graph import knn, knn_edges, select

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                                reason="no C compiler: the dense kNN takes the matmul path")


def rule(x, k, dilation=1, keys=None, rel=None):
    """``edge_index`` by the definition in float64: per image, d_ij = |q_i - y_j|^2 (+ b_ij)
    for L2-normalised rows, the k*d nearest by a stable sort, every d-th kept."""
    b, c, h, w = x.shape
    q = F.normalize(x.double().permute(0, 2, 3, 1).reshape(b, h * w, c), dim=-1)
    y = q if keys is None else F.normalize(
        keys.double().permute(0, 2, 3, 1).reshape(b, -1, c), dim=-1)
    m = y.size(1)
    dist = torch.cdist(q, y) ** 2 + (0 if rel is None else rel.double())
    order = torch.sort(dist, dim=-1, stable=True).indices[..., :k * dilation:dilation]
    src = order + torch.arange(b).view(b, 1, 1) * m
    return torch.stack([src.reshape(-1), torch.arange(b * h * w).repeat_interleave(k)])


@pytest.fixture
def calls(monkeypatch):
    """Counts the fused pass's entry points: [whole matrix, row range]."""
    return spy_native(monkeypatch, "vig_nearest_rows", "vig_nearest")


# grids whose node counts are not multiples of the tile (8 rows, 48 keys) or of a vector
CASES = [  # (b, c, h, w, k, dilation, reduce_ratio, with rel)
    (2, 48, 14, 14, 9, 1, 1, False),
    (3, 5, 7, 9, 4, 2, 1, True),
    (2, 16, 8, 8, 3, 1, 2, True),
    (1, 100, 11, 13, 20, 3, 1, False),
    (4, 1, 6, 6, 2, 1, 1, False),
    (2, 33, 16, 12, 5, 1, 4, True),
    # k*d from 17 to 32: two vectors of group minima per row, both paths
    (2, 20, 12, 12, 6, 3, 1, True),
    (3, 24, 20, 20, 9, 2, 2, True),
]


@pytest.mark.parametrize("b,c,h,w,k,d,r,with_rel", CASES)
def test_fused_matches_rule_and_matmul_path(calls, monkeypatch, b, c, h, w, k, d, r, with_rel):
    g = torch.Generator().manual_seed(b * 100 + c)
    x = torch.randn(b, c, h, w, generator=g)
    keys = F.avg_pool2d(x, r, r) if r > 1 else None
    m = (h // r) * (w // r)
    rel = torch.randn(h * w, m, generator=g) * 0.3 if with_rel else None
    got = knn_edges(x, k, dilation=d, reduce_ratio=r, relative_pos=rel)
    assert sum(calls) == 1
    assert torch.equal(got, rule(x, k, d, keys, rel))
    monkeypatch.setattr(knn, "fused", False)
    assert torch.equal(got, knn_edges(x, k, dilation=d, reduce_ratio=r, relative_pos=rel))
    assert sum(calls) == 1


@pytest.mark.parametrize("b,c,h,w,k,d,r,with_rel", CASES)
def test_direct_call_of_channels_last_maps(calls, monkeypatch, b, c, h, w, k, d, r, with_rel):
    """A channels-last map with channels-last pooled keys (a Grapher's call) goes to the
    fused pass without the general path (``knn._fused_map``): the rule's edges, equal to the
    general path's, the table given as the model's [1, N, M] too."""
    general = []
    monkeypatch.setattr(knn, "_knn_map", lambda *a, _f=knn._knn_map, **kw: (
        general.append(1), _f(*a, **kw))[1])
    g = torch.Generator().manual_seed(b * 10 + c)
    x = torch.randn(b, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    keys = F.avg_pool2d(x, r, r) if r > 1 else None
    m = (h // r) * (w // r)
    rel = torch.randn(1, h * w, m, generator=g) * 0.3 if with_rel else None
    got = knn_edges(x, k, dilation=d, keys=keys, relative_pos=rel)
    assert calls[0] == 1 and not general
    assert torch.equal(got, rule(x, k, d, keys, None if rel is None else rel[0]))
    monkeypatch.setattr(knn, "direct", False)
    assert torch.equal(got, knn_edges(x, k, dilation=d, keys=keys, relative_pos=rel))
    assert calls[0] == 2 and general == [1]


def test_direct_call_steps_aside(calls, monkeypatch):
    """Everything but a channels-last float32 map with like keys and a float32 table of the
    right shape goes the general way, which gives the same edges or names the problem."""
    general = []
    monkeypatch.setattr(knn, "_knn_map", lambda *a, _f=knn._knn_map, **kw: (
        general.append(1), _f(*a, **kw))[1])
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 8, 6, 6, generator=g)
    cl = x.contiguous(memory_format=torch.channels_last)
    rel = torch.randn(36, 36, generator=g) * 0.2
    for kw in (dict(), dict(reduce_ratio=2), dict(relative_pos=rel.double()),
               dict(relative_pos=rel.t().contiguous().t()),
               dict(keys=F.avg_pool2d(x, 2, 2))):
        before = len(general)
        expect = rule(x, 3, 1, kw.get("keys", F.avg_pool2d(x, 2, 2) if "reduce_ratio" in kw
                                          else None), kw.get("relative_pos"))
        assert torch.equal(knn_edges(cl if "keys" in kw or "relative_pos" in kw else x, 3,
                                     **kw), expect)
        assert len(general) == before + 1
    with pytest.raises(ValueError, match="exceeds the 36 candidate"):
        knn_edges(cl, 37)
    with pytest.raises(ValueError, match=r"relative_pos must be \[36, 9\]"):
        knn_edges(cl, 3, keys=F.avg_pool2d(cl, 2, 2), relative_pos=rel)
    bad = cl.clone()
    bad[1, 2, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="node features contain NaN or Inf"):
        knn_edges(bad, 4)
    bad_keys = F.avg_pool2d(cl, 2, 2)
    bad_keys[0, 3, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="key features contain NaN or Inf"):
        knn_edges(cl, 4, keys=bad_keys)


# pooled keys with a table and at least 32 channels: the prefilter's jobs where AMX is here
# (below 64 channels each value in two bfloat16 parts, "split")
PREFILTER_CASES = [  # (b, c, h, w, k, dilation)
    (2, 48, 28, 28, 9, 1),    # split: pvig_ti's first stage's channels
    (3, 33, 22, 18, 6, 3),    # split, k*d = 18; channels not a multiple of 16
    (2, 63, 28, 28, 9, 4),    # split, k*d = 36
    (2, 64, 28, 28, 9, 1),    # pvig_ti's second stage in small: 784 queries, 196 keys
    (2, 96, 28, 28, 6, 3),    # k*d = 18: two vectors of group minima
    (2, 70, 28, 28, 9, 4),    # k*d = 36: a bound per row; channels not a multiple of 32
    (3, 150, 22, 18, 7, 1),   # two passes of channels (128 + 32); rows not a multiple of 16
    (2, 130, 12, 12, 3, 1),   # 36 keys
    (2, 300, 12, 12, 4, 1),   # three passes (128 + 128 + 64 channels)
]


def _needs_prefilter(x, keys, k, d):
    lib = select._load()
    b, c, h, w = x.shape
    if lib is None or not lib.vig_nearest_prefilter(h * w, keys.shape[2] * keys.shape[3], c,
                                                     k * d, 0, 1):
        pytest.skip("no AMX with bfloat16 here (or the kernel withholds it): the float32 "
                    "products run instead")


@pytest.mark.parametrize("b,c,h,w,k,d", PREFILTER_CASES)
@pytest.mark.parametrize("scale", [0.3, 1000.0])
def test_prefilter_gives_the_rule(monkeypatch, b, c, h, w, k, d, scale):
    """The bfloat16 prefilter (AMX) and the exact distances of the keys it admits: the
    rule's edges, equal to the float32 products' (``knn.prefilter`` off), with a small
    table and with one of large values (the window's relative part)."""
    g = torch.Generator().manual_seed(c + h)
    x = torch.randn(b, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    keys = F.avg_pool2d(x, 2, 2)
    _needs_prefilter(x, keys, k, d)
    m = keys.shape[2] * keys.shape[3]
    rel = torch.randn(h * w, m, generator=g) * scale
    got = knn_edges(x, k, dilation=d, keys=keys, relative_pos=rel)
    assert torch.equal(got, rule(x, k, d, keys, rel))
    monkeypatch.setattr(knn, "prefilter", False)
    assert torch.equal(got, knn_edges(x, k, dilation=d, keys=keys, relative_pos=rel))


def _approximations(x, keys, rel):
    """The prefilter's approximations [n, m] of one image's rows and each row's window 2E
    (``vig_nearest_approximations``), or a skip where AMX is not here."""
    lib = select._load()
    n, c = x.shape
    m = keys.shape[0]
    out, w = torch.empty(n, m), torch.empty(n)
    scratch = torch.empty(lib.vig_nearest_scratch(n, m, c, 1, 0)) if lib else None
    if lib is None or not lib.vig_nearest_approximations(
            x.data_ptr(), keys.data_ptr(), rel.data_ptr(), n, m, c, out.data_ptr(),
            w.data_ptr(), scratch.data_ptr()):
        pytest.skip("no AMX with bfloat16 here (or the kernel withholds it)")
    return out, w


@pytest.mark.parametrize("c", [32, 48, 63, 64, 96, 150, 300])
@pytest.mark.parametrize("scale", [0.3, 1000.0])
def test_prefilter_approximations_within_their_window(c, scale):
    """Every approximation lies within E (half the window the selection admits by) of its
    distance, computed here in float64 from the same float32 unit rows: rows and keys
    drawn at random and unit rows whose values lie just below midpoints between two
    bfloat16 numbers (the largest rounding errors), keys that are zero rows, a table of
    small and of large values."""
    g = torch.Generator().manual_seed(c)
    n, m = 300, 70
    x = torch.randn(n, c, generator=g)
    y = torch.randn(m, c, generator=g)
    # s (1 + (2j + 1) 2^-8 (1 - 2^-20)), s a power of two: just below a midpoint; the last
    # value makes the row a unit row, which normalising leaves within float32's rounding
    s = 2.0 ** -math.ceil(math.log2(2 * math.sqrt(c)))
    mid = s * (1 + (2 * torch.randint(0, 64, (m // 2, c - 1), generator=g) + 1) * 2.0 ** -8
               * (1 - 2.0 ** -20)) * torch.randn(m // 2, c - 1, generator=g).sign()
    mid = torch.cat([mid, (1 - (mid.double() ** 2).sum(1, keepdim=True)).sqrt().float()], 1)
    y[: m // 2] = mid
    x[: n // 2] = mid.repeat(n // m + 1, 1)[: n // 2]
    y[-1] = 0.0
    rel = torch.randn(n, m, generator=g) * scale
    approx, window = _approximations(x, y, rel)
    q, k = F.normalize(x, dim=-1).double(), F.normalize(y, dim=-1).double()
    dist = (k * k).sum(-1) - 2 * q @ k.T + rel.double()
    error = (approx.double() - dist).abs()
    assert (error <= window.double()[:, None] / 2).all(), (error / window[:, None]).max()


@pytest.mark.parametrize("c", [64, 48])
@pytest.mark.parametrize("images", [1, 3])
def test_prefilter_on_thread_splits(monkeypatch, images, c):
    """Rows of one image split between threads (fewer images than threads), and whole
    images: the prefilter's edges are the rule's either way (in one and two parts)."""
    monkeypatch.setattr(knn, "FUSED_WORK_PER_THREAD", 1)
    g = torch.Generator().manual_seed(15 + images)
    x = torch.randn(images, c, 20, 20, generator=g).contiguous(
        memory_format=torch.channels_last)
    keys = F.avg_pool2d(x, 2, 2)
    _needs_prefilter(x, keys, 5, 1)
    rel = torch.randn(400, 100, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = knn_edges(x, 5, keys=keys, relative_pos=rel)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, rule(x, 5, 1, keys, rel))


def test_prefilter_takes_larger_keys(calls, monkeypatch):
    """Prefiltered jobs take the fused pass up to four times FUSED_MAX_KEY_FLOATS (their
    keys are read in bfloat16), the others only up to it."""
    g = torch.Generator().manual_seed(16)
    x = torch.randn(2, 64, 16, 16, generator=g).contiguous(memory_format=torch.channels_last)
    keys = F.avg_pool2d(x, 2, 2)  # 64 keys x 64 channels: 4096 floats
    _needs_prefilter(x, keys, 4, 1)
    rel = torch.randn(256, 64, generator=g)
    monkeypatch.setattr(knn, "FUSED_MAX_KEY_FLOATS", 4096 // 4)
    assert torch.equal(knn_edges(x, 4, keys=keys, relative_pos=rel), rule(x, 4, 1, keys, rel))
    assert calls[0] == 1
    assert torch.equal(knn_edges(x, 4, keys=keys), rule(x, 4, 1, keys))  # no table
    monkeypatch.setattr(knn, "prefilter", False)
    assert torch.equal(knn_edges(x, 4, keys=keys, relative_pos=rel), rule(x, 4, 1, keys, rel))
    monkeypatch.setattr(knn, "prefilter", True)
    monkeypatch.setattr(knn, "FUSED_MAX_KEY_FLOATS", 4096 // 4 - 1)
    assert torch.equal(knn_edges(x, 4, keys=keys, relative_pos=rel), rule(x, 4, 1, keys, rel))
    assert calls[0] == 1  # none of the last three took the pass


def test_split_prefilter_only_where_its_keys_fit():
    """Below 64 channels the prefilter's keys take K / 2 words each in bfloat16 parts (K: 3c
    + 2 rounded up to 32) and c in float32; it runs only while an image's keys fit 2^19
    floats (a core's L2 cache), since beyond it measured slower than the float32 products.
    With 64 channels or more (one part) it runs on larger images too."""
    lib = select._load()
    if lib is None or not lib.vig_nearest_prefilter(3136, 196, 48, 9, 0, 1):
        pytest.skip("no AMX with bfloat16 here (or the kernel withholds it)")
    for m in (196, 2500, 4096, 4150):
        k = -(-(3 * 48 + 2) // 32) * 32
        fits = (k // 2 + 48) * (-(-m // 16) * 16) <= 2 ** 19
        assert lib.vig_nearest_prefilter(4 * m, m, 48, 9, 0, 1) == fits
        assert lib.vig_nearest_prefilter(4 * m, m, 96, 9, 0, 1) == 1


def test_prefilter_on_keys_closer_than_its_error():
    """Keys that all lie within a few thousandths of one direction: their distances to a
    query are closer together than bfloat16's error, so the approximations alone would
    order them wrongly and miss some of the nearest. Every row's kept distances (float64)
    must be the k*d smallest, every d-th, to float32's rounding (so many near-equal
    distances make exact ties in float32 here, whose order the rule's float64 may not
    share)."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 96, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    base = torch.randn(2, 96, 1, 1, generator=g)
    keys = (base + 2e-3 * torch.randn(2, 96, 14, 14, generator=g)).contiguous(
        memory_format=torch.channels_last)
    _needs_prefilter(x, keys, 9, 2)
    _assert_nearest_kept(x, keys, 9, 2, limit=0.05)


def test_split_prefilter_on_distances_closer_than_its_error():
    """With 48 channels (each value in two bfloat16 parts: errors of about 1e-5) keys at
    one angle from a direction q0, each a different way round it, and queries within 1e-3
    of q0: the distances of a query to the keys lie a few 1e-6 apart, closer than the
    approximations' error, while the keys' bfloat16 parts differ (keys near one another,
    as in the test above, round alike). Ordering by the approximations alone keeps wrong
    keys in hundreds of rows."""
    g = torch.Generator().manual_seed(21)
    c = 48
    q0 = F.normalize(torch.randn(c, generator=g, dtype=torch.float64), dim=0)
    v = torch.randn(196, c, generator=g, dtype=torch.float64)
    v = F.normalize(v - (v @ q0)[:, None] * q0, dim=1)  # unit, at right angles to q0
    y = math.cos(1.0) * q0 + math.sin(1.0) * v
    x = q0 + 1e-3 * F.normalize(torch.randn(2, 784, c, generator=g, dtype=torch.float64),
                                dim=-1)
    x = x.float().reshape(2, 28, 28, c).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    keys = y.float().repeat(2, 1, 1).reshape(2, 14, 14, c).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    _needs_prefilter(x, keys, 9, 2)
    _assert_nearest_kept(x, keys, 9, 2, limit=1e-3)


def _assert_nearest_kept(x, keys, k, d, limit):
    """knn_edges with a zero table keeps, in every row, distances (float64) equal to the
    k*d smallest, every d-th, to float32's rounding; the k*d smallest lie within limit."""
    b, c, h, w = x.shape
    m = keys.shape[2] * keys.shape[3]
    got = knn_edges(x, k, dilation=d, keys=keys, relative_pos=torch.zeros(h * w, m))
    q = F.normalize(x.double().permute(0, 2, 3, 1).reshape(b, h * w, c), dim=-1)
    y = F.normalize(keys.double().permute(0, 2, 3, 1).reshape(b, m, c), dim=-1)
    dist = (torch.cdist(q, y) ** 2).reshape(-1, m)
    kept = dist.gather(1, got[0].view(-1, k) - torch.arange(b).repeat_interleave(h * w)
                       .view(-1, 1) * m)
    near = dist.sort(dim=-1).values[:, :k * d]
    assert (near[:, -1] - near[:, 0]).max() < limit
    assert torch.allclose(kept, near[:, ::d], rtol=0, atol=1e-6)


@pytest.mark.parametrize("c", [64, 48])
def test_prefilter_with_nan_and_infinities(monkeypatch, c):
    """Under autocast (NaN lets the graph through, GradScaler's case) a NaN query row, a NaN
    key, NaN and infinities in the table: the same edges as the float32 products."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, c, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    keys = F.avg_pool2d(x, 2, 2)
    _needs_prefilter(x, keys, 9, 1)
    x[0, :, 3, 4] = float("nan")
    keys[1, :, 5, 6] = float("nan")
    rel = torch.randn(28 * 28, 196, generator=g)
    rel[7, ::3] = float("inf")
    rel[8, :190] = float("inf")  # fewer finite distances than kept: the bound is infinite
    rel[9, 5] = -float("inf")
    rel[10, 3] = float("nan")  # NaN in a row of the table: that key last, the rest as before
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = knn_edges(x, 9, keys=keys, relative_pos=rel)
        monkeypatch.setattr(knn, "prefilter", False)
        assert torch.equal(got, knn_edges(x, 9, keys=keys, relative_pos=rel))


def test_prefilter_leaves_other_tile_users_working():
    """The pass configures AMX tiles on torch's threads and puts back what it found, so
    torch's bfloat16 matrix products (oneDNN, on the same tiles where AMX is there) give
    the same result before, between and after prefiltered passes."""
    g = torch.Generator().manual_seed(14)
    x = torch.randn(2, 64, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    keys = F.avg_pool2d(x, 2, 2)
    _needs_prefilter(x, keys, 9, 1)
    a = torch.randn(2, 256, 256, generator=g).to(torch.bfloat16)
    before = torch.bmm(a, a)
    rel = torch.randn(28 * 28, 196, generator=g)
    for _ in range(2):
        edges = knn_edges(x, 9, keys=keys, relative_pos=rel)
        assert torch.equal(torch.bmm(a, a), before)
    assert torch.equal(edges, rule(x, 9, 1, keys, rel))


def test_scratch_kept_only_up_to_its_bound(calls, monkeypatch):
    """The pass's scratch is kept per thread for jobs up to SCRATCH_KEPT_FLOATS and fresh
    beyond (so a detection-size graph does not leave tens of MiB held); the edges are the
    rule's either way."""
    g = torch.Generator().manual_seed(17)
    x = torch.randn(2, 16, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)
    knn._buffers.__dict__.pop("scratch", None)
    assert torch.equal(knn_edges(x, 5), rule(x, 5))
    kept = knn._buffers.scratch
    assert 0 < kept.numel() <= knn.SCRATCH_KEPT_FLOATS
    monkeypatch.setattr(knn, "SCRATCH_KEPT_FLOATS", 16)
    y = torch.randn(2, 32, 14, 14, generator=g).contiguous(memory_format=torch.channels_last)
    assert torch.equal(knn_edges(y, 6), rule(y, 6))
    assert knn._buffers.scratch is kept and calls[0] == 2


def test_every_candidate_kept_and_channels_last(calls):
    """k*d equal to the candidate count (the selection's whole row), a channels-last map."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 5, 7, generator=g).contiguous(memory_format=torch.channels_last)
    assert torch.equal(knn_edges(x, 35), rule(x, 35))
    assert calls[0] == 1


@pytest.mark.parametrize("openmp", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("images,r", [(3, 1), (1, 1), (3, 3)])
def test_thread_splits_agree(monkeypatch, openmp, threads, images, r):
    """Rows split over OpenMP threads, over Python threads (a build without OpenMP), or not
    at all: the same edges. With at least as many images as threads each thread takes
    whole images (the symmetric path where the keys are the queries), else rows (split
    within an image: the row-by-row path)."""
    calls = spy_native(monkeypatch, "vig_nearest_rows", "vig_nearest", openmp=openmp)
    monkeypatch.setattr(knn, "FUSED_WORK_PER_THREAD", 1)
    g = torch.Generator().manual_seed(threads)
    x = torch.randn(images, 20, 9, 9, generator=g)
    rel = torch.randn(81, 81 // r ** 2, generator=g) * 0.2
    keys = F.avg_pool2d(x, r, r) if r > 1 else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = knn_edges(x, 4, dilation=2, reduce_ratio=r, relative_pos=rel)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, rule(x, 4, 2, keys, rel))
    split_in_python = threads > 1 and not openmp
    assert calls == [0, threads] if split_in_python else calls == [1, 0]


def test_symmetric_and_row_paths_on_large_images(calls):
    """An image past the symmetric path's buffer (625 nodes) takes the row-by-row path;
    both give the rule's edges, with and without a relative-position term."""
    g = torch.Generator().manual_seed(2)
    for h, w in ((25, 25), (14, 14)):
        x = torch.randn(2, 12, h, w, generator=g)
        rel = torch.randn(h * w, h * w, generator=g) * 0.1
        assert torch.equal(knn_edges(x, 9, relative_pos=rel), rule(x, 9, 1, None, rel))
        assert torch.equal(knn_edges(x, 5, dilation=3), rule(x, 5, 3))
    assert calls[0] == 4


def test_random_ranks_take_every_candidate_from_the_fused_pass(calls, monkeypatch):
    """Stochastic dilation in training draws ranks in Python: the fused pass hands over all
    k*d candidates, and the edges equal the matmul path's under the same draws."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 10, 7, 7, generator=g)
    kw = dict(dilation=3, stochastic=True, epsilon=1.0, training=True)
    torch.manual_seed(0)
    got = knn_edges(x, 4, **kw)
    monkeypatch.setattr(knn, "fused", False)
    torch.manual_seed(0)
    assert torch.equal(got, knn_edges(x, 4, **kw))
    assert calls[0] == 1
    torch.manual_seed(0)
    ranks = torch.randperm(12)[:4].sort().values if float(torch.rand(1)) < 1.0 else None
    full = rule(x, 12)[0].view(-1, 12)
    assert torch.equal(got[0].view(-1, 4), full[:, ranks])


def test_nan_rows_sort_last_as_in_the_matmul_path(calls, monkeypatch):
    """Under CPU autocast a NaN does not stop the graph (GradScaler's case): its distances
    sort after every number, exactly as in the matmul + selection path."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 6, 6, generator=g)
    x[0, :, 1, 2] = float("nan")  # query and key node 8 of image 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = knn_edges(x, 5)
        monkeypatch.setattr(knn, "fused", False)
        assert torch.equal(got, knn_edges(x, 5))
    assert calls[0] == 1
    assert not (got[0, :5 * 36].view(36, 5)[[i for i in range(36) if i != 8]] == 8).any()


def test_where_it_steps_aside(calls, monkeypatch):
    """Keys larger than FUSED_MAX_KEY_FLOATS (channels x keys padded to 16, the keys one
    image holds transposed), float64, the switch off and the library off take the matmul
    path, with the same edges as the rule."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 20, 6, 6, generator=g)  # 36 keys, padded to 48
    for limit, fused_calls in ((20 * 48 - 1, 0), (20 * 48, 1)):
        monkeypatch.setattr(knn, "FUSED_MAX_KEY_FLOATS", limit)
        assert torch.equal(knn_edges(x, 4), rule(x, 4))
        assert calls == [fused_calls, 0]
        calls[0] = 0
    for limit, fused_calls in ((20 * 16 - 1, 0), (20 * 16, 1)):  # 9 pooled keys
        monkeypatch.setattr(knn, "FUSED_MAX_KEY_FLOATS", limit)
        assert torch.equal(knn_edges(x, 4, reduce_ratio=2),
                           rule(x, 4, keys=F.avg_pool2d(x, 2, 2)))
        assert calls == [fused_calls, 0]
        calls[0] = 0
    assert torch.equal(knn_edges(x.double(), 4), rule(x, 4))
    monkeypatch.setattr(knn, "fused", False)
    assert torch.equal(knn_edges(x, 4), rule(x, 4))
    monkeypatch.setattr(knn, "fused", True)
    monkeypatch.setattr(select, "native", False)
    assert torch.equal(knn_edges(x, 4), rule(x, 4))
    assert calls == [0, 0]


def test_l2_cache_bytes_reads_sysfs(tmp_path):
    """The level-2 data or unified cache of sysfs's cache/index* entries, in K or M; the
    default where there is none."""
    def entry(i, level, kind, size):
        d = tmp_path / "cache" / f"index{i}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(value + "\n")

    assert knn.l2_cache_bytes(123, str(tmp_path)) == 123
    entry(0, "1", "Data", "48K")
    entry(1, "1", "Instruction", "32K")
    assert knn.l2_cache_bytes(123, str(tmp_path)) == 123
    entry(2, "2", "Unified", "2048K")
    assert knn.l2_cache_bytes(123, str(tmp_path)) == 2 << 20
    (tmp_path / "cache" / "index2" / "size").write_text("1M\n")
    assert knn.l2_cache_bytes(123, str(tmp_path)) == 1 << 20


def test_portable_build(monkeypatch):
    """The build without AVX-512 (``-DVIG_PORTABLE``: generic 16-wide vectors, the portable
    selection) gives the rule's edges too."""
    try:
        lib = select._open(select._build(("-DVIG_PORTABLE",)))
    except (OSError, select.subprocess.SubprocessError) as exc:
        pytest.skip(f"the portable build failed here: {exc}")
    calls = spy_native(monkeypatch, "vig_nearest_rows", "vig_nearest", lib=lib)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 40, 10, 10, generator=g)
    rel = torch.randn(100, 25, generator=g) * 0.3
    keys = F.avg_pool2d(x, 2, 2)
    assert torch.equal(knn_edges(x, 7, reduce_ratio=2, relative_pos=rel),
                       rule(x, 7, 1, keys, rel))
    assert torch.equal(knn_edges(x, 5, dilation=3), rule(x, 5, 3))
    assert sum(calls) == 2


def test_normalisation_inside_and_its_errors(calls):
    """The pass normalises the rows itself, as ``_normalize.c`` does: entries whose squares
    overflow float32 still give the rule's edges, and a NaN or an infinity in the queries
    or in separately given keys is refused with the matmul path's message."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 8, 6, 6, generator=g)
    big = x * 1e30
    assert torch.equal(knn_edges(big, 5), rule(x, 5))
    keys = torch.randn(2, 8, 3, 3, generator=g)
    assert torch.equal(knn_edges(x, 4, keys=keys * 1e30), rule(x, 4, 1, keys))
    assert calls[0] == 2
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 2, 0, 1] = bad
        with pytest.raises(ValueError, match="node features contain NaN or Inf"):
            knn_edges(y, 4)
        bad_keys = keys.clone()
        bad_keys[0, 3, 2, 2] = bad
        with pytest.raises(ValueError, match="key features contain NaN or Inf"):
            knn_edges(x, 4, keys=bad_keys)
    assert calls[0] == 6
