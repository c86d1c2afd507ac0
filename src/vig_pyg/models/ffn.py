"""The FFN block: fc1 (1x1 C -> hC + BN) -> activation -> fc2 (1x1 hC -> C + BN) -> drop path
-> + input."""
from __future__ import annotations

from timm.layers import DropPath
from torch import Tensor, nn

from .activation import make_activation
from .convbn import ConvBN


class FFN(nn.Module):
    def __init__(self, channels: int, hidden: int, act: str = "gelu", drop_path: float = 0.0):
        super().__init__()
        self.fc1 = ConvBN(channels, hidden)
        self.act = make_activation(act)
        self.fc2 = ConvBN(hidden, channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x, act=self.act)
        if self.training and not isinstance(self.drop_path, nn.Identity):
            return self.drop_path(self.fc2(h)) + x
        return self.fc2(h, residual=x)  # drop path is the identity: the sum rides along
