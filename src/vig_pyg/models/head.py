"""The classifier: global average pool -> 1x1 conv C -> 1024 -> BN -> act -> dropout -> 1x1
conv 1024 -> classes (official keys ``prediction.0``, ``.1``, ``.4``)."""
from __future__ import annotations

from torch import Tensor, nn

from .activation import make_activation
from ..layers.fused import conv_bn_act


class Head(nn.Sequential):
    def __init__(self, channels: int, num_classes: int, hidden: int = 1024,
                 act: str = "gelu", dropout: float = 0.0):
        super().__init__(
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            make_activation(act),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_classes, 1) if num_classes else nn.Identity(),
        )

    @property
    def num_classes(self) -> int:
        """0 when the classifier was removed (``reset(0)``)."""
        return getattr(self[4], "out_channels", 0)

    def reset(self, num_classes: int) -> None:
        """A fresh classifier layer for ``num_classes`` (Kaiming-normal weight, zero bias);
        ``0`` removes it (the head then ends with the embedding, as timm models do)."""
        ref = self[0].weight
        if num_classes == 0:
            self[4] = nn.Identity()
            return
        new = nn.Conv2d(ref.shape[0], num_classes, 1).to(ref.device, ref.dtype)
        nn.init.kaiming_normal_(new.weight)
        nn.init.zeros_(new.bias)
        self[4] = new

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``x``: the last feature map [B, C, H, W] -> logits [B, classes] (or the 1024-d
        embedding before the classifier with ``pre_logits``)."""
        x = x.mean(dim=(2, 3), keepdim=True)
        x = self[3](conv_bn_act(self[0], self[1], x, self[2]))
        if not pre_logits:
            x = self[4](x)
        return x.flatten(1)
