"""ONNX Runtime against eager PyTorch for every zoo model (random weights with non-trivial
BatchNorm statistics), exported with a dynamic batch and run at another batch size.

Beside the error, the model's own sensitivity: eager logits for the input scaled by
``1 + 1e-6`` against eager's. A kNN graph turns rounding-sized changes of the features into
different neighbours wherever two candidates are nearly tied, so where that column is
large no exporter (another GEMM, another rounding) can match eager to 1e-4.

With ``--graph spatial_knn`` (a fixed graph of grid neighbours, no selection by feature
distance) the same models have nothing near-tied to flip, so the column measures the
exporter alone: every other layer (stem, Graphers' projections and aggregation, FFNs,
downsampling, head) must then match eager to 1e-4.

    python benchmarks/check_export.py                        # all seven, 224 px (slow)
    python benchmarks/check_export.py --models vig_ti pvig_ti --img 224
    python benchmarks/check_export.py --graph spatial_knn    # the exporter without kNN ties
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def check(name: str, img: int, conv: str, graph: str = "knn") -> tuple[float, float, float]:
    import torch

    from vig_pyg.models import create_model
    from vig_pyg.models.export import export_onnx, onnx_logits

    torch.manual_seed(0)
    model = create_model(name, conv=conv, img_size=img, graph=graph)
    with torch.no_grad():  # BatchNorm statistics of real activations, not (0, 1)
        model.train()(torch.randn(4, 3, img, img))
    model.eval()
    x = torch.randn(3, 3, img, img)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_onnx(model, os.path.join(tmp, f"{name}.onnx"), img_size=img)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            ref = model(x)
            nudged = model(x * (1 + 1e-6))
        err = float((onnx_logits(path, x) - ref).abs().max() / ref.abs().max())
    return err, float((nudged - ref).abs().max() / ref.abs().max()), seconds


def main(argv=None) -> int:
    from vig_pyg.models import list_models

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list_models())
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--conv", default="mr")
    p.add_argument("--graph", default="knn", help="graph builder (spatial_knn: no kNN ties)")
    args = p.parse_args(argv)
    print(f"{'model':8} {'max |ort - torch| / max |logit|':>32} {'eager, input x (1+1e-6)':>24} "
          f"{'export s':>9}")
    ok = True
    for name in args.models:
        err, sensitivity, seconds = check(name, args.img, args.conv, args.graph)
        ok &= err <= 1e-4
        print(f"{name:8} {err:32.2e} {sensitivity:24.2e} {seconds:9.1f}"
              + ("" if err <= 1e-4 else "  > 1e-4"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
