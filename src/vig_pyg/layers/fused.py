r"""Convolution + BatchNorm + activation (or + residual) as one oneDNN call, for inference.

Every convolution of a ViG is followed by a BatchNorm, and most by an activation or a
residual sum. In inference the BatchNorm is an affine map per output channel, so

.. math::
    \mathrm{BN}(\mathbf{W} * \mathbf{x} + \mathbf{b}) = (\mathbf{a} \odot \mathbf{W}) *
    \mathbf{x} + \mathbf{a} \odot (\mathbf{b} - \boldsymbol{\mu}) + \boldsymbol{\beta},
    \qquad \mathbf{a} = \boldsymbol{\gamma} / \sqrt{\boldsymbol{\sigma}^2 + \epsilon},

one convolution with rescaled weights (:func:`fold_batch_norm`). On the CPU the activation
or the residual sum then rides along inside that convolution as a oneDNN post-op
(``torch.ops.mkldnn._convolution_pointwise``, the kernel Inductor's CPU fusion emits): the
output map is written once instead of being read and written again by a separate GELU or
add, and one operator replaces three (fewer hand-offs between threads). In eager float32
inference the model's forward is 4-8% faster on a quiet machine
(``benchmarks/bench_fast_paths.py``); the value is the same up to float32 rounding.

Off the CPU the BatchNorm is not folded: its own kernel is one launch where the fold's
small operations on the weights are seven, and launches, not arithmetic, bound a small
model's step on a GPU (``benchmarks/gpu_checks.sh``).

The fused call runs only where it is exact and safe: float32 on the CPU, oneDNN present,
no gradient needed, no autocast, not while ``torch.compile``/``torch.export``/the ONNX
exporter traces (they see plain ops and fuse on their own) nor under a dispatch mode such
as :class:`~torch.utils.flop_counter.FlopCounterMode`, which counts the plain ops
(:func:`vig_pyg.tracing.recording`), and an activation oneDNN has
(:data:`ONEDNN_ACTIVATIONS`; ``PReLU`` and other modules take the plain path), and the fast
path ``"fused_conv"`` on: ``vig_pyg.fast_paths.disabled("fused_conv")`` forces the plain
path (tests, benchmarks).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import fast_paths
from ..tracing import recording
from .batch_norm import batch_norm_act

__all__ = ["conv_bn_act", "fold_batch_norm", "onednn_activation", "ONEDNN_ACTIVATIONS"]

#: Activation modules oneDNN applies as a post-op: ``type -> (name, scalars, algorithm)``
#: (``LeakyReLU`` and ``GELU`` take their slope and approximation from the module).
ONEDNN_ACTIVATIONS = {
    nn.Identity: lambda m: ("none", [], ""),
    nn.ReLU: lambda m: ("relu", [], ""),
    nn.LeakyReLU: lambda m: ("leaky_relu", [m.negative_slope], ""),
    nn.GELU: lambda m: ("gelu", [None], m.approximate),
    nn.Hardswish: lambda m: ("hardswish", [], ""),
    nn.SiLU: lambda m: ("swish", [], ""),
}


def onednn_activation(act: Optional[nn.Module]) -> Optional[tuple]:
    """``(name, scalars, algorithm)`` of oneDNN's post-op for ``act``, or ``None``."""
    if act is None:
        return "none", [], ""
    make = ONEDNN_ACTIVATIONS.get(type(act))
    return None if make is None else make(act)


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(weight, bias)`` of the one convolution equal to ``bn(conv(.))`` with ``bn``'s
    running statistics (the module docstring's formula)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    bias = bias * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    return conv.weight * scale.view(-1, 1, 1, 1), bias


def _fusable(x: Tensor, weight: Tensor, residual: Optional[Tensor]) -> bool:
    """Whether oneDNN's fused call applies (see the module docstring)."""
    if not fast_paths.enabled("fused_conv") or x.device.type != "cpu" or x.dim() != 4 \
            or recording():
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu") or not torch.backends.mkldnn.is_available():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (
            residual is not None and residual.requires_grad)):
        return False
    return residual is None or (residual.shape[0] == x.shape[0]
                                and residual.dtype == torch.float32)


def conv_bn_act(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], x: Tensor,
                act: Optional[nn.Module] = None, residual: Optional[Tensor] = None) -> Tensor:
    """``act(bn(conv(x)))``, or ``bn(conv(x)) + residual`` (give ``act`` or ``residual``,
    not both). ``bn`` may be ``None``; with running statistics it is folded into the
    convolution, and in float32 CPU inference the whole is one oneDNN call; in training
    mode BatchNorm + activation (or + residual) is one compiled pass each way
    (:func:`~vig_pyg.layers.batch_norm.batch_norm_act`) after the convolution."""
    if act is not None and residual is not None:
        raise ValueError("conv_bn_act takes an activation or a residual, not both")
    if not isinstance(conv, nn.Conv2d) or (bn is not None and (
            bn.training or bn.running_mean is None)):
        if bn is not None:  # batch statistics: nothing to fold; compiled where it applies
            return batch_norm_act(bn, conv(x), act, residual)
        y = conv(x)
        y = y if act is None else act(y)
        return y if residual is None else y + residual
    if bn is not None and x.device.type != "cpu":
        # off the CPU there is no fused call to fold for, and folding costs seven small
        # kernels (a launch each) where BatchNorm's own kernel is one
        y = bn(conv(x))
        y = y if act is None else act(y)
        return y if residual is None else y + residual
    weight, bias = (conv.weight, conv.bias) if bn is None else fold_batch_norm(conv, bn)
    post = onednn_activation(act)
    if post is not None and isinstance(conv.padding, tuple) and \
            conv.padding_mode == "zeros" and _fusable(x, weight, residual):
        args = (weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation),
                conv.groups)
        if residual is not None:
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, *args, "add", None, None, [], None)
        return torch.ops.mkldnn._convolution_pointwise(x, *args, *post)
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    y = y if act is None else act(y)
    return y if residual is None else y + residual
