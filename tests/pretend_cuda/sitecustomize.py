"""Make a CPU machine look like a GPU one to vig_pyg and the tests, not to torch itself.

    PYTHONPATH=tests/pretend_cuda python -m pytest tests -m "not slow" --deselect tests/test_cuda.py

Python imports ``sitecustomize`` at start-up in every process, test subprocesses included.
``torch.cuda.is_available()`` then answers True when vig_pyg's code, a test module or the
reference asks (torch's own checks keep the real answer, so an optimizer step still works).
A test that would pick a GPU implicitly (``train.device=auto``) then fails, at
``resolve_device`` (no GPU to hand out) or at its first CUDA call; on a real GPU machine it
would have run there, not where CI runs it.
"""
import sys

import torch

_real_is_available = torch.cuda.is_available


def _is_available() -> bool:
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if caller.startswith(("vig_pyg", "test_", "official_reference")):
        return True
    return _real_is_available()


torch.cuda.is_available = _is_available
