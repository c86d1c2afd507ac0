"""The stems: a stack of 3x3 convolutions that turns the image into the first node grid."""
from __future__ import annotations

import math

from torch import Tensor, nn

from .activation import make_activation
from ..layers.fused import conv_bn_act


class Stem(nn.Module):
    """``convs`` = conv, BN[, act], conv, BN[, act], ..., conv, BN (official layout: the
    convolutions at indices 0, 3, 6, ..., their BatchNorms one after).

    ``plan`` lists ``(out_channels, stride)`` per convolution; every layer but the last is
    followed by the activation.
    """

    def __init__(self, in_chans: int, plan: list[tuple[int, int]], act: str = "gelu"):
        super().__init__()
        layers, cin = [], in_chans
        for j, (cout, stride) in enumerate(plan):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout)]
            if j < len(plan) - 1:
                layers.append(make_activation(act))
            cin = cout
        self.convs = nn.Sequential(*layers)
        self.stride = math.prod(s for _, s in plan)

    @classmethod
    def isotropic(cls, in_chans: int, channels: int, stride: int = 16, act: str = "gelu"):
        """3 -> C/8 -> C/4 -> C/2 -> C -> C. ``stride`` 16 is the release (four stride-2
        convolutions); 8, 4, 2, 1 keep stride 2 only on the first log2(stride) of them."""
        n2 = int(math.log2(stride))
        widths = [channels // 8, channels // 4, channels // 2, channels]
        plan = [(c, 2 if j < n2 else 1) for j, c in enumerate(widths)] + [(channels, 1)]
        return cls(in_chans, plan, act)

    @classmethod
    def pyramid(cls, in_chans: int, channels: int, act: str = "gelu"):
        """3 -> C/2 (stride 2) -> C (stride 2) -> C (stride 1)."""
        return cls(in_chans, [(channels // 2, 2), (channels, 2), (channels, 1)], act)

    def forward(self, x: Tensor) -> Tensor:
        layers = list(self.convs)
        i = 0
        while i < len(layers):
            act = layers[i + 2] if i + 2 < len(layers) and not isinstance(
                layers[i + 2], nn.Conv2d) else None
            x = conv_bn_act(layers[i], layers[i + 1], x, act)
            i += 2 if act is None else 3
        return x
