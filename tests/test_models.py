"""The model zoo against its table (docs/architecture.md, ``vig_pyg.models.zoo.ZOO``:
parameters and MACs are counted here) and against the independent dense reference of the
official semantics (tests/official_reference.py).

Every comparison with the reference loads a random state dict in the OFFICIAL key layout
through ``create_model(checkpoint=...)``, so it also tests the key mapping; values are
float32 numbers, the model is converted to float64 after loading, and logits must agree to
a relative 1e-9.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import official_reference as R
import pytest
import torch

from vig_pyg.layers import RELEASE_ACTIVATIONS
from vig_pyg.models import ViG, create_model, list_models, load_checkpoint, model_config
from vig_pyg.models.info import count_macs, count_params
from vig_pyg.models.zoo import VIG_TI_CONVS, ZOO

RTOL = 1e-9
DOCS = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
NATIVE_CONVS = ("mr", "edge", "sage", "gin")

# Small configs: a vig_ti-like isotropic model on 32 px images (8 x 8 nodes) and a
# pyramid with every feature of the zoo's (4 stages, pooled keys r = 4, 2, relative
# positions, downsamples) on 128 px images.
SMALL_ISO = dict(name="vig_ti", overrides=dict(channels=32, depth=5, stem_stride=4), k=4,
                 img=32)
SMALL_PYR = dict(name="pvig_ti", overrides=dict(channels=[16, 32, 48, 64], blocks=[1, 1, 2, 1]),
                 k=4, img=128)


def ref_cfg(name, conv="mr", k=9, img_size=224, num_classes=1000, **ov):
    cfg = R.make_cfg(name, conv=conv, k=k, img_size=img_size, num_classes=num_classes)
    if "depth" in ov:
        cfg["depth"] = ov.pop("depth")
    cfg.update(ov)
    return cfg


def build_pair(small, conv="mr", seed=0, img_size=None, num_classes=10, **extra):
    """(our float64 model loaded from a random official dict, that dict, reference cfg)."""
    img_size = img_size or small["img"]
    cfg = ref_cfg(small["name"], conv, small["k"], img_size, num_classes, **small["overrides"])
    cfg["act"] = extra.get("act", "gelu")
    sd = R.random_official_state_dict(cfg, seed=seed)
    model = create_model(small["name"], num_classes=num_classes, conv=conv, k=small["k"],
                         img_size=img_size, checkpoint=sd, **small["overrides"], **extra)
    return model.double().eval(), sd, cfg


def assert_close(ours, ref, rtol=RTOL):
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    err = (ours - ref).abs().max().item()
    assert err <= rtol * max(scale, 1e-30), f"max abs error {err:.3e} vs scale {scale:.3e}"


def images(b, h, w=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w or h, generator=g, dtype=dtype)


# --------------------------------------------------------------------------- zoo table
def test_list_models():
    assert list_models() == ["vig_ti", "vig_s", "vig_b", "pvig_ti", "pvig_s", "pvig_m", "pvig_b"]


@pytest.mark.parametrize("name", list(ZOO))
def test_params_and_macs_match_the_zoo_table(name):
    total, trainable, gmacs = ZOO[name].params_m, ZOO[name].trainable_m, ZOO[name].gmacs
    torch.manual_seed(0)
    model = create_model(name)
    p_total, p_train = count_params(model)
    assert round(p_total / 1e6, 2) == total
    assert round(p_train / 1e6, 2) == trainable
    assert round(count_macs(model, 224)["total"] / 1e9, 2) == gmacs


def test_knn_macs_are_counted():
    # docs/architecture.md: vig_ti 1.212 convolution + 0.089 distance GMACs; pvig_ti 1.554 + 0.146
    for name, conv_g, knn_g in (("vig_ti", 1.212, 0.089), ("pvig_ti", 1.554, 0.146)):
        macs = count_macs(create_model(name), 224)
        assert round(macs["knn"] / 1e9, 3) == knn_g
        assert round((macs["total"] - macs["knn"]) / 1e9, 3) == conv_g


@pytest.mark.parametrize("conv", list(VIG_TI_CONVS))
def test_aggregator_table(conv):
    params, gmacs = VIG_TI_CONVS[conv].params_m, VIG_TI_CONVS[conv].gmacs
    model = create_model("vig_ti", conv=conv)
    assert round(count_params(model)[0] / 1e6, 2) == params
    assert round(count_macs(model, 224)["total"] / 1e9, 2) == gmacs


def test_docs_page_states_the_zoo_table():
    """docs/architecture.md and the code's table say the same (one fact, two readers)."""
    text = DOCS.read_text()
    for name, e in ZOO.items():
        row = re.search(rf"^\| {name} \|.*$", text, re.M)
        assert row, name
        cells = [c.strip() for c in row.group(0).strip("|").split("|")]
        params = f"{e.params_m:.2f}" + (f" ({e.trainable_m:.2f})"
                                        if e.trainable_m != e.params_m else "")
        assert cells[4:7] == [params, f"{e.gmacs:.2f}", f"{e.top1:.1f}"], name
    for conv, v in VIG_TI_CONVS.items():
        assert f"| {conv} | {v.params_m:.2f} | {v.gmacs:.2f} | {v.top1:.1f} |" in text


@pytest.mark.parametrize("name", list(ZOO))
def test_schedules_match_spec(name):
    cfg = model_config(name, drop_path_rate=0.3)
    specs = cfg.block_specs()
    ref = R.schedule(R.make_cfg(name))
    assert [(s.stage, s.k, s.dilation, s.reduce_ratio) for s in specs] == ref
    depth = len(specs)
    expected_dpr = torch.linspace(0, 0.3, depth).tolist()
    assert [s.drop_path for s in specs] == pytest.approx(expected_dpr, abs=1e-7)
    if name.startswith("vig"):
        assert specs[0].k == 9 and specs[-1].k == 18
        assert max(s.dilation for s in specs) <= 196 // 18
    else:
        assert {s.k for s in specs} == {9}
        assert max(s.dilation for s in specs) == min((depth - 1) // 4 + 1, 5)


def test_model_modules_follow_schedule():
    model = create_model("vig_ti", drop_path_rate=0.1)
    graphers = [b[0] for b in model.backbone]
    assert [g.k for g in graphers] == [9, 9, 10, 11, 12, 13, 13, 14, 15, 16, 17, 18]
    assert [g.dilation for g in graphers] == [1] * 4 + [2] * 4 + [3] * 4
    assert graphers[0].drop_path.__class__.__name__ == "Identity"
    assert graphers[-1].drop_path.drop_prob == pytest.approx(0.1)


# --------------------------------------------------------------------------- parity
# The smallest inputs each isotropic schedule allows; pvig_ti and pvig_s at their native
# 224 px, pvig_m and pvig_b at 160 px (their last stage's 5 x 5 grid then clamps the
# dilation of the last blocks, which the reference mirrors; see official_reference).
ZOO_SIZES = {"vig_ti": 128, "vig_s": 144, "vig_b": 144, "pvig_ti": 224, "pvig_s": 224,
             "pvig_m": 160, "pvig_b": 160}


@pytest.mark.parametrize("name", list(ZOO_SIZES))
def test_zoo_logits_match_reference(name):
    """The real zoo configs with 224 px weights in the official layout."""
    cfg = R.make_cfg(name)
    sd = R.random_official_state_dict(cfg, seed=3)
    model = create_model(name, checkpoint=sd).double().eval()
    x = images(1, ZOO_SIZES[name], seed=4)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(model(x), R.ref_forward(sd, x, cfg))


@pytest.mark.parametrize("conv", NATIVE_CONVS)
@pytest.mark.parametrize("small", [SMALL_ISO, SMALL_PYR], ids=["isotropic", "pyramid"])
def test_convs_match_reference(small, conv):
    model, sd, cfg = build_pair(small, conv, seed=5)
    x = images(2, small["img"], seed=6)
    with torch.no_grad():
        final, ours = model.forward_intermediates(x)
        ref = R.ref_forward_features(sd, x, cfg)
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            assert_close(a, b)
        assert_close(model.forward_head(final), R.ref_forward(sd, x, cfg))


@pytest.mark.parametrize("act", list(RELEASE_ACTIVATIONS))
@pytest.mark.parametrize("small", [SMALL_ISO, SMALL_PYR], ids=["isotropic", "pyramid"])
def test_activations_match_reference(small, act):
    """Each release activation in every layer (stem, graph conv, FFN, head), weights in the
    release's layout (PReLU slopes included): the reference's logits in float64."""
    model, sd, cfg = build_pair(small, "mr", seed=15, act=act)
    slopes = [k for k in sd if k.endswith((".act.weight", ".nn.2.weight", "prediction.2.weight"))]
    # one slope per graph conv and per FFN, one in the head (and the stem's, not counted)
    assert len(slopes) == (2 * model.config.depth + 1 if act == "prelu" else 0)
    x = images(2, small["img"], seed=16)
    with torch.no_grad():
        assert_close(model(x), R.ref_forward(sd, x, cfg))


@pytest.mark.parametrize("conv", ["edge", "sage", "gin"])
def test_prelu_in_every_projection_matches_reference(conv):
    """sage has two projections, edge projects every edge: each gets its own slope."""
    model, sd, cfg = build_pair(SMALL_ISO, conv, seed=17, act="prelu")
    x = images(2, SMALL_ISO["img"], seed=18)
    with torch.no_grad():
        assert_close(model(x), R.ref_forward(sd, x, cfg))


@pytest.mark.parametrize("small,size", [(SMALL_ISO, (40, 24)), (SMALL_ISO, (48, 48)),
                                        (SMALL_PYR, (160, 128)), (SMALL_PYR, (96, 160))],
                         ids=["iso-nonsquare", "iso-larger", "pyr-nonsquare", "pyr-wide"])
def test_other_input_sizes_match_reference(small, size):
    """Built for one size, run at another: pos_embed and relative_pos are resized
    bicubically on the fly, like the release does for relative_pos."""
    model, sd, cfg = build_pair(small, "mr", seed=7)
    x = images(2, *size, seed=8)
    with torch.no_grad():
        assert_close(model(x), R.ref_forward(sd, x, cfg))


@pytest.mark.parametrize("small,size", [(SMALL_ISO, (40, 24)), (SMALL_PYR, (160, 128))],
                         ids=["isotropic", "pyramid"])
def test_checkpoint_resized_at_load_matches_reference(small, size):
    """Weights for one size loaded into a model built for another: the tables are resized
    at load time, which must equal the reference's resizing at run time."""
    cfg = ref_cfg(small["name"], "mr", small["k"], small["img"], 10, **small["overrides"])
    sd = R.random_official_state_dict(cfg, seed=9)
    model = create_model(small["name"], num_classes=10, k=small["k"], img_size=size,
                         **small["overrides"]).double().eval()
    # float64 before loading: the resized tables are not float32 numbers
    load_checkpoint(model, sd)
    assert tuple(model.pos_embed.shape[-2:]) != tuple(sd["pos_embed"].shape[-2:])
    x = images(2, *size, seed=10)
    with torch.no_grad():
        assert_close(model(x), R.ref_forward(sd, x, cfg))


@pytest.mark.parametrize("size", [160, 256, (224, 160)])
def test_pvig_ti_other_sizes(size):
    """The real pvig_ti (pooled keys, four relative-position tables) at other sizes. At
    160 px the last stage (5 x 5 nodes) cannot hold k * d = 27 candidates: the dilation
    of those blocks drops to 25 // 9 = 2, with a warning (the release fails there)."""
    cfg = R.make_cfg("pvig_ti")
    sd = R.random_official_state_dict(cfg, seed=11)
    model = create_model("pvig_ti", checkpoint=sd).double().eval()
    h, w = (size, size) if isinstance(size, int) else size
    x = images(1, h, w, seed=12)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert any("using dilation 2" in str(c.message) for c in caught) == (size == 160)
    with torch.no_grad():
        assert [tuple(f.shape[-2:]) for f in feats] == [(h // s, w // s) for s in (4, 8, 16, 32)]
        assert_close(model.forward_head(feats), R.ref_forward(sd, x, cfg))


def test_vig_ti_other_sizes():
    cfg = R.make_cfg("vig_ti")
    sd = R.random_official_state_dict(cfg, seed=13)
    model = create_model("vig_ti", checkpoint=sd).double().eval()
    for h, w in ((256, 256), (224, 160), (160, 160)):
        x = images(1, h, w, seed=14)
        with torch.no_grad():
            assert_close(model(x), R.ref_forward(sd, x, cfg))


def test_relative_pos_is_the_official_table():
    model = create_model("pvig_ti")
    graphers = [m[0] for m in model.backbone if not hasattr(m, "conv")]
    seen = set()
    for g, (stage, _, _, r) in zip(graphers, R.schedule(R.make_cfg("pvig_ti"))):
        dim = g.fc1[0].out_channels
        grid = 56 // 2 ** stage
        expected = R.official_relative_pos(dim, grid, r)
        assert g.relative_pos.shape == expected.shape
        assert not g.relative_pos.requires_grad
        torch.testing.assert_close(g.relative_pos.detach(), expected, rtol=0, atol=2e-6)
        seen.add(stage)
    assert seen == {0, 1, 2, 3}


# --------------------------------------------------------------------------- behaviour
def small_model(small, conv="mr", **kw):
    torch.manual_seed(0)
    return create_model(small["name"], num_classes=10, conv=conv, k=small["k"],
                        img_size=small["img"], **small["overrides"], **kw)


@pytest.mark.parametrize("small", [SMALL_ISO, SMALL_PYR], ids=["isotropic", "pyramid"])
def test_forward_features_and_head(small):
    model = small_model(small).eval()
    x = images(2, small["img"], dtype=torch.float32)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        chans = small["overrides"]["channels"]
        chans = [chans] if isinstance(chans, int) else chans
        assert [f.shape[1] for f in feats] == chans
        assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)
        assert [fi["num_chs"] for fi in model.feature_info] == chans
        logits = model(x)
        assert logits.shape == (2, 10)
        torch.testing.assert_close(model.forward_head(feats[-1]), logits, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_features(x), feats[-1], rtol=0, atol=0)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1024)


@pytest.mark.parametrize("small", [SMALL_ISO, SMALL_PYR], ids=["isotropic", "pyramid"])
def test_eval_is_deterministic_and_drop_path_off(small):
    model = small_model(small, drop_path_rate=0.5, dropout=0.5).eval()
    plain = small_model(small).eval()
    plain.load_state_dict(model.state_dict())
    x = images(2, small["img"], dtype=torch.float32)
    with torch.no_grad():
        a, b, c = model(x), model(x), plain(x)
    assert torch.equal(a, b)
    assert torch.equal(a, c)
    # ...and drop path is active in training mode
    model.train()
    torch.manual_seed(1)
    d = model(x)
    torch.manual_seed(2)
    e = model(x)
    assert not torch.allclose(d, e)


@pytest.mark.parametrize("conv", NATIVE_CONVS)
@pytest.mark.parametrize("small", [SMALL_ISO, SMALL_PYR], ids=["isotropic", "pyramid"])
def test_every_parameter_gets_a_gradient(small, conv):
    model = small_model(small, conv).train()
    x = images(4, small["img"], dtype=torch.float32)
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        if name.endswith("relative_pos"):
            assert not p.requires_grad and p.grad is None
            continue
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        if not name.endswith("eps"):  # gin's eps can be ~0 exactly at init; it still trains
            assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_training_step_changes_running_stats_and_loss():
    model = small_model(SMALL_ISO).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = images(8, 32, dtype=torch.float32)
    y = torch.arange(8) % 10
    before = model.stem.convs[1].running_mean.clone()
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.equal(before, model.stem.convs[1].running_mean)
    assert losses[-1] < losses[0]


def _registered_convs():
    from vig_pyg.conv import list_convs

    return list(list_convs())


@pytest.mark.parametrize("conv", _registered_convs())
def test_every_registered_conv_builds_and_runs(conv):
    from vig_pyg.models.grapher import builders_for

    # on knn where it can; an aggregator of a hypergraph, or one that needs what only some
    # builders give (edge kinds, a partition), on the first builder it runs on
    graph = "knn" if "knn" in builders_for(conv) else builders_for(conv)[0]
    model = small_model(SMALL_ISO, conv, graph=graph).eval()
    with torch.no_grad():
        out = model(images(2, 32, dtype=torch.float32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert model.config.conv == conv


def test_stochastic_dilation_only_in_training():
    model = small_model(SMALL_ISO, stochastic=True, epsilon=1.0).eval()
    plain = small_model(SMALL_ISO).eval()
    plain.load_state_dict(model.state_dict())
    x = images(2, 32, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
        model.train(), plain.train()
        torch.manual_seed(0)
        a = model(x)
        b = plain(x)
    assert not torch.allclose(a, b)


def test_cluster_knn_backend_matches_dense():
    pytest.importorskip("torch_cluster")
    dense = small_model(SMALL_ISO).eval()
    cluster = small_model(SMALL_ISO, knn_backend="cluster").eval()
    cluster.load_state_dict(dense.state_dict())
    x = images(2, 32, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(cluster(x), dense(x))


def test_init_follows_spec():
    torch.manual_seed(0)
    model = create_model("vig_ti")
    assert torch.count_nonzero(model.pos_embed) == 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            std = m.weight.std().item()
            assert std == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.25), name
            assert torch.count_nonzero(m.bias) == 0, name
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0), name


def test_channels_last_weights():
    model = create_model("pvig_ti")
    assert model.stem.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.pos_embed.is_contiguous(memory_format=torch.channels_last)


def test_timm_create_model():
    import timm

    for name in list_models():
        assert name in timm.list_models(name)
    torch.manual_seed(0)
    a = timm.create_model("vig_ti", num_classes=7, drop_rate=0.1, img_size=160)
    torch.manual_seed(0)
    b = create_model("vig_ti", num_classes=7, dropout=0.1, img_size=160)
    assert isinstance(a, ViG) and a.config == b.config
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    cfg = timm.data.resolve_data_config({}, model=a)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    with pytest.raises(ValueError, match="checkpoint"):
        timm.create_model("vig_ti", pretrained=True)


def test_reset_classifier():
    model = small_model(SMALL_ISO)
    model.reset_classifier(3)
    assert model.num_classes == 3
    assert model(images(2, 32, dtype=torch.float32)).shape == (2, 3)


# --------------------------------------------------------------------------- errors
def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid models.*pvig_ti"):
        create_model("vig_tiny")
    with pytest.raises(ValueError, match="unknown graph convolution 'nope'; known: mr"):
        create_model("vig_ti", conv="nope")
    with pytest.raises(ValueError, match="valid overrides.*stem_stride"):
        create_model("vig_ti", blocks=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="valid overrides.*reduce_ratios"):
        create_model("pvig_ti", depth=3)
    with pytest.raises(ValueError, match="knn_backend"):
        create_model("vig_ti", knn_backend="faiss")
    with pytest.raises(ValueError, match="dense kNN backend"):
        create_model("pvig_ti", knn_backend="cluster")


def test_incompatible_img_size():
    with pytest.raises(ValueError, match="multiple of 16.*img_size="):
        create_model("vig_ti", img_size=100)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("pvig_ti", img_size=240)
    with pytest.raises(ValueError, match="k \\* dilation.*larger img_size.*stem_stride"):
        create_model("vig_ti", img_size=32)
    with pytest.raises(ValueError, match="k \\* dilation"):
        create_model("pvig_ti", img_size=128)
    # the smaller stem stride is the fix the message names
    assert create_model("vig_ti", img_size=32, stem_stride=4).pos_embed.shape[-2:] == (8, 8)
    with pytest.raises(ValueError, match="stem_stride"):
        create_model("vig_ti", stem_stride=3)
    with pytest.raises(ValueError, match="multiples of 4"):
        create_model("vig_ti", channels=30)


def test_bad_inputs():
    model = small_model(SMALL_ISO).eval()
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.randn(1, 3, 4, 4))  # one node cannot have k = 4 neighbours


# --------------------------------------------------------------------------- model card
def test_info_cli(capsys):
    import argparse

    from vig_pyg.models.info import add_info_parser, run_info

    parser = argparse.ArgumentParser(prog="vig-pyg")
    add_info_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["info", "--model", "vig_ti", "--model", "pvig_ti"])
    assert args.func is run_info and run_info(args) == 0
    out = capsys.readouterr().out
    assert "vig_ti   isotropic  mr" in out
    row = next(line for line in out.splitlines() if line.startswith("pvig_ti"))
    assert row.split()[3:7] == ["12.49", "10.71", "1.70", "0.146"]
    args = parser.parse_args(["info", "--model", "vig_ti", "--conv", "edge"])
    run_info(args)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("vig_ti"))
    assert row.split()[2:6] == ["edge", "7.18", "7.18", "2.35"] and row.split()[-1] == "74.3"
    with pytest.raises(SystemExit):
        parser.parse_args(["info", "--model", "vig_huge"])


def test_any_pyg_conv_by_name_builds_a_model():
    # not among the registered adapters: resolved through the "pyg:" prefix
    model = small_model(SMALL_ISO, conv="pyg:LEConv")
    assert model(images(2, 32, dtype=torch.float32)).shape[0] == 2
