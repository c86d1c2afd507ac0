"""Building blocks below the graph convolutions and the models (of vig_pyg they import only
the leaf modules ``errors``, ``tracing`` and ``fast_paths``, and ``native``, which builds
and loads the one library of compiled kernels): both ``vig_pyg.conv`` and
``vig_pyg.models`` take their activations, and their convolution + BatchNorm + activation,
from here."""
from .activation import RELEASE_ACTIVATIONS, make_activation

__all__ = ["RELEASE_ACTIVATIONS", "make_activation"]
