"""Compiling the native library: the C files of this package, built on first use.

:func:`build` compiles :data:`SOURCES` with the system's C compiler (``$CC``, else ``cc``)
into ``$VIG_PYG_CACHE`` (default ``~/.cache/vig_pyg``), named by a hash of the sources, the
header, the compiler, the flags and the processor (``-march=native``: nodes of a cluster
sharing a home directory each get their own build), and written atomically so that
concurrent processes can race safely. :func:`openmp_flags` says whether the build joins
torch's OpenMP runtime; ``-DVIG_PORTABLE`` (:data:`PORTABLE`) builds the loops without
AVX-512, which the tests check as well.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["SOURCES", "HEADER", "FLAGS", "PORTABLE", "cache_dir", "cpu_signature", "build",
           "openmp_flags", "torch_libgomp"]

_HERE = Path(__file__).resolve().parent
#: The C files of the one library: the selection, the kNN's single pass of distances +
#: selection and its row normalisation (graph/knn.py; the single pass calls the other
#: two), the neighbour reductions of fixed-degree graphs (conv/functional.py) and the
#: training-mode BatchNorm + activation (layers/batch_norm.py).
SOURCES = tuple(_HERE / name for name in
                ("_select.c", "_nearest.c", "_normalize.c", "_gather.c", "_batch_norm.c"))
#: Declares every function of the library; the C files include it, and
#: :mod:`vig_pyg.native.bindings` reads it.
HEADER = _HERE / "vig_native.h"
FLAGS = ("-O3", "-march=native", "-std=c99", "-shared", "-fPIC")
#: The extra flags of the build without AVX-512 (the portable loops).
PORTABLE = ("-DVIG_PORTABLE",)


def cache_dir() -> Path:
    return Path(os.environ.get("VIG_PYG_CACHE", Path.home() / ".cache" / "vig_pyg"))


def cpu_signature() -> str:
    """What ``-march=native`` depends on: a cache shared by the nodes of a cluster must not
    hand one node's build to a processor that lacks its instructions."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def build(extra: tuple[str, ...] = ()) -> Path:
    """Compiles :data:`SOURCES` once per source, compiler, flags and processor; returns the
    shared library. ``extra`` flags are added: ``-fopenmp`` (:func:`openmp_flags`), or
    :data:`PORTABLE`. Raises :class:`OSError` (no compiler) or
    :class:`subprocess.CalledProcessError` (its message in ``stderr``)."""
    source = b"".join(path.read_bytes() for path in (*SOURCES, HEADER))
    cc = os.environ.get("CC", "cc")
    flags = FLAGS + tuple(extra)
    tag = hashlib.sha256(source + " ".join((cc,) + flags).encode()
                         + cpu_signature().encode()).hexdigest()[:16]
    target = cache_dir() / f"vig_native-{tag}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *flags, *map(str, SOURCES), "-o", tmp], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)  # atomic: another process may be building the same file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def openmp_flags() -> tuple[str, ...]:
    """``("-fopenmp",)`` where the build can join the OpenMP runtime torch already runs on,
    else ``()``.

    Inside a model, torch's OpenMP workers spin-wait after every operator on the cores that
    threads of our own would need, so those gain almost nothing. Torch's Linux wheels carry
    their own ``libgomp.so.1``; once it is loaded, the dynamic linker resolves our
    library's ``libgomp.so.1`` to that same copy, and the kernels' parallel regions run on
    torch's worker threads. Where torch is not on OpenMP, or no libgomp is loaded (so a
    second runtime with threads of its own would start), the build has no OpenMP and the
    callers split their rows over Python threads instead
    (:func:`vig_pyg.native.executor`)."""
    if not getattr(torch._C, "has_openmp", False):
        return ()
    return ("-fopenmp",) if torch_libgomp() else ()


def torch_libgomp() -> str | None:
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
