"""Grapher graph convolutions (``in -> out`` on node rows) and their registry.

ViG layers: ``"mr"`` (:class:`MRConv`, the default), ``"edge"`` (:class:`ViGEdgeConv`),
``"sage"`` (:class:`ViGSAGEConv`), ``"gin"`` (:class:`ViGGINConv`); PyTorch Geometric
convolutions as ``"pyg:<ClassName>"`` (:mod:`vig_pyg.conv.pyg_adapter`). Build any of them
with :func:`build_conv`, list them with :func:`list_convs`, add one with
:func:`register_conv`.
"""
from .registry import (  # noqa: I001 (registry first)
    ConvNameError, build_conv, conv_graph_kind, conv_takes, list_convs, register_conv, register_prefix)
from .base import GrapherConv
from .projection import GroupedProjection
from .max_relative import MRConv
from .edge import ViGEdgeConv
from .sage import ViGSAGEConv
from .gin import ViGGINConv
from .pyg_adapter import PYG_PREFIX, PyGConv
from .gated_max_relative import GatedMRConv
from .hypergraph import ViHGNNConv
from .cluster_max_relative import ClusterMRConv

__all__ = [
    "build_conv", "conv_graph_kind", "conv_takes", "list_convs", "register_conv", "register_prefix", "ConvNameError",
    "GrapherConv", "GroupedProjection",
    "MRConv", "ViGEdgeConv", "ViGSAGEConv", "ViGGINConv", "PyGConv", "PYG_PREFIX", "GatedMRConv", "ViHGNNConv",
    "ClusterMRConv",
]
