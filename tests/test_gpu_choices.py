"""What a GPU runs, run on the CPU: ``fast_paths.disabled(*GPU_CHOICES)`` takes every branch
the code takes off the CPU (plain gathers and reductions, per-edge training of edge and
sage, the kNN without its host-side NaN/Inf refusal, the Grapher's device flag instead).

The CPU's choices are the reference: in float64, logits, every gradient and the BatchNorm
statistics must agree, in training and in inference, on an isotropic and a pyramid model.
"""
from __future__ import annotations

import copy

import pytest
import torch

from vig_pyg import fast_paths
from vig_pyg.graph import fixed_degree, knn_edges
from vig_pyg.graph.knn import mark_fixed_degree
from vig_pyg.models import create_model
from vig_pyg.models.finite import NonFiniteError, check_finite
from vig_pyg.train.loop import evaluate
from vig_pyg.train.setup import Precision

SMALL = {
    "iso": dict(name="vig_ti", channels=32, depth=3, stem_stride=4, k=4, img_size=32),
    "pyr": dict(name="pvig_ti", channels=[16, 32, 48, 64], blocks=[1, 1, 2, 1], k=4,
                img_size=128),
}


def small_model(kind: str, conv: str, **extra):
    cfg = dict(SMALL[kind])
    torch.manual_seed(0)
    return create_model(cfg.pop("name"), conv=conv, num_classes=10, drop_path_rate=0.0,
                        **cfg, **extra)


def images(kind: str, b: int = 2, dtype=torch.float64) -> torch.Tensor:
    size = SMALL[kind]["img_size"]
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1),
                       dtype=dtype)


def step(model, x):
    """Logits, the gradient of every parameter and the BatchNorm buffers after one
    forward + backward."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out.square().sum() + out.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("kind", ["iso", "pyr"])
@pytest.mark.parametrize("conv", ["mr", "edge", "sage", "gin"])
def test_gpu_choices_equal_the_cpu_choices_in_float64(kind, conv):
    cpu = small_model(kind, conv).double().train()
    gpu = copy.deepcopy(cpu)
    x = images(kind)
    out_c, grads_c, bufs_c = step(cpu, x)
    with fast_paths.disabled(*fast_paths.GPU_CHOICES):
        out_g, grads_g, bufs_g = step(gpu, x)
    torch.testing.assert_close(out_g, out_c, rtol=1e-10, atol=1e-12)
    assert grads_g.keys() == grads_c.keys() and len(grads_c) > 10
    overall = max(g.abs().max().item() for g in grads_c.values())
    for name, ref in grads_c.items():
        # relative to the tensor's largest entry; a bias followed by BatchNorm has a zero
        # gradient in exact arithmetic (rounding noise of ~1e-16 of the others), hence the
        # floor at 1e-4 of the largest gradient of the model (noise there: ~1e-15 of it)
        scale = max(ref.abs().max().item(), 1e-4 * overall)
        err = (grads_g[name] - ref).abs().max().item()
        assert err <= 1e-9 * scale, f"{name}: max error {err:.2e}, scale {scale:.2e}"
    for name in bufs_c:
        torch.testing.assert_close(bufs_g[name], bufs_c[name], rtol=1e-10, atol=1e-12,
                                   msg=name)
    cpu.eval(), gpu.eval()
    with torch.no_grad(), fast_paths.disabled(*fast_paths.GPU_CHOICES):
        infer_g = gpu(x)
    with torch.no_grad():
        torch.testing.assert_close(infer_g, cpu(x), rtol=1e-10, atol=1e-12)


def nan_images(kind="iso"):
    x = images(kind, dtype=torch.float32)
    x[1, 0, 5, 7] = float("nan")
    return x


def test_gpu_choices_flag_nan_on_the_device_and_check_finite_names_the_block():
    model = small_model("iso", "mr").eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match="node features contain NaN or Inf"):
            model(nan_images())  # the CPU's choices refuse in the kNN, at once
        with fast_paths.disabled(*fast_paths.GPU_CHOICES):
            model(images("iso", dtype=torch.float32))
            check_finite(model)  # finite input: nothing raised
            assert all(g.finite is None for g in model.modules() if hasattr(g, "finite"))
            model(nan_images())  # nothing read back: no error yet
            flags = [m.finite for m in model.modules() if hasattr(m, "finite")]
            assert len(flags) == 3 and all(f.dtype == torch.float64 for f in flags)
            with pytest.raises(NonFiniteError, match=r"^backbone\.0\.0: node features contain "
                                                     r"NaN or Inf"):
                check_finite(model)
            check_finite(model)  # the flags were cleared by the read


def test_an_infinity_is_flagged_and_large_finite_values_are_not():
    model = small_model("iso", "mr").eval()
    with torch.no_grad(), fast_paths.disabled(*fast_paths.GPU_CHOICES):
        x = images("iso", dtype=torch.float32)
        x[0, 1, 2, 3] = float("inf")
        model(x)
        with pytest.raises(NonFiniteError, match="backbone.0.0"):
            check_finite(model)
        # every float32 value at the largest magnitude: a float32 sum would overflow
        grapher = model.backbone[0][0]
        from vig_pyg.models.finite import note_finite
        note_finite(grapher, torch.full((64, 64), 3.0e38))
        check_finite(model)


def test_flags_follow_the_cpu_rule_under_autocast():
    model = small_model("iso", "mr").eval()
    with torch.no_grad(), fast_paths.disabled(*fast_paths.GPU_CHOICES), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        model(nan_images())
    assert all(m.finite is None for m in model.modules() if hasattr(m, "finite"))
    check_finite(model)


def test_evaluate_reads_the_flags_with_the_loss():
    model = small_model("iso", "mr")
    loader = [(images("iso", dtype=torch.float32), torch.tensor([1, 2])),
              (nan_images(), torch.tensor([3, 4]))]
    with fast_paths.disabled(*fast_paths.GPU_CHOICES):
        with pytest.raises(NonFiniteError, match="backbone.0.0"):
            evaluate(model, loader, torch.device("cpu"), Precision(None, False))


def test_fixed_degree_off_the_cpu_trusts_marks_and_never_reads():
    targets = torch.arange(6).repeat_interleave(2)
    ei = torch.stack([torch.randint(0, 6, (12,)), targets])
    meta = ei.to("meta")
    assert fixed_degree(meta, 6) is None  # unmarked: not read (a meta tensor would raise)
    assert fixed_degree(mark_fixed_degree(meta.clone(), 2), 6) == 2
    with fast_paths.disabled("cpu_paths"):
        assert fixed_degree(ei.clone(), 6) is None
    assert fixed_degree(ei, 6) == 2  # the CPU reads the target row of an unmarked graph
    with torch.inference_mode():
        fmap = torch.randn(2, 4, 3, 3)
        edges = knn_edges(fmap, 3)
        assert edges.is_inference()
        with fast_paths.disabled("cpu_paths"):
            assert fixed_degree(edges, 18) == 3  # marked although it has no version counter


def test_a_mark_is_dropped_by_a_write():
    ei = mark_fixed_degree(torch.stack([torch.zeros(4, dtype=torch.long),
                                        torch.arange(2).repeat_interleave(2)]), 2)
    with fast_paths.disabled("cpu_paths"):
        assert fixed_degree(ei, 2) == 2
        ei[1, 0] = 1  # no longer grouped by target
        assert fixed_degree(ei, 2) is None
