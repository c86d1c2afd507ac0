"""Keeping freed memory in the process instead of handing it back to the operating system.

Every step of a ViG allocates its activations afresh, each a new tensor. glibc's ``malloc``
serves a block above its mmap threshold (128 KiB at start, raised on the fly up to 32 MiB)
with a new ``mmap`` and unmaps it when the tensor is freed, so such a tensor touches fresh
pages, and the kernel hands each out (and zeroes it) on a page fault. Where a fault is
expensive (in virtual machines, such as this project's 2-core CI machines) that can cost
more than the arithmetic on the same map: in a fresh process a training BatchNorm on a
``[16, 192, 56, 56]`` map (38 MiB, pvig_ti's stage 1) took 14.5 ms, and 4.7 ms with freed
memory kept (a throwaway measurement).

Inside whole steps the gain is smaller, since glibc's raised threshold already keeps most
blocks below 32 MiB in the heap. ``python benchmarks/bench_allocator.py`` (best steps,
alternating processes): vig_pyg's own steps gain 0-8% in inference (pvig_ti up to 29% in
one run) and nothing measurable in training, while the dense release-style reference,
whose ``[B, C, N, k]`` gathers are large fresh tensors, runs 1.5-1.7x faster in
inference. The speed-ups over that reference in the README are measured with glibc's
default, so part of them is the reference's page faults; ``bench_models.py
--keep-memory`` measures both under this setting instead.

:func:`keep_freed_memory` sets three glibc tunables through ``mallopt``: blocks up to
1 GiB come from the heap rather than their own ``mmap``, and freed heap memory is never
trimmed, so later steps reuse pages that are already mapped. The cost: the process keeps
its peak memory rather than returning it, as a GPU caching allocator does. It is off by
default (a process-wide change is the user's to make): call it first thing in a script,
or set ``VIG_PYG_KEEP_MEMORY=1`` for the ``vig-pyg`` command line and the sweep's runs.
Other C libraries (musl, macOS) have no such tunables: there it does nothing and returns
``False``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3

#: Blocks below this come from the heap (glibc's default starts at 128 KiB).
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap is returned to the system only above this: -1 is
#: never (mallopt takes an int, which glibc reads as an unsigned size).
TRIM_THRESHOLD = -1
#: Extra memory the heap asks for whenever it grows.
TOP_PAD = 256 << 20


def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "mallopt") else None


def keep_freed_memory() -> bool:
    """Makes this process keep the memory it frees (see the module docstring). Returns
    whether the C library took all three settings."""
    lib = _libc()
    if lib is None:
        return False
    lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the trim threshold first, since setting the mmap
    # threshold by hand fixes the trim threshold glibc would otherwise adjust with it
    return all(lib.mallopt(param, value) == 1 for param, value in (
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD),
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD)))


def keep_freed_memory_if_asked() -> bool:
    """:func:`keep_freed_memory` where ``VIG_PYG_KEEP_MEMORY=1`` (the command line's call)."""
    if os.environ.get("VIG_PYG_KEEP_MEMORY", "0") != "1":
        return False
    return keep_freed_memory()
