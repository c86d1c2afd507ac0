r"""Neighbourhood reductions for fixed-degree graphs (the hot path of ViG).

When every target has exactly ``k`` edges, stored together and in target order (the layout
of :func:`~vig_pyg.graph.knn_edges`), the neighbours of all targets form one dense
``[N, k, C]`` block and a reduction over them is a plain tensor reduction, with no scatter.

Three things make these faster than the obvious ``x[index].view(N, k, C).amax(1)``:

- **Chunks.** The block is gathered and reduced a few hundred targets at a time into one
  reused buffer of about 1 MiB per thread (at most :data:`MAX_CHUNKS` chunks), so it is
  reduced while still in the core's cache and the full ``[N, k, C]`` tensor (tens of MiB,
  a fresh ``mmap`` with its page faults on every call) is never allocated. On GPUs the
  block is processed at once.
- **Vectorised max with a one-byte argmax.** ``max(dim)`` with indices is not vectorised
  over the channels on CPU and ``amax``'s backward builds several ``[N, k, C]`` masks;
  here ``amax`` runs the forward and, only when a gradient is needed, the winning rank
  ``r < k`` of every output is recorded as one byte (``[N, C]`` ``uint8``), so the
  backward is a single scatter of the ``[N, C]`` output gradient.
- **Tracing.** Under ``torch.compile``, ``torch.export`` or the ONNX exporter the same
  reductions are written as plain gathers and ``amax``/``sum`` (:func:`tracing`): the
  chunk loop and the custom backward are CPU-eager devices a compiler does better without.
- **Off the CPU** (a GPU) they are one gather and one reduction, ``max(dim)`` with its
  indices for the maxima: a GPU keeps the whole block in its memory anyway and is bound by
  the number of kernels it launches, and these launch the fewest (forward and backward:
  gather, reduce, scatter, index-add; ``benchmarks/bench_models.py --ops``).
- **Ties.** On a tie the highest rank gets the whole gradient (``amax`` would split it
  evenly); the total reaching the inputs is the same when tied values come from one
  source row (duplicate edges), and exact ties between distinct rows have measure zero.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import native
from ..fast_paths import cpu_path
from ..tracing import tracing

__all__ = ["gather_max", "gather_sum", "neighbour_max", "map_target_chunks",
           "chunk_targets", "tracing", "CHUNK_BYTES_PER_THREAD", "MAX_CHUNKS"]

#: Bytes of the gathered ``[chunk, k, C]`` block per intra-op thread (CPU).
CHUNK_BYTES_PER_THREAD = 1 << 20
#: At most this many chunks per call: every op is a parallel region, whose start and end
#: cost little on an idle machine but can stall for milliseconds on an oversubscribed one.
MAX_CHUNKS = 8


def chunk_targets(n: int, bytes_per_target: int, device: torch.device) -> int:
    """Targets per chunk: about :data:`CHUNK_BYTES_PER_THREAD` per thread of the largest
    per-target intermediate, at most :data:`MAX_CHUNKS` chunks; all ``n`` on GPUs."""
    if device.type != "cpu":
        return max(n, 1)
    step = CHUNK_BYTES_PER_THREAD * torch.get_num_threads() // max(1, bytes_per_target)
    return min(max(n, 1), max(1, step, -(-n // MAX_CHUNKS)))


def map_target_chunks(fn, n: int, width: int, bytes_per_target: int, like: Tensor) -> Tensor:
    """``[n, width]`` output filled chunk by chunk: ``fn(start, end, out[start:end])``
    writes the rows of targets ``start..end-1``. For row-independent computations only
    (no autograd, BatchNorm in eval mode), to keep per-edge intermediates in cache."""
    out = like.new_empty(n, width)
    step = chunk_targets(n, bytes_per_target, like.device)
    for s in range(0, n, step):
        fn(s, min(n, s + step), out[s:min(n, s + step)])
    return out


def _rank_dtype(k: int) -> torch.dtype:
    return torch.uint8 if k <= 256 else torch.int64


def _as_rank(hit: Tensor) -> Tensor:
    """A boolean ``[.., k, C]`` "equals the max" mask as integers to multiply by the ranks
    (``>=`` against the max is ``==`` and a little faster on CPU)."""
    return hit.view(torch.uint8) if hit.size(-2) <= 256 else hit.to(torch.int64)


def _gather_reduce(x_src: Tensor, index: Tensor, k: int, reduce: str, need_rank: bool):
    """``(out [N, C], rank [N, C] or None)``: ``reduce`` ("max"/"sum") over the ``k``
    gathered rows of every target, compiled (:func:`_native_gather_reduce`) or chunk by
    chunk."""
    n, c = index.numel() // k, x_src.size(1)
    out = x_src.new_empty(n, c)
    rank = x_src.new_empty(n, c, dtype=_rank_dtype(k)) if need_rank else None
    if n == 0:
        return out, rank
    if _native_gather_reduce(x_src, index, k, reduce, out, rank):
        return out, rank
    step = chunk_targets(n, k * c * x_src.element_size(), x_src.device)
    buf = x_src.new_empty(step * k, c)
    if need_rank:
        hits = torch.empty(step * k, c, dtype=torch.bool, device=x_src.device)
        ranks = torch.arange(k, dtype=_rank_dtype(k), device=x_src.device).view(1, k, 1)
    for s in range(0, n, step):
        e = min(n, s + step)
        m = e - s
        block = torch.index_select(x_src, 0, index[s * k:e * k], out=buf[:m * k])
        block = block.view(m, k, c)
        if reduce == "sum":
            torch.sum(block, 1, out=out[s:e])
            continue
        torch.amax(block, 1, out=out[s:e])
        if need_rank:
            hit = torch.ge(block, out[s:e].unsqueeze(1), out=hits[:m * k].view(m, k, c))
            torch.amax(_as_rank(hit).mul_(ranks), 1, out=rank[s:e])
    return out, rank


def _check_sources(index: Tensor, num_src: int) -> None:
    """The error ``index_select`` would give for an index outside the source rows (C reads
    whatever it is pointed at)."""
    lo, hi = torch.aminmax(index)
    if int(lo) < 0 or int(hi) >= num_src:
        raise IndexError(f"edge_index holds source node {int(lo) if int(lo) < 0 else int(hi)}"
                         f", outside the {num_src} source nodes")


def _native_gather_reduce(x_src: Tensor, index: Tensor, k: int, reduce: str, out: Tensor,
                          rank: Tensor | None) -> bool:
    """Fills ``out`` (and ``rank``) with the compiled reduction (``native/_gather.c``: each
    source row read once and reduced in place, no ``[chunk, k, C]`` block; 2-3x the chunked
    path's speed on vig_ti's shapes, ``benchmarks/bench_conv.py --gather``)
    and returns ``True``, or ``False`` where it does not apply: not float32 on the CPU, the
    fast path ``"gather"`` off (:mod:`vig_pyg.fast_paths`), ranks wider than a byte.
    Indices out of range get the error ``index_select`` would give, not a read past the
    rows."""
    lib = native.library_for(x_src, "gather")
    if lib is None or index.dtype != torch.int64 or (rank is not None
                                                     and rank.dtype != torch.uint8):
        return False
    if x_src.size(0) == 0:
        return False  # index_select names the problem
    _check_sources(index, x_src.size(0))
    x_src = x_src.contiguous()
    lib.vig_gather_reduce(x_src.data_ptr(), index.data_ptr(), out.size(0), k, out.size(1),
                          int(reduce == "max"), out.data_ptr(),
                          None if rank is None else rank.data_ptr(), torch.get_num_threads())
    return True


def _native_backward(grad: Tensor, index: Tensor, k: int, rank: Tensor | None,
                     num_src: int) -> Tensor | None:
    """The source rows' gradient by the compiled scatter (``native/_gather.c``: threads
    split the channels, so no [N, C] index tensor and no atomics), or ``None`` where it
    does not apply (as :func:`_native_gather_reduce`). The indices were valid in the
    forward."""
    lib = native.library_for(grad, "gather")
    if lib is None or index.dtype != torch.int64 or (rank is not None
                                                     and rank.dtype != torch.uint8):
        return None
    grad = grad.contiguous()
    grad_src = grad.new_zeros(num_src, grad.size(1))
    lib.vig_gather_reduce_backward(grad.data_ptr(), index.data_ptr(), grad.size(0), k,
                                   grad.size(1), None if rank is None else rank.data_ptr(),
                                   grad_src.data_ptr(), torch.get_num_threads())
    return grad_src


class _GatherMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_src: Tensor, index: Tensor, k: int) -> Tensor:
        out, rank = _gather_reduce(x_src, index, k, "max", ctx.needs_input_grad[0])
        if rank is not None:
            ctx.save_for_backward(index, rank)
            ctx.num_src = x_src.size(0)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        index, rank = ctx.saved_tensors
        n, c = rank.shape
        native = _native_backward(grad, index, index.numel() // n, rank, ctx.num_src)
        if native is not None:
            return native, None, None
        source = index.view(n, -1).gather(1, rank.long()).long()  # [N, C] winning rows
        grad_src = grad.new_zeros(ctx.num_src, c).scatter_add_(0, source, grad)
        return grad_src, None, None


class _GatherSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_src: Tensor, index: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_src, ctx.k = x_src.size(0), k
        return _gather_reduce(x_src, index, k, "sum", False)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        index, = ctx.saved_tensors
        return _scatter_sum(grad, index, ctx.k, ctx.num_src), None, None


def _scatter_sum(grad: Tensor, index: Tensor, k: int, num_src: int) -> Tensor:
    """The sources' gradient of a neighbour sum: compiled (:func:`_native_backward`) or as
    ``k`` scatters of ``[N, C]`` (no ``[N, k, C]`` tensor)."""
    native = _native_backward(grad, index, k, None, num_src)
    if native is not None:
        return native
    grad_src = grad.new_zeros(num_src, grad.size(1))
    targets = index.view(-1, k)
    for r in range(k):
        grad_src.index_add_(0, targets[:, r], grad)
    return grad_src


class _NeighbourMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, k: int) -> Tensor:
        block = rows.reshape(-1, k, rows.size(1))
        out = block.amax(1)
        if ctx.needs_input_grad[0]:
            ranks = torch.arange(k, dtype=_rank_dtype(k), device=rows.device).view(1, k, 1)
            ctx.save_for_backward(_as_rank(block >= out.unsqueeze(1)).mul_(ranks).amax(1))
            ctx.k = k
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        rank, = ctx.saved_tensors
        n, c = rank.shape
        grad_rows = grad.new_zeros(n, ctx.k, c)
        grad_rows.scatter_(1, rank.long().unsqueeze(1), grad.unsqueeze(1))
        return grad_rows.view(-1, c), None


def _wants_grad(t: Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def _block_max(block: Tensor) -> Tensor:
    """Max over dim 1 of a ``[N, k, C]`` block off the CPU: ``max(dim)`` records the winner
    as it reduces, so its backward is one scatter (``amax``'s builds masks and counts)."""
    return block.max(1).values


def gather_max(x_src: Tensor, index: Tensor, k: int) -> Tensor:
    r"""``out[i] = max_{r < k} x_src[index[i * k + r]]`` channel-wise: ``[N, C]`` for an
    ``index`` of ``N * k`` source rows (row 0 of a fixed-degree ``edge_index``)."""
    if tracing():
        return x_src.index_select(0, index).view(-1, k, x_src.size(1)).amax(1)
    if not cpu_path(x_src):
        return _block_max(x_src.index_select(0, index).view(-1, k, x_src.size(1)))
    index = index.contiguous()
    if not _wants_grad(x_src):
        return _gather_reduce(x_src, index, k, "max", False)[0]
    return _GatherMax.apply(x_src, index, k)


def gather_sum(x_src: Tensor, index: Tensor, k: int) -> Tensor:
    r"""``out[i] = sum_{r < k} x_src[index[i * k + r]]``: ``[N, C]``."""
    if tracing() or not cpu_path(x_src):
        return x_src.index_select(0, index).view(-1, k, x_src.size(1)).sum(1)
    index = index.contiguous()
    if not _wants_grad(x_src):
        return _gather_reduce(x_src, index, k, "sum", False)[0]
    return _GatherSum.apply(x_src, index, k)


def neighbour_max(rows: Tensor, k: int) -> Tensor:
    r"""``out[i] = max_{r < k} rows[i * k + r]`` channel-wise: per-edge rows ``[N * k, C]``
    (grouped by target) reduced to ``[N, C]``."""
    if not cpu_path(rows) and not tracing():
        return _block_max(rows.reshape(-1, k, rows.size(1)))
    if tracing() or not _wants_grad(rows):
        return rows.reshape(-1, k, rows.size(1)).amax(1)
    return _NeighbourMax.apply(rows, k)
