"""The dense kNN's single pass of distances + selection (``native/_nearest.c``, used by
``knn._single_pass_nearest``): against the float64 rule written out here, against the
matmul + selection path it replaces, on every thread split and in the build without AVX-512."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F

from native_helpers import spy_native
from vig_pyg import fast_paths
from vig_pyg.graph import knn, knn_edges
from vig_pyg.native import build, library

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
    """Counts the single pass's entry points: [whole matrix, row range]."""
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
def test_single_pass_matches_rule_and_matmul_path(calls, b, c, h, w, k, d, r, with_rel):
    g = torch.Generator().manual_seed(b * 100 + c)
    x = torch.randn(b, c, h, w, generator=g)
    keys = F.avg_pool2d(x, r, r) if r > 1 else None
    m = (h // r) * (w // r)
    rel = torch.randn(h * w, m, generator=g) * 0.3 if with_rel else None
    got = knn_edges(x, k, dilation=d, reduce_ratio=r, relative_pos=rel)
    assert sum(calls) == 1
    assert torch.equal(got, rule(x, k, d, keys, rel))
    with fast_paths.disabled("single_pass"):
        assert torch.equal(got, knn_edges(x, k, dilation=d, reduce_ratio=r, relative_pos=rel))
    assert sum(calls) == 1


@pytest.mark.parametrize("b,c,h,w,k,d,r,with_rel", CASES)
def test_direct_call_of_channels_last_maps(calls, monkeypatch, b, c, h, w, k, d, r, with_rel):
    """A channels-last map with channels-last pooled keys (a Grapher's call) goes to the
    single pass without the general path (``knn._single_pass_map``): the rule's edges, equal to the
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
    with fast_paths.disabled("knn_direct"):
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
    monkeypatch.setattr(knn, "SINGLE_PASS_WORK_PER_THREAD", 1)
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


def test_random_ranks_take_every_candidate_from_the_single_pass(calls):
    """Stochastic dilation in training draws ranks in Python: the single pass hands over all
    k*d candidates, and the edges equal the matmul path's under the same draws."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 10, 7, 7, generator=g)
    kw = dict(dilation=3, stochastic=True, epsilon=1.0, training=True)
    torch.manual_seed(0)
    got = knn_edges(x, 4, **kw)
    torch.manual_seed(0)
    with fast_paths.disabled("single_pass"):
        assert torch.equal(got, knn_edges(x, 4, **kw))
    assert calls[0] == 1
    torch.manual_seed(0)
    ranks = torch.randperm(12)[:4].sort().values if float(torch.rand(1)) < 1.0 else None
    full = rule(x, 12)[0].view(-1, 12)
    assert torch.equal(got[0].view(-1, 4), full[:, ranks])


def test_nan_rows_sort_last_as_in_the_matmul_path(calls):
    """Under CPU autocast a NaN does not stop the graph (GradScaler's case): its distances
    sort after every number, exactly as in the matmul + selection path."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 6, 6, generator=g)
    x[0, :, 1, 2] = float("nan")  # query and key node 8 of image 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = knn_edges(x, 5)
        with fast_paths.disabled("single_pass"):
            assert torch.equal(got, knn_edges(x, 5))
    assert calls[0] == 1
    assert not (got[0, :5 * 36].view(36, 5)[[i for i in range(36) if i != 8]] == 8).any()


def test_where_it_steps_aside(calls, monkeypatch):
    """Keys larger than SINGLE_PASS_MAX_KEY_FLOATS (channels x keys padded to 16, the keys one
    image holds transposed), float64, the switch off and the library off take the matmul
    path, with the same edges as the rule."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 20, 6, 6, generator=g)  # 36 keys, padded to 48
    for limit, single_pass_calls in ((20 * 48 - 1, 0), (20 * 48, 1)):
        monkeypatch.setattr(knn, "SINGLE_PASS_MAX_KEY_FLOATS", limit)
        assert torch.equal(knn_edges(x, 4), rule(x, 4))
        assert calls == [single_pass_calls, 0]
        calls[0] = 0
    for limit, single_pass_calls in ((20 * 16 - 1, 0), (20 * 16, 1)):  # 9 pooled keys
        monkeypatch.setattr(knn, "SINGLE_PASS_MAX_KEY_FLOATS", limit)
        assert torch.equal(knn_edges(x, 4, reduce_ratio=2),
                           rule(x, 4, keys=F.avg_pool2d(x, 2, 2)))
        assert calls == [single_pass_calls, 0]
        calls[0] = 0
    assert torch.equal(knn_edges(x.double(), 4), rule(x, 4))
    with fast_paths.disabled("single_pass"):
        assert torch.equal(knn_edges(x, 4), rule(x, 4))
    with fast_paths.disabled(*fast_paths.NATIVE):  # the library off
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
        lib = library.open_library(build.build(build.PORTABLE))
    except (OSError, subprocess.SubprocessError) as exc:
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
