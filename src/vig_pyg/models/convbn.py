"""Convolution + BatchNorm, with the BatchNorm folded into the convolution in eval mode.

In eval mode ``BN(conv(x))`` is one affine map per output channel, so it is applied by a
single convolution with rescaled weights and bias (computed on the fly: a few thousand
multiplies, against a full pass over the activation map for a separate BatchNorm); an
activation or residual sum that follows can ride along in the same oneDNN call
(:mod:`vig_pyg.layers.fused`). In training mode, or with a BatchNorm that does not track
running statistics, the layers run as usual. The module keeps the official checkpoint
layout: ``0`` is the convolution and ``1`` the BatchNorm (``fc1.0`` / ``fc1.1`` in the
release).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..layers.fused import conv_bn_act


class ConvBN(nn.Sequential):
    """``Conv2d`` (``0``, with bias, "same" padding) then ``BatchNorm2d`` (``1``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor, act: Optional[nn.Module] = None,
                residual: Optional[Tensor] = None) -> Tensor:
        """``act(bn(conv(x)))`` or ``bn(conv(x)) + residual`` (see
        :func:`~vig_pyg.layers.fused.conv_bn_act`)."""
        return conv_bn_act(self[0], self[1], x, act, residual)
