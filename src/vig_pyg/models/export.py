"""Exporting a zoo model: ``torch.export`` programs and ONNX files (``vig-pyg export``).

Both take the model in eval mode with a dynamic batch size. While exporting, every kNN
graph is built by the dense backend in one block (batched matmul + ``topk``) and every
Grapher convolution takes its fixed-degree path written as plain gathers and reductions
(see :mod:`vig_pyg.models.compile`): no ``torch_cluster`` op and no PyG ``propagate``
scatter reach the exported graph.

    vig-pyg export --model vig_ti --onnx vig_ti.onnx                     # random weights
    vig-pyg export --model pvig_s --checkpoint run/best.pt --onnx p.onnx --check
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import Tensor, nn

from ..errors import VigPygError, one_line

__all__ = ["export_program", "export_onnx", "onnx_logits", "add_export_parser"]


class ExportError(VigPygError):
    """A model or a file that cannot be exported as asked."""


def _example(model: nn.Module, img_size, batch: int = 2) -> Tensor:
    cfg = model.config
    h, w = cfg.img_size if img_size is None else (
        (img_size, img_size) if isinstance(img_size, int) else img_size)
    p = next(model.parameters())
    return torch.randn(batch, cfg.in_chans, h, w, dtype=p.dtype, device=p.device)


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def export_program(model: nn.Module, img_size=None, dynamic_batch: bool = True):
    """``torch.export.export`` of ``model`` in eval mode for ``[B, C, H, W]`` images
    (``H, W`` from ``img_size`` or the model's config; ``B`` dynamic unless told not)."""
    model.eval()
    x = _example(model, img_size)
    with torch.no_grad():
        return torch.export.export(model, (x,),
                                   dynamic_shapes=_dynamic_batch() if dynamic_batch else None)


def export_onnx(model: nn.Module, path, img_size=None, dynamic_batch: bool = True,
                opset: int = 18) -> str:
    """Writes ``model`` (eval mode) as an ONNX file: input ``images [B, C, H, W]``,
    output ``logits [B, classes]``, ``B`` dynamic. Returns the path."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise ExportError("ONNX export needs the packages onnx and onnxscript: "
                          "pip install onnx onnxscript") from exc
    model.eval()
    x = _example(model, img_size)
    path = os.fspath(path)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=_dynamic_batch() if dynamic_batch else None)
    program.save(path)
    return path


def onnx_logits(path, images: Tensor) -> Tensor:
    """Logits of an exported file under ONNX Runtime (CPU), as a float tensor."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("checking an ONNX file needs onnxruntime: pip install "
                          "onnxruntime") from exc
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = session.run(None, {name: images.detach().cpu().numpy()})[0]
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------- CLI
def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``export`` sub-command to an ``argparse`` sub-parser collection."""
    from .zoo import list_models

    p = subparsers.add_parser(
        "export", help="export a model to ONNX or a torch.export program",
        description="Exports a zoo model in eval mode with a dynamic batch size: to ONNX "
                    "(--onnx) and/or a torch.export program (--program, a .pt2 file).")
    p.add_argument("--model", required=True, choices=list_models(), metavar="NAME",
                   help=f"zoo model ({', '.join(list_models())})")
    p.add_argument("--checkpoint", help="weights: a vig-pyg checkpoint or an official file "
                                        "(default: random weights)")
    p.add_argument("--conv", default="mr", help="graph convolution (default mr)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--img-size", type=int, default=224, help="input size (default 224)")
    p.add_argument("--onnx", metavar="FILE", help="write an ONNX file")
    p.add_argument("--program", metavar="FILE", help="write a torch.export program (.pt2)")
    p.add_argument("--check", action="store_true",
                   help="compare ONNX Runtime's logits with PyTorch's on random images")
    p.set_defaults(func=run_export)
    return p


def _load(args) -> nn.Module:
    from .checkpoint import load_model, read_checkpoint
    from .factory import create_model

    kw = dict(num_classes=args.num_classes, conv=args.conv, img_size=args.img_size)
    if not args.checkpoint:
        return create_model(args.model, **kw)
    _, meta = read_checkpoint(args.checkpoint)
    if meta.get("config"):
        return load_model(args.checkpoint, img_size=(args.img_size, args.img_size))
    return create_model(args.model, checkpoint=args.checkpoint, **kw)


def run_export(args) -> int:
    try:
        if not (args.onnx or args.program):
            raise ExportError("nothing to write: pass --onnx FILE and/or --program FILE")
        model = _load(args).eval()
        if args.program:
            torch.export.save(export_program(model, args.img_size), args.program)
            print(f"wrote {args.program} (torch.export program, dynamic batch)")
        if args.onnx:
            export_onnx(model, args.onnx, args.img_size)
            print(f"wrote {args.onnx} (ONNX, input 'images' [B, {model.config.in_chans}, "
                  f"{args.img_size}, {args.img_size}], output 'logits')")
            if args.check:
                x = _example(model, args.img_size, batch=3)
                with torch.no_grad():
                    ref = model(x)
                err = float((onnx_logits(args.onnx, x) - ref).abs().max() /
                            ref.abs().max().clamp_min(1e-12))
                print(f"ONNX Runtime vs PyTorch, batch 3: max |diff| / max |logit| = {err:.2e}")
                if err > 1e-4:
                    raise ExportError(f"ONNX Runtime's logits differ from PyTorch's by "
                                      f"{err:.1e} (relative): report this with the model name")
        return 0
    except VigPygError as exc:
        print(f"vig-pyg export: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, torch._dynamo.exc.Unsupported) as exc:  # exporter failures
        print(f"vig-pyg export: error: the exporter failed ({one_line(exc)}); "
              f"report it with the model name", file=sys.stderr)
        return 2
