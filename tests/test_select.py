"""The kNN's selection step (``vig_pyg.graph.selection.smallest_k``): the compiled three-pass
selection against a stable float64 sort, and against ``torch.topk`` (its fallback)."""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import pytest
import torch

from vig_pyg import fast_paths, native
from vig_pyg.graph import knn_edges
from vig_pyg.graph.selection import smallest_k
from vig_pyg.native import build, library

needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None,
                              reason="no C compiler: the native selection falls back to topk")


def _spy(monkeypatch, lib, openmp: bool | None = None) -> list:
    """Installs ``lib`` as the compiled selection; ``calls[0]`` counts the calls reaching
    either entry point. ``openmp=False`` hides the library's OpenMP build (so the rows go
    to Python threads)."""
    calls = [0]

    class Spy:
        def vig_select_smallest(self, *args):
            calls[0] += 1
            return lib.vig_select_smallest(*args)

        def vig_select_rows(self, *args):
            calls[0] += 1
            return lib.vig_select_rows(*args)

        def vig_select_openmp(self):
            return lib.vig_select_openmp() if openmp is None else int(openmp)

        def __getattr__(self, name):  # the library's other kernels, uncounted
            return getattr(lib, name)

    spy = Spy()
    monkeypatch.setattr(library, "load", lambda: spy)
    return calls


@pytest.fixture
def native_calls(monkeypatch):
    """Counts the calls that reach the compiled selection (``calls[0]``)."""
    lib = library.load()
    if lib is None:
        pytest.skip("the native selection could not be built here")
    return _spy(monkeypatch, lib)


def _hard_rows(g: torch.Generator) -> torch.Tensor:
    """Random rows of 196, and rows the short-row pass must gather whole (constant, holding
    an infinity or NaN, a range too narrow for its buckets) or with many ties."""
    dist = torch.randn(400, 196, generator=g)
    dist[1] = 3.0                                       # constant
    dist[2, 7] = float("inf")
    dist[3, 11] = -float("inf")
    dist[4, ::5] = float("nan")
    dist[5] = torch.arange(196) * 1e-45                 # a range of denormals
    dist[6] = torch.randint(0, 3, (196,), generator=g).float()  # three values, many ties
    return dist


def _reference(dist: torch.Tensor, kd: int) -> torch.Tensor:
    """The rule: ascending, NaN after every number (as +inf), ties in index order."""
    key = torch.where(dist.isnan(), torch.inf, dist.double())
    return torch.sort(key, dim=-1, stable=True).indices[..., :kd]


@needs_cc
@pytest.mark.parametrize("rows,m,kd", [(7, 6, 1), (7, 13, 2), (300, 196, 9), (3000, 196, 27),
                                       (1500, 784, 18), (40, 400, 64), (300, 196, 39),
                                       (20, 500, 100)])
def test_native_selection_is_the_stable_sort(native_calls, rows, m, kd):
    g = torch.Generator().manual_seed(rows + m + kd)
    dist = torch.randn(rows, m, generator=g)
    got = smallest_k(dist, kd)
    assert native_calls[0] >= 1
    assert got.dtype == torch.long and got.shape == (rows, kd)
    assert torch.equal(got, _reference(dist, kd))
    # on distinct values torch.topk (the fallback) gives the same indices in the same order
    assert torch.equal(got, dist.topk(kd, dim=-1, largest=False).indices)


@needs_cc
def test_native_selection_ties_nan_and_inf(native_calls):
    g = torch.Generator().manual_seed(0)
    dist = torch.randint(0, 4, (600, 240), generator=g).float()  # many ties
    dist[3, 5] = float("nan")
    dist[4] = float("nan")                                        # a row of NaN
    dist[5, ::2] = float("inf")
    dist[6] = -float("inf")
    for kd in (1, 10, 40):
        assert torch.equal(smallest_k(dist, kd), _reference(dist, kd)), kd
    assert native_calls[0] >= 3


@needs_cc
@pytest.mark.parametrize("openmp", [None, False])
def test_batched_shape_and_threads_agree(monkeypatch, openmp):
    """``[G, N, M]`` input (the kNN's chunks) on two threads (the library's OpenMP region
    where it has one, else our Python threads) and on one."""
    lib = library.load()
    if lib is None:
        pytest.skip("the native selection could not be built here")
    calls = _spy(monkeypatch, lib, openmp)
    g = torch.Generator().manual_seed(1)
    dist = torch.randn(4, 1100, 80, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = smallest_k(dist, 12)
        torch.set_num_threads(1)
        one = smallest_k(dist, 12)
    finally:
        torch.set_num_threads(threads)
    assert two.shape == (4, 1100, 12)
    assert torch.equal(two, one) and torch.equal(two, _reference(dist, 12))
    # one call for the OpenMP region or two for two Python threads, then one
    assert calls[0] == (2 if openmp is None and lib.vig_select_openmp() else 3)


def test_openmp_build_joins_torchs_runtime():
    """Built with OpenMP only where torch runs on a libgomp that is already loaded, and then
    the process still holds one OpenMP runtime: the library's parallel region runs on
    torch's worker threads, not on a second pool."""
    lib = library.load()
    if lib is None:
        pytest.skip("the native selection could not be built here")
    if not build.openmp_flags():
        assert not lib.vig_select_openmp()
        pytest.skip("torch's OpenMP runtime is not a loaded libgomp here: no OpenMP build")
    assert lib.vig_select_openmp()
    # our library needs "libgomp.so.1": a second file of that name mapped would be a second
    # runtime (other packages' copies, e.g. scikit-learn's, carry other names)
    with open("/proc/self/maps") as fh:
        runtimes = {line.split()[-1] for line in fh if line.rstrip().endswith("/libgomp.so.1")}
    assert runtimes == {build.torch_libgomp()}, runtimes


@needs_cc
def test_hard_rows_both_passes(native_calls):
    """The hard rows against the rule, through the group-minima bound (k*d = 9, 27) and the
    histogram pass for rows with fewer than five candidates per kept one (40, 54, 196)."""
    dist = _hard_rows(torch.Generator().manual_seed(4))
    for kd in (9, 27, 40, 54, 196):
        assert torch.equal(smallest_k(dist, kd), _reference(dist, kd)), kd
    assert native_calls[0] == 5


def _select_block(lib, dist: torch.Tensor, rows: int, kd: int) -> torch.Tensor:
    """``vig_select_block`` on the first ``rows`` of eight rows of ``dist`` (its row pointers
    in a C array, as the single pass hands them over)."""
    import ctypes

    dist = dist.contiguous()
    m = dist.size(1)
    pointers = (ctypes.c_void_p * 8)(*(dist[r].data_ptr() for r in range(8)))
    idx = torch.full((8, kd), -1, dtype=torch.long)
    cv = torch.empty(m + 16)
    ci = torch.empty(m + 16, dtype=torch.int32)
    lib.vig_select_block(pointers, rows, m, kd, idx.data_ptr(), cv.data_ptr(), ci.data_ptr())
    return idx[:rows]


@needs_cc
@pytest.mark.parametrize("kd", [1, 9, 16, 17, 27, 32, 40])
def test_block_selection_is_the_stable_sort(kd):
    """The single pass's selection of eight rows at once (``vig_select_block``: the rows'
    group-minima bounds found together where k*d <= 32, one or two vectors of minima;
    per row otherwise): the rule's indices on random rows, on the hard rows (one whose
    bound is infinite, so that its NaN must be gathered as +inf), and on a last, partial
    block whose unselected rows are NaN."""
    lib = library.load()
    if lib is None:
        pytest.skip("the native selection could not be built here")
    g = torch.Generator().manual_seed(kd)
    hard = _hard_rows(g)[:8]
    hard[7, 3::2] = float("inf")  # three finite values, then infinities and NaN (as +inf,
    hard[7, 4::2] = float("nan")  # in index order): for k*d > 3 the bound is infinite
    nan_tail = torch.randn(8, 217, generator=g)
    nan_tail[3:] = float("nan")
    plain = torch.randn(8, 213, generator=g)
    plain[0] = torch.arange(213.0)  # the groups' minima are the smallest values: a bound
    plain[1] = plain[0].flip(0)     # from too few groups would leave out some of the k*d
    zeros = torch.randn(8, 200, generator=g).abs() + 1
    zeros[:, 5::7] = 0.0  # signed zeros are equal: the minima's order may mix them
    zeros[:, 9::11] = -0.0
    for dist, rows in [(plain, 8), (hard, 8), (nan_tail, 3), (zeros, 8),
                       (torch.randint(0, 3, (8, 240), generator=g).float(), 5)]:
        assert torch.equal(_select_block(lib, dist, rows, kd), _reference(dist[:rows], kd))


def test_sorting_network_of_the_block_bounds_sorts():
    """``NET16`` in ``_select.c`` (the compare-exchanges that sort each group of the eight
    rows' minima, k*d <= 16) sorts all 2^16 inputs of zeros and ones, so it sorts every
    input (Knuth's 0-1 principle). Read from the C source, applied here in NumPy."""
    import re
    from pathlib import Path

    import numpy as np

    source = (Path(build.__file__).with_name("_select.c")).read_text()
    table = re.search(r"NET16\[(\d+)\]\[2\] = \{(.*?)\};", source, re.S)
    pairs = [(int(a), int(b)) for a, b in re.findall(r"\{(\d+), (\d+)\}", table.group(2))]
    assert len(pairs) == int(table.group(1)) == 63
    v = (np.arange(1 << 16)[:, None] >> np.arange(16)) & 1  # every 0/1 input, a row each
    for a, b in pairs:
        assert a < b
        v[:, a], v[:, b] = np.minimum(v[:, a], v[:, b]), np.maximum(v[:, a], v[:, b])
    assert (np.diff(v, axis=1) >= 0).all()


@needs_cc
def test_portable_build_is_the_stable_sort(monkeypatch):
    """The loops without AVX-512 (``-DVIG_PORTABLE``; the build on most other processors)
    give the same indices as the rule: both passes, the many-groups bound, ties, NaN and
    the rows the short-row pass gathers whole."""
    try:
        lib = library.open_library(build.build(build.PORTABLE))
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the portable build failed here: {exc}")
    calls = _spy(monkeypatch, lib)
    g = torch.Generator().manual_seed(5)
    for rows, m, kd in [(300, 196, 9), (50, 49, 36), (20, 300, 100), (7, 6, 1)]:
        dist = torch.randn(rows, m, generator=g)
        dist[0, :3] = float("nan")
        dist[1, 5] = float("inf")
        assert torch.equal(smallest_k(dist, kd), _reference(dist, kd)), (rows, m, kd)
    hard = _hard_rows(g)
    for kd in (9, 27, 54):  # group-minima bound, then the histogram pass
        assert torch.equal(smallest_k(hard, kd), _reference(hard, kd)), kd
    ties = torch.randint(0, 4, (200, 240), generator=g).float()
    assert torch.equal(smallest_k(ties, 40), _reference(ties, 40))
    assert calls[0] == 8


def test_no_rows_give_empty_indices(native_calls):
    for empty in (torch.randn(0, 60), torch.randn(2, 0, 60)):  # no queries
        got = smallest_k(empty, 5)
        assert got.shape == (*empty.shape[:-1], 5) and got.dtype == torch.long
    assert native_calls[0] == 0


def test_fallback_where_native_does_not_apply():
    g = torch.Generator().manual_seed(2)
    dist = torch.randn(50, 30, generator=g)
    assert torch.equal(smallest_k(dist.double(), 7), _reference(dist, 7))  # float64: topk
    wide = torch.randn(3, 1100, generator=g)  # k*d beyond the C file's buffers: topk
    assert torch.equal(smallest_k(wide, 1050), _reference(wide, 1050))
    with fast_paths.disabled("select"):
        assert torch.equal(smallest_k(dist, 7), _reference(dist, 7))
    with pytest.raises(ValueError, match=r"kd must be in \[1, 30\]"):
        smallest_k(dist, 31)


@needs_cc
def test_library_builds_where_a_compiler_exists(tmp_path, monkeypatch):
    """Where there is a C compiler, the C files compile, with and without AVX-512: a
    compile error in them must fail here, not only turn the kernels' tests into skips and
    the library into its torch fallback."""
    monkeypatch.setenv("VIG_PYG_CACHE", str(tmp_path))
    for extra in (build.openmp_flags(), build.PORTABLE):
        try:
            lib = library.open_library(build.build(extra))
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"the C files do not compile with {extra}:\n{exc.stderr}")
        assert lib.vig_select_openmp() in (0, 1)


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(library, "_lib", None)  # not loaded yet
    monkeypatch.setenv("VIG_PYG_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    dist = torch.randn(20, 16)
    with pytest.warns(RuntimeWarning, match="could not be built.*torch.topk"):
        got = smallest_k(dist, 2)
    assert torch.equal(got, _reference(dist, 2))
    assert library._lib is False and not any(tmp_path.glob("*.so"))
    with warnings.catch_warnings():  # the failure is remembered: no second build, no warning
        warnings.simplefilter("error")
        assert not native.available()
        assert torch.equal(smallest_k(dist, 2), _reference(dist, 2))


@needs_cc
@pytest.mark.parametrize("k,reduce_ratio,dilation", [(9, 1, 2), (4, 2, 1)])
@fast_paths.disabled("single_pass")  # the matmul + selection (the single pass: test_nearest.py)
def test_knn_edges_native_equals_topk(native_calls, k, reduce_ratio, dilation):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 16, 12, 12, generator=g)
    rel = torch.randn(144, 144 // reduce_ratio ** 2, generator=g) * 0.1
    kwargs = dict(dilation=dilation, reduce_ratio=reduce_ratio, relative_pos=rel)
    compiled = knn_edges(x, k, **kwargs)
    assert native_calls[0] == 1
    with fast_paths.disabled(*fast_paths.NATIVE):  # topk and the torch normalisation
        assert torch.equal(compiled, knn_edges(x, k, **kwargs))
