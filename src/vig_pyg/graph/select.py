r"""The ``kd`` smallest entries of every row of a distance matrix: the selection step of the
dense kNN backend.

``torch.topk`` on the CPU handles each row with a general-purpose ``nth_element`` over
(value, index) pairs. For ViG's shapes (a few hundred candidates per query, ``kd`` between
9 and a few dozen, tens of thousands of queries) that costs about a microsecond per row and
is most of the kNN's time. :func:`smallest_k` does the same selection in three passes over
the row (``_select.c``):

1. split the row into ``kd`` groups (column ``j`` in group ``j mod kd``, so the group minima
   are a vectorised elementwise minimum of ``kd``-wide slices) and take ``u``, the largest
   group minimum: ``kd`` distinct entries are ``<= u``, so every one of the ``kd`` smallest
   is too;
2. gather the entries ``<= u`` (usually two to four times ``kd`` of them) with a
   branch-free loop;
3. insertion-sort those candidates into a list of the ``kd`` smallest.

The first two passes run at memory speed; the third touches only the candidates. The result
is the exact ``kd`` smallest in ascending order, ties in index order (what
``torch.sort(stable=True)`` gives; ``torch.topk`` leaves the order of ties unspecified) and
NaN after every number (as ``torch.topk`` with ``largest=False`` places it). On the 2-core
CPU this is 1.4-2.4x faster than ``torch.topk`` where the row holds at least six
candidates per selected one (``benchmarks/bench_knn.py --select``); shorter rows keep
``torch.topk``, as the first pass then prunes too little.

The C file is compiled on first use with the system's C compiler (``$CC``, else ``cc``)
into ``$VIG_PYG_CACHE`` (default ``~/.cache/vig_pyg``), named by a hash of its source, the
compiler, the flags and the processor (``-march=native``: nodes of a cluster sharing a home
directory each get their own build), written atomically so that concurrent processes can
race safely, and loaded with :mod:`ctypes`. Where that is impossible (no compiler; not
float32 on the CPU; while ``torch.compile``/``torch.export``/ONNX trace or a dispatch mode
records) :func:`smallest_k` uses ``torch.topk`` instead, with the same set of indices (one
warning when the build fails); so do rows shorter than six times ``kd``. Set
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

#: Use the compiled selection where it applies (``VIG_PYG_NATIVE=0`` turns it off).
native: bool = os.environ.get("VIG_PYG_NATIVE", "1") != "0"

_SOURCE = Path(__file__).with_name("_select.c")
_FLAGS = ("-O3", "-march=native", "-std=c99", "-shared", "-fPIC")
#: The C file's fixed buffers hold this many (k*d is a few dozen in every ViG).
_MAX_KD = 1024
#: The bound of pass 1 prunes well only when the row is long against ``kd``: with fewer than
#: this many candidates per kept neighbour (vig_ti's last blocks: k*d = 54 of 196) too many
#: values pass it, the insertion pass grows as (candidates x kd), and ``torch.topk`` is
#: faster (``benchmarks/bench_knn.py --select``, whose last row forces the compiled
#: selection on vig_ti's k*d = 54 of 196).
_MIN_RATIO = 6
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


def _build() -> Path:
    """Compiles ``_select.c`` once per source, compiler, flags and processor; returns the
    shared library."""
    source = _SOURCE.read_bytes()
    cc = os.environ.get("CC", "cc")
    tag = hashlib.sha256(source + " ".join((cc,) + _FLAGS).encode()
                         + _cpu().encode()).hexdigest()[:16]
    target = _cache_dir() / f"select-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", tmp], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)  # atomic: another process may be building the same file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load():
    """The compiled library, or ``None`` (with one warning) when it cannot be built."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                try:
                    lib = ctypes.CDLL(str(_build()))
                    fn = lib.vig_select_smallest
                    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                   ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
                    fn.restype = None
                    _lib = lib
                except (OSError, subprocess.SubprocessError) as exc:
                    lines = str(getattr(exc, "stderr", None) or exc).strip().splitlines()
                    warnings.warn(
                        f"vig_pyg: the native kNN selection could not be built "
                        f"({lines[-1] if lines else type(exc).__name__}); using torch.topk "
                        f"(same edges, slower). Install a C compiler (or point CC at one), "
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


def smallest_k(dist: Tensor, kd: int) -> Tensor:
    """Indices ``[..., kd]`` (int64) of the ``kd`` smallest entries along the last dim of
    ``dist``, ascending; ``kd <= dist.size(-1)``."""
    m = dist.size(-1)
    if not 0 < kd <= m:
        raise ValueError(f"kd must be in [1, {m}] (the candidates per row), got {kd}")
    lib = _load() if _applies(dist) and kd <= _MAX_KD and m >= _MIN_RATIO * kd else None
    if lib is None or dist.numel() == 0:
        return dist.topk(kd, dim=-1, largest=False, sorted=True).indices
    flat = dist.reshape(-1, m).contiguous()
    rows = flat.size(0)
    out = torch.empty(rows, kd, dtype=torch.long)
    threads = max(1, min(torch.get_num_threads(), rows // _ROWS_PER_THREAD))
    scratch = torch.empty(threads, 2 * m)  # per thread: m values + m int32 indices
    step = -(-rows // threads)
    calls = [(flat.data_ptr() + s * m * 4, min(step, rows - s), m, kd,
              out.data_ptr() + s * kd * 8, scratch[i].data_ptr())
             for i, s in enumerate(range(0, rows, step))]
    if len(calls) == 1:
        lib.vig_select_smallest(*calls[0])
    else:  # ctypes drops the GIL during the call, so the threads run in parallel
        for job in [_executor().submit(lib.vig_select_smallest, *c) for c in calls]:
            job.result()
    return out.view(*dist.shape[:-1], kd)


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
