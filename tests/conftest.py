"""Fixtures shared by the test files (pytest puts this directory on ``sys.path``, so the
tests import the dense official reference as ``import official_reference as R``)."""
from __future__ import annotations

import pytest
import torch

# pretend_cuda/sitecustomize.py makes torch.cuda.is_available() answer True when it is
# imported: it is for PYTHONPATH=tests/pretend_cuda runs only, never for collection (the
# Markdown plugin imports every .py file under the test paths to read its docstrings)
collect_ignore = ["pretend_cuda"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second OpenMP thread only adds barrier waits, which on a shared
    2-core machine can stall every BatchNorm call by tens of milliseconds. Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clean_registry():
    """Whatever a test registers with ``register_conv`` / ``register_prefix`` is gone
    after it."""
    from vig_pyg.conv import registry

    saved, prefixes = dict(registry._REGISTRY), dict(registry._PREFIXES)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    registry._PREFIXES.clear()
    registry._PREFIXES.update(prefixes)
