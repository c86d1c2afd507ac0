"""vig_pyg: Vision GNN backbones built natively on PyTorch Geometric."""
import warnings

# torch_geometric decorates a few of its modules with torch.jit.script at import time, which
# torch >= 2.10 flags as deprecated; the warning is PyG's, not our users', so keep it quiet.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                        category=FutureWarning)

from .graph import PatchGraph, knn_edges  # noqa: E402
from .errors import VigPygError  # noqa: E402
from .models import create_model, list_models  # noqa: E402

__version__ = "0.1.0"
__all__ = ["VigPygError", "create_model", "list_models", "PatchGraph", "knn_edges", "__version__"]
