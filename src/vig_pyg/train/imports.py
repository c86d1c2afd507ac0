"""``model.imports``: user modules imported before a model is built.

A layer registered with ``@register_conv`` exists only once its module has been imported,
so a run lists those modules in ``model.imports`` and every process that builds or loads
the model (the CLI, each DDP rank, each loader worker, each sweep worker) imports them
first. An entry is a dotted module name (``my_package.my_conv``; the current directory is
searched too, as ``python -m`` would) or the path of a ``.py`` file.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

from ..errors import ConfigError, VigPygError, one_line


def import_module(entry: str) -> ModuleType:
    """Import one ``model.imports`` entry (idempotent); one-line error naming the fix."""
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError(f"model.imports entry {entry!r} is not a module name or a .py path")
    try:
        if entry.endswith(".py"):
            return _import_file(entry)
        if os.getcwd() not in sys.path:
            # the console script does not put the working directory on sys.path
            sys.path.append(os.getcwd())
        return importlib.import_module(entry)
    except VigPygError:
        raise
    except Exception as exc:  # an import runs user code: any failure is the user's to fix
        raise ConfigError(f"model.imports: cannot import {entry!r} ({type(exc).__name__}: "
                          f"{one_line(exc)}): put its folder on PYTHONPATH or give the path "
                          "of the .py file") from None


def _import_file(path: str) -> ModuleType:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ConfigError(f"model.imports: file '{path}' does not exist: check the path")
    # one module per file, named after its path, so a second import is a no-op
    name = "vig_pyg_user_" + "".join(c if c.isalnum() else "_" for c in path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_modules(entries) -> None:
    """Import every entry of ``model.imports`` (also the loader workers' ``worker_init_fn``,
    through :func:`worker_init`)."""
    for entry in entries or ():
        import_module(entry)


def worker_init(entries, worker_id: int = 0) -> None:  # noqa: ARG001 - DataLoader's signature
    import_modules(entries)
