"""The timm contract: feature_info, forward_features / forward_intermediates / forward_head,
features_only=True (timm's FeatureGetterNet), pruning, and empty batches."""
from __future__ import annotations

import pytest
import timm
import torch

from vig_pyg.errors import VigPygError
from vig_pyg.models import create_model
from vig_pyg.models.zoo import ZOO

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Small inputs the real zoo configs accept with k = 2 (the schedules stay the release's).
SMALL = {"isotropic": dict(k=2, img_size=64), "pyramid": dict(k=2, img_size=128)}


def images(b, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g)


def expected_stages(name):
    """(channels, stride) per stage, written from the zoo's architecture: isotropic one
    stage of stride 16, pyramid four of strides 4, 8, 16, 32."""
    entry = ZOO[name]
    chans = entry.arch["channels"]
    if entry.kind == "isotropic":
        return [(chans, 16)]
    return [(c, 4 * 2 ** s) for s, c in enumerate(chans)]


@pytest.mark.parametrize("name", list(ZOO))
def test_features_only_reports_and_returns_every_stage(name):
    small = SMALL[ZOO[name].kind]
    net = timm.create_model(name, features_only=True, **small)
    stages = expected_stages(name)
    assert net.feature_info.channels() == [c for c, _ in stages]
    assert net.feature_info.reduction() == [s for _, s in stages]
    with torch.no_grad():
        maps = net(images(1, small["img_size"]))
    size = small["img_size"]
    assert [tuple(m.shape) for m in maps] == [(1, c, size // s, size // s) for c, s in stages]


def test_pvig_s_out_indices_equal_forward_intermediates():
    small = SMALL["pyramid"]
    torch.manual_seed(0)
    net = timm.create_model("pvig_s", features_only=True, out_indices=(1, 2, 3), **small)
    torch.manual_seed(0)
    full = create_model("pvig_s", **small)
    own = full.state_dict()
    pruned = net.model.state_dict()
    assert set(pruned) == {k for k in own if not k.startswith("prediction.")}
    assert all(torch.equal(v, own[k]) for k, v in pruned.items())
    assert net.feature_info.reduction() == [8, 16, 32]
    assert net.feature_info.channels() == [160, 400, 640]
    net.eval(), full.eval()
    x = images(2, small["img_size"], seed=1)
    with torch.no_grad():
        maps = net(x)
        final, inter = full.forward_intermediates(x, indices=(1, 2, 3))
        logits = full(x)
    assert len(maps) == 3
    for a, b in zip(maps, inter):
        assert torch.equal(a, b)
    assert torch.equal(final, inter[-1])
    with torch.no_grad():
        assert torch.equal(full.forward_features(x), final)
        assert torch.equal(full.forward_head(final), logits)


def test_pruning_drops_what_is_not_run():
    small = SMALL["pyramid"]
    net = timm.create_model("pvig_ti", features_only=True, out_indices=(0, 1), **small)
    model = net.model
    # stage 1 ends at backbone index 4: blocks 0, 1, downsample 2, blocks 3, 4
    assert len(model.backbone) == 5 and model.prediction is None
    assert [fi["reduction"] for fi in model.feature_info] == [4, 8]
    with torch.no_grad():
        maps = net(images(1, 128))
    assert [m.shape[1] for m in maps] == [48, 96]
    with pytest.raises(VigPygError, match="pruned"):
        model.forward_head(maps[-1])


def test_forward_intermediates_options():
    model = create_model("pvig_ti", **SMALL["pyramid"]).eval()
    x = images(1, 128, seed=2)
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        negative = model.forward_intermediates(x, indices=[-1, 0], intermediates_only=True)
        nhwc = model.forward_intermediates(x, indices=[1], output_fmt="NHWC",
                                           intermediates_only=True)
        early, first = model.forward_intermediates(x, indices=[0], stop_early=True)
    assert len(every) == 4 and torch.equal(final, every[-1])
    assert all(torch.equal(a, b) for a, b in zip(last_two, every[2:]))
    assert torch.equal(negative[0], every[0]) and torch.equal(negative[1], every[3])
    assert torch.equal(nhwc[0], every[1].permute(0, 2, 3, 1))
    assert torch.equal(early, every[0]) and torch.equal(first[0], every[0])
    with pytest.raises(VigPygError, match="out of range"):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(VigPygError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_isotropic_has_one_stage():
    model = create_model("vig_ti", **SMALL["isotropic"]).eval()
    x = images(2, 64, seed=3)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert len(maps) == 1 and torch.equal(maps[0], final)
        assert torch.equal(model.forward_head(model.forward_features(x)), model(x))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_empty_batch_gives_empty_outputs(train):
    model = create_model("pvig_ti", num_classes=7, **SMALL["pyramid"]).train(train)
    x = torch.zeros(0, 3, 128, 96)
    assert model(x).shape == (0, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (0, 1024)
    maps = model.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(0, 48, 32, 24), (0, 96, 16, 12),
                                              (0, 240, 8, 6), (0, 384, 4, 3)]


def test_num_classes_zero_returns_the_embedding():
    model = create_model("vig_ti", num_classes=0, **SMALL["isotropic"]).eval()
    x = images(2, 64, seed=4)
    with torch.no_grad():
        assert torch.equal(model(x), model.forward_head(model.forward_features(x),
                                                        pre_logits=True))
    assert model.num_classes == 0 and model(x).shape == (2, 1024)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)


def test_feature_options_need_features_only():
    with pytest.raises(VigPygError, match="features_only"):
        timm.create_model("vig_ti", out_indices=(0,), **SMALL["isotropic"])
