"""Graph convolutions by name: what ``Grapher(conv="mr")`` and ``create_model(conv=...)``
look up.

Every entry is a factory ``f(in_channels, out_channels, **kwargs) -> nn.Module`` whose
module maps node features ``[N, in]`` (or a bipartite pair) and an ``edge_index`` to
``[N_dst, out]``. The ViG layers are registered as ``"mr"``, ``"edge"``, ``"sage"`` and
``"gin"``; PyTorch Geometric convolutions as ``"pyg:<ClassName>"`` (see
:mod:`vig_pyg.conv.pyg_adapter`).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

from torch import nn

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_conv(name: str, *, replace: bool = False) -> Callable:
    """Decorator registering a convolution class (or factory) under ``name``.

    The class is called as ``cls(in_channels, out_channels, **kwargs)`` by
    :func:`build_conv`; ``out_channels`` may be ``None`` (then it should default to
    ``2 * in_channels``). Registering a name twice raises unless ``replace=True``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a conv name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(factory):
            raise TypeError(f"register_conv({name!r}) decorates a class or factory, got "
                            f"{type(factory).__name__}")
        if name in _REGISTRY and not replace:
            raise ValueError(f"a graph convolution named {name!r} is already registered "
                             f"({_describe(_REGISTRY[name])}); choose another name or pass "
                             f"replace=True")
        _REGISTRY[name] = factory
        return factory

    return decorator


def conv_factory(name: str):
    """The constructor registered as ``name``, or a ``"pyg:<ClassName>"`` adapter for any
    PyG convolution; an unknown name raises a ValueError listing the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    from .pyg_adapter import PYG_PREFIX, pyg_conv_factory

    factory = pyg_conv_factory(name[len(PYG_PREFIX):]) if (
        isinstance(name, str) and name.startswith(PYG_PREFIX)) else None
    if factory is None:
        raise ValueError(f"unknown graph convolution {name!r}; known: "
                         f"{', '.join(list_convs())} (PyG convolutions as "
                         f"'{PYG_PREFIX}<ClassName>')")
    return factory


def build_conv(name: str, in_channels: int, out_channels: Optional[int] = None,
               **kwargs) -> nn.Module:
    """Builds the convolution registered as ``name`` (``in_channels -> out_channels``,
    default ``2 * in_channels``); ``kwargs`` go to its constructor (``groups``, ``act``,
    ``bias`` for the ViG layers, the PyG constructor's arguments for ``"pyg:..."``)."""
    factory = conv_factory(name)
    if out_channels is None:
        out_channels = 2 * in_channels
    return factory(in_channels, out_channels, **kwargs)


def list_convs() -> List[str]:
    """Registered names: the ViG layers first, then the ``"pyg:..."`` adapters, then
    user registrations, in registration order."""
    return list(_REGISTRY)


def _describe(factory) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"
