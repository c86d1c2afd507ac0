"""The conv registry (build_conv / list_convs / register_conv) and the PyG adapter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vig_pyg.conv import (PYG_PREFIX, MRConv, PyGConv, ViGEdgeConv, ViGGINConv, ViGSAGEConv,
                          build_conv, list_convs, register_conv)
from vig_pyg.conv import registry as registry_module
from vig_pyg.graph import knn_edges

OURS = {"mr": MRConv, "edge": ViGEdgeConv, "sage": ViGSAGEConv, "gin": ViGGINConv}
ADAPTED = ["GATConv", "GATv2Conv", "GCNConv", "SAGEConv", "GINConv", "TransformerConv",
           "GENConv", "EdgeConv", "GraphConv", "ResGatedGraphConv"]
NOT_BIPARTITE = {"GCNConv"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def graph(channels=16, bipartite=False, seed=0):
    torch.manual_seed(seed)
    fmap = torch.randn(2, channels, 4, 4)
    x = fmap.permute(0, 2, 3, 1).reshape(-1, channels)
    if not bipartite:
        return x, knn_edges(fmap, 5)
    keys = F.avg_pool2d(fmap, 2)
    return (keys.permute(0, 2, 3, 1).reshape(-1, channels), x), knn_edges(fmap, 3, keys=keys)


def test_list_convs_has_ours_then_the_adapters():
    names = list_convs()
    assert names[:4] == ["mr", "edge", "sage", "gin"]
    assert {PYG_PREFIX + n for n in ADAPTED} <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", list(OURS))
def test_build_ours(name):
    layer = build_conv(name, 16)
    assert type(layer) is OURS[name] and layer.out_channels == 32
    layer = build_conv(name, 16, 24, groups=2, act=None, bias=False)
    proj = layer.nn2 if name == "sage" else layer.nn
    assert proj[0].groups == 2 and proj[0].bias is None and isinstance(proj[2], nn.Identity)
    x, ei = graph()
    assert layer(x, ei).shape == (32, 24)


def test_prefix_resolvers(clean_registry):
    """A module claims a prefix; the registry asks it for names it does not hold itself
    (the PyG adapter resolves "pyg:<ClassName>" this way, so the registry imports nothing
    of the adapters)."""
    from vig_pyg.conv import ConvNameError, register_prefix

    seen = []

    def resolve(rest):
        seen.append(rest)
        return None if rest == "missing" else (lambda i, o=None, **kw: nn.Linear(i, o))

    register_prefix("toy:", resolve, "toys as 'toy:<anything>'")
    layer = build_conv("toy:line", 8, 12)
    assert isinstance(layer, nn.Linear) and layer.out_features == 12 and seen == ["line"]
    with pytest.raises(ConvNameError, match=r"unknown graph convolution 'toy:missing'; known: "
                                            r"mr.*\(toys as 'toy:<anything>'\)"):
        build_conv("toy:missing", 8)
    assert type(build_conv("pyg:LEConv", 8)).__name__ == "PyGConv"   # unregistered class
    import ast

    import vig_pyg.conv.registry as registry

    tree = ast.parse(open(registry.__file__).read())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not any("pyg_adapter" in m for m in imported)


def test_unknown_and_duplicate_names(clean_registry):
    with pytest.raises(ValueError, match="unknown graph convolution 'nope'.*mr, edge, sage"):
        build_conv("nope", 8)
    with pytest.raises(ValueError, match="pyg:GATConv"):  # the message lists the adapters
        build_conv("pyg:NoSuchConv", 8)
    with pytest.raises(ValueError, match="already registered"):
        register_conv("mr")(MRConv)
    with pytest.raises(ValueError, match="already registered"):
        register_conv("pyg:GATConv")(MRConv)
    with pytest.raises(ValueError, match="non-empty string"):
        register_conv("")

    @register_conv("test_identity")
    class Identity(nn.Module):
        def __init__(self, in_channels, out_channels=None, **kw):
            super().__init__()
            self.lin = nn.Linear(in_channels, out_channels)

        def forward(self, x, edge_index):
            return self.lin(x)

    assert "test_identity" in list_convs()
    assert build_conv("test_identity", 4)(torch.randn(3, 4), None).shape == (3, 8)
    with pytest.raises(ValueError, match="already registered"):
        register_conv("test_identity")(Identity)
    register_conv("test_identity", replace=True)(MRConv)
    assert isinstance(build_conv("test_identity", 4), MRConv)


@pytest.mark.parametrize("bipartite", [False, True], ids=["same", "bipartite"])
@pytest.mark.parametrize("name", ADAPTED)
def test_pyg_adapters_forward_backward(name, bipartite):
    x, ei = graph(bipartite=bipartite)
    layer = build_conv(PYG_PREFIX + name, 16, 32, groups=4)  # groups: accepted, ignored
    assert isinstance(layer, PyGConv) and isinstance(layer.norm, nn.BatchNorm1d)
    if bipartite and name in NOT_BIPARTITE:
        with pytest.raises(ValueError, match="does not support bipartite"):
            layer(x, ei)
        return
    if bipartite:
        x = tuple(t.clone().requires_grad_() for t in x)
        leaves = list(x)
    else:
        x = x.clone().requires_grad_()
        leaves = [x]
    out = layer(x, ei)
    assert out.shape == (32, 32)
    out.square().mean().backward()
    for t in leaves + [p for p in layer.parameters()]:
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in layer.conv.parameters())
    layer.eval()
    with torch.no_grad():
        assert torch.isfinite(layer(x, ei)).all()


def test_pyg_adapter_options():
    x, ei = graph()
    gat = build_conv("pyg:GATConv", 16, 32, heads=4)
    assert gat.conv.heads == 4 and gat.conv.out_channels == 8 and not gat.conv.add_self_loops
    assert gat(x, ei).shape == (32, 32)
    with pytest.raises(ValueError, match="divisible by heads"):
        build_conv("pyg:TransformerConv", 16, 30, heads=4)
    sage = build_conv("pyg:SAGEConv", 16, aggr="max", act="relu")
    assert str(sage.conv.aggr) == "max" and isinstance(sage.act, nn.ReLU)
    assert (sage(x, ei) >= 0).all()
    # any other PyG conv with an (in, out) constructor works unregistered
    le = build_conv("pyg:LEConv", 16, 8)
    assert le(x, ei).shape == (32, 8)
    assert "pyg:LEConv" not in list_convs()
    with pytest.raises(ValueError, match="cannot build pyg:GravNetConv"):
        build_conv("pyg:GravNetConv", 16)
