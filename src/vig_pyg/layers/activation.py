"""The one activation factory of vig_pyg: every layer (stem, graph convolutions, FFN, head,
PyG adapters) builds its activation with :func:`make_activation`.

The release's names (docs/architecture.md, "Activations") and what they build:

==============  =====================================================================
``relu``        ``nn.ReLU()``
``leakyrelu``   ``nn.LeakyReLU(0.2)`` (the release's negative slope, not torch's 0.01)
``prelu``       ``nn.PReLU(1, init=0.2)``: one learnable slope per layer instance
``gelu``        ``nn.GELU()`` (the default of every model)
``hswish``      ``nn.Hardswish()``
==============  =====================================================================

Names are case-insensitive and ignore ``_`` (``leaky_relu`` is ``leakyrelu``,
``hardswish`` is ``hswish``). Any other activation class of :mod:`torch.nn` is accepted by
its lower-case name with default arguments (``silu``, ``elu``, ``mish``, ``tanh``, ...).
"""
from __future__ import annotations

from typing import Callable, Union

from torch import nn

from ..errors import VigPygError

#: The release's activations; one choice applies to every activation of a network.
RELEASE_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leakyrelu": lambda: nn.LeakyReLU(0.2),
    "prelu": lambda: nn.PReLU(num_parameters=1, init=0.2),
    "gelu": nn.GELU,
    "hswish": nn.Hardswish,
}
_ALIASES = {"hardswish": "hswish"}
_NONE = ("none", "identity", "")

ActSpec = Union[str, Callable[[], nn.Module], nn.Module, None]


def _torch_activations() -> dict[str, type]:
    """Lower-case name -> class of every activation module in ``torch.nn``."""
    from torch.nn.modules import activation as acts

    return {name.lower(): cls for name, cls in vars(acts).items()
            if isinstance(cls, type) and issubclass(cls, nn.Module) and cls is not nn.Module
            and cls.__module__ == acts.__name__}


def _key(name: str) -> str:
    key = name.lower().replace("_", "").replace("-", "")
    return _ALIASES.get(key, key)


def check_activation(act: ActSpec) -> None:
    """Raises :class:`~vig_pyg.errors.VigPygError` if :func:`make_activation` cannot build
    ``act`` (cheap: builds nothing for names)."""
    if isinstance(act, str):
        key = _key(act)
        if key not in RELEASE_ACTIVATIONS and key not in _NONE and key not in _torch_activations():
            raise VigPygError(
                f"unknown activation {act!r}; the release's are {list(RELEASE_ACTIVATIONS)} "
                f"(any torch.nn activation works by its lower-case name, e.g. 'silu'; "
                f"'none' for no activation)")
    elif not (act is None or isinstance(act, nn.Module) or callable(act)):
        raise VigPygError(f"an activation is a name, an nn.Module, a module class or None, "
                          f"got {type(act).__name__}")


def make_activation(act: ActSpec = "gelu") -> nn.Module:
    """A fresh activation module for ``act``: a name (see the module docstring), an
    ``nn.Module`` (used as is), a module class or factory (called with no arguments), or
    ``None`` / ``"none"`` for the identity."""
    check_activation(act)
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    if not isinstance(act, str):
        module = act()
        if not isinstance(module, nn.Module):
            raise VigPygError(f"activation factory {act!r} returned a "
                              f"{type(module).__name__}, not an nn.Module")
        return module
    key = _key(act)
    if key in _NONE:
        return nn.Identity()
    if key in RELEASE_ACTIVATIONS:
        return RELEASE_ACTIVATIONS[key]()
    return _torch_activations()[key]()
