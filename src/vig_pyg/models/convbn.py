"""Convolution + BatchNorm, with the BatchNorm folded into the convolution in eval mode.

In eval mode ``BN(conv(x))`` is one affine map per output channel, so it is applied by a
single convolution with rescaled weights and bias (computed on the fly: a few thousand
multiplies, against a full pass over the activation map for a separate BatchNorm). In
training mode, or with a BatchNorm that does not track running statistics, the two layers
run as usual. The module keeps the official checkpoint layout: ``0`` is the convolution and
``1`` the BatchNorm (``fc1.0`` / ``fc1.1`` in the release).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``bn(conv(x))``; one folded convolution when ``bn`` uses its running statistics."""
    if bn.training or bn.running_mean is None or not isinstance(conv, nn.Conv2d):
        return bn(conv(x))
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    bias = bias * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class ConvBN(nn.Sequential):
    """``Conv2d`` (``0``, with bias, "same" padding) then ``BatchNorm2d`` (``1``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return conv_bn(self[0], self[1], x)
