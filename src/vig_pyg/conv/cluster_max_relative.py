from __future__ import annotations

from functools import lru_cache
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv

from ..fast_paths import cpu_path
from .base import GrapherConv, interleave
from .functional import gather_max
from .projection import GroupedProjection
from .registry import register_conv


@lru_cache(maxsize=16)
def complete_graph(num_images: int, clusters: int, device: torch.device) -> Tensor:
    """``[2, B*K*K]``: within every image, every centroid ``j`` (row 0) to every centroid
    ``i`` (row 1), self-loops included; grouped by ``i``, ``j`` ascending."""
    n = num_images * clusters
    i = torch.arange(n, device=device).repeat_interleave(clusters)
    j = (i // clusters) * clusters + torch.arange(clusters, device=device).repeat(n)
    return torch.stack([j, i])


@register_conv("cluster_mr")
class ClusterMRConv(GrapherConv):
    r"""ClusterViG's max-relative convolution with centroid attention (SPEC, "More graphs of
    the family"), on the graph of the ``clustered_knn`` builder:

    .. math::
        \mathbf{m}_i = \max_{j \in \mathcal{N}(i)} \left(\mathbf{x}_j - \mathbf{x}_i\right),
        \qquad
        \mathbf{c}^{\prime} = \mathrm{GATv2}\left(\mathbf{c}, \mathcal{K}\right),
        \qquad
        \mathbf{x}^{\prime}_i = h_{\mathbf{\Theta}}\left(\left[x_{i,0}, m_{i,0}, x_{i,1},
        m_{i,1}, \dots ; \mathbf{c}^{\prime}_{\ell(i)}\right]\right),

    :math:`\mathbf{m}_i` exactly as :class:`~.max_relative.MRConv` (ViG's sign, no zero
    start; the centre is its own neighbour in ``clustered_knn``), :math:`\mathbf{c}` the
    builder's ``centroids`` (``[B*K, C]``, the ``K`` k-means centres of every image),
    :math:`\mathcal{K}` the complete graph with self-loops on the ``K`` centroids of each
    image, GATv2 one :class:`torch_geometric.nn.GATv2Conv` layer (one head,
    :math:`C \to C`, PyG's defaults otherwise: separate source and target weights, LeakyReLU
    slope 0.2, bias, no dropout), :math:`\ell(i)` node ``i``'s cluster (the builder's
    ``partition``, numbered over the batch), and :math:`h_{\mathbf{\Theta}}` the grouped
    projection :math:`3C \to` ``out_channels`` (1x1 grouped conv + BatchNorm + activation)
    of the interleaved :math:`[\mathbf{x}_i, \mathbf{m}_i]` (``2C``) followed by
    :math:`\mathbf{c}^{\prime}_{\ell(i)}` (``C``).

    Which centroid features enter the GATv2: the builder's k-means centres (of the
    mean-centred features; zero for an empty cluster), not the partition means of
    :math:`\mathbf{x}` recomputed here. SPEC's "the K centroids of an image", which the
    GATv2 updates, are the centres its k-means produced (the release hands its k-means
    ``centers`` to the centroid layer); they equal the partition means of :math:`\mathbf{x}`
    minus the image mean for non-empty clusters. Like the graph, they carry no gradient: the
    GATv2 weights train through :math:`\mathbf{c}^{\prime}`, the node features only through
    :math:`\mathbf{x}_i` and :math:`\mathbf{m}_i`.

    ``forward(x, edge_index, partition=..., centroids=...)``: the Grapher passes the two
    from the builder's :class:`~vig_pyg.graph.builders.BuiltGraph` (:attr:`graph_inputs`);
    without them (another builder) it raises, and a model refuses the pairing when it is
    built. ``clusters`` must be the builder's ``K``; a model sets it from the builder
    (``conv_options``), and a different one is caught by the partition check.

    Checkpoint keys: ``gat.*`` (PyG's ``GATv2Conv``: ``lin_l``, ``lin_r``, ``att``,
    ``bias``) and ``nn.0.*`` (conv), ``nn.1.*`` (BN).

    Args:
        in_channels (int): node feature width :math:`C`.
        out_channels (int, optional): output width (default :math:`2C`).
        groups (int): groups of the projection; ``3C`` and ``out_channels`` divisible by it.
            (default: :obj:`4`)
        act (str or nn.Module, optional): activation. (default: :obj:`"gelu"`)
        bias (bool): projection bias. (default: :obj:`True`)
        clusters (int): centroids per image :math:`K`. (default: :obj:`4`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)`, edge indices
          :math:`(2, |\mathcal{E}|)`, ``partition`` :math:`(|\mathcal{V}|)`, ``centroids``
          :math:`(B K, C)`
        - **output:** :math:`(|\mathcal{V}|, F_{out})`
    """

    graph_inputs = ("partition", "centroids")
    repeat_invariant = True  # maxima over the neighbours; statistics over the nodes
    #: the padded-table path of variable-degree graphs computes max_j x_j - x_i directly
    padded_kind = "relative_max"

    def __init__(self, in_channels: int, out_channels: Optional[int] = None,
                 groups: int = 4, act: Union[str, Callable, nn.Module, None] = "gelu",
                 bias: bool = True, clusters: int = 4):
        super().__init__(in_channels, out_channels, aggr="max")
        if not isinstance(clusters, int) or isinstance(clusters, bool) or clusters < 1:
            raise ValueError(f"ClusterMRConv: clusters must be an int >= 1, got {clusters!r}")
        if (3 * in_channels) % groups or self.out_channels % groups:
            raise ValueError(f"ClusterMRConv: 3 * in_channels = {3 * in_channels} and "
                             f"out_channels = {self.out_channels} must be divisible by "
                             f"groups = {groups}; use a width divisible by {groups}")
        self.groups, self.clusters = groups, clusters
        self.gat = GATv2Conv(in_channels, in_channels, heads=1, add_self_loops=False)
        self.nn = GroupedProjection(3 * in_channels, self.out_channels, groups, act, bias)

    def reset_parameters(self):
        super().reset_parameters()
        self.gat.reset_parameters()

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor,
                partition: Optional[Tensor] = None,
                centroids: Optional[Tensor] = None) -> Tensor:
        x_src, x_dst = self._unpack(x)
        if partition is None or centroids is None:
            raise ValueError("aggregator 'cluster_mr' needs the partition and centroids of a "
                             "clustered graph; use graph='clustered_knn'")
        n, k_total = x_dst.size(0), centroids.size(0)
        images = k_total // self.clusters
        if (partition.shape != (n,) or centroids.dim() != 2
                or centroids.size(1) != self.in_channels or k_total % self.clusters
                or images == 0 or n % images
                # every node's cluster must be one of its own image's K: read back, so
                # checked on the CPU only
                or cpu_path(partition) and not bool(
                    (partition.div(self.clusters, rounding_mode="floor")
                     == torch.arange(n, device=partition.device)
                     .div(n // images, rounding_mode="floor")).all())):
            raise ValueError(f"ClusterMRConv: expected partition [{n}] (image b's nodes in "
                             f"clusters b*K .. b*K + K - 1) and centroids [B * K, "
                             f"{self.in_channels}] with K = clusters = {self.clusters}, got "
                             f"{tuple(partition.shape)} and {tuple(centroids.shape)}; set "
                             f"clusters to the builder's")
        k = self._fixed_degree(edge_index, n)
        if k is None:
            m = self._propagate(edge_index, x_src, x_dst)
        else:
            m = gather_max(x_src, edge_index[0], k) - x_dst
        graph = complete_graph(k_total // self.clusters, self.clusters, centroids.device)
        updated = self.gat(centroids.to(x_dst.dtype), graph)           # [B*K, C]
        return self.nn(torch.cat([interleave(x_dst, m), updated[partition]], dim=1))

    def message(self, x_i: Tensor, x_j: Tensor) -> Tensor:
        return x_j - x_i

    def extra_repr(self) -> str:
        return f"clusters={self.clusters}"
