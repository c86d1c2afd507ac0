r"""The ``kd`` smallest entries of every row of a distance matrix: the selection step of the
dense kNN backend.

``torch.topk`` on the CPU handles each row with a general-purpose ``nth_element`` over
(value, index) pairs. For ViG's shapes (a few hundred candidates per query, ``kd`` between
9 and a few dozen, tens of thousands of queries) that costs about a microsecond per row and
is most of the kNN's time. :func:`smallest_k` does the same selection in three passes over
the row (``vig_pyg/native/_select.c``):

1. split the row into ``G`` groups, ``G`` = ``kd`` rounded up to a multiple of 16 (column
   ``j`` in group ``j mod G``, so the group minima are an elementwise minimum of ``G``-wide
   slices, 16-wide vectors) and take ``u``, the ``kd``-th smallest group minimum: ``kd``
   distinct entries are ``<= u``, so every one of the ``kd`` smallest is too (above 64
   groups ``u`` is simply the largest minimum);
2. gather the entries ``<= u`` (about 1.3-2 times ``kd`` of them on ViG's rows), in index
   order, with a vector compress (AVX-512) or a branch-free loop;
3. give each candidate its place in the stable order by counting the candidates smaller
   than it and the equal ones before it (with AVX-512, 16 candidates at once, one per
   lane, against each candidate in turn), and write the ``kd`` places below ``kd``.

Rows with fewer than five entries per selected one (vig_ti's last blocks keep 45-54 of 196;
pvig_ti's last stage 36 of 49) replace passes 1 and 2, as the group minima prune little
there: a 64-bucket histogram over ``[min, max]`` of the row finds the first bucket at which
the running count reaches ``kd``, and every entry up to that bucket is gathered (the same
monotone bucket function in both loops, so rounding cannot drop one; rows that are constant
or hold an infinity are gathered whole).

Passes 1 and 2 read the row at memory speed; the places are counted with vector compares
(``c x c`` of them for ``c`` candidates) instead of a sort, whose branches mispredict on
random distances. No pass branches on the data: the ``kd``-th group minimum is found by
counting every minimum's rank at once, and a candidate's index is written to its place or
to a sink past the ``kd`` kept (with a branch per minimum and per candidate, each taken
about half the time, the selection took 1.8x as long on vig_ti's rows). The result is the
exact ``kd`` smallest in ascending order, ties in index order (what
``torch.sort(stable=True)`` gives; ``torch.topk`` leaves the order of ties unspecified) and
NaN after every number (as ``torch.topk`` with ``largest=False`` places it).
``benchmarks/bench_knn.py --select`` compares it with ``torch.topk`` on ViG's shapes.
The kNN's single pass (``_nearest.c``) selects eight rows at a time (``vig_select_block``):
pass 1 of the eight rows runs side by side where ``kd <= 32``, since one row's minima,
counts and maximum are a chain of dependent steps that mostly waits on latency.
Without AVX-512 (or with ``-DVIG_PORTABLE``) the same passes run as portable loops; the
tests check both builds.

The rows are split over torch's own OpenMP threads where the library joins torch's runtime
(:func:`vig_pyg.native.build.openmp_flags`), else over Python threads
(:func:`vig_pyg.native.executor`). Where the library does not apply
(:func:`vig_pyg.native.library_for`: no compiler, not float32 on the CPU, the fast path
``"select"`` off (:mod:`vig_pyg.fast_paths`), while ``torch.compile``/``torch.export``/ONNX
trace or a dispatch mode records) :func:`smallest_k` uses ``torch.topk`` instead, with the
same set of indices; so does ``kd`` above :data:`vig_pyg.native.MAX_KD` (the C file's
buffers).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import native

__all__ = ["smallest_k"]

#: Below this many rows one thread does the whole matrix (a thread hand-off costs more).
ROWS_PER_THREAD = 512


def smallest_k(dist: Tensor, kd: int) -> Tensor:
    """Indices ``[..., kd]`` (int64) of the ``kd`` smallest entries along the last dim of
    ``dist``, ascending; ``kd <= dist.size(-1)``."""
    m = dist.size(-1)
    if not 0 < kd <= m:
        raise ValueError(f"kd must be in [1, {m}] (the candidates per row), got {kd}")
    lib = native.library_for(dist, "select") if kd <= native.MAX_KD else None
    if lib is None or dist.numel() == 0:
        return dist.topk(kd, dim=-1, largest=False, sorted=True).indices
    flat = dist.reshape(-1, m).contiguous()
    rows = flat.size(0)
    out = torch.empty(rows, kd, dtype=torch.long)
    threads = max(1, min(torch.get_num_threads(), rows // ROWS_PER_THREAD))
    # per thread: m values and m int32 indices, each with a vector's slack (_select.c)
    scratch = torch.empty(threads, 2 * (m + native.LANES))
    whole = (flat.data_ptr(), rows, m, kd, out.data_ptr(), scratch.data_ptr())
    if threads == 1:
        lib.vig_select_smallest(*whole)
        return out.view(*dist.shape[:-1], kd)
    if lib.vig_select_openmp():  # on torch's own OpenMP threads
        lib.vig_select_rows(*whole, threads)
        return out.view(*dist.shape[:-1], kd)
    _on_python_threads(lib, flat, out, scratch, kd)
    return out.view(*dist.shape[:-1], kd)


def _on_python_threads(lib, flat: Tensor, out: Tensor, scratch: Tensor, kd: int) -> None:
    """The rows split into one block per scratch row, each selected on a thread of the
    native pool (ctypes drops the GIL during the call, so the blocks run in parallel)."""
    rows, m = flat.shape
    step = -(-rows // scratch.size(0))
    calls = [(flat.data_ptr() + s * m * 4, min(step, rows - s), m, kd,
              out.data_ptr() + s * kd * 8, scratch[i].data_ptr())
             for i, s in enumerate(range(0, rows, step))]
    for job in [native.executor().submit(lib.vig_select_smallest, *c) for c in calls]:
        job.result()
