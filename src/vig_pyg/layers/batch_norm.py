r"""Training-mode BatchNorm + activation (+ residual sum) as one compiled pass each way.

In training every ViG convolution is followed by a BatchNorm with batch statistics, and
most by a GELU or a residual sum. torch runs these as separate operators, each a pass or two
over the map with a fresh output tensor, forward and backward: on the FFN's hidden map a
BatchNorm + GELU forward + backward costs half as much as the 1x1 convolution in front of
it (``benchmarks/bench_batch_norm.py`` against ``bench_conv.py``'s rates).
:func:`batch_norm_act` computes

.. math::
    \mathbf{out} = \sigma\big(\boldsymbol{\gamma} \odot (\mathbf{z} - \boldsymbol{\mu})
    \odot (\boldsymbol{\sigma}^2 + \epsilon)^{-1/2} + \boldsymbol{\beta}\big)
    \; [+ \; \mathbf{residual}],

with the batch mean and biased variance of every channel, in ``native/_batch_norm.c``: one
pass for the statistics and one for the output; the backward recomputes the activation's
derivative from ``z`` instead of keeping the normalised map, and runs in two passes. The
running statistics and ``num_batches_tracked`` are updated as
:class:`torch.nn.BatchNorm2d` does (the unbiased variance enters ``running_var``). Sums are
taken in double, as torch's CPU kernel does; GELU is the exact (erf) form, with the normal
CDF to within 1.5e-7 (the C file says how: about float32's rounding of values near 1).

The compiled path runs where it applies and the plain modules run otherwise (the result is
the same up to float32 rounding; ``tests/test_batch_norm_act.py`` holds both to a float64
evaluation): float32 channels-last maps on the CPU (the layout ViG's models run in), a
BatchNorm in training mode with an affine transform, running statistics and a momentum, at
least :data:`MIN_ELEMENTS` values, an activation in :data:`ACTIVATIONS`, a residual of the
same shape and layout, the fast path ``"batch_norm"`` on (:mod:`vig_pyg.fast_paths`), the
compiled library running on torch's threads, and nothing tracing or recording.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .. import native

__all__ = ["batch_norm_act", "ACTIVATIONS", "MIN_ELEMENTS"]

#: Maps smaller than this many values take the modules: there the call's fixed cost
#: outweighs the passes it saves (``benchmarks/bench_batch_norm.py``'s small maps, forward +
#: backward: 0.88x at 6k values, 0.96x at 50k; 1.19x at 602k).
MIN_ELEMENTS = 1 << 16

#: Activation modules the compiled pass applies: ``type -> (code in the C file, slope)``.
ACTIVATIONS = {
    nn.Identity: lambda m: (0, 0.0),
    nn.ReLU: lambda m: (1, 0.0),
    nn.LeakyReLU: lambda m: (2, float(m.negative_slope)),
    nn.GELU: lambda m: (3, 0.0) if m.approximate == "none" else None,
}


def _plain(bn: nn.BatchNorm2d, z: Tensor, act: Optional[nn.Module],
           residual: Optional[Tensor]) -> Tensor:
    y = bn(z)
    y = y if act is None else act(y)
    return y if residual is None else y + residual


def _activation_code(act: Optional[nn.Module]) -> Optional[tuple[int, float]]:
    if act is None:
        return 0, 0.0
    make = ACTIVATIONS.get(type(act))
    return None if make is None else make(act)


def _library(bn: nn.BatchNorm2d, z: Tensor, residual: Optional[Tensor]):
    """The compiled library where its pass applies (the module docstring), else
    ``None``."""
    if not (bn.training and bn.affine and bn.track_running_stats and bn.momentum is not None
            and bn.running_mean is not None and z.dim() == 4 and z.size(1) == bn.num_features
            and z.numel() >= max(MIN_ELEMENTS, z.size(1) + 1) and z.dtype == torch.float32
            and bn.weight.dtype == torch.float32 and bn.running_mean.dtype == torch.float32
            and z.is_contiguous(memory_format=torch.channels_last)):
        return None
    if residual is not None and not (
            residual.shape == z.shape and residual.dtype == torch.float32
            and residual.is_contiguous(memory_format=torch.channels_last)):
        return None
    lib = native.library_for(z, "batch_norm")
    if lib is None or not (lib.vig_select_openmp() or torch.get_num_threads() == 1):
        return None  # one thread of C against torch's team would be slower
    return lib


def batch_norm_act(bn: nn.BatchNorm2d, z: Tensor, act: Optional[nn.Module] = None,
                   residual: Optional[Tensor] = None) -> Tensor:
    """``act(bn(z))``, or ``bn(z) + residual`` (``act`` ``None``), for ``bn`` in training
    mode: compiled where it applies (module docstring), else the modules themselves."""
    code = _activation_code(act)
    lib = None if code is None else _library(bn, z, residual)
    if lib is None:
        return _plain(bn, z, act, residual)
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return _BatchNormAct.apply(z, bn.weight, bn.bias, residual, bn.running_mean,
                               bn.running_var, bn.momentum, bn.eps, code, lib)


def _scratch(c: int, threads: int) -> Tensor:
    # per thread two columns of double sums, then three float vectors (the C file's layout)
    return torch.empty(threads * 2 * c + (3 * c + 1) // 2, dtype=torch.float64)


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, bias, residual, running_mean, running_var, momentum, eps,
                code, lib):
        rows, c = z.numel() // z.size(1), z.size(1)
        threads = torch.get_num_threads()
        out = torch.empty_like(z, memory_format=torch.channels_last)
        mean, var, invstd = (z.new_empty(c) for _ in range(3))
        scratch = _scratch(c, threads)  # held here: C must not see freed memory
        lib.vig_bn_act_forward(
            z.data_ptr(), rows, c, weight.data_ptr(), bias.data_ptr(),
            None if residual is None else residual.data_ptr(), float(eps), code[0], code[1],
            out.data_ptr(), mean.data_ptr(), var.data_ptr(), invstd.data_ptr(),
            scratch.data_ptr(), threads)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var, alpha=momentum * rows / (rows - 1))
        ctx.save_for_backward(z, weight, bias, mean, invstd)
        ctx.code, ctx.lib, ctx.has_residual = code, lib, residual is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, weight, bias, mean, invstd = ctx.saved_tensors
        rows, c = z.numel() // z.size(1), z.size(1)
        threads = torch.get_num_threads()
        grad = grad.contiguous(memory_format=torch.channels_last)
        dz = torch.empty_like(z, memory_format=torch.channels_last)
        dweight, dbias = weight.new_empty(c), weight.new_empty(c)
        scratch = _scratch(c, threads)
        ctx.lib.vig_bn_act_backward(
            grad.data_ptr(), z.data_ptr(), rows, c, mean.data_ptr(), invstd.data_ptr(),
            weight.data_ptr(), bias.data_ptr(), ctx.code[0], ctx.code[1], dz.data_ptr(),
            dweight.data_ptr(), dbias.data_ptr(), scratch.data_ptr(), threads)
        dresidual = grad if ctx.has_residual else None
        return dz, dweight, dbias, dresidual, None, None, None, None, None, None
