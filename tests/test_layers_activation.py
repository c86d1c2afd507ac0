"""The one activation factory: each release name against hand-computed values, and every
layer of a model (stem, graph conv, FFN, head, PyG adapters) built through it."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vig_pyg.conv import build_conv
from vig_pyg.errors import VigPygError
from vig_pyg.layers import RELEASE_ACTIVATIONS, make_activation
from vig_pyg.models import create_model

X = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0], dtype=torch.float64)


def phi(x):  # the standard normal CDF
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


EXPECTED = {  # f(X), by hand
    "relu": [0.0, 0.0, 0.0, 1.0, 2.0],
    "leakyrelu": [-0.6, -0.2, 0.0, 1.0, 2.0],          # slope 0.2
    "prelu": [-0.6, -0.2, 0.0, 1.0, 2.0],              # slope initialised at 0.2
    "gelu": [x * phi(x) for x in (-3.0, -1.0, 0.0, 1.0, 2.0)],
    "hswish": [0.0, -1 * 2 / 6, 0.0, 1 * 4 / 6, 2 * 5 / 6],   # x * relu6(x + 3) / 6
}


@pytest.mark.parametrize("name", list(RELEASE_ACTIVATIONS))
def test_release_activations_by_hand(name):
    act = make_activation(name).double()
    with torch.no_grad():
        torch.testing.assert_close(act(X), torch.tensor(EXPECTED[name], dtype=torch.float64))
    assert list(RELEASE_ACTIVATIONS) == ["relu", "leakyrelu", "prelu", "gelu", "hswish"]


def test_prelu_has_one_learnable_slope_per_instance():
    a, b = make_activation("prelu"), make_activation("prelu")
    assert a.weight.shape == (1,) and a.weight.item() == pytest.approx(0.2)
    assert a.weight is not b.weight


def test_names_aliases_modules_and_none():
    assert make_activation("LeakyReLU").negative_slope == 0.2
    assert make_activation("leaky_relu").negative_slope == 0.2
    assert isinstance(make_activation("hardswish"), nn.Hardswish)
    assert isinstance(make_activation("silu"), nn.SiLU)      # any torch.nn activation
    assert isinstance(make_activation(None), nn.Identity)
    assert isinstance(make_activation("none"), nn.Identity)
    module = nn.Tanh()
    assert make_activation(module) is module
    assert isinstance(make_activation(nn.ELU), nn.ELU)
    with pytest.raises(VigPygError, match=r"unknown activation 'swish2'; the release's are "
                                          r"\['relu', 'leakyrelu', 'prelu', 'gelu', 'hswish'\]"):
        make_activation("swish2")


@pytest.mark.parametrize("name", ["vig_ti", "pvig_ti"])
def test_every_layer_of_a_model_uses_the_factory(name):
    """leakyrelu: every activation module is a LeakyReLU of slope 0.2 (the graph conv's
    used to be torch's 0.01), one per stem conv but the last, graph conv, FFN, and head."""
    small = (dict(channels=32, depth=2, stem_stride=4, img_size=32, k=4) if name == "vig_ti"
             else dict(channels=[16, 32, 48, 64], blocks=[1, 1, 1, 1], img_size=128, k=4))
    model = create_model(name, act="leakyrelu", **small)
    acts = [m for m in model.modules() if isinstance(m, (nn.GELU, nn.LeakyReLU))]
    stem = 4 if name == "vig_ti" else 2
    assert len(acts) == stem + 2 * model.config.depth + 1
    assert all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in acts)
    hswish = create_model(name, act="hswish", **small).eval()   # used to fail in the Grapher
    size = small["img_size"]
    assert hswish(torch.randn(1, 3, size, size)).shape == (1, 1000)


def test_pyg_adapters_use_the_factory():
    gin = build_conv("pyg:GINConv", 8, act="leakyrelu")
    slopes = [m.negative_slope for m in gin.modules() if isinstance(m, nn.LeakyReLU)]
    assert slopes == [0.2, 0.2]   # inside the MLP and after the BatchNorm
