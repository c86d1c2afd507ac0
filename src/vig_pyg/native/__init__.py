"""The native kernels: C files compiled on first use into one library, loaded with ctypes.

The room holds the C sources, their header ``vig_native.h`` (every exported function, what
it computes and its arguments), the build (:mod:`.build`), the bindings read from the
header (:mod:`.bindings`) and the loader (:mod:`.library`). Other packages use only the
names below:

- :func:`library_for` hands out the library where a kernel applies to a tensor (its fast
  path's switch on, float32 on the CPU, nothing tracing or recording), else ``None``: the
  caller then takes its torch path, with the same results;
- :func:`available` says whether the library could be built here;
- :func:`executor` is the pool of Python threads that callers split rows over where the
  build has no OpenMP (``lib.vig_select_openmp()`` says which);
- :data:`MAX_KD` and :data:`LANES` are the C files' bounds that callers size calls and
  buffers by.

Each caller names its switch in :mod:`vig_pyg.fast_paths` (``"select"``, ``"gather"``,
...; :data:`vig_pyg.fast_paths.NATIVE` lists them): ``fast_paths.disabled(name)`` runs that
kernel's torch path instead, and ``VIG_PYG_NATIVE=0`` in the environment turns every one
of them off (the library is then never built).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import fast_paths
from ..tracing import recording
from . import library

__all__ = ["library_for", "available", "executor", "MAX_KD", "LANES"]

#: The most entries a row's selection keeps (k*d; the C files' fixed buffers hold this
#: many, and k*d is a few dozen in every ViG).
MAX_KD = 1024
#: ``LANES`` in the C files: their vector loops store whole 16-wide vectors, so row
#: buffers carry this much slack and the kNN's single pass pads keys to a multiple of it.
LANES = 16


def available() -> bool:
    """Whether the compiled library can be used here (builds it on first call)."""
    return library.load() is not None


def library_for(t: Tensor, path: str):
    """The compiled library where the kernel of fast path ``path`` (a name of
    :data:`vig_pyg.fast_paths.NATIVE`) applies to ``t``: the switch on, float32 on the CPU,
    nothing tracing or recording; else ``None``."""
    if (fast_paths.enabled(path) and t.device.type == "cpu" and t.dtype == torch.float32
            and not recording()):
        return library.load()
    return None


def executor():
    """The :class:`~concurrent.futures.ThreadPoolExecutor` on which callers split a
    kernel's rows where the library has no OpenMP (:func:`.library.executor`)."""
    return library.executor()
