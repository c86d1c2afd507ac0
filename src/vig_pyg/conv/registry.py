"""Graph convolutions by name: what ``Grapher(conv="mr")`` and ``create_model(conv=...)``
look up.

Every entry is a factory ``f(in_channels, out_channels, **kwargs) -> nn.Module`` whose
module maps node features ``[N, in]`` (or a bipartite pair) and an ``edge_index`` to
``[N_dst, out]``. The ViG layers are registered as ``"mr"``, ``"edge"``, ``"sage"`` and
``"gin"``; PyTorch Geometric convolutions as ``"pyg:<ClassName>"`` (see
:mod:`vig_pyg.conv.pyg_adapter`).

Besides exact names, a module can claim a name *prefix* with :func:`register_prefix`: the
PyG adapter resolves every ``"pyg:<ClassName>"`` that way. The registry imports no other
part of the package; the adapters register themselves when ``vig_pyg.conv`` is imported.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from ..errors import VigPygError


class ConvNameError(VigPygError):
    """A graph convolution name that is not registered and no prefix resolves."""


_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}
#: prefix -> (resolver(rest of the name) -> factory or None, how to name one in errors)
_PREFIXES: Dict[str, Tuple[Callable[[str], Optional[Callable[..., nn.Module]]], str]] = {}


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


def register_prefix(prefix: str, resolver: Callable[[str], Optional[Callable[..., nn.Module]]],
                    pattern: str = "<name>") -> None:
    """Names starting with ``prefix`` that are not registered themselves are resolved by
    ``resolver(name[len(prefix):])``, which returns a factory or ``None`` (unknown);
    ``pattern`` shows the accepted form in error messages (``"pyg:<ClassName>"``)."""
    _PREFIXES[prefix] = (resolver, pattern)


def conv_factory(name: str):
    """The constructor registered as ``name``, or one a registered prefix resolves it to
    (any PyG convolution as ``"pyg:<ClassName>"``); an unknown name raises a
    :class:`ConvNameError` listing the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, (resolver, _) in _PREFIXES.items():
        if isinstance(name, str) and name.startswith(prefix):
            factory = resolver(name[len(prefix):])
            if factory is not None:
                return factory
    forms = "".join(f" ({pattern})" for _, pattern in _PREFIXES.values())
    raise ConvNameError(f"unknown graph convolution {name!r}; known: "
                        f"{', '.join(list_convs())}{forms}")


def build_conv(name: str, in_channels: int, out_channels: Optional[int] = None,
               **kwargs) -> nn.Module:
    """Builds the convolution registered as ``name`` (``in_channels -> out_channels``,
    default ``2 * in_channels``); ``kwargs`` go to its constructor (``groups``, ``act``,
    ``bias`` for the ViG layers, the PyG constructor's arguments for ``"pyg:..."``)."""
    factory = conv_factory(name)
    if out_channels is None:
        out_channels = 2 * in_channels
    return factory(in_channels, out_channels, **kwargs)


def conv_takes(name: str, option: str) -> bool:
    """Whether the constructor of convolution ``name`` takes the keyword ``option``. A
    factory may answer itself through a ``takes(option)`` attribute (the PyG adapters read
    the PyG class's constructor); otherwise its signature decides (``**kwargs`` does not
    count: such a factory takes only what it names)."""
    factory = conv_factory(name)
    takes = getattr(factory, "takes", None)
    if callable(takes):
        return bool(takes(option))
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(option)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def conv_graph_kind(name: str) -> str:
    """``"graph"`` or ``"hypergraph"``: what convolution ``name`` runs on (a factory's
    ``graph_kind`` attribute; ``"graph"`` when it has none)."""
    return getattr(conv_factory(name), "graph_kind", "graph")


def list_convs() -> List[str]:
    """Registered names: the ViG layers first, then the ``"pyg:..."`` adapters, then
    user registrations, in registration order."""
    return list(_REGISTRY)


def _describe(factory) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"
