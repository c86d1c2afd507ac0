"""Activations by name: the one factory lives in :mod:`vig_pyg.layers.activation` (below
both the graph convolutions and the models, which share it); re-exported here."""
from ..layers.activation import RELEASE_ACTIVATIONS, check_activation, make_activation

__all__ = ["RELEASE_ACTIVATIONS", "check_activation", "make_activation"]
