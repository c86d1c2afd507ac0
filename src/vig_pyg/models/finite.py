"""NaN/Inf in a Grapher's input off the CPU: a flag kept on the device, read where a value
is read anyway.

Nearest neighbours of a NaN or an infinity are undefined. On the CPU the kNN refuses such
features at once, with one line (:mod:`vig_pyg.graph.knn`). On a GPU the same test would
read its answer back to the host in every block, stalling the stream each time and keeping
CUDA graphs out. There every Grapher keeps instead ``finite``: the sum of its latest input
in float64, a scalar on the device (one kernel, no read). The sum is finite exactly when
every value is: a NaN or an infinity reaches it (``inf - inf`` is NaN too), and finite
float32 values cannot overflow a float64 sum (at most ``3.4e38`` each, ``1.8e308`` in all).
``torch.isfinite(x).all()`` would be four or five kernels (``isfinite`` is composed of
``eq``, ``abs``, ``ne`` and an ``and``).
:func:`check_finite` reads every block's flag in one transfer and raises
:class:`NonFiniteError` naming the first block that saw a NaN or an infinity; the trainer
calls it right after it reads the step's loss (and after each evaluation batch), where the
stream is synchronised already.

The flag follows the CPU's rule of when such values are an error
(:func:`vig_pyg.graph.knn.watches_non_finite`): not while tracing, nor under float16/bfloat16
autocast, where an overflow is routine and the gradient scaler skips the step.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import VigPygError
from ..fast_paths import cpu_path
from ..graph.knn import watches_non_finite

__all__ = ["NonFiniteError", "note_finite", "check_finite"]


class NonFiniteError(VigPygError, ValueError):
    """A Grapher's input held NaN or Inf (found off the CPU by :func:`check_finite`)."""


def note_finite(module: nn.Module, x: Tensor) -> None:
    """Records on ``module`` the float64 sum of ``x`` (finite iff every value of ``x`` is),
    off the CPU and where such values are an error; nothing is read back."""
    if not cpu_path(x) and watches_non_finite(x):
        with torch.no_grad():
            module.finite = x.sum(dtype=torch.float64)


def check_finite(model: nn.Module) -> None:
    """Raises :class:`NonFiniteError` if a block of ``model`` saw NaN or Inf in its latest
    input (one host read for all blocks); clears the flags."""
    flagged = [(name, m) for name, m in model.named_modules()
               if isinstance(getattr(m, "finite", None), Tensor)]
    if not flagged:
        return
    finite = torch.stack([m.finite for _, m in flagged]).isfinite().tolist()
    for _, m in flagged:
        m.finite = None
    for (name, module), ok in zip(flagged, finite):
        if not ok:
            raise NonFiniteError(
                f"{name or type(module).__name__}: node features contain NaN or Inf values: "
                f"nearest neighbours are undefined for them (check the input images and the "
                f"learning rate, or enable optim.clip_grad)")
