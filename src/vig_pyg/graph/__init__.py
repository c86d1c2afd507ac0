"""Patch graphs, the dynamic kNN edges of ViG and the graph builders."""
from .knn import MAX_CHUNK_ELEMENTS, fixed_degree, knn_edges
from .patch_graph import PatchGraph
from .relative_position import (relative_position_features, relative_position_table,
                                resize_relative_position, sincos_position_embedding)
from .builders import (BuiltGraph, GraphBuilder, GraphBuilderError, graph_builder,
                       list_graph_builders, register_graph_builder)

__all__ = [
    "PatchGraph", "knn_edges", "fixed_degree", "MAX_CHUNK_ELEMENTS",
    "relative_position_table", "relative_position_features", "resize_relative_position",
    "sincos_position_embedding", "BuiltGraph", "GraphBuilder", "GraphBuilderError", "graph_builder",
    "list_graph_builders", "register_graph_builder",
]
