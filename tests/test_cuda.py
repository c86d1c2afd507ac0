"""The CUDA branches of the fast paths (skipped without a GPU).

On a GPU the fused reductions take the whole neighbour block at once (no chunks), the kNN
builder runs its batched matmul + top-k on the device, and float16 autocast training must
survive an overflow step: the NaN/Inf guard steps aside and GradScaler skips the step.
"""
from __future__ import annotations

import pytest
import torch

from vig_pyg.conv import MRConv, ViGEdgeConv, ViGGINConv, ViGSAGEConv
from vig_pyg.graph import knn_edges

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (the CPU branches are tested "
                                       "everywhere else)")
LAYERS = {"mr": MRConv, "edge": ViGEdgeConv, "sage": ViGSAGEConv, "gin": ViGGINConv}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_fast_path_on_cuda_equals_generic_and_cpu(name, training):
    torch.manual_seed(0)
    fmap = torch.randn(4, 16, 7, 7, dtype=torch.float64)
    x = fmap.permute(0, 2, 3, 1).reshape(-1, 16)
    ei = knn_edges(fmap, 5, dilation=2)
    results = []
    for device, fast in (("cuda", True), ("cuda", False), ("cpu", True)):
        torch.manual_seed(1)
        layer = LAYERS[name](16, 32).double().to(device).train(training)
        layer.fast_path = fast
        xs = x.to(device).requires_grad_()
        out = layer(xs, ei.to(device))
        grad, = torch.autograd.grad(out.square().sum(), xs)
        results.append((out.detach().cpu(), grad.cpu()))
    for other in results[1:]:
        torch.testing.assert_close(results[0][0], other[0], rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(results[0][1], other[1], rtol=1e-9, atol=1e-11)


def test_knn_on_cuda_equals_cpu():
    """The CUDA matmul path against the CPU in float64, and in float32 against the CPU's
    fused pass (graph/_nearest.c), which never runs on CUDA tensors."""
    torch.manual_seed(0)
    fmap = torch.randn(3, 24, 8, 8, dtype=torch.float64)
    rel = torch.randn(64, 16, dtype=torch.float64) * 0.1
    for dtype in (torch.float64, torch.float32):
        x, r = fmap.to(dtype), rel.to(dtype)
        for kw in (dict(k=6, dilation=2), dict(k=4, reduce_ratio=2, relative_pos=r)):
            cpu = knn_edges(x, **kw)
            gpu = knn_edges(x.cuda(), **{k: v.cuda() if torch.is_tensor(v) else v
                                         for k, v in kw.items()})
            assert torch.equal(cpu, gpu.cpu())
            assert torch.equal(cpu, knn_edges(fmap, **{k: v.double() if torch.is_tensor(v)
                                                       else v for k, v in kw.items()}))


@pytest.mark.parametrize("conv", list(LAYERS))
def test_float16_autocast_training_survives_an_overflow_step(conv):
    from vig_pyg.models import create_model

    torch.manual_seed(0)
    model = create_model("vig_ti", conv=conv, channels=32, depth=2, stem_stride=8, k=4,
                         img_size=64, num_classes=10).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda")
    y = torch.randint(0, 10, (4,), device="cuda")
    for step, fill in enumerate((None, float("inf"), None)):
        x = torch.randn(4, 3, 64, 64, device="cuda")
        if fill is not None:
            x[0, 0, :8, :8] = fill  # overflows float16 inside the first Grapher
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        scale = scaler.get_scale()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        changed = any(not torch.equal(before[k], p) for k, p in model.named_parameters())
        if fill is None:
            assert changed and torch.isfinite(loss)
        else:  # skipped by GradScaler, scale halved, weights untouched
            assert not changed and scaler.get_scale() < scale


def test_float16_model_runs_on_cuda():
    from vig_pyg.models import create_model

    model = create_model("pvig_ti", channels=[16, 32, 48, 64], blocks=[1, 1, 1, 1], k=4,
                         img_size=64, num_classes=10).cuda().half().eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16))
    assert out.shape == (2, 10) and out.dtype == torch.float16


def test_cpu_only_training_paths_step_aside_on_cuda():
    """The compiled BatchNorm + activation and the per-group products are CPU paths: on a
    GPU the projection trains through the plain modules, as a float64 CPU copy does."""
    import copy

    from vig_pyg.conv.projection import GroupedProjection

    torch.manual_seed(0)
    proj = GroupedProjection(16, 32).train()
    ref = copy.deepcopy(proj).double()
    x = torch.randn(50, 16, dtype=torch.float64)
    xs = x.float().cuda().requires_grad_()
    out = proj.cuda()(xs)
    grad, = torch.autograd.grad(out.square().sum(), xs)
    x64 = x.clone().requires_grad_()
    want = ref(x64)
    want_grad, = torch.autograd.grad(want.square().sum(), x64)
    torch.testing.assert_close(out.double().cpu(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.double().cpu(), want_grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(proj[1].running_var.double().cpu(), ref[1].running_var)
