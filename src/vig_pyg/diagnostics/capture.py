"""Capture the graph every Grapher block builds, without touching the model's code path.

Two hooks per Grapher, installed only inside :class:`GraphCapture` (removed on exit, so
nothing is kept or run when not capturing):

* a forward pre-hook on the Grapher records its input map ``[B, C, H, W]`` (the node
  features before the block) and so the node grid ``(H, W)``;
* a forward hook on ``grapher.graph_conv`` records what the aggregator was given and gave
  back: ``(x, edge_index)`` (``x`` a node tensor, or ``(keys, queries)`` for pooled keys) and
  its output ``[B*H*W, C']`` (the node features after the graph convolution).

The hooks read the aggregator's inputs, not how the edges were built, so any graph builder
(kNN, axial, ...) is captured the same way. A hypergraph builder's incidence is kept as it
is (``incidence``) and also as its clique expansion, the graph joining every node to every
member of its hyperedges (``edge_index``): what a centre "sees" through its hyperedges, so
reach, degree, the pictures and the other statistics read a hypergraph like a graph. They only copy tensors (detached, on the CPU):
the logits are bit-identical with and without capture.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import VigPygError
from ..models.grapher import Grapher


@dataclass
class BlockGraph:
    """What one Grapher block saw and built.

    Node ``b*H*W + row*W + col`` is patch ``(row, col)`` of image ``b`` (queries); key node
    ``b*h*w + u*w + v`` is key ``(u, v)`` of the key grid ``(h, w)``. Without pooling the keys
    are the queries (``key_grid == grid``, ``reduce_ratio == 1``); with reduce ratio ``r``
    key ``(u, v)`` is the ``r x r`` average of query patches ``[u*r, (u+1)*r) x [v*r, (v+1)*r)``.
    """

    index: int                     # Grapher number, 0 = shallowest
    name: str                      # module path in the model
    num_images: int
    grid: tuple[int, int]          # query grid (H, W)
    key_grid: tuple[int, int]      # neighbour (source) grid (h, w)
    reduce_ratio: int
    edge_index: Tensor             # [2, E] long: row 0 neighbour (key), row 1 centre (query)
    x_in: Tensor | None = None     # [B*H*W, C] node features entering the block
    x_conv: Tensor | None = None   # [B*H*W, C'] after the graph convolution
    extra: dict = field(default_factory=dict)
    #: Hypergraphs only: the node -> hyperedge incidence ``[2, nnz]`` (row 0 node, row 1
    #: hyperedge, numbered over the batch) and the number of hyperedges of the batch.
    incidence: Tensor | None = None
    num_hyperedges: int | None = None

    @property
    def is_hypergraph(self) -> bool:
        return self.incidence is not None

    @property
    def num_nodes(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_keys(self) -> int:
        return self.key_grid[0] * self.key_grid[1]

    def image(self, b: int) -> "BlockGraph":
        """The same block restricted to image ``b`` (nodes and edges re-indexed from 0)."""
        if not 0 <= b < self.num_images:
            raise VigPygError(f"image {b} is out of range: the capture holds "
                              f"{self.num_images} image(s)")
        n = self.num_nodes
        keep = (self.edge_index[1] >= b * n) & (self.edge_index[1] < (b + 1) * n)
        return self._one(b, self.edge_index[:, keep])

    def images(self) -> list["BlockGraph"]:
        """:meth:`image` for every image, splitting the edges in one pass (one sort)."""
        image_of = self.edge_index[1] // self.num_nodes
        order = torch.sort(image_of, stable=True).indices
        counts = torch.bincount(image_of, minlength=self.num_images).tolist()
        parts = self.edge_index[:, order].split(counts, dim=1)
        return [self._one(b, edges) for b, edges in enumerate(parts)]

    def _one(self, b: int, edges: Tensor) -> "BlockGraph":
        n, m = self.num_nodes, self.num_keys
        rows = slice(b * n, (b + 1) * n)
        incidence, count = None, None
        if self.is_hypergraph:  # hyperedges are numbered image after image, K each
            count = self.num_hyperedges // self.num_images
            keep = self.incidence[0] // n == b
            incidence = self.incidence[:, keep] - torch.tensor([[b * n], [b * count]])
        return BlockGraph(self.index, self.name, 1, self.grid, self.key_grid,
                          self.reduce_ratio, edges - torch.tensor([[b * m], [b * n]]),
                          None if self.x_in is None else self.x_in[rows],
                          None if self.x_conv is None else self.x_conv[rows], dict(self.extra),
                          incidence, count)


def graphers(model: nn.Module) -> list[tuple[str, Grapher]]:
    """Every Grapher of ``model`` in forward order (module path, module)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Grapher)]
    if not found:
        raise VigPygError(f"{type(model).__name__} has no Grapher blocks to inspect: pass a "
                          f"ViG model (vig_pyg.create_model or vig_pyg.models.load_model)")
    return found


def clique_expansion(incidence: Tensor, num_nodes: int, num_hyperedges: int) -> Tensor:
    """Edges ``j -> i`` for every pair of nodes sharing a hyperedge (``i`` with itself
    included), each pair once, grouped by centre ``i`` in order: ``[2, E]``.

    ``incidence`` is ``[2, nnz]`` (row 0 node, row 1 hyperedge). Computed as the nonzeros of
    ``H H^T`` with ``H`` the ``num_nodes x num_hyperedges`` incidence matrix (dense: a
    captured batch is small)."""
    h = torch.zeros(num_nodes, num_hyperedges, dtype=torch.float32)
    h[incidence[0], incidence[1]] = 1.0
    pairs = (h @ h.t()).nonzero().t()          # [i, j], sorted by i then j
    return torch.stack([pairs[1], pairs[0]])


def _nodes(fmap: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> node rows ``[B*H*W, C]`` (a detached float32 CPU copy)."""
    return fmap.detach().permute(0, 2, 3, 1).reshape(-1, fmap.shape[1]).float().cpu().clone()


class GraphCapture:
    """Context manager: records a :class:`BlockGraph` per Grapher for every forward pass.

    >>> with GraphCapture(model) as cap:
    ...     logits = model(images)
    >>> cap.blocks[0].edge_index.shape        # [2, B*H*W*k]

    ``features=False`` keeps only the graphs (no feature copies). A second forward pass
    inside the same context replaces the records.
    """

    def __init__(self, model: nn.Module, features: bool = True):
        self.model, self.features = model, features
        self.blocks: list[BlockGraph] = []
        self._handles: list = []
        self._pending: dict[int, Tensor] = {}

    def __enter__(self) -> "GraphCapture":
        for index, (name, grapher) in enumerate(graphers(self.model)):
            self._handles.append(grapher.register_forward_pre_hook(self._pre_hook(index)))
            self._handles.append(grapher.graph_conv.register_forward_hook(
                self._conv_hook(index, name, grapher), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()

    def _pre_hook(self, index: int):
        def hook(module, args):
            if index == 0:  # a new forward pass starts
                self.blocks = []
            self._pending[index] = args[0]
        return hook

    def _conv_hook(self, index: int, name: str, grapher: Grapher):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["x"]
            edge_index = args[1] if len(args) > 1 else kwargs["edge_index"]
            fmap = self._pending.pop(index)
            b, _, h, w = fmap.shape
            r = int(getattr(grapher, "reduce_ratio", 1) or 1)
            num_keys = (x[0] if isinstance(x, (tuple, list)) else x).shape[0]
            key_grid = (h // r, w // r) if r > 1 else (h, w)
            if num_keys != b * key_grid[0] * key_grid[1]:
                raise VigPygError(
                    f"{name}: the graph convolution got {num_keys} neighbour nodes, expected "
                    f"{b} x {key_grid[0]} x {key_grid[1]} for reduce ratio {r}")
            out = output[0] if isinstance(output, (tuple, list)) else output
            edges = edge_index.detach().long().cpu().clone()
            incidence, count = None, None
            if getattr(module, "graph_kind", "graph") == "hypergraph":
                incidence, count = edges, int(kwargs["num_hyperedges"])
                edges = clique_expansion(incidence, b * h * w, count)
            self.blocks.append(BlockGraph(
                index, name, b, (h, w), key_grid, r, edges,
                _nodes(fmap) if self.features else None,
                out.detach().float().cpu().clone() if self.features else None,
                incidence=incidence, num_hyperedges=count))
        return hook


@dataclass
class Capture:
    """The result of :func:`capture`: logits ``[B, classes]`` and one graph per block."""

    logits: Tensor
    blocks: list[BlockGraph]
    images: Tensor                 # the model's input [B, 3, H, W] (normalised)


def capture(model: nn.Module, images: Tensor, features: bool = True) -> Capture:
    """One forward pass of ``model`` (eval mode, no gradients) on normalised ``images``
    ``[B, 3, H, W]`` with every Grapher block's graph and features recorded.

    The model's training flag is restored afterwards.
    """
    was_training = model.training
    param = next(model.parameters(), None)
    if param is not None:  # the model's device and dtype (records come back on the CPU)
        images = images.to(param.device, param.dtype)
    model.eval()
    try:
        with torch.no_grad(), GraphCapture(model, features) as cap:
            logits = model(images)
    finally:
        model.train(was_training)
    return Capture(logits.detach().cpu(), cap.blocks, images.detach().cpu())
