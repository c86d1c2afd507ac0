r"""Relative-position terms added to the kNN distances of the pyramid models.

For a :math:`G_h \times G_w` grid and width :math:`D`, :math:`P` is the 2-D sine-cosine
embedding (first :math:`D/2` columns encode the column, last :math:`D/2` the row, each half
:math:`[\sin(p\,w_m), \cos(p\,w_m)]_{m<D/4}` with :math:`w_m = 10000^{-m/(D/4)}`), and the
table is :math:`-2 P P^\top / D`. Because every row of :math:`P` has squared norm
:math:`D/2`, the table equals :math:`\lVert p_i - p_j\rVert^2 / D - 1`: a squared distance on
positions scaled by :math:`1/\sqrt{D}`, which is how the ``cluster`` kNN backend uses it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_dim(dim: int) -> None:
    if dim % 4 != 0:
        raise ValueError(f"the sine-cosine embedding needs a width divisible by 4, got {dim}")


def sincos_position_embedding(grid_size: tuple[int, int], dim: int,
                              dtype: torch.dtype = torch.float64) -> Tensor:
    """The 2-D sine-cosine embedding ``P`` of shape ``[G_h*G_w, dim]`` (row-major nodes)."""
    _check_dim(dim)
    gh, gw = grid_size
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(gh, dtype=torch.float64).repeat_interleave(gw)
    cols = torch.arange(gw, dtype=torch.float64).repeat(gh)

    def encode(p: Tensor) -> Tensor:
        angle = p[:, None] * omega[None, :]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).to(dtype)


def relative_position_features(grid_size: tuple[int, int], dim: int,
                               dtype: torch.dtype = torch.float32) -> Tensor:
    """``P / sqrt(dim)``: positional features whose squared distances reproduce the table
    up to a constant (the identity the ``cluster`` backend relies on)."""
    return (sincos_position_embedding(grid_size, dim) / dim ** 0.5).to(dtype)


def resize_relative_position(table: Tensor, num_queries: int, num_keys: int) -> Tensor:
    """Bicubic resize (``align_corners=False``) of a ``[n, m]`` or ``[1, n, m]`` table to
    ``[num_queries, num_keys]`` (same number of leading dims as the input)."""
    squeeze = table.dim() == 2
    t = table.unsqueeze(0) if squeeze else table
    if t.shape[-2:] != (num_queries, num_keys):
        t = F.interpolate(t.unsqueeze(1), size=(num_queries, num_keys), mode="bicubic",
                          align_corners=False).squeeze(1)
    return t.squeeze(0) if squeeze else t


def relative_position_table(grid_size: tuple[int, int] | int, dim: int, reduce_ratio: int = 1,
                            dtype: torch.dtype = torch.float32) -> Tensor:
    """The term ``-2 P P^T / dim`` added to node-to-node distances, ``[n, n / r^2]``.

    With ``reduce_ratio`` r > 1 the keys are the r x r average-pooled nodes and the square
    table is resized bicubically to ``[n, n // r^2]``, as the official release does.
    """
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    p = sincos_position_embedding(grid_size, dim)
    table = (-2.0 * p @ p.T / dim).to(torch.float32)  # the release stores a float32 table
    n = table.size(0)
    if reduce_ratio > 1:
        table = resize_relative_position(table, n, n // (reduce_ratio * reduce_ratio))
    return table.to(dtype)
