"""Between pyramid stages: a 3x3 stride-2 convolution + BN (no activation)."""
from __future__ import annotations

from torch import Tensor, nn

from .convbn import ConvBN


class Downsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBN(in_channels, out_channels, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
