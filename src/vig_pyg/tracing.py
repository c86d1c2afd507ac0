"""Whether the model is being recorded rather than run: the one test every fast path uses
to step aside (no vig_pyg imports, so every layer can use it)."""
from __future__ import annotations

import torch

__all__ = ["tracing", "recording"]


def tracing() -> bool:
    """True while ``torch.compile``/``torch.export`` (Dynamo) or a TorchScript trace (the
    classic ONNX exporter) records the model: tensor values cannot steer Python there (no
    checks that read values, no caches keyed by shapes that may be symbolic, no chunk loops)."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch.jit.is_scripting())


def recording() -> bool:
    """:func:`tracing`, or a dispatch mode is active (``FlopCounterMode`` counts the plain
    operators; fake or meta tensors have no data for a kernel outside torch): the code
    paths that call oneDNN or C directly take the plain operators then."""
    return tracing() or torch._C._len_torch_dispatch_stack() > 0
