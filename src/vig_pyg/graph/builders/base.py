r"""What every graph builder shares: the call, the block binding and the edge layout.

A builder is an :class:`~torch.nn.Module` without parameters (so checkpoints do not see
it) that maps a block's node features to the edges the aggregator runs on::

    edge_index = builder(x, keys, k=9, dilation=1, relative_pos=None)

``x`` is the channels-last map ``[B, C, H, W]`` after fc1 (node ``b*H*W + row*W + col``);
``keys`` the pooled map of blocks with a reduce ratio (used only by builders with
:attr:`~GraphBuilder.uses_keys`: then row 0 indexes the keys, else the nodes); ``k`` and
``dilation`` the block's schedule; ``relative_pos`` the block's relative-position table.
The result follows :func:`~vig_pyg.graph.knn_edges`: row 0 the neighbour ``j``, row 1 the
centre ``i``, edges grouped by centre in node order. A builder whose every centre has the
same degree returns exactly the fixed-degree layout, which keeps the convolutions' fixed-degree
dense path.

A builder may instead return a :class:`BuiltGraph`, which carries what an ``edge_index``
alone cannot: per-edge attributes (``edge_attr [E, edge_dim]``, e.g. the gated axial graph's
local/long kind), a hypergraph (``edge_index`` is then the node -> hyperedge incidence
``[2, nnz]`` that PyG's ``HypergraphConv`` takes, row 0 the node, row 1 the hyperedge), or a
node partition with its centroids (``clustered_knn``). The builder's class attributes
:attr:`~GraphBuilder.graph_kind` and :attr:`~GraphBuilder.edge_dim` say which, so a model can
check its aggregator against its builder before it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import torch
from torch import Tensor, nn

from ...errors import VigPygError
from ..knn import _image_offsets as image_offsets
from ..knn import _target_index, mark_fixed_degree


class GraphBuilderError(VigPygError):
    """An unknown graph builder, an option it does not take, or a grid it cannot use."""


#: What a builder's output can be: a graph (edges j -> i) or a hypergraph (an incidence).
GRAPH_KINDS = ("graph", "hypergraph")


@dataclass
class BuiltGraph:
    """A builder's output beyond a bare ``edge_index`` (see the module docstring).

    ``edge_index``: ``[2, E]`` edges (row 0 neighbour, row 1 centre), or for a hypergraph
    the incidence ``[2, nnz]`` (row 0 node, row 1 hyperedge, hyperedges numbered over the
    whole batch, image ``b``'s after image ``b - 1``'s). ``edge_attr``: ``[E, edge_dim]``.
    ``num_hyperedges``: how many hyperedges the batch has (hypergraphs only).
    ``partition``: ``[B*N]`` the cluster of every node, numbered over the batch;
    ``centroids``: ``[num_clusters, C]`` their centres.
    """
    edge_index: Tensor
    edge_attr: Tensor | None = None
    num_hyperedges: int | None = None
    partition: Tensor | None = None
    centroids: Tensor | None = None

    @property
    def is_hypergraph(self) -> bool:
        return self.num_hyperedges is not None

    def inputs(self, names) -> dict:
        """The fields ``names`` (an aggregator's :attr:`graph_inputs`) that are set."""
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def as_built_graph(result) -> BuiltGraph:
    """A builder's return value as a :class:`BuiltGraph` (a bare ``edge_index`` is wrapped)."""
    return result if isinstance(result, BuiltGraph) else BuiltGraph(result)


BUILT_GRAPH_FIELDS = tuple(f.name for f in fields(BuiltGraph))


@dataclass(frozen=True)
class BlockInfo:
    """Where a builder sits: what :meth:`GraphBuilder.bind_block` receives."""
    block_index: int      # among all blocks of the model
    index_in_stage: int
    k: int                # the block's scheduled k and dilation
    dilation: int
    reduce_ratio: int
    stage: int = 0        # the block's stage, of num_stages; depth = blocks of the model
    num_stages: int = 1
    depth: int = 1
    kind: str = "isotropic"   # the model's kind: "isotropic" or "pyramid"


class GraphBuilder(nn.Module):
    """Base class. Subclasses implement :meth:`forward` and may override :meth:`bind_block`."""

    #: Registered name (set by :func:`~.registry.register_graph_builder`).
    name: str = ""
    #: Row 0 indexes the pooled keys when the block has them (kNN graphs); else the nodes.
    uses_keys: bool = False
    #: The block's dilation applies (kNN graphs); the Grapher fits it to small grids.
    uses_dilation: bool = False
    #: The model must hand the stage's input map to :attr:`shared` (see ``static_knn``).
    needs_stage_input: bool = False
    #: ``"graph"`` (edges) or ``"hypergraph"`` (an incidence): aggregators must match it.
    graph_kind: str = "graph"
    #: Width of the ``edge_attr`` the builder returns in a :class:`BuiltGraph` (None: none).
    edge_dim: int | None = None
    #: The :class:`BuiltGraph` fields beyond ``edge_index`` the builder sets: an aggregator
    #: whose :attr:`graph_inputs` asks for one it lacks is refused when the model is built.
    provides: tuple = ()
    #: Set by the Grapher from its aggregator's ``repeat_invariant`` (a maximum: a repeated
    #: neighbour changes nothing). Builders whose degree depends on the data
    #: (``axial_threshold``, ``clustered_knn``) then pad every centre to a fixed degree
    #: with repeats off the CPU, where counting the degrees would read them back; for any
    #: other aggregator they keep the exact variable-degree edges everywhere.
    repeats_harmless: bool = False

    def conv_options(self) -> dict:
        """Options this builder asks of the aggregator, given to an aggregator whose
        constructor takes them (the gated axial graph's global-attention stage asks
        ``global_attention=True``). Default: none."""
        return {}

    def bind_block(self, info: BlockInfo, shared: dict) -> None:
        """Called once by the model for every block with its :class:`BlockInfo` and a dict
        shared by all builders of the stage (per-stage state, e.g. a graph built once per
        forward pass). Builders used outside a model are never bound."""

    def check_grid(self, h: int, w: int, k: int) -> None:
        """Raises a one-line :class:`GraphBuilderError` if the builder cannot work on an
        ``h x w`` grid with ``k`` neighbours (the model checks this when it is configured)."""

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> Tensor:
        raise NotImplementedError


def check_map(x: Tensor, who: str) -> tuple[int, int, int, int]:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise GraphBuilderError(f"graph builder {who!r} expects a feature map [B, C, H, W], "
                                f"got {shape}")
    return tuple(x.shape)


def node_rows(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]`` (a view for channels-last maps)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def table_edges(table: Tensor, num_images: int, nodes: int,
                mask: Tensor | None = None) -> Tensor:
    """Edges from a neighbour table.

    ``table`` is ``[N, D]`` (the same graph for every image) or ``[B, N, D]``: column order
    is the neighbour order of each centre. ``mask`` (``[B, N, D]`` bool, optional) keeps a
    subset; without it every centre has degree ``D`` (the fixed-degree layout).
    """
    device = table.device
    if table.dim() == 2:
        table = table.unsqueeze(0)
    src = table + image_offsets(num_images, nodes, device)      # [B, N, D]
    d = src.size(-1)
    if mask is None:
        src = src.expand(num_images, nodes, d).reshape(-1)
        return mark_fixed_degree(
            torch.stack([src, _target_index(num_images * nodes, d, device)]), d)
    src = src.expand(num_images, nodes, d)
    centre = torch.arange(num_images * nodes, device=device).view(num_images, nodes, 1)
    # boolean indexing walks [B, N, D] in row-major order: grouped by centre, columns in order
    return torch.stack([src[mask], centre.expand_as(src)[mask]])


def padded_table_edges(table: Tensor, num_images: int, nodes: int, mask: Tensor) -> Tensor:
    """The edges of ``table_edges(table, num_images, nodes, mask)`` in a size that does not
    depend on ``mask``: all ``D`` columns of every centre (the fixed-degree layout, marked
    as such), a column ``mask`` drops naming instead the centre's first kept neighbour, or
    the centre itself where ``mask`` keeps none. ``table`` ``[N, D]`` or ``[B, N, D]``,
    ``mask`` ``[B, N, D]`` bool. Nothing is read back: for the graph of a device other
    than the CPU."""
    device = table.device
    if table.dim() == 2:
        table = table.unsqueeze(0)
    d = table.size(-1)
    src = (table + image_offsets(num_images, nodes, device)).expand(num_images, nodes, d)
    centre = torch.arange(num_images * nodes, device=device).view(num_images, nodes, 1)
    first = mask.to(torch.uint8).argmax(-1, keepdim=True)     # the first True (0 if none)
    fill = torch.where(mask.any(-1, keepdim=True), src.gather(-1, first), centre)
    src = torch.where(mask, src, fill).reshape(-1)
    return mark_fixed_degree(
        torch.stack([src, _target_index(num_images * nodes, d, device)]), d)


@lru_cache(maxsize=32)
def grid_rows_cols(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column of every node of an ``h x w`` grid (node ``row * w + col``)."""
    n = torch.arange(h * w, device=device)
    return n.div(w, rounding_mode="floor"), n.remainder(w)
