"""The cheaper evaluations of the graph convolutions against the literal one.

``edge`` (per-node centre half, projection per node then gather-subtract per edge) and
``sage`` (``nn1`` per node, degree-weighted BatchNorm statistics) must equal PyG's generic
``propagate`` path, which evaluates the official formula edge by edge, in float64: outputs,
input and parameter gradients, BatchNorm running statistics and batch counters. The MAC
count of the literal path stays the release's; the executed count is checked against the
formula of the cheaper one. Tracing branches (torch.compile / export) are run by faking
``torch.compiler.is_compiling``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vig_pyg import fast_paths
from vig_pyg.conv import ViGEdgeConv, ViGGINConv, ViGSAGEConv, MRConv
from vig_pyg.graph import fixed_degree, knn_edges

C, OUT = 8, 16
#: The Grapher convolutions' dense paths: with both off, PyG's propagate runs.
DENSE = ("fixed_degree", "padded")
LAYERS = {"mr": MRConv, "edge": ViGEdgeConv, "sage": ViGSAGEConv, "gin": ViGGINConv}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomized(layer, seed=0):
    """Random weights, biases, BN affine and running statistics (so no term is trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(layer.named_parameters()) + list(layer.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return layer


def graph(bipartite, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    fmap = torch.randn(2, C, 6, 6, generator=g, dtype=dtype)
    x = fmap.permute(0, 2, 3, 1).reshape(-1, C)
    if bipartite:
        keys = F.avg_pool2d(fmap, 2)
        return keys.permute(0, 2, 3, 1).reshape(-1, C), x, knn_edges(fmap, 4, keys=keys)
    return x, x, knn_edges(fmap, 5, dilation=2)


def run(layer, x_src, x_dst, ei, grad_out):
    xs = x_src.clone().requires_grad_()
    xd = x_dst.clone().requires_grad_() if x_dst is not x_src else xs
    layer.zero_grad(set_to_none=True)
    out = layer((xs, xd) if xd is not xs else xs, ei)
    out.backward(grad_out)
    grads = {"x_src": xs.grad, "x_dst": xd.grad}
    grads.update({k: p.grad for k, p in layer.named_parameters()})
    return out.detach(), grads, {k: v.clone() for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bipartite", [False, True], ids=["self", "bipartite"])
@pytest.mark.parametrize("name", ["edge", "sage", "gin"])
def test_cheaper_path_equals_generic_float64(name, bipartite, training, momentum):
    x_src, x_dst, ei = graph(bipartite)
    assert fixed_degree(ei, x_dst.size(0)) is not None
    grad_out = torch.randn(x_dst.size(0), OUT, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(5))
    results = []
    for fast in (True, False):
        layer = randomized(LAYERS[name](C, OUT, groups=4)).double().train(training)
        for m in layer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = momentum
        with fast_paths.disabled(*(() if fast else DENSE)):
            first = run(layer, x_src, x_dst, ei, grad_out)
            results.append((first, run(layer, x_src, x_dst, ei, grad_out)))  # 2nd: counters
    for (fast, generic) in zip(*results):
        torch.testing.assert_close(fast[0], generic[0], rtol=1e-10, atol=1e-12)
        assert fast[1].keys() == generic[1].keys()
        for k in fast[1]:
            torch.testing.assert_close(fast[1][k], generic[1][k], rtol=1e-9, atol=1e-11,
                                       msg=lambda m: f"grad {k}: {m}")
        for k in generic[2]:
            torch.testing.assert_close(fast[2][k], generic[2][k], rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"state {k}: {m}")
    if training:  # the statistics moved, and by the per-edge count
        state = results[0][1][2]
        assert any(int(v) == 2 for k, v in state.items() if k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("name", ["edge", "sage"])
def test_inference_without_grad_in_chunks_equals_generic(name, monkeypatch):
    from vig_pyg.conv import functional

    monkeypatch.setattr(functional, "CHUNK_BYTES_PER_THREAD", 1)  # one target per chunk
    for bipartite in (False, True):
        x_src, x_dst, ei = graph(bipartite)
        layer = randomized(LAYERS[name](C, OUT)).double().eval()
        inputs = (x_src, x_dst) if bipartite else x_src
        with torch.no_grad():
            fast = layer(inputs, ei)
            with fast_paths.disabled(*DENSE):
                generic = layer(inputs, ei)
        torch.testing.assert_close(fast, generic, rtol=1e-10, atol=1e-12)


def test_edge_with_odd_groups_keeps_the_per_edge_path():
    """groups = 1 (odd): the first projection group straddles [x_i ; x_j - x_i]."""
    x_src, x_dst, ei = graph(False)
    layer = randomized(ViGEdgeConv(C, OUT, groups=1)).double().train()
    grad_out = torch.randn(x_dst.size(0), OUT, dtype=torch.float64)
    fast = run(layer, x_src, x_dst, ei, grad_out)
    with fast_paths.disabled(*DENSE):
        generic = run(layer, x_src, x_dst, ei, grad_out)
    torch.testing.assert_close(fast[0], generic[0], rtol=1e-10, atol=1e-12)


def _macs(layer, n, k):
    x = torch.randn(n, layer.in_channels)
    ei = torch.stack([torch.randint(0, n, (n * k,)), torch.arange(n).repeat_interleave(k)])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer.eval()(x, ei)
    return counter.get_total_flops() // 2


def test_executed_macs_follow_the_cheaper_formulas():
    """n nodes, k neighbours, C -> 2C, groups 4. The literal count (dense paths off), the
    release's: edge n k (2C)(2C/4) = n k C^2; sage nn1 n k C (C/4) + nn2 n (2C)(2C/4).
    Executed: edge's centre half, C outputs of C/2 inputs per node, C^2/2, and
    z = W_b x as much again: n C^2 (nothing per edge); sage's nn1 per node: n C^2 / 4."""
    n, k, c = 50, 7, 16
    edge, sage = ViGEdgeConv(c), ViGSAGEConv(c)
    assert _macs(edge, n, k) == n * c * c
    assert _macs(sage, n, k) == n * c * c // 4 + n * (2 * c) * (2 * c) // 4
    with fast_paths.disabled(*DENSE):
        assert _macs(edge, n, k) == n * k * c * c
        assert _macs(sage, n, k) == n * k * c * c // 4 + n * (2 * c) * (2 * c) // 4


def test_info_reports_release_macs_with_executed_beside():
    from vig_pyg.models import create_model
    from vig_pyg.models.info import count_macs

    model = create_model("vig_ti", conv="edge", channels=32, depth=2, stem_stride=8, k=4,
                         img_size=64, num_classes=10)
    counted = count_macs(model, 64)
    with fast_paths.disabled(*DENSE):
        literal = count_macs(model, 64)
        assert not any(fast_paths.enabled(name) for name in DENSE)  # count_macs restored
    assert counted["total"] == literal["total"] == literal["executed"]
    assert counted["executed"] < counted["total"]
    assert all(fast_paths.enabled(name) for name in DENSE)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_tracing_branches_equal_eager(training, monkeypatch):
    """What torch.compile / torch.export record (plain gathers, one-block kNN, no value
    checks) computes the same as the eager paths, for every aggregator and both graphs."""
    from vig_pyg.models import create_model

    def build(conv):
        torch.manual_seed(0)
        return create_model("pvig_ti", conv=conv, channels=[8, 16, 16, 16],
                            blocks=[1, 1, 1, 1], k=3, img_size=64, num_classes=5).double()

    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for conv in LAYERS:
        outs = []
        for faked in (False, True):
            model = build(conv).train(training)
            with monkeypatch.context() as mp:
                if faked:
                    mp.setattr(torch.compiler, "is_compiling", lambda: True)
                out = model(x)
                grads = torch.autograd.grad(out.square().sum(), model.stem.convs[0].weight)
            outs.append((out.detach(), grads[0]))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-8, atol=1e-12)


def test_nan_guard_steps_aside_under_low_precision_autocast():
    """A NaN in fp32 features is an error; under bfloat16/float16 autocast it is an
    overflow step that GradScaler skips, so the graph is still built (valid indices)."""
    fmap = torch.randn(2, C, 4, 4)
    fmap[1, :, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        knn_edges(fmap, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ei = knn_edges(fmap, 3)
    assert ei.shape == (2, 2 * 16 * 3)
    assert int(ei.min()) >= 0 and int(ei.max()) < 2 * 16
    ei = knn_edges(fmap.half(), 3)
    assert int(ei.max()) < 2 * 16
