r"""The grouped projection every Grapher convolution ends with.

``GroupedProjection(in, out, groups)`` is the official ``BasicConv([in, out])`` of ViG:
a 1x1 convolution with ``groups`` groups and a bias, a
:class:`~torch.nn.BatchNorm2d` and an activation, kept as an :class:`~torch.nn.Sequential`
so that its parameters are ``0.weight``, ``0.bias``, ``1.weight``, ... exactly as in the
released checkpoints.

Graph layers hold their features as rows (``[M, C]``: nodes or edges); the projection
applies the convolution to them through the channels-last view ``[1, C, M, 1]`` of those
rows, which costs no copy, keeps the convolution genuinely grouped (``out * in / groups``
multiply-accumulates per row, as counted by :class:`torch.utils.flop_counter.FlopCounterMode`)
and lets BatchNorm take its statistics over all ``M`` rows. In training (BatchNorm with
batch statistics) the convolution runs as one matrix product per group
(:func:`~vig_pyg.layers.grouped_linear.grouped_linear`, whose backward is faster than
oneDNN's grouped one) and BatchNorm + activation as one compiled pass
(:func:`~vig_pyg.layers.batch_norm.batch_norm_act`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..layers.activation import make_activation
from ..layers.batch_norm import batch_norm_act
from ..layers.fused import conv_bn_act
from ..layers.grouped_linear import grouped_linear


class GroupedProjection(nn.Sequential):
    r"""Grouped 1x1 convolution + BatchNorm + activation on rows:

    .. math::
        \mathbf{y}_m = \sigma\big(\mathrm{BN}(\mathbf{W} \mathbf{x}_m + \mathbf{b})\big),

    with :math:`\mathbf{W}` block-diagonal in ``groups`` blocks of shape
    ``[out / groups, in / groups]`` (stored as the ``[out, in / groups, 1, 1]`` weight of
    ``self[0]``, a :class:`~torch.nn.Conv2d`).

    Args:
        in_channels, out_channels: row widths; both divisible by ``groups``.
        groups: convolution groups (4 in ViG).
        act: activation (default GELU): a name of
            :func:`~vig_pyg.layers.make_activation` (``"leakyrelu"`` has slope 0.2, as in
            the release), a module, or ``None`` for none.
        bias: whether the convolution has a bias.

    Shapes:
        - **input:** rows ``[M, in_channels]`` (a ``[B, in, H, W]`` map also works)
        - **output:** rows ``[M, out_channels]`` (a view of a channels-last map, no copy)
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 4,
                 act: str | Callable | nn.Module | None = "gelu", bias: bool = True):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=bias),
            nn.BatchNorm2d(out_channels),
            make_activation(act),
        )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.reset_parameters()

    def reset_parameters(self):
        conv, norm = self[0], self[1]
        nn.init.kaiming_normal_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        norm.reset_parameters()  # weight 1, bias 0, running statistics reset

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return conv_bn_act(self[0], self[1], x, self[2])
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"expected rows [M, {self.in_channels}], got {tuple(x.shape)}")
        m = x.size(0)
        conv, norm = self[0], self[1]
        if norm.training or norm.running_mean is None:
            # batch statistics (nothing to fold): one matrix product per group, then
            # BatchNorm + activation on the result's [1, C, M, 1] channels-last view
            z = grouped_linear(x, conv.weight, conv.bias, conv.groups)
            y = batch_norm_act(norm, z.view(1, m, 1, -1).permute(0, 3, 1, 2), self[2])
            return y.permute(0, 2, 3, 1).reshape(m, -1)
        # [M, C] -> [1, C, M, 1] channels-last: a view of the rows. Of the views tried
        # ([1, C, M, 1], [1, C, 1, M], [M, C, 1, 1]) this one is the fastest on CPU for
        # both the oneDNN convolution and BatchNorm's channels-last kernel.
        y = conv_bn_act(conv, norm, x.contiguous().view(1, m, 1, -1).permute(0, 3, 1, 2),
                        self[2])
        return y.permute(0, 2, 3, 1).reshape(m, -1)

    def extra_repr(self) -> str:
        return f"rows: {self.in_channels} -> {self.out_channels}, groups={self.groups}"
