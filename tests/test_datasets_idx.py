"""IDX files (MNIST family): the reader against torchvision's FashionMNIST on the same
files, both layouts, gzip, one-line errors for every damaged input, and the named sets
through ``data.dataset`` (channels, normalisation from the table)."""
import gzip
import os

import numpy as np
import pytest
import torch
import torchvision

from vig_pyg.datasets.idx import IdxDataset, read_idx
from vig_pyg.datasets.table import DATASETS
from vig_pyg.train.config import ConfigError, build_config
from vig_pyg.train.data import build_datasets, normalization, num_classes_of

NAMES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    # written by hand from the format (not by the reader under test)
    head = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return head + array.astype(np.uint8).tobytes()


def _write(path, data: bytes, gz: bool):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


def _split_arrays(seed, n=20):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def _make(root, gz: bool, torchvision_layout: bool = True):
    """Both splits' four files under ROOT/FashionMNIST/raw (or ROOT); the arrays written."""
    d = os.path.join(root, "FashionMNIST", "raw") if torchvision_layout else str(root)
    arrays = {}
    for train, seed in ((True, 0), (False, 1)):
        images, labels = arrays[train] = _split_arrays(seed, 20 if train else 12)
        suffix = ".gz" if gz else ""
        _write(os.path.join(d, NAMES[train][0] + suffix), _idx_bytes(images), gz)
        _write(os.path.join(d, NAMES[train][1] + suffix), _idx_bytes(labels), gz)
    return arrays


def _same(ours, theirs):
    assert len(ours) == len(theirs)
    for i in range(len(ours)):
        (a, y), (b, z) = ours[i], theirs[i]
        assert a.mode == b.mode == "L" and type(y) is type(z) is int
        assert np.array_equal(np.asarray(a), np.asarray(b)) and y == z


@pytest.mark.parametrize("train", [True, False])
def test_same_as_torchvision(tmp_path, train):
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    arrays = _make(plain, gz=False)
    assert _make(packed, gz=True)[train][0].tobytes() == arrays[train][0].tobytes()
    # torchvision reads ROOT/FashionMNIST/raw/<name> itself when there is no processed/
    theirs = torchvision.datasets.FashionMNIST(str(plain), train=train, download=False)
    _same(IdxDataset(str(plain), train, folder="FashionMNIST"), theirs)
    _same(IdxDataset(str(packed), train, folder="FashionMNIST"), theirs)
    assert IdxDataset(str(plain), train, folder="FashionMNIST").targets == arrays[train][1].tolist()


def test_flat_debian_layout_and_gzip_magic(tmp_path):
    arrays = _make(tmp_path / "flat", gz=True, torchvision_layout=False)
    ds = IdxDataset(str(tmp_path / "flat"), True, folder="FashionMNIST")
    assert ds.files[0] == str(tmp_path / "flat" / "train-images-idx3-ubyte.gz")
    assert np.array_equal(ds.data, arrays[True][0]) and ds.targets == arrays[True][1].tolist()
    # gzipped content under the plain name is found by its magic
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(_idx_bytes(arrays[False][0])))
    assert np.array_equal(read_idx(str(path), ndim=3), arrays[False][0])


def _one_line_naming(exc_info, path):
    msg = str(exc_info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_damaged_files(tmp_path):
    images, labels = _split_arrays(0)
    good = _idx_bytes(images)
    cases = {
        "bad magic": b"\x01\x02" + good[2:],
        "dtype code 0x0d": _idx_bytes(images, code=0x0D),
        "2 dimensions, expected 3": _idx_bytes(images.reshape(20, 784)),
        "truncated": good[:-5],
        "truncated header": bytes([0, 0, 8, 3, 0, 0]),
    }
    for i, (what, data) in enumerate(cases.items()):
        path = tmp_path / f"case{i}-idx3-ubyte"
        path.write_bytes(data)
        with pytest.raises(ConfigError) as err:
            read_idx(str(path), ndim=3)
        assert what in _one_line_naming(err, path)
    cut = tmp_path / "cut-idx3-ubyte.gz"
    cut.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(ConfigError) as err:
        read_idx(str(cut), ndim=3)
    assert "gzip" in _one_line_naming(err, cut)


def test_missing_file_and_count_mismatch(tmp_path):
    _make(tmp_path, gz=False)
    raw = tmp_path / "FashionMNIST" / "raw"
    _write(str(raw / NAMES[True][1]), _idx_bytes(np.zeros(19, np.uint8)), gz=False)
    with pytest.raises(ConfigError) as err:
        IdxDataset(str(tmp_path), True, folder="FashionMNIST")
    assert "20 images" in _one_line_naming(err, raw / NAMES[True][0]) and "19 labels" in str(err.value)
    os.remove(raw / NAMES[False][1])
    with pytest.raises(ConfigError) as err:
        IdxDataset(str(tmp_path), False, folder="FashionMNIST")
    assert "data.root" in _one_line_naming(err, raw / NAMES[False][1])


def test_table_is_the_one_source():
    assert set(DATASETS) == {"mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10"}
    assert num_classes_of("cifar100") == 100 and num_classes_of("fashionmnist") == 10
    assert num_classes_of("digits") == 10 and num_classes_of("imagefolder") is None
    assert DATASETS["svhn"].split_args(False) == {"split": "test"}
    assert DATASETS["mnist"].split_args(True) == {"train": True}


def test_fashionmnist_by_name(tmp_path):
    _make(tmp_path, gz=True, torchvision_layout=False)
    cfg = build_config(None, ["data.dataset=fashionmnist", f"data.root={tmp_path}",
                              "data.img_size=32"])
    assert normalization(cfg) == ((0.2860,) * 3, (0.3530,) * 3)
    train, _, test, n = build_datasets(cfg)
    assert n == 10 and len(train) == 20 and len(test) == 12
    assert train[0][0].shape == (3, 32, 32) and test[0][0].shape == (3, 32, 32)
    x = test[0][0]
    assert x.shape == (3, 32, 32) and x[0].equal(x[1]) and x[1].equal(x[2])  # grey repeated
    grey = build_config(None, ["data.dataset=fashionmnist", f"data.root={tmp_path}",
                               "model.in_chans=1"])
    assert normalization(grey) == ((0.2860,), (0.3530,))
    train, _, test, _ = build_datasets(grey)
    for i in range(5):
        assert train[i][0].shape == (1, 32, 32)
    assert test[0][0].shape == (1, 32, 32)
    with pytest.raises(ConfigError, match="needs 1 values"):
        build_config(None, ["data.dataset=fashionmnist", "model.in_chans=1", "data.mean=[0.5, 0.5, 0.5]"])


def test_defaults_keep_their_meaning():
    # digits, imagefolder and cifar: data.mean/std null still mean 0.5 / 0.5
    for name in ("digits", "cifar10", "cifar100", "imagefolder"):
        root = [] if name == "digits" else ["data.root=/nonexistent"]  # digits reads no root
        cfg = build_config(None, [f"data.dataset={name}", *root])
        assert normalization(cfg) == ((0.5,) * 3, (0.5,) * 3)
    cfg = build_config(None, ["data.dataset=svhn", "data.mean=[0.1, 0.2, 0.3]"])
    assert normalization(cfg) == ((0.1, 0.2, 0.3), DATASETS["svhn"].std)


def test_named_root_errors(tmp_path):
    cfg = build_config(None, ["data.dataset=kmnist", f"data.root={tmp_path}"])
    with pytest.raises(ConfigError) as err:
        build_datasets(cfg)
    assert "KMNIST" in _one_line_naming(err, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        build_datasets(build_config(None, ["data.dataset=svhn", f"data.root={tmp_path / 'no'}"]))


def test_shipped_recipe_trains_on_debian_files(tmp_path):
    """configs/fashionmnist.yaml as the README runs it, on generated files laid out as
    Debian's dataset-fashion-mnist installs them (four gzipped IDX files in one folder):
    it reads them, keeps one channel, and stays within the recipe's 1 M parameters."""
    from vig_pyg.train.training import fit_run

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _make(tmp_path / "fm", gz=True, torchvision_layout=False)
    summary, run = fit_run(os.path.join(root, "configs", "fashionmnist.yaml"),
                           [f"data.root={tmp_path / 'fm'}", "train.max_steps=2",
                            "data.batch_size=8", "data.eval_batch_size=6", "train.epochs=1",
                            "train.eval_every=1"], output=str(tmp_path / "run"))
    params = sum(p.numel() for p in run.model.parameters())
    assert summary["params"] == params <= 1_000_000
    first = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
    assert os.path.exists(tmp_path / "run" / "summary.json")
