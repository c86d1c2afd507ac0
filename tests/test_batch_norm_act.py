"""The compiled training-mode BatchNorm + activation (+ residual) (native/_batch_norm.c,
used by layers/batch_norm.py) against the torch modules evaluated in float64."""
import copy
import math

import pytest
import torch
from native_helpers import spy_native
from torch import nn

from vig_pyg import fast_paths
from vig_pyg.native import library
from vig_pyg.layers import batch_norm as B
from vig_pyg.layers.fused import conv_bn_act

ACTS = {"none": None, "gelu": nn.GELU(), "relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.2)}


@pytest.fixture
def calls(monkeypatch):  # forward calls, backward calls
    lib = library.load()
    if lib is not None and not (lib.vig_select_openmp() or torch.get_num_threads() == 1):
        pytest.skip("the library runs without torch's OpenMP threads here: plain path")
    monkeypatch.setattr(B, "MIN_ELEMENTS", 0)  # the small maps below exercise C too
    return spy_native(monkeypatch, "vig_bn_act_forward", "vig_bn_act_backward")


def _norm(c, seed):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5, generator=g)
        bn.bias.normal_(generator=g)
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
    return bn


def _map(shape, seed, scale=3.0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g) * scale + shift
    return z.contiguous(memory_format=torch.channels_last)


def _float64_reference(bn, z, act, residual, grad):
    """The modules themselves in float64: output, input/parameter/residual gradients, and
    the module after its update."""
    ref = copy.deepcopy(bn).double()
    z64 = z.detach().double().requires_grad_()
    r64 = None if residual is None else residual.detach().double().requires_grad_()
    out = ref(z64)
    out = out if act is None else act(out)
    out = out if r64 is None else out + r64
    out.backward(grad.double())
    return out, z64.grad, ref, None if r64 is None else r64.grad


def _close(a, b, scale=None):
    """float32 rounding of a computation over a few hundred terms, relative to the largest
    magnitude of the float64 value."""
    scale = b.abs().max().item() if scale is None else scale
    assert (a.double() - b).abs().max().item() <= 2e-6 * max(scale, 1.0)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("shape", [(4, 24, 9, 7), (2, 48, 5, 5), (1, 384, 50, 1), (3, 5, 2, 3)])
def test_matches_float64_modules(calls, monkeypatch, act, residual, shape):
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        bn, z = _norm(shape[1], sum(shape)), _map(shape, threads).requires_grad_()
        r = _map(shape, 7).requires_grad_() if residual else None
        grad = _map(shape, 8, 1.0, 0.0)
        out64, dz64, bn64, dr64 = _float64_reference(bn, z, ACTS[act], r, grad)
        before = list(calls)
        out = B.batch_norm_act(bn, z, ACTS[act], r)
        out.backward(grad)
        assert calls == [before[0] + 1, before[1] + 1]  # the compiled kernels ran
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert z.grad.is_contiguous(memory_format=torch.channels_last)
        _close(out, out64)
        _close(z.grad, dz64)
        _close(bn.weight.grad, bn64.weight.grad)
        _close(bn.bias.grad, bn64.bias.grad)
        _close(bn.running_mean, bn64.running_mean)
        _close(bn.running_var, bn64.running_var)
        assert int(bn.num_batches_tracked) == int(bn64.num_batches_tracked) == 1
        if residual:
            assert torch.equal(r.grad, grad)  # the sum passes the gradient through


def test_gelu_over_its_range(calls):
    """GELU and its derivative on a ramp of y from -12 to 12 (gamma stretches the normalised
    column), against erf in float64: within float32 rounding of y plus Phi's 1.5e-7."""
    n = 4001
    z = torch.linspace(-1.0, 1.0, n).view(1, 1, n, 1).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    bn = nn.BatchNorm2d(1)
    with torch.no_grad():
        bn.weight.fill_(12.0 / z.detach().std(unbiased=False).item())
    out = B.batch_norm_act(bn, z, nn.GELU())
    out.sum().backward()
    assert calls == [1, 1]
    y = (bn.weight.detach().double() * (z.detach().double() - z.detach().double().mean())
         / math.sqrt(z.detach().double().var(unbiased=False) + bn.eps)).view(-1)
    phi = 0.5 * (1 + torch.erf(y / math.sqrt(2)))
    gelu = y * phi
    assert y.min() < -11.9 and y.max() > 11.9
    err = (out.detach().double().view(-1) - gelu).abs()
    assert (err <= 2e-7 * y.abs() + 1e-6).all(), err.max()
    # d sum / dz through BatchNorm: the derivative itself is checked through z's gradient
    # by test_matches_float64_modules; here the tails: no NaN, zero far left, one far right
    assert torch.isfinite(z.grad).all()
    assert (out.detach().view(-1)[y < -6] <= 0).all() and (out.detach().view(-1)[y < -6]
                                                           > -1e-7).all()


def test_nan_spreads_as_in_torch(calls):
    z = _map((2, 16, 4, 4), 1)
    z[0, 3, 1, 2] = float("nan")
    bn, ref = _norm(16, 0), _norm(16, 0)
    out = B.batch_norm_act(bn, z, nn.GELU())
    expected = nn.GELU()(ref(z))
    assert torch.equal(out.isnan(), expected.isnan())  # channel 3 only
    assert torch.equal(bn.running_mean.isnan(), ref.running_mean.isnan())


@pytest.mark.parametrize("case", ["nchw", "float64", "momentum_none", "gelu_tanh", "prelu",
                                  "eval", "switch_off", "no_affine", "one_value", "small"])
def test_plain_path_where_it_does_not_apply(calls, monkeypatch, case):
    z, bn, act = _map((2, 8, 3, 3), 2), _norm(8, 1), nn.GELU()
    off = ("batch_norm",) if case == "switch_off" else ()
    if case == "nchw":
        z = z.contiguous()
    elif case == "float64":
        z, bn = z.double(), bn.double()
    elif case == "momentum_none":
        bn.momentum = None
    elif case == "gelu_tanh":
        act = nn.GELU(approximate="tanh")
    elif case == "prelu":
        act = nn.PReLU()
    elif case == "eval":
        bn.eval()
    elif case == "no_affine":
        bn = nn.BatchNorm2d(8, affine=False)
    elif case == "one_value":
        z = _map((1, 8, 1, 1), 2)
    elif case == "small":  # one value fewer than the threshold (the fixture lowered it)
        monkeypatch.setattr(B, "MIN_ELEMENTS", z.numel() + 1)
    ref = copy.deepcopy(bn)
    with fast_paths.disabled(*off):
        if case == "one_value":  # torch's own error, not a division by zero in C
            with pytest.raises(ValueError, match="more than 1 value per channel"):
                B.batch_norm_act(bn, z, act)
        else:
            torch.testing.assert_close(B.batch_norm_act(bn, z, act), act(ref(z)))
    assert calls == [0, 0]


def test_conv_bn_act_uses_it_in_training(calls):
    conv = nn.Conv2d(6, 12, 1).to(memory_format=torch.channels_last)
    bn = _norm(12, 3)
    x = _map((2, 6, 5, 5), 4).requires_grad_()
    ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    out = conv_bn_act(conv, bn, x, nn.GELU())
    out.sum().backward()
    x64 = x.detach().double().requires_grad_()
    ref = nn.GELU()(ref_bn(ref_conv(x64)))
    ref.sum().backward()
    assert calls == [1, 1]
    _close(out, ref)
    _close(x.grad, x64.grad)
    _close(conv.weight.grad, ref_conv.weight.grad)


@pytest.mark.parametrize("name", ["vig_ti", "pvig_ti"])
def test_model_training_step_within_float32_rounding(calls, name):
    """One training step of a whole model (stem, Graphers, FFNs, head) against the same
    model in float64: the logits, the running statistics and every gradient of the compiled
    run are as close to float64 as the plain modules' float32 run is, within a factor of 4
    (rounding of different but equally exact formulas; GELU's Phi to 1.5e-7 is about 2
    ulps), for the logits and over all tensors (largest and median relative error: a
    single sum that cancels, such as gin's eps gradient, can be lucky in either run). The graph is the spatial one, as in test_fused (a feature-space kNN turns
    rounding into other neighbours), and the aggregator gin, whose gradients are smooth
    (a max switches its winner on rounding, which makes both float32 runs far noisier)."""
    from vig_pyg.models import create_model

    torch.manual_seed(0)
    model = create_model(name, conv="gin", num_classes=10, graph="spatial_knn").train()
    plain, exact = copy.deepcopy(model), copy.deepcopy(model).double()
    x, y = torch.randn(2, 3, 112, 112), torch.tensor([1, 7])
    logits = {}
    for key, net, enabled in (("compiled", model, True), ("plain", plain, False),
                              ("float64", exact, False)):
        before = list(calls)
        with fast_paths.disabled(*(() if enabled else fast_paths.NATIVE)):
            logits[key] = net(x.to(next(net.parameters()).dtype))
            nn.functional.cross_entropy(logits[key], y).backward()
        ran = calls[0] - before[0]
        assert (ran > 0) == enabled and calls[1] - before[1] == ran

    def error(a, b):
        return (a.double() - b).abs().max().item() / max(b.abs().max().item(), 1e-30)

    errors = {"compiled": [], "plain": []}  # per logits, buffer, parameter and gradient
    pairs = [(logits["compiled"], logits["plain"], logits["float64"])]
    pairs += [(a, p, ref) for a, p, ref in zip(model.state_dict().values(),
                                               plain.state_dict().values(),
                                               exact.state_dict().values())
              if a.is_floating_point()]
    pairs += [(a.grad, p.grad, ref.grad) for a, p, ref in zip(
        model.parameters(), plain.parameters(), exact.parameters())
        if ref.grad is not None and ref.grad.abs().max() > 1e-8]  # not a bias before a BN
    for a, p, ref in pairs:
        errors["compiled"].append(error(a, ref))
        errors["plain"].append(error(p, ref))
    compiled, plain_err = torch.tensor(errors["compiled"]), torch.tensor(errors["plain"])
    assert errors["compiled"][0] <= 4 * errors["plain"][0] + 1e-6  # the logits
    assert compiled.max() <= 4 * plain_err.max()
    assert compiled.median() <= 4 * plain_err.median()
