"""vig_pyg: Vision GNN backbones built natively on PyTorch Geometric."""
from .graph import PatchGraph, knn_edges

__version__ = "0.1.0"
__all__ = ["PatchGraph", "knn_edges", "__version__"]
