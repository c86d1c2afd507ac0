"""The embedded digits dataset: fixed stratified split, images, transforms, sampler."""
import numpy as np
import torch

from vig_pyg.datasets import DigitsDataset, digits_split, digits_tensor
from vig_pyg.train.config import build_config
from vig_pyg.train.data import ResumableSampler, TrainLoader, build_datasets


def test_split_is_stratified_disjoint_and_fixed():
    train, test, labels = digits_split(0.2, 0)
    assert len(train) + len(test) == len(labels) == 1797
    assert not set(train) & set(test)
    assert len(test) == 360
    # stratified: every class's share of the test set is within one image of 20 %
    for c in range(10):
        n = (labels == c).sum()
        assert abs((labels[test] == c).sum() - 0.2 * n) <= 1
    again_train, again_test, _ = digits_split(0.2, 0)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    other = digits_split(0.2, 1)[1]
    assert not np.array_equal(test, other)


def test_digits_images():
    ds = DigitsDataset(train=False, img_size=32)
    img, label = ds[0]
    assert img.size == (32, 32) and img.mode == "RGB"
    assert 0 <= label < 10 and len(ds) == 360
    a = np.asarray(img)
    assert a.max() > 100 and a.min() < 50  # real strokes, full 0-255 range


def test_build_datasets_and_tensors():
    cfg = build_config(None, ["aug.auto_augment=rand-m9-mstd0.5-inc1", "aug.re_prob=0.5"])
    train, val, test, n = build_datasets(cfg)
    assert val is None  # no data.val_fraction
    assert n == 10 and len(train) == 1437 and len(test) == 360
    torch.manual_seed(0)
    for i in range(50):  # timm's posterize at full magnitude (0 bits) must not crash
        x, _ = train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    x, _ = test[0]
    assert x.shape == (3, 32, 32)
    assert torch.equal(x, test[0][0])  # eval transform is deterministic


def test_sampler_resumes_mid_epoch():
    ds = list(range(103))
    full = ResumableSampler(ds, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    order = list(full)
    part = ResumableSampler(ds, num_replicas=1, rank=0, seed=3)
    part.set_epoch(2, start=40)
    assert list(part) == order[40:]
    full.set_epoch(3)
    assert list(full) != order


def test_sampler_shards_across_ranks():
    ds = list(range(101))
    shards = []
    for rank in range(2):
        s = ResumableSampler(ds, num_replicas=2, rank=rank, seed=0)
        s.set_epoch(0)
        shards.append(list(s))
    assert len(shards[0]) == len(shards[1]) == 51
    assert set(shards[0]) | set(shards[1]) == set(ds)


def test_train_loader_steps_and_restart():
    ds = [(torch.tensor([float(i)]), i) for i in range(50)]
    loader = TrainLoader(ds, batch_size=8, num_workers=0, seed=1)
    assert loader.steps_per_epoch == 6
    batches = [y.tolist() for _, y in loader.epoch(0)]
    assert len(batches) == 6
    resumed = [y.tolist() for _, y in loader.epoch(0, start_step=4)]
    assert resumed == batches[4:]
    rng = torch.get_rng_state()
    iter(loader.epoch(1))
    assert torch.equal(rng, torch.get_rng_state())  # iterators leave the global RNG alone


def test_digits_tensor_is_the_datasets_images():
    images, labels = digits_tensor(train=False, img_size=16)
    ds = DigitsDataset(False, 16)
    assert images.shape == (len(ds), 3, 16, 16) and labels.tolist() == ds.targets
    # pixel (row 3, col 5) of image 7, read back from the PIL image by hand
    r, g, b = ds.images[7].getpixel((5, 3))
    assert torch.allclose(images[7, :, 3, 5], torch.tensor([r, g, b]) / 255.0)
