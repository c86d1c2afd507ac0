"""Loading the native library once per process, and the Python threads its callers use
where the build has no OpenMP.

:func:`load` builds the library (:func:`vig_pyg.native.build.build`, with OpenMP where it
joins torch's runtime, else without), opens it with :mod:`ctypes` and binds it from its
header (:func:`vig_pyg.native.bindings.bind`); where it cannot be built it warns once and
returns ``None`` from then on, and the callers take their torch paths.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import bindings, build

__all__ = ["load", "open_library", "executor"]

_lock = threading.Lock()
_lib = None          # the loaded library, or False after a failed build
_pool = None


def open_library(path: Path) -> ctypes.CDLL:
    """The shared library at ``path`` (a :func:`~vig_pyg.native.build.build`), bound."""
    return bindings.bind(ctypes.CDLL(str(path)))


def load():
    """The compiled library, or ``None`` (with one warning) when it cannot be built."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                try:
                    try:
                        _lib = open_library(build.build(build.openmp_flags()))
                    except (OSError, subprocess.SubprocessError):
                        if not build.openmp_flags():
                            raise
                        _lib = open_library(build.build())  # a compiler without OpenMP
                except (OSError, subprocess.SubprocessError) as exc:
                    lines = str(getattr(exc, "stderr", None) or exc).strip().splitlines()
                    warnings.warn(
                        f"vig_pyg: the native kernels (kNN selection, normalisation, "
                        f"neighbour sum/max, training BatchNorm) could not be built "
                        f"({lines[-1] if lines else type(exc).__name__}); using torch.topk "
                        f"and torch ops (same edges, slower). Install a C compiler (or "
                        f"point CC at one), "
                        f"or set VIG_PYG_NATIVE=0 to silence this", RuntimeWarning,
                        stacklevel=4)
                    _lib = False
    return _lib or None


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads: start a new pool


os.register_at_fork(after_in_child=_forget_pool)


def executor() -> ThreadPoolExecutor:
    """The pool of Python threads (as many as torch's intra-op threads, at least two) on
    which callers split a kernel's rows where the library has no OpenMP: ctypes releases
    the GIL during a call, so the parts run in parallel."""
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max(2, torch.get_num_threads()),
                                           thread_name_prefix="vig_pyg-native")
    return _pool
