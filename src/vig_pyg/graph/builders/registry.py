"""Graph builders by name: what ``Grapher(graph="axial")`` and ``create_model(graph=...)``
look up.

Every entry is a :class:`~.base.GraphBuilder` subclass; ``graph_builder(name, **options)``
checks the option names against its constructor and returns a fresh instance.
"""
from __future__ import annotations

import inspect
from typing import Callable, Dict, List

from .base import GraphBuilderError

_REGISTRY: Dict[str, type] = {}

def register_graph_builder(name: str, *, replace: bool = False) -> Callable[[type], type]:
    """Class decorator registering a :class:`~.base.GraphBuilder` subclass as ``name``."""
    if not isinstance(name, str) or not name:
        raise GraphBuilderError(f"a graph builder name must be a non-empty string, got {name!r}")

    def decorator(cls: type) -> type:
        from .base import GraphBuilder

        if not (isinstance(cls, type) and issubclass(cls, GraphBuilder)):
            raise TypeError(f"register_graph_builder({name!r}) decorates a GraphBuilder "
                            f"subclass, got {cls!r}")
        if name in _REGISTRY and not replace:
            raise GraphBuilderError(f"a graph builder named {name!r} is already registered; "
                                    f"choose another name or pass replace=True")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def list_graph_builders() -> List[str]:
    """Registered names, built-ins first (``knn`` is the default)."""
    return list(_REGISTRY)


def graph_builder_class(name: str) -> type:
    """The class registered as ``name``; an unknown name raises listing the known ones."""
    if name not in _REGISTRY:
        raise GraphBuilderError(f"unknown graph builder {name!r}; known: "
                                f"{', '.join(list_graph_builders())}")
    return _REGISTRY[name]


def builder_options(name: str) -> List[str]:
    """The option names (constructor keywords) builder ``name`` takes."""
    params = inspect.signature(graph_builder_class(name).__init__).parameters.values()
    return [p.name for p in params if p.name != "self"
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_options(name: str, options: dict) -> None:
    """Raises a one-line error for option names that builder ``name`` does not take."""
    valid = builder_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise GraphBuilderError(f"graph builder {name!r} takes no option(s) {unknown}; its "
                                f"options: {valid or 'none'}")


def graph_builder(name: str = "knn", **options):
    """A new builder module: ``graph_builder("axial", hop=2)``."""
    check_options(name, options)
    return graph_builder_class(name)(**options)
