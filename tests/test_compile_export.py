"""torch.compile and export of the zoo against eager PyTorch (small sizes).

The exported / compiled model must give eager's logits (relative 1e-4 of the largest logit),
for another batch size than the one it was traced with (the batch is dynamic).
"""
from __future__ import annotations

import pytest
import torch

from vig_pyg.models import create_model

SMALL = {
    "vig_ti": dict(channels=32, depth=3, stem_stride=8, k=4, img_size=64),
    "pvig_ti": dict(channels=[16, 32, 48, 64], blocks=[1, 1, 1, 1], k=4, img_size=64),
}


def small(name, conv="mr", seed=0):
    torch.manual_seed(seed)
    model = create_model(name, conv=conv, num_classes=10, **SMALL[name])
    model.eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.train()(torch.randn(8, 3, 64, 64))
    return model.eval()


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.slow  # 15-45 s each on 2 cores
@pytest.mark.parametrize("name", list(SMALL))
def test_onnx_runtime_matches_eager(name, tmp_path):
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript")
    pytest.importorskip("onnxruntime", reason="checking needs onnxruntime")
    from vig_pyg.models.export import export_onnx, onnx_logits

    model = small(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx", img_size=64)
    x = torch.randn(3, 3, 64, 64)  # traced with batch 2
    with torch.no_grad():
        ref = model(x)
    assert rel_err(onnx_logits(path, x), ref) <= 1e-4
    assert rel_err(onnx_logits(path, x[:1]), ref[:1]) <= 1e-4


@pytest.mark.slow  # 5-18 s each
@pytest.mark.parametrize("name", list(SMALL))
def test_torch_export_matches_eager(name):
    from vig_pyg.models.export import export_program

    model = small(name, conv="edge")
    program = export_program(model, img_size=64)
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert rel_err(program.module()(x), ref) <= 1e-4


def test_export_cli_needs_an_output(capsys):
    from vig_pyg.cli import main

    assert main(["export", "--model", "vig_ti"]) == 2
    assert "nothing to write" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_compiled_equals_eager_in_training_and_inference(name):
    import torch.nn.functional as F

    from vig_pyg.models.compile import maybe_compile

    eager, twin = small(name), small(name)
    compiled = maybe_compile(twin)
    assert maybe_compile(eager, enabled=False) is eager
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    with torch.no_grad():
        assert rel_err(compiled(x), eager(x)) <= 1e-4
    eager.train(), compiled.train()
    losses = []
    for model in (eager, compiled):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.detach())
    assert rel_err(losses[1], losses[0]) <= 1e-4
    # gradients: against the largest gradient of the model (biases before a training-mode
    # BatchNorm get ~0 gradients, a cancellation whose float32 noise depends on fusion)
    pairs = [(k, p.grad, q.grad) for (k, p), q in zip(eager.named_parameters(),
                                                      twin.parameters()) if p.grad is not None]
    scale = max(float(g.abs().max()) for _, g, _ in pairs)
    for k, want, got in pairs:
        assert float((got - want).abs().max()) <= 1e-4 * scale, k
