r"""``clustered_knn``: ClusterViG's kNN within k-means partitions, per image and block.

For every image, with node features :math:`x_p` (the fc1 output, ``p`` over the image's
:math:`N = H W` nodes):

1. Partition. :math:`\tilde{x}_p = x_p - \frac{1}{N} \sum_q x_q` (centred, not normalised)
   is split into ``clusters`` :math:`K` partitions by :func:`~vig_pyg.graph.kmeans.kmeans`
   (Lloyd, squared L2, ties to the lower centre, an empty cluster's centre zero, at most 25
   iterations, stopping once the mean centre movement is below :math:`10^{-3}`), run twice
   from two random sets of :math:`K` distinct nodes as initial centres, keeping the run of
   lower inertia (the first on a tie). :math:`\ell_p` is node ``p``'s cluster.
2. Edges. With :math:`y_p = x_p / \lVert x_p \rVert_2`, node ``i``'s neighbours are the
   :math:`\min(k, |P_{\ell_i}|)` nodes ``j`` of its own partition
   :math:`P_{\ell_i} = \{j : \ell_j = \ell_i\}` of smallest
   :math:`\lVert y_i - y_j \rVert^2` (itself included), ascending, ties to the lower node
   index: a partition with fewer than ``k`` nodes gives all its nodes. ``k`` is the block's
   scheduled ``k`` (isotropic ``int(linspace(9, 18, depth))``); no dilation, pooled keys or
   relative positions (the release has none).

The result is a :class:`~.base.BuiltGraph`: the edges (grouped by centre, centres in node
order; the fixed-degree layout when every partition has at least ``k`` nodes), ``partition
[B*N]`` (node ``b*N + p`` in cluster ``b*K + l_p``) and ``centroids [B*K, C]``, the k-means
centres (of the centred features; zero for an empty cluster), which ``cluster_mr`` feeds to
its GATv2 layer. Every aggregator runs on the edges; only ``cluster_mr`` also reads the
partition and the centroids. Nothing here is differentiable (like every graph).

Off the CPU nothing is read back to the host: k-means runs all its iterations (the same
result, :mod:`~vig_pyg.graph.kmeans`), and the edges always come in the fixed-degree layout
of ``min(k, N)`` columns (:func:`~.base.padded_table_edges`), a column outside
the centre's partition naming again its first neighbour (the nearest; in the partition,
which holds the centre at distance 0). Where every partition has ``k`` nodes these are the
CPU's edges; where one has fewer, the repeats change no maximum of :math:`x_j - x_i`
(``mr``, ``cluster_mr``), while a sum (``gin``) or BatchNorm statistics over the edges
(``edge``, ``sage`` in training) count them.

Initial centres. In training mode they are drawn from the global torch generator (fresh at
every step, per image and restart, reproducible under ``torch.manual_seed``). In eval mode
they come from a CPU generator seeded with ``seed * 1_000_003 + block_index`` (``seed`` an
option, the block's index from :meth:`bind_block`; 0 outside a model), drawn once per
restart and used for every image of the batch, so that an image's graph depends neither on
the run nor on the other images of its batch, nor on the device.

SPEC's release is isotropic only (four clusters at 14 x 14). Pyramid models are allowed
here: the rule needs nothing an isotropic stage has that a pyramid stage lacks (pooled keys
and relative positions are not used), and ``graph_options`` as a list sets ``clusters`` per
stage; the only requirement is ``clusters <= H * W`` on every stage's grid.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...fast_paths import cpu_path
from ..kmeans import batched_kmeans
from .base import (BlockInfo, BuiltGraph, GraphBuilder, check_map, node_rows, padded_table_edges,
                   table_edges)
from .random import distinct_draws
from .registry import GraphBuilderError, register_graph_builder

#: SPEC's k-means settings: iteration cap, stopping threshold, restarts.
MAX_ITER, TOL, RESTARTS = 25, 1e-3, 2
#: Distance rows per chunk: at most this many elements of [B, rows, N] at once.
_CHUNK_ELEMENTS = 1 << 22


def initial_centres(num_images: int, nodes: int, clusters: int, restarts: int = RESTARTS,
                    generator: torch.Generator | None = None, device=None,
                    shared: bool = False) -> Tensor:
    """``[restarts, num_images, clusters]`` initial centres: ``clusters`` distinct nodes of
    ``[0, nodes)``, each subset equally likely, drawn for every restart and image
    (``shared=True``: one draw per restart, the same for every image) from ``generator``
    (the global generator of ``device`` if ``None``)."""
    rows = restarts if shared else restarts * num_images
    draw_device = generator.device if generator is not None else device
    draws = distinct_draws(rows, nodes, clusters, generator, draw_device).to(device)
    if shared:
        return draws.view(restarts, 1, clusters).expand(restarts, num_images, clusters)
    return draws.view(restarts, num_images, clusters)


def partition_knn(nodes: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor | None]:
    """The neighbour table of step 2: ``nodes [B, N, C]`` (not yet normalised), ``labels
    [B, N]`` the partition of each image. Returns ``(table [B, N, min(k, N)], keep)``, the
    table's columns in (distance, node index) order, ``keep [B, N, min(k, N)]`` marking the
    entries inside the centre's partition, or (on the CPU only, where it is read) ``None``
    when all are."""
    b, n, c = nodes.shape
    width = min(k, n)
    y = torch.nn.functional.normalize(nodes, dim=-1)
    table = torch.empty(b, n, width, dtype=torch.long, device=nodes.device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, b * n))
    for s in range(0, n, rows):
        # pair by pair, not through a matrix product: equal features give equal distances
        # (a product's blocking can round two equal columns differently), so ties are ties;
        # the Euclidean distance is monotone in its square
        dist = torch.cdist(y[:, s:s + rows], y, compute_mode="donot_use_mm_for_euclid_dist")
        other = labels[:, s:s + rows].unsqueeze(2) != labels.unsqueeze(1)
        dist = dist.masked_fill_(other, float("inf"))
        # a stable sort of candidates in node order: ties go to the lower index
        table[:, s:s + rows] = dist.sort(dim=-1, stable=True).indices[..., :width]
    size = torch.zeros(b, n, dtype=torch.long, device=nodes.device)
    size.scatter_add_(1, labels, torch.ones_like(labels))              # partition sizes
    own = size.gather(1, labels)                                      # |P_{l_i}|, [B, N]
    if cpu_path(nodes) and bool((own >= width).all()):
        return table, None
    keep = torch.arange(width, device=nodes.device).view(1, 1, width) < own.unsqueeze(2)
    return table, keep


def clustered_knn_edges(nodes: Tensor, labels: Tensor, k: int,
                        repeats_harmless: bool = True) -> Tensor:
    """Edges of step 2 for node rows ``[B, N, C]`` and their partition ``labels [B, N]``
    (node ``b*N + p``; grouped by centre; fixed-degree layout when every centre has ``k``).
    Off the CPU, where ``repeats_harmless`` (the aggregator is a maximum), always that
    layout, padded (see the module docstring)."""
    table, keep = partition_knn(nodes, labels, k)
    if keep is None:
        return table_edges(table, nodes.size(0), nodes.size(1))
    if cpu_path(nodes) or not repeats_harmless:
        return table_edges(table, nodes.size(0), nodes.size(1), keep)
    return padded_table_edges(table, nodes.size(0), nodes.size(1), keep)


@register_graph_builder("clustered_knn")
class ClusteredKNNBuilder(GraphBuilder):
    """Args: ``clusters`` K (default 4, the release's at 14 x 14) and ``seed`` of the
    evaluation-mode initial centres (default 0)."""

    provides = ("partition", "centroids")

    def __init__(self, clusters: int = 4, seed: int = 0):
        super().__init__()
        if not isinstance(clusters, int) or isinstance(clusters, bool) or clusters < 1:
            raise GraphBuilderError(f"graph builder 'clustered_knn': clusters must be an int "
                                    f">= 1, got {clusters!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise GraphBuilderError(f"graph builder 'clustered_knn': seed must be an int, got "
                                    f"{seed!r}")
        self.clusters, self.seed, self.block_index = clusters, seed, 0

    def bind_block(self, info: BlockInfo, shared: dict) -> None:
        self.block_index = info.block_index

    def conv_options(self) -> dict:
        # cluster_mr needs K to join each image's centroids into their complete graph
        return {"clusters": self.clusters}

    def extra_repr(self) -> str:
        return f"clusters={self.clusters}, seed={self.seed}"

    def check_grid(self, h: int, w: int, k: int) -> None:
        if self.clusters > h * w:
            raise GraphBuilderError(f"graph builder 'clustered_knn': clusters = "
                                    f"{self.clusters} exceeds the {h * w} nodes of the {h}x{w} "
                                    f"grid; use clusters <= {h * w}")

    def initial_centres(self, num_images: int, nodes: int, device) -> Tensor:
        """``[RESTARTS, num_images, clusters]`` (see the module docstring)."""
        if self.training:
            return initial_centres(num_images, nodes, self.clusters, RESTARTS, None, device)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.block_index)
        return initial_centres(num_images, nodes, self.clusters, RESTARTS, generator, device,
                               shared=True)

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> BuiltGraph:
        b, c, h, w = check_map(x, "clustered_knn")
        self.check_grid(h, w, k)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise GraphBuilderError(f"graph builder 'clustered_knn': k must be an int >= 1, "
                                    f"got {k!r}")
        n, K = h * w, self.clusters
        with torch.no_grad():
            nodes = node_rows(x)
            # half-precision features (autocast) are clustered in float32
            work = nodes.float() if nodes.dtype in (torch.float16, torch.bfloat16) else nodes
            centred = work - work.mean(1, keepdim=True)
            init = self.initial_centres(b, n, x.device)
            labels, centres, _ = batched_kmeans(centred, init, MAX_ITER, TOL)
            edge_index = clustered_knn_edges(work, labels, k, self.repeats_harmless)
            partition = (labels + torch.arange(b, device=x.device).mul_(K).unsqueeze(1))
        return BuiltGraph(edge_index, partition=partition.view(-1),
                          centroids=centres.reshape(b * K, c).to(x.dtype))
