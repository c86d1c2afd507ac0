"""Images as PyG graphs: one node per patch (feature-map position), row-major per image."""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor
from torch_geometric.data import Batch

from ..tracing import tracing


@lru_cache(maxsize=64)
def _grid_index(num_graphs: int, height: int, width: int, device: torch.device):
    # Cached: every Grapher of a model asks for the same grid, and these never change.
    n = height * width
    batch = torch.arange(num_graphs, device=device).repeat_interleave(n)
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    pos = torch.stack([rows, cols], dim=1).repeat(num_graphs, 1)
    ptr = torch.arange(0, (num_graphs + 1) * n, n, device=device)
    return batch, pos, ptr


# PatchGraph (or a subclass) -> the class PyG's Batch metaclass makes of it, ``Batch`` over
# ``Data``. The metaclass decides that, and reads ``Data.__init__``'s signature, on every
# construction: about 60 us, four fifths of ``from_feature_map``'s time, once per Grapher
# per forward. Its class made once, a graph is made directly (the same type and fields).
_CONCRETE: dict[type, type] = {}


class PatchGraph(Batch):
    r"""A batch of images as one disconnected graph of patch nodes.

    Built on :class:`torch_geometric.data.Batch`: ``x`` is ``[B*H*W, C]`` with node
    ``b*H*W + row*W + col`` for position ``(row, col)`` of image ``b``, ``pos`` holds the
    ``(row, col)`` grid position of every node, ``batch`` / ``ptr`` assign nodes to images
    and ``grid_size`` is ``(H, W)``. ``edge_index`` is empty until a caller sets it (for
    example from :func:`~vig_pyg.graph.knn_edges`).

    A channels-last feature map converts both ways without a copy (its memory already is
    ``[B, H, W, C]``); a contiguous NCHW map costs one copy on the way in.
    """

    @classmethod
    def from_feature_map(cls, fmap: Tensor) -> "PatchGraph":
        if fmap.dim() != 4:
            raise ValueError(
                f"PatchGraph.from_feature_map expects a feature map [B, C, H, W], got shape "
                f"{tuple(fmap.shape)}; for node features [N, C] build a Batch directly")
        b, c, h, w = fmap.shape
        x = fmap.permute(0, 2, 3, 1).reshape(b * h * w, c)
        if tracing():  # Dynamo cannot trace a PyG Batch (its attribute storage)
            return _TracedPatchGraph(x, (h, w), b)
        batch, pos, ptr = _grid_index(b, h, w, fmap.device)
        concrete = _CONCRETE.get(cls)
        if concrete is None:  # the first time: PyG's metaclass picks the class
            graph = cls(x=x, pos=pos, batch=batch, ptr=ptr, grid_size=(h, w))
            _CONCRETE[cls] = type(graph)
        else:
            graph = type.__call__(concrete, x=x, pos=pos, batch=batch, ptr=ptr,
                                  grid_size=(h, w))
        graph._num_graphs = b
        return graph

    def to_feature_map(self, x: Tensor | None = None) -> Tensor:
        """Node features ``[B*H*W, C']`` (default: ``self.x``) back to ``[B, C', H, W]``.

        Returns a channels-last view of ``x`` when ``x`` is contiguous (no copy).
        """
        x = self.x if x is None else x
        h, w = self.grid_size
        b = self.num_graphs
        if x.dim() != 2 or x.size(0) != b * h * w:
            raise ValueError(
                f"expected node features of shape [{b * h * w}, C] for {b} image(s) of "
                f"{h}x{w} patches, got {tuple(x.shape)}")
        return x.view(b, h, w, x.size(1)).permute(0, 3, 1, 2)


class _TracedPatchGraph:
    """What the Grapher uses of a :class:`PatchGraph` (``x``, ``edge_index``,
    :meth:`~PatchGraph.to_feature_map`) as a plain object, for ``torch.compile`` and
    ``torch.export``, which cannot trace PyG's ``Batch``."""

    def __init__(self, x: Tensor, grid_size, num_graphs):
        self.x, self.grid_size, self.num_graphs = x, grid_size, num_graphs
        self.edge_index = None

    to_feature_map = PatchGraph.to_feature_map
