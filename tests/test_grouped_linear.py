"""The grouped 1x1 convolution as one matrix product per group (layers/grouped_linear.py)
against torch's grouped convolution evaluated in float64."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vig_pyg import fast_paths
from vig_pyg.conv.projection import GroupedProjection
from vig_pyg.layers import grouped_linear as GL


@pytest.fixture
def calls(monkeypatch):
    count = [0]
    apply = GL._GroupedLinear.apply

    def spy(*args):
        count[0] += 1
        return apply(*args)

    monkeypatch.setattr(GL._GroupedLinear, "apply", spy)
    return count


def _conv64(x, weight, bias, groups):
    """The rule: torch's grouped convolution, in float64, on the rows as a [1, C, M, 1] map."""
    m = x.size(0)
    y = F.conv2d(x.view(1, m, 1, -1).permute(0, 3, 1, 2), weight,
                 None if bias is None else bias, groups=groups)
    return y.permute(0, 2, 3, 1).reshape(m, -1)


@pytest.mark.parametrize("m,cin,cout,groups", [(3136, 192, 384, 4), (50, 8, 12, 4),
                                               (7, 6, 6, 1), (33, 12, 6, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_grouped_convolution_in_float64(calls, m, cin, cout, groups, bias):
    g = torch.Generator().manual_seed(m + cin)
    x = torch.randn(m, cin, generator=g, requires_grad=True)
    w = torch.randn(cout, cin // groups, 1, 1, generator=g, requires_grad=True)
    b = torch.randn(cout, generator=g, requires_grad=True) if bias else None
    grad = torch.randn(m, cout, generator=g)
    y = GL.grouped_linear(x, w, b, groups)
    y.backward(grad)
    assert calls[0] == 1
    leaves = [t.detach().double().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    ref = _conv64(leaves[0], leaves[1], leaves[2] if bias else None, groups)
    ref.backward(grad.double())
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-5 * scale)
    for got, want in zip((x.grad, w.grad) + ((b.grad,) if bias else ()),
                         (t.grad for t in leaves)):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=0,
                                   atol=1e-5 * max(1.0, want.abs().max().item()))


def test_gradient_only_where_asked(calls):
    x = torch.randn(20, 8)  # no gradient for the rows: the projection of a frozen input
    w = torch.randn(8, 2, 1, 1, requires_grad=True)
    GL.grouped_linear(x, w, None, 4).sum().backward()
    assert calls[0] == 1 and x.grad is None and w.grad is not None


@pytest.mark.parametrize("case", ["no_grad", "float64", "switch_off", "flop_counter"])
def test_convolution_where_it_does_not_apply(calls, case):
    x = torch.randn(30, 8, requires_grad=True)
    w, b = torch.randn(12, 2, 1, 1), torch.randn(12)
    if case == "float64":
        x, w, b = x.detach().double().requires_grad_(), w.double(), b.double()
    if case == "no_grad":
        with torch.no_grad():
            y = GL.grouped_linear(x, w, b, 4)
    elif case == "flop_counter":
        with FlopCounterMode(display=False) as counter:
            y = GL.grouped_linear(x, w, b, 4)
        assert counter.get_total_flops() == 2 * 30 * 12 * 2  # the grouped convolution's
    else:
        with fast_paths.disabled(*(("grouped_linear",) if case == "switch_off" else ())):
            y = GL.grouped_linear(x, w, b, 4)
    assert calls[0] == 0
    torch.testing.assert_close(y, _conv64(x.detach(), w, b, 4).to(y.dtype))


def test_projection_trains_through_it(calls):
    """GroupedProjection in training: the per-group products ran, and the output equals the
    module's layers applied in float64 (convolution, BatchNorm with batch statistics, GELU)."""
    proj = GroupedProjection(16, 32, groups=4).train()
    x = torch.randn(40, 16, requires_grad=True)
    y = proj(x)
    y.sum().backward()
    assert calls[0] == 1
    ref = proj.double()  # its running statistics moved once: compare outputs only
    ref[1].train()
    x64 = x.detach().double()
    want = ref[2](F.batch_norm(_conv64(x64, ref[0].weight, ref[0].bias, 4), None, None,
                               ref[1].weight, ref[1].bias, True, 0.0, ref[1].eps))
    torch.testing.assert_close(y.detach().double(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("case", ["no_grad", "float64", "switch_off"])
@pytest.mark.parametrize("part", ["all", "first_half", "second_half"])
def test_convolution_path_is_conv2d_on_the_rows_view_bit_for_bit(calls, case, part):
    """Where the products do not apply the result is, to the bit, ``F.conv2d`` on the rows'
    channels-last view ``[1, C_in, M, 1]``; also for a slice of a weight's output channels
    owning whole groups (what ``edge`` projects per node)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2 * 30, 16, generator=g)[::2]  # strided rows: made contiguous first
    w, b = torch.randn(24, 4, 1, 1, generator=g), torch.randn(24, generator=g)
    rows, groups = {"all": (slice(None), 4), "first_half": (slice(0, 12), 2),
                    "second_half": (slice(12, 24), 2)}[part]
    xin = x[:, :8] if part != "all" else x
    if case == "float64":
        xin, w, b = xin.double(), w.double(), b.double()
    with torch.set_grad_enabled(case != "no_grad"), \
            fast_paths.disabled(*(("grouped_linear",) if case == "switch_off" else ())):
        xin = xin.requires_grad_() if case != "no_grad" else xin
        y = GL.grouped_linear(xin, w[rows], b[rows], groups)
        m = xin.size(0)
        want = F.conv2d(xin.contiguous().view(1, m, 1, -1).permute(0, 3, 1, 2), w[rows],
                        b[rows], groups=groups).permute(0, 2, 3, 1).reshape(m, -1)
    assert calls[0] == 0
    assert torch.equal(y, want)


def test_slice_of_the_output_channels_trains_through_the_products(calls):
    """``edge``'s per-node halves: a slice of the weight's rows holding whole groups, its
    gradient landing in that slice of the full weight only, equal to the convolution in
    float64."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 8, generator=g, requires_grad=True)
    w = torch.randn(24, 4, 1, 1, generator=g, requires_grad=True)
    grad = torch.randn(40, 12, generator=g)
    GL.grouped_linear(x, w[12:], None, 2).backward(grad)
    assert calls[0] == 1
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    _conv64(x64, w64[12:], None, 2).backward(grad.double())
    assert torch.count_nonzero(w.grad[:12]) == 0
    for got, want in ((x.grad, x64.grad), (w.grad, w64.grad)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,projections", [("edge", 2), ("sage", 2)])
def test_edge_and_sage_per_node_projections_take_it(calls, name, projections):
    """On a fixed-degree graph in float32 training ``edge`` (centre half and ``W_b x``) and
    ``sage`` (``nn1`` per node, then ``nn2``) project through :func:`grouped_linear`'s
    products; in inference without autograd through the convolution."""
    from vig_pyg.conv import ViGEdgeConv, ViGSAGEConv
    from vig_pyg.graph import knn_edges

    layer = {"edge": ViGEdgeConv, "sage": ViGSAGEConv}[name](8, 16, groups=4).train()
    fmap = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(6))
    x = fmap.permute(0, 2, 3, 1).reshape(-1, 8).requires_grad_()
    ei = knn_edges(fmap, 3)
    layer(x, ei).sum().backward()
    assert calls[0] == projections
    with torch.no_grad():
        layer.eval()(x, ei)
    assert calls[0] == projections
