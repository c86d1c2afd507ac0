"""The fused inference path (``vig_pyg.layers.fused``): one oneDNN call for conv + folded
BatchNorm + activation or residual, against the plain layers evaluated in float64."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vig_pyg import fast_paths
from vig_pyg.layers.fused import conv_bn_act

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN"),
]

ACTS = [None, nn.ReLU(), nn.LeakyReLU(0.2), nn.GELU(), nn.GELU("tanh"), nn.Hardswish(),
        nn.SiLU()]
CONVS = [  # (in, out, kernel, stride, groups, bias)
    (32, 64, 1, 1, 4, True),
    (16, 24, 3, 2, 1, True),
    (16, 16, 3, 1, 1, False),
]


def _layers(cin, cout, kernel, stride, groups, bias, seed=0):
    """A conv and an eval-mode BatchNorm with non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(cout)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=g))
        bn.running_mean.copy_(torch.randn(cout, generator=g))
        bn.running_var.copy_(torch.rand(cout, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(cout, generator=g))
        bn.bias.copy_(torch.randn(cout, generator=g))
    return conv.eval(), bn.eval()


def _float64_reference(conv, bn, x, act=None, residual=None):
    """The layers as written, one after the other, in float64."""
    conv64, bn64 = [_copy(m).double() for m in (conv, bn)]
    with torch.no_grad():
        y = bn64(conv64(x.double()))
        if act is not None:
            y = _copy(act).double()(y)
        return y if residual is None else y + residual.double()


def _copy(module):
    import copy
    return copy.deepcopy(module)


def _onednn_calls(fn) -> int:
    """How many fused oneDNN convolutions ``fn()`` ran (from the profiler's op names)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages()
               if e.key.startswith("mkldnn::_convolution_pointwise"))


def _map(b, c, h, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, h, generator=g).contiguous(memory_format=torch.channels_last)


def _close(got, want):
    err = (got.double() - want).abs().max().item()
    assert err <= 1e-5 * want.abs().max().item() + 1e-6, err


@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
def test_fused_activation_matches_float64_layers(spec, act):
    conv, bn = _layers(*spec)
    x = _map(2, spec[0], 10)
    with torch.no_grad():
        got = conv_bn_act(conv, bn, x, act)
        assert _onednn_calls(lambda: conv_bn_act(conv, bn, x, act)) == 1
    _close(got, _float64_reference(conv, bn, x, act))


@pytest.mark.parametrize("spec", CONVS[:2])
def test_fused_residual_sum_matches_float64_layers(spec):
    conv, bn = _layers(*spec)
    x = _map(2, spec[0], 10)
    residual = _map(2, spec[1], 10 // spec[3], seed=2)
    with torch.no_grad():
        got = conv_bn_act(conv, bn, x, residual=residual)
        assert _onednn_calls(lambda: conv_bn_act(conv, bn, x, residual=residual)) == 1
    _close(got, _float64_reference(conv, bn, x, residual=residual))


def test_plain_path_where_fusion_does_not_apply():
    """Gradients, float64, training BatchNorm, PReLU and the switch take the plain path,
    and give what the layers give."""
    conv, bn = _layers(*CONVS[0])
    x = _map(2, 32, 6)
    cases = {
        "grad": lambda: conv_bn_act(conv, bn, x.clone().requires_grad_(), nn.GELU()),
        "prelu": lambda: conv_bn_act(conv, bn, x, nn.PReLU(1, 0.2)),
    }
    for name, fn in cases.items():
        assert _onednn_calls(fn) == 0, name
    y = conv_bn_act(conv, bn, x.clone().requires_grad_(), nn.GELU())
    assert y.grad_fn is not None
    _close(y.detach(), _float64_reference(conv, bn, x, nn.GELU()))
    with torch.no_grad():
        assert _onednn_calls(lambda: conv_bn_act(conv.double(), bn.double(), x.double())) == 0
        conv.float(), bn.float()
        with fast_paths.disabled("fused_conv"):
            assert _onednn_calls(lambda: conv_bn_act(conv, bn, x, nn.GELU())) == 0
        assert fast_paths.enabled("fused_conv")
        bn.train()
        got = conv_bn_act(conv, bn, x, nn.ReLU())
        assert _onednn_calls(lambda: conv_bn_act(conv, bn, x, nn.ReLU())) == 0
    y = conv(x)
    mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
    want = torch.relu((y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1)
                      + bn.bias.view(1, -1, 1, 1))
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-5)


def test_act_and_residual_together_is_refused():
    conv, bn = _layers(*CONVS[0])
    with pytest.raises(ValueError, match="not both"):
        conv_bn_act(conv, bn, _map(1, 32, 4), nn.ReLU(), residual=_map(1, 64, 4))


@pytest.mark.parametrize("name,conv", [("vig_ti", "mr"), ("pvig_ti", "gin")])
def test_model_inference_fused_equals_plain(name, conv):
    """A whole model in eval mode: fused and plain logits agree to float32 rounding, and
    the fused run really uses oneDNN's call (stem, Graphers, FFNs, head, projections).
    The graph is the spatial one: a feature-space kNN would turn rounding differences
    into different neighbours (the model is that sensitive), hiding what is compared."""
    from vig_pyg.models import create_model

    torch.manual_seed(0)
    model = create_model(name, conv=conv, num_classes=10, graph="spatial_knn").eval()
    for m in model.modules():  # non-trivial running statistics everywhere
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        got = model(x)
        calls = _onednn_calls(lambda: model(x))
        with fast_paths.disabled("fused_conv"):
            want = model(x)
    assert calls > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
