"""Checkpoint loading (official release layouts, vig_pyg's format) and saving."""
from __future__ import annotations

import os

import official_reference as R
import pytest
import torch

from vig_pyg.models import (create_model, load_checkpoint, load_model, read_checkpoint,
                            save_checkpoint)
from vig_pyg.models.checkpoint import CheckpointError, official_to_vig_pyg, vig_pyg_to_official

OV = dict(channels=32, depth=3, stem_stride=4)
CFG = R.make_cfg("vig_ti", k=4, img_size=32, num_classes=5, channels=32, depth=3,
                 stem_stride=4)


def small(**kw):
    torch.manual_seed(0)
    return create_model("vig_ti", num_classes=5, k=4, img_size=32, **{**OV, **kw})


@pytest.fixture(scope="module")
def official():
    return R.random_official_state_dict(CFG, seed=21, dtype=torch.float32)


def assert_same_weights(model, official):
    own = model.state_dict()
    for key, value in official.items():
        torch.testing.assert_close(own[official_to_vig_pyg(key)], value, rtol=0, atol=0)


def test_key_mapping_round_trip(official):
    model = small()
    ours = set(model.state_dict())
    assert {official_to_vig_pyg(k) for k in official} == ours
    assert {vig_pyg_to_official(k) for k in ours} == set(official)
    assert "backbone.0.0.graph_conv.gconv.nn.0.weight" in official
    assert "backbone.0.0.graph_conv.nn.0.weight" in ours


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "state_dict_ema", "model", "module",
                                  "train_format"])
def test_official_layouts_load(official, wrap, tmp_path):
    sd = dict(official)
    if wrap == "module":
        obj = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    elif wrap == "train_format":
        obj = {"format": "vig_pyg.train", "model": sd, "ema": None, "epoch": 3}
    elif wrap == "plain":
        obj = sd
    else:
        obj = {wrap: sd, "epoch": 7}
    path = tmp_path / "ck.pth"
    torch.save(obj, path)
    model = small(checkpoint=str(path))
    assert_same_weights(model, official)


def test_use_ema_prefers_the_ema_weights(official):
    other = {k: (v + 1 if v.is_floating_point() else v) for k, v in official.items()}
    obj = {"state_dict": dict(official), "state_dict_ema": other}
    assert_same_weights(load_checkpoint(small(), obj), official)
    assert_same_weights(load_checkpoint(small(), obj, use_ema=True), other)


def test_missing_batch_counters_are_fine(official):
    sd = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}
    load_checkpoint(small(), sd)


def test_mismatch_errors_name_the_keys(official):
    sd = dict(official)
    del sd["backbone.1.0.fc1.0.weight"]
    sd["backbone.0.0.extra.weight"] = torch.zeros(1)
    sd["backbone.2.1.fc2.0.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(small(), sd)
    msg = str(err.value)
    assert "1 missing keys: backbone.1.0.fc1.0.weight" in msg
    assert "1 unexpected keys: backbone.0.0.extra.weight" in msg
    assert "backbone.2.1.fc2.0.bias: checkpoint (7,) vs model (32,)" in msg


def test_mismatch_hints(official):
    with pytest.raises(CheckpointError, match="num_classes=5.*reset_classifier\\(9\\)"):
        load_checkpoint(create_model("vig_ti", num_classes=9, k=4, img_size=32, **OV), official)
    with pytest.raises(CheckpointError, match="looks like 'mr or edge'.*conv="):
        load_checkpoint(small(conv="sage"), official)


def test_wrong_model_is_rejected(official):
    with pytest.raises(CheckpointError, match="does not fit"):
        create_model("pvig_ti", checkpoint=official)


class _NotAllowed:  # a class torch.load(weights_only=True) refuses
    pass


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        small(checkpoint=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt|weights_only"):
        small(checkpoint=str(bad))
    torch.save({"epoch": 1, "note": "x"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        small(checkpoint=str(tmp_path / "empty.pth"))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": _NotAllowed()},
               tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        small(checkpoint=str(tmp_path / "evil.pth"))


def test_save_and_load_own_format(tmp_path):
    model = small(drop_path_rate=0.1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "sub" / "model.pt"
    assert save_checkpoint(model, path, metrics={"top1": 1.0}) == str(path)
    assert os.listdir(path.parent) == ["model.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "vig_pyg" and raw["model_name"] == "vig_ti"
    assert raw["config"]["channels"] == [32] and raw["metrics"] == {"top1": 1.0}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        again = small(drop_path_rate=0.1, checkpoint=str(path)).eval()
        torch.testing.assert_close(again(x), expected, rtol=0, atol=0)
        rebuilt = load_model(path).eval()
        assert rebuilt.config == model.config
        torch.testing.assert_close(rebuilt(x), expected, rtol=0, atol=0)
        bigger = load_model(path, img_size=48)
        assert tuple(bigger.pos_embed.shape[-2:]) == (12, 12)
    state, meta = read_checkpoint(path)
    assert meta["model_name"] == "vig_ti" and set(state) == set(model.state_dict())


def test_load_model_needs_our_format(official):
    with pytest.raises(CheckpointError, match="create_model\\(name, checkpoint=path\\)"):
        load_model(official)


def test_save_is_atomic(tmp_path, monkeypatch):
    model = small()
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


def test_pos_tables_resized_on_load():
    cfg = R.make_cfg("pvig_ti")
    sd = R.random_official_state_dict(cfg, seed=2, dtype=torch.float32)
    model = create_model("pvig_ti", img_size=(256, 192), checkpoint=sd)
    assert model.pos_embed.shape == (1, 48, 64, 48)
    rel = model.backbone[0][0].relative_pos
    assert rel.shape == (1, 64 * 48, 16 * 12) and not rel.requires_grad
    assert model.backbone[-1][0].relative_pos.shape == (1, 48, 48)
