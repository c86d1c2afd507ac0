"""Counting index values into a tensor of known size, on any device without a host read."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["count_values"]


def count_values(index: Tensor, size: int) -> Tensor:
    """How often every value of ``[0, size)`` occurs in ``index`` (int64, ``[size]``).
    ``torch.bincount`` gives the same, but sizes its output from the largest index, which
    it reads back to the host (a synchronisation on a GPU; no kernel at all on ``meta``)."""
    return torch.zeros(size, dtype=torch.long, device=index.device).index_add_(
        0, index, torch.ones_like(index))
