"""The kNN's compiled row normalisation (native/_normalize.c) against float64 by hand."""
import subprocess

import pytest
import torch

from vig_pyg import fast_paths
from vig_pyg.graph import knn as knn_mod
from vig_pyg.native import build, library


def _reference(x: torch.Tensor):
    """float64: x / max(|x|, 1e-12) and the squared norm of that, row by row."""
    x = x.double()
    norm = x.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(1e-12)
    y = x / norm
    return y, y.pow(2).sum(-1)


def _libs():
    built = [("native", library.load())]
    try:
        built.append(("portable", library.open_library(build.build(build.PORTABLE))))
    except (OSError, subprocess.SubprocessError):
        pass
    return [(name, lib) for name, lib in built if lib is not None]


@pytest.fixture(params=["native", "portable"])
def lib(request, monkeypatch):
    libs = dict(_libs())
    if request.param not in libs:
        pytest.skip(f"the {request.param} build is not available here")
    monkeypatch.setattr(library, "load", lambda: libs[request.param])
    return libs[request.param]


@pytest.mark.parametrize("shape", [(4, 196, 192), (2, 33, 7), (1, 5, 16), (3, 49, 384)])
def test_rows_and_squared_norms_match_float64(lib, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g) * torch.rand(*shape[:-1], 1, generator=g) * 50
    x[0, 0] = 0.0  # a zero row: the clamp keeps it zero, as in torch's rule
    y, sq = knn_mod._normalize(x, "node features")
    ref_y, ref_sq = _reference(x)
    assert y.dtype == sq.dtype == torch.float32 and sq.shape == shape[:-1]
    # float32 division of a row by its (float32-rounded) norm: a few ulps of 1
    assert torch.allclose(y.double(), ref_y, rtol=0, atol=4e-7)
    assert torch.allclose(sq.double(), ref_sq, rtol=0, atol=4e-7)
    assert float(sq[0, 0]) == 0.0 and bool((y[0, 0] == 0).all())


def test_rows_are_the_rounded_quotients_of_their_norms(lib):
    """Each output entry is float32 division x / n with n the row's norm rounded to float32
    (summed in double): the AVX-512 build multiplies by 1/n and corrects the quotient
    instead of dividing, which must give the same bits. Rows of every scale (norms from
    1e-30 to 1e30: the outer ones divide outright), with tiny, subnormal, zero and
    negative-zero entries (lanes the correction leaves to a division)."""
    g = torch.Generator().manual_seed(5)
    rows, c = 4096, 48
    x = torch.randn(rows, c, generator=g)
    x *= torch.logspace(-30, 30, rows).view(rows, 1)[torch.randperm(rows, generator=g)]
    x[::7, 3] = 1e-33
    x[::11, 5] = 1e-40  # subnormal
    x[::13, 8] = 0.0
    x[::17, 9] = -0.0
    x[::19] *= 1e-6  # quotients of every size within a row
    y, _ = knn_mod._normalize(x, "node features")
    norm = x.double().pow(2).sum(-1, keepdim=True).sqrt().float().clamp_min(1e-12)
    expect = x / norm
    assert torch.equal(y, expect)
    assert bool((y.view(torch.int32) == expect.view(torch.int32)).all())  # -0.0 kept


def test_non_contiguous_rows_and_threads(lib, monkeypatch):
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(2, 64, 40, 40, generator=g)  # channels-first: rows are strided
    rows = fmap.permute(0, 2, 3, 1).reshape(2, 1600, 64)
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        y, sq = knn_mod._normalize(rows, "node features")
        ref_y, ref_sq = _reference(rows)
        assert torch.allclose(y.double(), ref_y, rtol=0, atol=4e-7)
        assert torch.allclose(sq.double(), ref_sq, rtol=0, atol=4e-7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 3e38])
def test_nan_inf_and_overflowing_norms_refused(lib, bad):
    x = torch.randn(2, 50, 16)
    x[1, 7, 3] = bad
    if bad == 3e38:  # finite, but the row's norm is beyond float32: torch's rule refuses too
        x[1, 7, 4] = bad
    with pytest.raises(ValueError, match="node features contain NaN or Inf"):
        knn_mod._normalize(x, "node features")


@pytest.mark.parametrize("c", [4, 48])  # the tail loop, and the 16-lane loop
def test_large_finite_entries_are_normalised(lib, c):
    x = torch.zeros(1, 3, c)
    x[0, 0, 1], x[0, 0, c - 2] = 3e30, 4e30  # squares overflow float32, the norm does not
    y, sq = knn_mod._normalize(x, "node features")
    expect = torch.zeros(c)
    expect[1], expect[c - 2] = 0.6, 0.8
    assert torch.allclose(y[0, 0], expect)
    assert abs(float(sq[0, 0]) - 1.0) < 1e-6


def test_autocast_skips_the_check_as_the_torch_path_does(lib):
    x = torch.randn(1, 10, 8)
    x[0, 2, 1] = float("nan")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = knn_mod._normalize(x, "node features")  # GradScaler's job, not a crash
    assert bool(y[0, 2].isnan().all()) and bool(y[0, 3].isfinite().all())


@pytest.mark.parametrize("enabled", [True, False])
def test_overflowing_squares_in_both_paths_give_the_rule(enabled):
    """Entries whose squares overflow float32 (a 1e20-scaled map, as a freshly initialised
    `gin` model reaches in eval mode) normalise to the rows of the unscaled map in the
    compiled pass and in the torch path alike; a norm beyond float32's range is refused by
    both."""
    with fast_paths.disabled(*(() if enabled else ("normalize",))):
        x = torch.randn(2, 30, 12)
        y, sq = knn_mod._normalize(x * 1e20, "node features")
        ref_y, ref_sq = _reference(x)
        assert torch.allclose(y.double(), ref_y, rtol=0, atol=4e-7)
        assert torch.allclose(sq.double(), ref_sq, rtol=0, atol=4e-7)
        huge = torch.zeros(1, 2, 4)
        huge[0, 1] = 3e38  # finite entries, a norm of 6e38
        with pytest.raises(ValueError, match="node features contain NaN or Inf"):
            knn_mod._normalize(huge, "node features")


@fast_paths.disabled("normalize")
def test_torch_path_where_native_is_off():
    x = torch.randn(2, 30, 12)
    y, sq = knn_mod._normalize(x, "node features")
    ref_y, ref_sq = _reference(x)
    assert torch.allclose(y.double(), ref_y, rtol=0, atol=4e-7)
    assert torch.allclose(sq.double(), ref_sq, rtol=0, atol=4e-7)
