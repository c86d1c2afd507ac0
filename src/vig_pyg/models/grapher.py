"""The Grapher block: fc1 -> graph convolution on the patch graph of its graph builder (the
dynamic kNN graph by default; :mod:`vig_pyg.graph.builders`) -> fc2 -> drop path -> + input.

The map arrives channels-last (see :mod:`.vig`), so the node view that PyG works on,
``x [B*H*W, C]``, is the map's own memory: building the :class:`~vig_pyg.graph.PatchGraph`
and going back to a map after the graph convolution copy nothing.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from ..graph import PatchGraph, relative_position_table, resize_relative_position
from ..graph.builders import GraphBuilderError, as_built_graph, builder_options, graph_builder
from .convbn import ConvBN
from .finite import note_finite


def _build_conv(name: str, channels: int, out: int, act: str, groups: int, options: dict,
                builder) -> nn.Module:
    from ..conv import build_conv, conv_takes  # late: vig_pyg.conv imports PyG's convs

    # groups is passed only when it differs from every conv's default (4), so that
    # registered convs without a groups argument keep working with the release's layout
    extra = {} if groups == 4 else {"groups": groups}
    # what the builder asks of its aggregator, where the aggregator takes it: its edge
    # attributes' width (PyG's edge_dim) and options such as a global-attention stage
    asked = dict(builder.conv_options())
    if builder.edge_dim is not None:
        asked["edge_dim"] = builder.edge_dim
    extra.update({key: v for key, v in asked.items() if conv_takes(name, key)})
    check_pairing(name, builder)
    return build_conv(name, channels, out, act=act, **{**extra, **options})


def check_pairing(name: str, builder) -> None:
    """Refuses (one line, naming the fix) an aggregator that cannot run on ``builder``'s
    output: a graph aggregator on a hypergraph or the reverse, or one whose
    :attr:`graph_inputs` asks for what the builder does not give (edge kinds, a partition)."""
    from ..conv import conv_graph_kind
    from ..conv.registry import conv_factory

    conv_kind = conv_graph_kind(name)
    if conv_kind != builder.graph_kind:
        fix = ("a hypergraph aggregator ('vihgnn' or 'pyg:HypergraphConv')"
               if builder.graph_kind == "hypergraph" else
               f"a {conv_kind} builder: {', '.join(map(repr, builders_for(name)))}")
        raise GraphBuilderError(
            f"aggregator {name!r} runs on a {conv_kind} but graph builder "
            f"{builder.name!r} builds a {builder.graph_kind}; use {fix}")
    missing = sorted(set(getattr(conv_factory(name), "graph_inputs", ())) - set(builder.provides))
    if missing:
        raise GraphBuilderError(
            f"aggregator {name!r} needs {' and '.join(missing)} from its graph builder, which "
            f"{builder.name!r} does not give; use graph="
            f"{' or '.join(map(repr, builders_for(name)))}")


def builders_for(name: str) -> list[str]:
    """The registered builders aggregator ``name`` can run on."""
    from ..conv import conv_graph_kind
    from ..conv.registry import conv_factory
    from ..graph.builders import graph_builder_class, list_graph_builders

    kind = conv_graph_kind(name)
    needs = set(getattr(conv_factory(name), "graph_inputs", ()))
    return [n for n in list_graph_builders()
            if graph_builder_class(n).graph_kind == kind
            and needs <= set(graph_builder_class(n).provides)]


class Grapher(nn.Module):
    """One Grapher.

    Args:
        channels: C (the graph convolution maps C -> 2C, fc2 brings it back to C).
        fc: ``False`` drops fc1 and fc2 (an ablation): the graph convolution then runs on
            the block's input and maps C -> C itself.
        groups: groups of the graph convolution's projections (4 as released).
        k, dilation: the ``k`` neighbours kept of the ``k * dilation`` nearest.
        reduce_ratio: r > 1 makes the candidate neighbours the r x r average-pooled map
            (a bipartite graph: pooled keys -> all nodes).
        grid_size: the node grid the relative-position table is built for (pyramid models);
            ``None`` for no relative-position term (isotropic models).
        graph, graph_options: the graph builder (:func:`~vig_pyg.graph.graph_builder`;
            default ``knn``, the dynamic kNN above). ``stochastic``, ``epsilon`` and
            ``knn_backend`` fill the builder options of those names it takes, unless given.
        conv_options: keyword arguments of the aggregator (``{"sign": "i-j"}`` for ``mr``).
            The builder may add its own (:meth:`~vig_pyg.graph.GraphBuilder.conv_options`,
            ``edge_dim`` of a builder with edge attributes) where the aggregator takes them.
    """

    def __init__(self, channels: int, k: int = 9, dilation: int = 1, conv: str = "mr",
                 act: str = "gelu", reduce_ratio: int = 1, drop_path: float = 0.0,
                 grid_size: tuple[int, int] | None = None, stochastic: bool = False,
                 epsilon: float = 0.2, knn_backend: str = "auto", fc: bool = True,
                 groups: int = 4, graph: str = "knn", graph_options: dict | None = None,
                 conv_options: dict | None = None):
        super().__init__()
        self.k, self.dilation, self.reduce_ratio = k, dilation, reduce_ratio
        self.stochastic, self.epsilon, self.knn_backend = stochastic, epsilon, knn_backend
        options = dict(graph_options or {})
        defaults = dict(stochastic=stochastic, epsilon=epsilon, backend=knn_backend)
        for name in builder_options(graph):
            if name in defaults:
                options.setdefault(name, defaults[name])
        self.graph_builder = graph_builder(graph, **options)
        width = 2 * channels if fc else channels
        self.fc1 = ConvBN(channels, channels) if fc else nn.Identity()
        self.graph_conv = _build_conv(conv, channels, width, act, groups,
                                      dict(conv_options or {}), self.graph_builder)
        self.graph_builder.repeats_harmless = bool(
            getattr(self.graph_conv, "repeat_invariant", False))
        self.fc2 = ConvBN(width, channels) if fc else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if grid_size is not None:
            table = relative_position_table(tuple(grid_size), channels, reduce_ratio)
            # frozen: part of the checkpoint (and of the parameter count), never trained
            self.relative_pos = nn.Parameter(table.unsqueeze(0), requires_grad=False)
        else:
            self.relative_pos = None
        # resized tables: {(table shape, dtype, device): ((queries, keys), [(table, resized)])};
        # a ViG hands one dict to all its Graphers, so the blocks of a stage, whose tables are
        # equal, keep one resized copy between them (at 800 x 1333 one is a 1 GiB tensor)
        self._rel_cache: dict = {}
        self._warned_sizes: set = set()
        #: off the CPU, the float64 sum of the builder's latest input, finite iff the input
        #: is (a device scalar that :func:`~.finite.check_finite` reads); ``None`` until then
        self.finite: Tensor | None = None

    def extra_repr(self) -> str:
        return (f"k={self.k}, dilation={self.dilation}, reduce_ratio={self.reduce_ratio}"
                + (f", stochastic=True, epsilon={self.epsilon}" if self.stochastic else "")
                + (f", graph={self.graph_builder.name}" if self.graph_builder.name != "knn"
                   else ""))

    def _relative_pos(self, num_queries: int, num_keys: int) -> Tensor | None:
        """The stored table, bicubically resized when the grid differs from the one it was
        built for. Cached for the last size asked per table shape, and shared with every
        Grapher whose table holds the same values (checked with ``torch.equal``, so a loaded
        or edited table is never served another's resize)."""
        rel = self.relative_pos
        if rel is None or rel.shape[1:] == (num_queries, num_keys):
            return rel
        key, size = (tuple(rel.shape), rel.dtype, rel.device), (num_queries, num_keys)
        entry = self._rel_cache.get(key)
        if entry is None or entry[0] != size:
            entry = self._rel_cache[key] = (size, [])
        for source, resized in entry[1]:
            if torch.equal(source, rel):
                return resized
        with torch.no_grad():
            resized = resize_relative_position(rel, num_queries, num_keys)
        entry[1][:] = entry[1][-7:] + [(rel.detach().clone(), resized)]  # a few tables at most
        return resized

    def _dilation_for(self, num_keys: int, grid) -> int:
        """The scheduled dilation, or on grids too small for ``k * d`` candidates (inputs
        smaller than the model was built for) the largest that fits, ``num_keys // k``."""
        d = self.dilation
        if self.k * d <= num_keys or num_keys < self.k:
            return d  # fits, or hopeless (knn_edges names the problem)
        fitted = num_keys // self.k
        if grid not in self._warned_sizes:
            self._warned_sizes.add(grid)
            warnings.warn(
                f"a {grid[0]}x{grid[1]} node grid offers {num_keys} candidate neighbours, fewer "
                f"than k * dilation = {self.k} * {d}: using dilation {fitted} at this input size "
                f"(larger inputs keep the schedule)", stacklevel=3)
        return fitted

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.fc1(x)
        note_finite(self, x)
        b, c, h, w = x.shape
        r = self.reduce_ratio
        builder = self.graph_builder
        # only kNN builders take the pooled keys; the others link the nodes themselves
        keys = F.avg_pool2d(x, r, r) if r > 1 and builder.uses_keys else None
        num_keys = h * w if keys is None else keys.shape[2] * keys.shape[3]
        dilation = (self._dilation_for(num_keys, (h, w)) if builder.uses_dilation
                    else self.dilation)
        built = as_built_graph(builder(x, keys, k=self.k, dilation=dilation,
                                       relative_pos=self._relative_pos(h * w, num_keys)
                                       if builder.uses_keys else None))
        graph = PatchGraph.from_feature_map(x)
        graph.edge_index = built.edge_index
        # what the builder made beyond the edges, for an aggregator that takes it
        extra = built.inputs(getattr(self.graph_conv, "graph_inputs", ()))
        if keys is None:
            out = self.graph_conv(graph.x, graph.edge_index, **extra)
        else:  # bipartite: sources are the pooled keys, targets every node
            src = keys.permute(0, 2, 3, 1).reshape(-1, c)
            out = self.graph_conv((src, graph.x), graph.edge_index, **extra)
        out = graph.to_feature_map(out)
        dropping = self.training and not isinstance(self.drop_path, nn.Identity)
        if dropping or not isinstance(self.fc2, ConvBN):
            return self.drop_path(self.fc2(out)) + shortcut
        return self.fc2(out, residual=shortcut)  # drop path is the identity: the sum rides along
