"""create_model's options: the one-line errors of model_config / validate_model_options,
and the ablation overrides (each changes exactly what it names; the defaults are the
release)."""
from __future__ import annotations

import pytest
import torch

from vig_pyg.errors import VigPygError
from vig_pyg.models import (ModelConfigError, create_model, list_overrides, model_config,
                            validate_model_options)
from vig_pyg.models.info import count_params

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ISO = dict(num_classes=10, k=4, img_size=32, channels=32, depth=5, stem_stride=4)
PYR = dict(num_classes=10, k=4, img_size=128, channels=[16, 32, 48, 64], blocks=[1, 1, 2, 1])


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call,match", [
    (lambda: validate_model_options("vig_tiny"), r"unknown model 'vig_tiny' \(did you mean "
                                                 r"'vig_ti'\?\); valid models: \['vig_ti'"),
    (lambda: validate_model_options("vig_ti", conv="nope"),
     r"unknown graph convolution 'nope'; known: mr, edge, sage, gin, pyg:GATConv"),
    (lambda: validate_model_options("vig_ti", blocks=[2, 2]),
     r"unknown override\(s\) \['blocks'\] for vig_ti \(isotropic\); valid overrides: "
     r"\['channels', 'depth', 'stem_stride'"),
    (lambda: validate_model_options("vig_ti", stochastic="yes"),
     r"stochastic='yes' is invalid; stochastic takes a bool"),
    (lambda: validate_model_options("vig_ti", act="swish2"), r"act='swish2' is invalid"),
    (lambda: validate_model_options("pvig_ti", channels=64), r"channels takes a list of ints"),
    (lambda: validate_model_options("vig_ti", knn_backend="faiss"),
     r"knn_backend takes one of \['auto', 'dense', 'cluster'\]"),
    (lambda: validate_model_options("vig_ti", groups=5), r"multiples of 5"),
    (lambda: validate_model_options("vig_ti", dilation=0), r"dilation=0 is invalid"),
    (lambda: validate_model_options("vig_ti", k=0), r"k \(neighbours per node\) must be"),
    (lambda: validate_model_options("vig_ti", num_classes=-1), r"num_classes must be"),
    (lambda: validate_model_options("vig_ti", drop_path_rate="0.1"), r"drop_path_rate must"),
    (lambda: validate_model_options("vig_ti", img_size=100), r"not a positive multiple of 16"),
])
def test_bad_options_raise_one_line(call, match):
    with pytest.raises(ModelConfigError, match=match) as info:
        call()
    assert isinstance(info.value, VigPygError) and "\n" not in str(info.value)


def test_validate_returns_the_config_create_model_builds():
    cfg = validate_model_options("vig_ti", conv="pyg:GATv2Conv", checkpoint="unused.pth",
                                 **ISO)
    assert cfg == model_config("vig_ti", conv="pyg:GATv2Conv", **ISO)
    assert create_model("vig_ti", conv="pyg:GATv2Conv", **ISO).config == cfg


def test_every_listed_override_is_accepted():
    values = {"channels": 32, "depth": 5, "stem_stride": 4, "blocks": [1, 1, 2, 1],
              "reduce_ratios": [4, 2, 1, 1], "stochastic": True, "epsilon": 0.3,
              "dropout": 0.1, "knn_backend": "dense", "in_chans": 1, "act": "relu",
              "grapher_fc": False, "ffn": False, "groups": 2, "relative_pos": False,
              "dilation": 2, "graph": "axial", "graph_options": {"backend": "dense"},
              "conv_options": {"bias": True}}
    for name, base in (("vig_ti", ISO), ("pvig_ti", PYR)):
        for key in list_overrides(name):
            options = {**base, key: values[key]} if key != "channels" else base
            validate_model_options(name, **options)


# --------------------------------------------------------------------------- ablations
def params(name, base, **kw):
    torch.manual_seed(0)
    return count_params(create_model(name, **{**base, **kw}))


def test_grapher_fc_false_drops_fc1_fc2():
    c, g, depth = 32, 4, 5
    fc1 = c * c + c + 2 * c                    # 1x1 conv + bias, BN weight + bias
    fc2 = 2 * c * c + c + 2 * c
    mr_2c = 2 * c * 2 * c // g + 2 * c + 4 * c  # grouped 2C -> 2C + bias, BN
    mr_c = 2 * c * c // g + c + 2 * c           # grouped 2C -> C + bias, BN
    per_block = fc1 + fc2 + mr_2c - mr_c
    (a, _), (b, _) = params("vig_ti", ISO), params("vig_ti", ISO, grapher_fc=False)
    assert a - b == depth * per_block
    model = create_model("vig_ti", grapher_fc=False, **ISO).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_ffn_false_drops_every_ffn():
    c, depth = 32, 5
    per_block = (c * 4 * c + 4 * c + 8 * c) + (4 * c * c + c + 2 * c)
    (a, _), (b, _) = params("vig_ti", ISO), params("vig_ti", ISO, ffn=False)
    assert a - b == depth * per_block


@pytest.mark.parametrize("conv,weights", [
    ("mr", lambda c, g: 2 * c * 2 * c // g),
    ("sage", lambda c, g: c * c // g + 2 * c * 2 * c // g),
    ("gin", lambda c, g: 2 * c * c // g),
])
def test_groups_change_only_the_graph_conv_weights(conv, weights):
    c, depth = 32, 5
    (a, _), (b, _) = params("vig_ti", ISO, conv=conv), params("vig_ti", ISO, conv=conv,
                                                               groups=8)
    assert a - b == depth * (weights(c, 4) - weights(c, 8))
    model = create_model("vig_ti", conv=conv, groups=8, **ISO)
    assert all(b[0].graph_conv.groups == 8 for b in model.backbone)


def test_relative_pos_switch_counts_its_frozen_tables():
    # pyramid: 32x32 grid (keys pooled 4x4), 16x16 (2x2), 8x8 twice, 4x4
    tables = 1024 * 1024 // 16 + 256 * 256 // 4 + 2 * 64 * 64 + 16 * 16
    (a, ta), (b, tb) = params("pvig_ti", PYR), params("pvig_ti", PYR, relative_pos=False)
    assert a - b == tables and ta == tb
    # isotropic: off as released; on, one 8x8-node table per block
    (c, tc), (d, td) = params("vig_ti", ISO), params("vig_ti", ISO, relative_pos=True)
    assert d - c == 5 * 64 * 64 and tc == td


def test_dilation_switch_sets_the_schedule():
    def dilations(**kw):
        model = create_model("vig_ti", **{**ISO, "depth": 12, "img_size": 64}, **kw)
        return [b[0].dilation for b in model.backbone]

    assert dilations() == [1] * 4 + [2] * 4 + [3] * 4
    assert dilations(dilation=True) == dilations()
    assert dilations(dilation=False) == [1] * 12
    assert dilations(dilation=2) == [1] * 4 + [2] * 8


@pytest.mark.parametrize("name,base", [("vig_ti", ISO), ("pvig_ti", PYR)])
def test_defaults_are_the_release(name, base):
    """The switches at their defaults build the very same network: same keys and shapes,
    bit-identical logits with the weights copied."""
    released = create_model(name, **base).eval()
    explicit = create_model(name, grapher_fc=True, ffn=True, groups=4, dilation=True,
                            relative_pos=name.startswith("pvig"), **base).eval()
    own, other = released.state_dict(), explicit.state_dict()
    assert [(k, v.shape) for k, v in own.items()] == [(k, v.shape) for k, v in other.items()]
    explicit.load_state_dict(own)
    x = torch.randn(2, 3, base["img_size"], base["img_size"])
    with torch.no_grad():
        assert torch.equal(released(x), explicit(x))
