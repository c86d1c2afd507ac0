"""Graph builders: how a Grapher's graph is made (``knn`` by default; see README "Graphs").

``graph_builder(name, **options)`` returns a module mapping a block's feature map to an
``edge_index``; ``list_graph_builders()`` names them; ``register_graph_builder(name)`` adds
one (a :class:`GraphBuilder` subclass).
"""
from .registry import (GraphBuilderError, builder_options, check_options, graph_builder,  # noqa: I001
                       graph_builder_class, list_graph_builders, register_graph_builder)
from .base import BlockInfo, BuiltGraph, GraphBuilder, as_built_graph
from .knn import KNNBuilder
from .static_knn import StaticKNNBuilder, attach_stage_hooks
from .axial import AxialBuilder
from .axial_threshold import AxialThresholdBuilder
from .window_knn import WindowKNNBuilder
from .spatial_knn import SpatialKNNBuilder
from .random import RandomBuilder
from .gated_axial import GatedAxialBuilder
from .mgc import MGCBuilder
from .lsgc import LSGCBuilder
from .hypergraph_fcm import HypergraphFCMBuilder
from .clustered_knn import ClusteredKNNBuilder

__all__ = [
    "GraphBuilder", "GraphBuilderError", "BlockInfo", "BuiltGraph", "as_built_graph", "graph_builder", "graph_builder_class",
    "list_graph_builders", "register_graph_builder", "builder_options", "check_options",
    "attach_stage_hooks", "KNNBuilder", "StaticKNNBuilder", "AxialBuilder",
    "AxialThresholdBuilder", "WindowKNNBuilder", "SpatialKNNBuilder", "RandomBuilder", "GatedAxialBuilder",
    "MGCBuilder", "LSGCBuilder", "HypergraphFCMBuilder",
    "ClusteredKNNBuilder",
]
