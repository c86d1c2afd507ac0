"""ImageFolder (ImageNet layout) and CIFAR roots: loading and one-line errors, no downloads."""
import numpy as np
import pytest
from PIL import Image

from vig_pyg.train.config import ConfigError, build_config
from vig_pyg.train.data import build_datasets


def _folder(root, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_imagefolder(tmp_path):
    _folder(tmp_path)
    cfg = build_config(None, ["data.dataset=imagefolder", f"data.root={tmp_path}", "data.img_size=32",
                              "data.crop_pct=0.875"])
    train, _, val, n = build_datasets(cfg)
    assert n == 2 and len(train) == len(val) == 6
    assert train[0][0].shape == (3, 32, 32) and val[0][0].shape == (3, 32, 32)


def test_imagefolder_errors(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    cfg = build_config(None, ["data.dataset=imagefolder", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError, match="val"):
        build_datasets(cfg)
    with pytest.raises(ConfigError, match="needs data.root"):
        build_config(None, ["data.dataset=imagefolder"])


def test_cifar_root_without_files(tmp_path):
    cfg = build_config(None, ["data.dataset=cifar10", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        build_datasets(cfg)
    assert "data.download=true" in str(err.value) and "\n" not in str(err.value)
    cfg = build_config(None, ["data.dataset=cifar100"])
    with pytest.raises(ConfigError, match="needs data.root"):
        build_datasets(cfg)
