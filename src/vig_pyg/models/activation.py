"""Activations by name (the release's ``act_layer``; ViG uses GELU)."""
from __future__ import annotations

from torch import nn

ACTIVATIONS = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "leakyrelu": lambda: nn.LeakyReLU(0.2),
    "prelu": lambda: nn.PReLU(1, 0.2),
    "hswish": nn.Hardswish,
}


def make_act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of "
                         f"{sorted(ACTIVATIONS)}") from None
