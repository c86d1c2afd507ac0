r"""The ``kd`` smallest entries of every row of a distance matrix: the selection step of the
dense kNN backend.

``torch.topk`` on the CPU handles each row with a general-purpose ``nth_element`` over
(value, index) pairs. For ViG's shapes (a few hundred candidates per query, ``kd`` between
9 and a few dozen, tens of thousands of queries) that costs about a microsecond per row and
is most of the kNN's time. :func:`smallest_k` does the same selection in three passes over
the row (``_select.c``):

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
about half the time, the selection took 1.8x as long on vig_ti's rows). The result is the exact ``kd`` smallest in ascending order, ties in index
order (what ``torch.sort(stable=True)`` gives; ``torch.topk`` leaves the order of ties
unspecified) and NaN after every number (as ``torch.topk`` with ``largest=False`` places
it). ``benchmarks/bench_knn.py --select`` compares it with ``torch.topk`` on ViG's shapes.
The fused kNN pass (``_nearest.c``) selects eight rows at a time (``vig_select_block``):
pass 1 of the eight rows runs side by side where ``kd <= 32``, since one row's minima,
counts and maximum are a chain of dependent steps that mostly waits on latency.
Without AVX-512 (or with ``-DVIG_PORTABLE``) the same passes run as portable loops; the
tests check both builds.

The C file is compiled on first use with the system's C compiler (``$CC``, else ``cc``)
into ``$VIG_PYG_CACHE`` (default ``~/.cache/vig_pyg``), named by a hash of its source, the
compiler, the flags and the processor (``-march=native``: nodes of a cluster sharing a home
directory each get their own build), written atomically so that concurrent processes can
race safely, and loaded with :mod:`ctypes`. Its rows are split over torch's own OpenMP
threads where the build can join torch's runtime (:func:`_openmp_flags`), else over Python
threads. Where that is impossible (no compiler; not
float32 on the CPU; while ``torch.compile``/``torch.export``/ONNX trace or a dispatch mode
records) :func:`smallest_k` uses ``torch.topk`` instead, with the same set of indices (one
warning when the build fails); so does ``kd`` above 1024 (the C file's buffers). Set
:data:`native` to ``False``, or ``VIG_PYG_NATIVE=0`` in the environment, to force
``torch.topk`` (tests and benchmarks compare the two).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ..tracing import recording

__all__ = ["smallest_k", "native", "native_available"]

#: Use the compiled kernels where they apply: the selection, the kNN's normalisation and
#: its fused distance + selection pass, the neighbour sum/max and the training BatchNorm +
#: activation (``VIG_PYG_NATIVE=0`` turns all of them off).
native: bool = os.environ.get("VIG_PYG_NATIVE", "1") != "0"

#: Built into one library: the selection, the kNN's fused distance + selection pass and
#: its row normalisation (knn.py; the fused pass calls the other two), the neighbour
#: reductions of fixed-degree graphs (conv/functional.py) and the training-mode BatchNorm
#: + activation (layers/batch_norm.py, whose C file lives beside it).
_SOURCES = tuple(Path(__file__).with_name(name)
                 for name in ("_select.c", "_nearest.c", "_normalize.c", "_gather.c")) + (
    Path(__file__).parent.parent / "layers" / "_batch_norm.c",)
_FLAGS = ("-O3", "-march=native", "-std=c99", "-shared", "-fPIC")
#: The C file's fixed buffers hold this many (k*d is a few dozen in every ViG).
_MAX_KD = 1024
#: ``LANES`` in the C file: its vector loops store whole 16-wide vectors.
_LANES = 16
#: Below this many rows one thread does the whole matrix (a thread hand-off costs more).
_ROWS_PER_THREAD = 512
_lock = threading.Lock()
_lib = None          # the loaded library, or False after a failed build
_pool = None


def _cache_dir() -> Path:
    return Path(os.environ.get("VIG_PYG_CACHE", Path.home() / ".cache" / "vig_pyg"))


def _cpu() -> str:
    """What ``-march=native`` depends on: a cache shared by the nodes of a cluster must not
    hand one node's build to a processor that lacks its instructions."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _build(extra: tuple[str, ...] = ()) -> Path:
    """Compiles :data:`_SOURCES` once per source, compiler, flags and processor; returns the
    shared library. ``extra`` flags are added: ``-fopenmp`` (:func:`_openmp_flags`), or
    ``-DVIG_PORTABLE`` (the loops without AVX-512, which the tests check too)."""
    source = b"".join(path.read_bytes() for path in _SOURCES)
    cc = os.environ.get("CC", "cc")
    flags = _FLAGS + tuple(extra)
    tag = hashlib.sha256(source + " ".join((cc,) + flags).encode()
                         + _cpu().encode()).hexdigest()[:16]
    target = _cache_dir() / f"select-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, *map(str, _SOURCES), "-o", tmp], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)  # atomic: another process may be building the same file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    rows = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
            ctypes.c_void_p]
    lib.vig_select_smallest.argtypes = rows
    lib.vig_select_smallest.restype = None
    lib.vig_select_rows.argtypes = rows + [ctypes.c_int32]
    lib.vig_select_rows.restype = None
    lib.vig_select_openmp.argtypes = []
    lib.vig_select_openmp.restype = ctypes.c_int
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    lib.vig_select_block.argtypes = [p, i64, i64, i64, p, p, p]
    lib.vig_select_block.restype = None
    lib.vig_nearest_scratch.argtypes = [i64] * 5
    lib.vig_nearest_scratch.restype = i64
    lib.vig_nearest_split.argtypes = [i64] * 4
    lib.vig_nearest_split.restype = i64
    lib.vig_nearest.argtypes = [p] * 3 + [i64] * 11 + [p, p]
    lib.vig_nearest.restype = ctypes.c_int
    lib.vig_nearest_rows.argtypes = [p] * 3 + [i64] * 10 + [p, p, i32]
    lib.vig_nearest_rows.restype = ctypes.c_int
    lib.vig_nearest_prefilter.argtypes = [i64] * 6
    lib.vig_nearest_prefilter.restype = ctypes.c_int
    lib.vig_nearest_approximations.argtypes = [p] * 3 + [i64] * 3 + [p] * 3
    lib.vig_nearest_approximations.restype = ctypes.c_int
    lib.vig_normalize_rows.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
    lib.vig_normalize_rows.restype = ctypes.c_int
    lib.vig_gather_reduce.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
                                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
    lib.vig_gather_reduce.restype = None
    lib.vig_gather_reduce_backward.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32]
    lib.vig_gather_reduce_backward.restype = None
    lib.vig_gather_sum_centre.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_int32]
    lib.vig_gather_sum_centre.restype = None
    f32 = ctypes.c_float
    lib.vig_bn_act_forward.argtypes = [p, i64, i64, p, p, p, ctypes.c_double, i32, f32, p, p,
                                       p, p, p, i32]
    lib.vig_bn_act_forward.restype = None
    lib.vig_bn_act_backward.argtypes = [p, p, i64, i64, p, p, p, p, i32, f32, p, p, p, p, i32]
    lib.vig_bn_act_backward.restype = None
    return lib


def _openmp_flags() -> tuple[str, ...]:
    """``("-fopenmp",)`` where the build can join the OpenMP runtime torch already runs on,
    else ``()``.

    Inside a model, torch's OpenMP workers spin-wait after every operator on the cores that
    threads of our own would need, so those gain almost nothing. Torch's Linux wheels carry
    their own ``libgomp.so.1``; once it is loaded, the dynamic linker resolves our
    library's ``libgomp.so.1`` to that same copy, and the selection's parallel region runs
    on torch's worker threads. Where torch is not on OpenMP, or no libgomp is loaded (so a
    second runtime with threads of its own would start), the build has no OpenMP and
    :func:`smallest_k` splits the rows over Python threads instead."""
    if not getattr(torch._C, "has_openmp", False):
        return ()
    return ("-fopenmp",) if _torch_libgomp() else ()


def _torch_libgomp() -> str | None:
    """The path of the ``libgomp.so.1`` that torch loaded from its own directory, if any
    (other packages' copies, e.g. scikit-learn's ``libgomp-<hash>.so``, carry other names
    and are not what our ``libgomp.so.1`` would resolve to)."""
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if line.rstrip().endswith("/libgomp.so.1")}
    except OSError:
        return None
    return next((p for p in paths if Path(p).resolve().parent == torch_lib), None)


def _load():
    """The compiled library, or ``None`` (with one warning) when it cannot be built."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                try:
                    try:
                        _lib = _open(_build(_openmp_flags()))
                    except (OSError, subprocess.SubprocessError):
                        if not _openmp_flags():
                            raise
                        _lib = _open(_build())  # a compiler without OpenMP support
                except (OSError, subprocess.SubprocessError) as exc:
                    lines = str(getattr(exc, "stderr", None) or exc).strip().splitlines()
                    warnings.warn(
                        f"vig_pyg: the native kernels (kNN selection, normalisation, "
                        f"neighbour sum/max, training BatchNorm) could not be built "
                        f"({lines[-1] if lines else type(exc).__name__}); using torch.topk "
                        f"and torch ops (same edges, slower). Install a C compiler (or "
                        f"point CC at one), "
                        f"or set VIG_PYG_NATIVE=0 to silence this", RuntimeWarning,
                        stacklevel=3)
                    _lib = False
    return _lib or None


def native_available() -> bool:
    """Whether the compiled selection can be used here (builds it on first call)."""
    return _load() is not None


def _applies(dist: Tensor) -> bool:
    return (native and dist.device.type == "cpu" and dist.dtype == torch.float32
            and not recording())


def library_for(t: Tensor):
    """The compiled library where its kernels apply to ``t`` (float32 on the CPU, :data:`native`
    on, nothing tracing or recording), else ``None``; :func:`knn._normalize` and
    :mod:`vig_pyg.conv.functional` use it too."""
    return _load() if _applies(t) else None


def smallest_k(dist: Tensor, kd: int) -> Tensor:
    """Indices ``[..., kd]`` (int64) of the ``kd`` smallest entries along the last dim of
    ``dist``, ascending; ``kd <= dist.size(-1)``."""
    m = dist.size(-1)
    if not 0 < kd <= m:
        raise ValueError(f"kd must be in [1, {m}] (the candidates per row), got {kd}")
    lib = _load() if _applies(dist) and kd <= _MAX_KD else None
    if lib is None or dist.numel() == 0:
        return dist.topk(kd, dim=-1, largest=False, sorted=True).indices
    flat = dist.reshape(-1, m).contiguous()
    rows = flat.size(0)
    out = torch.empty(rows, kd, dtype=torch.long)
    threads = max(1, min(torch.get_num_threads(), rows // _ROWS_PER_THREAD))
    # per thread: m values and m int32 indices, each with a vector's slack (_select.c)
    scratch = torch.empty(threads, 2 * (m + _LANES))
    whole = (flat.data_ptr(), rows, m, kd, out.data_ptr(), scratch.data_ptr())
    if threads == 1:
        lib.vig_select_smallest(*whole)
        return out.view(*dist.shape[:-1], kd)
    if lib.vig_select_openmp():  # on torch's own OpenMP threads (_openmp_flags)
        lib.vig_select_rows(*whole, threads)
        return out.view(*dist.shape[:-1], kd)
    _on_python_threads(lib, flat, out, scratch, kd)
    return out.view(*dist.shape[:-1], kd)


def _on_python_threads(lib, flat: Tensor, out: Tensor, scratch: Tensor, kd: int) -> None:
    """The rows split into one block per scratch row, each selected on a thread of our pool
    (ctypes drops the GIL during the call, so the blocks run in parallel)."""
    rows, m = flat.shape
    step = -(-rows // scratch.size(0))
    calls = [(flat.data_ptr() + s * m * 4, min(step, rows - s), m, kd,
              out.data_ptr() + s * kd * 8, scratch[i].data_ptr())
             for i, s in enumerate(range(0, rows, step))]
    for job in [_executor().submit(lib.vig_select_smallest, *c) for c in calls]:
        job.result()


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads: start a new pool


os.register_at_fork(after_in_child=_forget_pool)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max(2, torch.get_num_threads()),
                                           thread_name_prefix="vig_pyg-select")
    return _pool
