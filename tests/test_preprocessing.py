"""Evaluation preprocessing: config, else the data set's facts, else the model's pretrained_cfg,
else the generic values; checked on the transforms that are built from it."""
import json
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

from vig_pyg.datasets.table import DATASETS
from vig_pyg.train.config import ConfigError, build_config, interpolation_names
from vig_pyg.train.data import ToMode, build_transforms
from vig_pyg.train.preprocessing import KEYS, eval_preprocessing

FOLDER = ["data.dataset=imagefolder", "data.root=/data/imagenet", "data.img_size=224"]


def _timm_resize(img_size, crop_pct):
    """timm's transforms_imagenet_eval: ``scale_size = math.floor(img_size / crop_pct)``, the
    shorter side before the centre crop."""
    return math.floor(img_size / crop_pct)


def _steps(tf):
    return {type(t): t for t in tf.transforms}


def _image(w=300, h=260, mode="RGB"):
    rng = np.random.default_rng(0)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode)


def _reference(img, resize, crop, interpolation, mean, std):
    """The eval transform written with torchvision's own functions."""
    out = TF.center_crop(TF.resize(img, resize, interpolation=interpolation), crop)
    return TF.normalize(TF.to_tensor(out), mean, std)


@pytest.mark.parametrize("name, crop_pct, resize", [("pvig_b", 0.95, 235), ("vig_ti", 0.9, 248)])
def test_imagefolder_takes_the_models_crop(name, crop_pct, resize):
    cfg = build_config(None, [*FOLDER, f"model.name={name}"])
    prep = eval_preprocessing(cfg)
    assert (prep.crop_pct, prep.interpolation, prep.mean, prep.std) == (
        crop_pct, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert all(prep.sources[key] == "model" for key in KEYS)
    assert resize == _timm_resize(224, crop_pct) == prep.resize_size  # 224 / 0.95 = 235.8
    steps = _steps(build_transforms(cfg, train=False))
    assert steps[Resize].size == resize and steps[Resize].interpolation == InterpolationMode.BICUBIC
    assert tuple(steps[CenterCrop].size) == (224, 224)
    img = _image()
    expected = _reference(img, resize, 224, InterpolationMode.BICUBIC, [0.5] * 3, [0.5] * 3)
    assert torch.equal(build_transforms(cfg, train=False)(img), expected)


def test_model_values_are_the_built_models_pretrained_cfg():
    from vig_pyg.models import create_model

    cfg = build_config(None, [*FOLDER, "model.name=pvig_b"])
    model = create_model("pvig_b", num_classes=2, channels=[8, 8, 8, 8], blocks=[1, 1, 1, 1])
    prep = eval_preprocessing(cfg)
    for key in KEYS:
        assert getattr(prep, key) == model.pretrained_cfg[key], key


def test_explicit_config_wins():
    cfg = build_config(None, [*FOLDER, "model.name=pvig_b", "data.crop_pct=0.8",
                              "data.interpolation=bilinear", "data.mean=[0.1, 0.2, 0.3]",
                              "data.std=[0.3, 0.2, 0.1]"])
    prep = eval_preprocessing(cfg)
    assert (prep.crop_pct, prep.interpolation, prep.mean, prep.std) == (
        0.8, "bilinear", (0.1, 0.2, 0.3), (0.3, 0.2, 0.1))
    assert all(prep.sources[key] == "config" for key in KEYS)
    steps = _steps(build_transforms(cfg, train=False))
    assert steps[Resize].size == 280 == _timm_resize(224, 0.8)
    assert steps[Resize].interpolation == InterpolationMode.BILINEAR
    assert steps[Normalize].mean.tolist() == pytest.approx([0.1, 0.2, 0.3])
    # one key given: that one from the config, the others still from the model
    one = eval_preprocessing(build_config(None, [*FOLDER, "model.name=pvig_b", "data.crop_pct=1.0"]))
    assert one.crop_pct == 1.0 and one.sources["crop_pct"] == "config"
    assert one.sources["interpolation"] == one.sources["mean"] == "model"


def test_table_sets_keep_native_size_and_statistics():
    fm = DATASETS["fashionmnist"]
    cfg = build_config(None, ["data.dataset=fashionmnist", "data.root=/x", "data.img_size=32",
                              "model.name=pvig_b"])  # the dataset's facts come before the model's
    prep = eval_preprocessing(cfg)
    assert (prep.crop_pct, prep.interpolation) == (1.0, "bicubic")
    assert prep.mean == fm.mean * 3 == (0.2860,) * 3 and prep.std == (0.3530,) * 3
    assert all(prep.sources[key] == "dataset" for key in KEYS)
    tf = build_transforms(cfg, train=False)
    assert isinstance(tf.transforms[0], ToMode)  # grey images, 3-channel model
    steps = _steps(tf.transforms[1])
    assert steps[Resize].size == 32 == _timm_resize(32, 1.0)
    img = _image(32, 32, "L")
    expected = _reference(img.convert("RGB"), 32, 32, InterpolationMode.BICUBIC,
                          [0.2860] * 3, [0.3530] * 3)
    assert torch.equal(tf(img), expected)
    for opts in (["data.dataset=digits"], ["data.dataset=cifar10", "data.root=/x"]):
        prep = eval_preprocessing(build_config(None, opts))  # digits: no statistics; CIFAR: 0.5
        assert (prep.crop_pct, prep.mean, prep.std) == (1.0, (0.5,) * 3, (0.5,) * 3)
        assert prep.sources["crop_pct"] == prep.sources["mean"] == "dataset"


def test_model_without_pretrained_cfg_gets_the_generic_values():
    cfg = build_config(None, FOLDER)
    cfg.model.name = "my_registered_net"  # outside the zoo: no pretrained_cfg to read
    prep = eval_preprocessing(cfg)
    assert (prep.crop_pct, prep.interpolation, prep.mean, prep.std) == (
        1.0, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert all(prep.sources[key] == "default" for key in KEYS)


def test_model_statistics_follow_in_chans():
    cfg = build_config(None, [*FOLDER, "model.in_chans=1"])
    prep = eval_preprocessing(cfg)
    assert prep.mean == (0.5,) and prep.std == (0.5,) and prep.sources["mean"] == "model"
    tf = build_transforms(cfg, train=False)
    assert tf.transforms[0].mode == "L"
    assert _steps(tf.transforms[1])[Normalize].mean.tolist() == [0.5]


@pytest.mark.parametrize("option, fragment", [
    ("data.crop_pct=0", "data.crop_pct must be in (0, 1]"),
    ("data.crop_pct=1.5", "data.crop_pct must be in (0, 1]"),
    ("data.crop_pct=-0.9", "data.crop_pct must be in (0, 1]"),
    ("data.interpolation=cubic", "data.interpolation='cubic' is not supported"),
    ("data.interpolation=random", "data.interpolation='random' is not supported"),
])
def test_bad_values_are_one_line_errors(option, fragment):
    with pytest.raises(ConfigError) as err:
        build_config(None, [option])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_interpolations_are_timms():
    # timm.data.transforms maps these six names (random is its training-only choice)
    assert set(interpolation_names()) == {"nearest", "bilinear", "bicubic", "box", "hamming",
                                          "lanczos"}
    for name in interpolation_names():
        assert eval_preprocessing(build_config(None, [f"data.interpolation={name}"])
                                  ).interpolation == name


def _folder(root, classes=("a", "b")):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")


def test_eval_prints_the_resolved_preprocessing_once(tmp_path, capsys):
    from vig_pyg.models import create_model, save_checkpoint
    from vig_pyg.train.evaluate import run_eval

    _folder(tmp_path / "data")
    tiny = dict(channels=32, depth=2, stem_stride=8, k=4)
    save_checkpoint(create_model("vig_ti", num_classes=2, img_size=32, **tiny), tmp_path / "m.pt")
    js = tmp_path / "eval.json"
    run_eval(str(tmp_path / "m.pt"), overrides=[
        "data.dataset=imagefolder", f"data.root={tmp_path / 'data'}", "data.img_size=32",
        "train.device=cpu", *[f"model.{k}={v}" for k, v in tiny.items()]],
        json_path=str(js), progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "preprocessing:" in line]
    assert len(lines) == 1
    assert "size 32 (config)" in lines[0]
    assert f"crop_pct 0.9 (model; resize {_timm_resize(32, 0.9)}, centre crop 32)" in lines[0]
    assert "interpolation bicubic (model)" in lines[0] and "std [0.5, 0.5, 0.5] (model)" in lines[0]
    res = json.loads(js.read_text())["preprocessing"]
    assert res["crop_pct"] == 0.9 and res["sources"]["crop_pct"] == "model"
