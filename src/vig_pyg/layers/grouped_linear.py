r"""A grouped 1x1 convolution over rows as one matrix product per group, for training.

Every Grapher convolution ends with a grouped projection (4 groups as released,
:class:`~vig_pyg.conv.projection.GroupedProjection`), and ``edge`` and ``sage`` apply
parts of it per node (:mod:`vig_pyg.conv.rowwise`: a slice of the weight's output
channels whose groups it owns). On rows ``x [M, C_in]``

.. math::
    \mathbf{y}_{:, g} = \mathbf{x}_{:, g} \mathbf{W}_g^\top + \mathbf{b}_g, \qquad
    g = 1, \dots, G,

with ``x_{:, g}`` the ``g``-th block of ``C_in / G`` columns and ``W_g`` the ``g``-th
``[C_out / G, C_in / G]`` block of the convolution's weight. oneDNN's grouped convolution
runs its backward slowly on the CPU (gin's vig_ti projection: about 60 GMAC/s forward +
backward, where a plain 1x1 convolution reaches 140). Here each group is one BLAS product
on a column block of the rows, read and written in place through the leading dimension
(no copies, no transposes), forward and backward: the same multiply-accumulates,
``M * C_out * C_in / G`` each, and forward + backward 1.1-1.5x faster on ViG's shapes
(``benchmarks/bench_conv.py --projection``).

The products run where they apply: float32 rows on the CPU, a gradient to compute, nothing
tracing or recording (:func:`vig_pyg.tracing.recording`: ``FlopCounterMode`` and the
exporters see the convolution), and the fast path ``"grouped_linear"`` on
(:mod:`vig_pyg.fast_paths`). Otherwise :func:`grouped_linear` calls
:func:`torch.nn.functional.conv2d` on the channels-last view ``[1, C_in, M, 1]`` of the
rows (no copy, still grouped); tests and benchmarks compare the two.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import fast_paths
from ..tracing import recording

__all__ = ["grouped_linear"]


def _applies(x: Tensor, weight: Tensor) -> bool:
    """Whether the matrix products apply to ``x`` and ``weight`` (the module docstring)."""
    return (fast_paths.enabled("grouped_linear") and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
            and not recording() and not torch.is_autocast_enabled("cpu"))


def grouped_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int) -> Tensor:
    """``y [M, C_out]`` from rows ``x [M, C_in]`` and a grouped 1x1 convolution's
    ``weight [C_out, C_in / groups, 1, 1]`` and ``bias [C_out]`` (or ``None``): what
    ``F.conv2d`` computes on the rows' channels-last view (module docstring)."""
    if not _applies(x, weight):
        m = x.size(0)
        view = x.contiguous().view(1, m, 1, -1).permute(0, 3, 1, 2)
        y = F.conv2d(view, weight, bias, groups=groups)
        return y.permute(0, 2, 3, 1).reshape(m, -1)
    return _GroupedLinear.apply(x.contiguous(), weight, bias, groups)


def _blocks(t: Tensor, groups: int) -> list[Tensor]:
    """The ``groups`` column blocks of rows ``t`` (views)."""
    return list(t.chunk(groups, dim=1))


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups):
        out_channels = weight.size(0)
        w = weight.view(groups, out_channels // groups, -1)
        y = x.new_empty(x.size(0), out_channels)
        b = _blocks(bias.view(1, -1), groups) if bias is not None else None
        for g, (xg, yg) in enumerate(zip(_blocks(x, groups), _blocks(y, groups))):
            if b is None:
                torch.mm(xg, w[g].t(), out=yg)
            else:
                torch.addmm(b[g], xg, w[g].t(), out=yg)
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.has_bias = groups, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        groups = ctx.groups
        w = weight.view(groups, weight.size(0) // groups, -1)
        grad = grad.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = x.new_empty(x.shape)
            for g, (gg, dxg) in enumerate(zip(_blocks(grad, groups), _blocks(dx, groups))):
                torch.mm(gg, w[g], out=dxg)
        if ctx.needs_input_grad[1]:
            dw = weight.new_empty(w.shape)
            for g, (gg, xg) in enumerate(zip(_blocks(grad, groups), _blocks(x, groups))):
                torch.mm(gg.t(), xg, out=dw[g])
            dw = dw.view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = grad.sum(0)
        return dx, dw, db, None
