"""The classifier: global average pool -> 1x1 conv C -> 1024 -> BN -> act -> dropout -> 1x1
conv 1024 -> classes (official keys ``prediction.0``, ``.1``, ``.4``)."""
from __future__ import annotations

from torch import Tensor, nn

from .activation import make_act
from .convbn import conv_bn


class Head(nn.Sequential):
    def __init__(self, channels: int, num_classes: int, hidden: int = 1024,
                 act: str = "gelu", dropout: float = 0.0):
        super().__init__(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            make_act(act),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_classes, 1),
        )

    @property
    def num_classes(self) -> int:
        return self[4].out_channels

    def reset(self, num_classes: int) -> None:
        """A fresh classifier layer for ``num_classes`` (Kaiming-normal weight, zero bias)."""
        old = self[4]
        new = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device, old.weight.dtype)
        nn.init.kaiming_normal_(new.weight)
        nn.init.zeros_(new.bias)
        self[4] = new

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``x``: the last feature map [B, C, H, W] -> logits [B, classes] (or the 1024-d
        embedding before the classifier with ``pre_logits``)."""
        x = x.mean(dim=(2, 3), keepdim=True)
        x = self[3](self[2](conv_bn(self[0], self[1], x)))
        if not pre_logits:
            x = self[4](x)
        return x.flatten(1)
