"""The fast-path switches: one named switch per compiled kernel or faster evaluation.

Every fast path sits beside the generic path it replaces and gives the same results (up to
float32 rounding where it says so); its switch only chooses which of the two runs. All are
on by default. Code asks :func:`enabled`; tests and benchmarks turn paths off for a block::

    from vig_pyg import fast_paths

    with fast_paths.disabled("select", "gather"):
        model(x)                 # torch.topk and the chunked torch gathers inside
    fast_paths.names()           # {name: what it switches}

and a process can start with some off: ``VIG_PYG_FAST_PATHS=-select,-gather`` (``-name``
off, ``+name`` on, comma-separated), read once at import. ``VIG_PYG_NATIVE=0`` turns off
every switch of :data:`NATIVE`, the paths that call the compiled library (so it is never
built); ``VIG_PYG_FAST_PATHS`` is applied after it.

The module imports nothing of vig_pyg, so every package can use it; :func:`enabled` is one
dictionary lookup.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

__all__ = ["enabled", "disabled", "names", "cpu_path", "NATIVE", "GPU_CHOICES"]

#: name -> what it switches (on) and what runs instead (off).
_PATHS = {
    "select": "the kNN's top-k of each row of distances by the compiled selection "
              "(graph.selection; off: torch.topk)",
    "normalize": "the kNN's row normalisation in one compiled pass (graph.knn; off: torch ops)",
    "single_pass": "the dense kNN's normalisation, distances and selection in one compiled "
                   "pass (graph.knn; off: matmul + selection)",
    "knn_direct": "a channels-last float32 CPU map straight to the kNN's single pass, past "
                  "knn_edges' general path (graph.knn; off: the general path)",
    "gather": "the neighbour sum/max and its backward by the compiled gather "
              "(conv.functional; off: chunked torch ops)",
    "batch_norm": "training BatchNorm + activation (+ residual) as one compiled pass each "
                  "way (layers.batch_norm; off: the modules)",
    "fused_conv": "inference conv + BatchNorm + activation (or + residual) as one oneDNN "
                  "call (layers.fused; off: the folded conv, then the activation or sum)",
    "grouped_linear": "training grouped projections as one BLAS product per group "
                      "(layers.grouped_linear; off: the grouped convolution)",
    "fixed_degree": "the Grapher convolutions' dense path on fixed-degree graphs "
                    "(conv.base; off: the padded table or propagate)",
    "padded": "the Grapher convolutions' padded neighbour table on variable-degree graphs "
              "(conv.padded; off: propagate)",
    "pyg_aggregation": "pyg: adapters' max/min/softmax aggregation as a dense view on "
                       "fixed-degree graphs (conv.fast_aggregation; off: PyG's scatter)",
    "split_edge_conv": "pyg:EdgeConv's first Linear applied per node, not per edge "
                       "(conv.split_edge_conv; off: PyG's EdgeConv.forward)",
    "cpu_paths": "on the CPU, the evaluations chosen for it where a GPU takes others "
                 "(cpu_path(): the kNN's NaN/Inf refusal and norms, the neighbour "
                 "reductions, edge's and sage's per-node training, the fixed-degree check "
                 "of unmarked graphs; off: the GPU's choices, on the CPU too)",
}
#: What a GPU runs, on the CPU: ``with disabled(*GPU_CHOICES):`` (tests compare it with the
#: CPU's choices; ``benchmarks/bench_models.py`` times its host overhead).
GPU_CHOICES = ("cpu_paths", "select", "normalize", "single_pass", "knn_direct", "gather",
               "batch_norm", "fused_conv", "grouped_linear")

#: The switches of the paths that call the compiled library (``VIG_PYG_NATIVE=0``: all off).
NATIVE = ("select", "normalize", "single_pass", "gather", "batch_norm")

_lock = threading.Lock()
#: Whether each path is on: what the environment asked for, with no block disabling it.
_on: dict[str, bool] = {}
_base: dict[str, bool] = {}    # from the environment at import
_held: dict[str, int] = {}     # open disabled() blocks per name


def _unknown(name) -> ValueError:
    return ValueError(f"unknown fast path {name!r}; the fast paths are: {', '.join(_PATHS)}")


def enabled(name: str) -> bool:
    """Whether fast path ``name`` is on (:func:`names` lists them)."""
    on = _on.get(name)
    if on is None:
        raise _unknown(name)
    return on


def cpu_path(t) -> bool:
    """Whether code on tensor ``t`` takes the CPU's evaluation where the CPU and a GPU
    differ: ``t`` on the CPU and the switch ``"cpu_paths"`` on. Elsewhere the GPU's
    evaluation runs: no value read back to the host, fewer kernel launches."""
    return t.is_cpu and _on["cpu_paths"]


def names() -> dict[str, str]:
    """``{name: one line on what it switches}``, for every fast path."""
    return dict(_PATHS)


def disabled(*paths: str):
    """``with disabled("select", "gather"): ...`` runs the block with those paths off and
    restores them on the way out, exception or not; ``@disabled(...)`` does the same for
    each call of a function. Blocks nest, in one thread or several: a path stays off while
    any block that names it is open. No names: nothing changes. An unknown name raises
    here, before anything changes."""
    for name in paths:
        if name not in _PATHS:
            raise _unknown(name)
    return _disabled(paths)


@contextlib.contextmanager
def _disabled(paths: tuple) -> Iterator[None]:
    with _lock:
        for name in paths:
            _held[name] += 1
            _on[name] = False
    try:
        yield
    finally:
        with _lock:
            for name in paths:
                _held[name] -= 1
                _on[name] = _base[name] and not _held[name]


def _from_environment(environ) -> dict[str, bool]:
    """The switches as ``VIG_PYG_NATIVE`` and then ``VIG_PYG_FAST_PATHS`` set them."""
    on = dict.fromkeys(_PATHS, True)
    if environ.get("VIG_PYG_NATIVE", "1") == "0":
        on.update(dict.fromkeys(NATIVE, False))
    for item in environ.get("VIG_PYG_FAST_PATHS", "").split(","):
        item = item.strip()
        if not item:
            continue
        sign, name = item[0], item[1:].strip()
        if sign not in "+-":
            raise ValueError(f"VIG_PYG_FAST_PATHS: {item!r} must be -name (off) or +name "
                             f"(on); the fast paths are: {', '.join(_PATHS)}")
        if name not in _PATHS:
            raise ValueError(f"VIG_PYG_FAST_PATHS: unknown fast path {name!r}; the fast "
                             f"paths are: {', '.join(_PATHS)}")
        on[name] = sign == "+"
    return on


_base.update(_from_environment(os.environ))
_on.update(_base)
_held.update(dict.fromkeys(_PATHS, 0))
