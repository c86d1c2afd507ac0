"""Datasets, transforms and loaders.

* ``digits``: scikit-learn's handwritten digits (:mod:`vig_pyg.datasets.digits`: no
  download), with the fixed split of ``data.split_seed`` and ``data.test_fraction``.
* a set of :mod:`vig_pyg.datasets.table` (``mnist``, ``fashionmnist``, ``kmnist``, ``cifar10``,
  ``cifar100``, ``svhn``, ``stl10``) under ``data.root``, loaded as the table says: the MNIST
  family by :class:`vig_pyg.datasets.idx.IdxDataset` (torchvision's layout or the IDX files
  directly in ROOT), the others by their torchvision class (``data.download=true`` fetches
  them; nothing is ever downloaded otherwise).
* ``imagefolder``: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg`` (ImageNet layout).
  A damaged file stops the run with one line naming it, or with ``data.skip_bad_images`` is
  dropped from its batch (:mod:`vig_pyg.datasets.bad_images`; every loader reads through its
  ``SkippingView`` and ``collate``, so batches are ``Batch`` pairs listing what was skipped).

``data.val_fraction`` holds a stratified part of the training data out for validation, and
``data.train_subset`` keeps a stratified subset of the rest for training
(:mod:`vig_pyg.datasets.splits`, both seeded by ``data.split_seed``).

Training transforms come from ``timm.data.create_transform`` (random-resized crop, flip,
RandAugment, random erasing); mixup / cutmix is applied per batch by ``timm.data.Mixup``.

The training sampler is a :class:`torch.utils.data.DistributedSampler` (also with one
process) wrapped so that an epoch can start at any batch: a run resumed mid-epoch sees
exactly the batches the interrupted run would have seen.
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler

from ..datasets.bad_images import ImageReader, SkippingView, collate
from ..datasets.digits import DigitsDataset
from ..datasets.idx import IdxDataset
from ..datasets.splits import TransformedSubset, stratified_split, stratified_subset
from ..datasets.table import DatasetFacts, facts_of
from ..errors import one_line
from .config import Config, ConfigError, in_chans
from .preprocessing import eval_preprocessing


# --------------------------------------------------------------------------- datasets
def num_classes_of(dataset: str) -> Optional[int]:
    """Classes of ``data.dataset``: the table's count, digits' 10; None for imagefolder
    (known once its folders are read)."""
    if dataset == "digits":
        return len(DigitsDataset.classes)
    facts = facts_of(dataset)
    return facts.num_classes if facts else None


def channels_of(dataset: str) -> int:
    """Channels of the set's images: the table's; digits and imagefolder give RGB."""
    facts = facts_of(dataset)
    return facts.channels if facts else 3


def normalization(cfg: Config) -> tuple:
    """``(mean, std)`` with one value per ``model.in_chans``, as
    :func:`~vig_pyg.train.preprocessing.eval_preprocessing` resolves them (config, else the
    data set's statistics, else the model's pretrained cfg)."""
    prep = eval_preprocessing(cfg)
    return prep.mean, prep.std


class ToMode:
    """A PIL image converted to ``mode`` ("RGB": the grey channel repeated; "L": luma)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img):
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"ToMode({self.mode!r})"


def _posterize_compat(img, bits_to_keep, **__):
    """timm's posterize, except that 0 bits gives the black image older Pillow returned
    (Pillow >= 11 rejects 0, which timm's "inc1" RandAugment asks for at full magnitude)."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_timm_posterize() -> None:
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = _posterize_compat


def build_transforms(cfg: Config, train: bool):
    """timm's transforms with :func:`~vig_pyg.train.preprocessing.eval_preprocessing`'s
    interpolation, mean, std (and, for evaluation, crop); first a conversion to the model's
    channels (grey to RGB, or RGB to grey) when the set's images have other channels than
    ``model.in_chans``."""
    from timm.data import create_transform
    from torchvision.transforms import Compose

    _patch_timm_posterize()

    d, a = cfg.data, cfg.aug
    prep = eval_preprocessing(cfg)
    common = dict(input_size=d.img_size, interpolation=prep.interpolation, mean=prep.mean,
                  std=prep.std)
    if not train:
        tf = create_transform(is_training=False, crop_pct=prep.crop_pct, **common)
    else:
        tf = create_transform(
            is_training=True, scale=tuple(a.scale), ratio=tuple(a.ratio), hflip=a.hflip,
            color_jitter=a.color_jitter, auto_augment=a.auto_augment or None,
            re_prob=a.re_prob, re_mode=a.re_mode, **common)
    chans = in_chans(cfg)
    if chans in (1, 3) and chans != channels_of(d.dataset):
        tf = Compose([ToMode("L" if chans == 1 else "RGB"), tf])
    return tf


def _check_root(cfg: Config, what: str) -> str:
    root = cfg.data.root
    if not root:
        raise ConfigError(f"data.dataset={cfg.data.dataset} needs data.root=DIR ({what})")
    return os.path.expanduser(root)


def _digits(cfg: Config, train_tf, test_tf):
    d = cfg.data
    kw = dict(img_size=d.img_size, test_fraction=d.test_fraction, split_seed=d.split_seed)
    return (DigitsDataset(True, transform=train_tf, **kw),
            DigitsDataset(False, transform=test_tf, **kw), 10)


def _imagefolder(cfg: Config, train_tf, test_tf):
    import torchvision

    d = cfg.data
    root = _check_root(cfg, "with DIR/train/<class>/ and DIR/val/<class>/")
    if not os.path.isdir(root):
        raise ConfigError(f"dataset root '{root}' does not exist: point data.root at a "
                          f"directory with {d.train_split}/ and {d.val_split}/ class folders")
    out = []
    for split, tf in ((d.train_split, train_tf), (d.val_split, test_tf)):
        path = os.path.join(root, split)
        if not os.path.isdir(path):
            raise ConfigError(f"dataset split '{path}' does not exist: data.root needs "
                              f"{d.train_split}/ and {d.val_split}/ sub-directories "
                              "(or set data.train_split / data.val_split)")
        try:
            out.append(torchvision.datasets.ImageFolder(  # damaged files: datasets.bad_images
                path, transform=tf, loader=ImageReader(d.skip_bad_images)))
        except (FileNotFoundError, RuntimeError) as exc:
            raise ConfigError(f"no images in '{path}' ({one_line(exc)}): expected "
                              "one sub-directory of images per class") from None
    if out[0].classes != out[1].classes:
        raise ConfigError(f"class folders of '{d.train_split}' and '{d.val_split}' under "
                          f"'{root}' differ: both splits need the same class directories")
    return out[0], out[1], len(out[0].classes)


def _torchvision(cfg: Config, facts: DatasetFacts, root: str, train: bool, transform):
    """The torchvision class of ``facts`` on one split, its errors made one line."""
    import torchvision

    cls = getattr(torchvision.datasets, facts.torchvision_class)
    d = cfg.data
    try:
        return cls(root, transform=transform, download=d.download, **facts.split_args(train))
    except RuntimeError as exc:
        raise ConfigError(f"{d.dataset} not found under '{root}' ({one_line(exc)}): "
                          "point data.root at the extracted files or add data.download=true") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {d.dataset} under '{root}' ({exc}): check data.root, or "
                          "add data.download=true (needs network)") from None


def _named(cfg: Config, facts: DatasetFacts, train_tf, test_tf):
    """A set of the table: IDX files read by IdxDataset (after torchvision's download, when
    asked for), the others by their torchvision class."""
    d = cfg.data
    root = _check_root(cfg, f"where the {facts.torchvision_class} files are, or add "
                            "data.download=true to fetch them")
    if not d.download and not os.path.isdir(root):
        raise ConfigError(f"dataset root '{root}' does not exist: point data.root at the "
                          f"directory holding the {d.dataset} files, or add data.download=true")
    if facts.idx:
        if d.download:  # torchvision fetches into ROOT/<Class>/raw, where IdxDataset looks
            for train in (True, False):
                _torchvision(cfg, facts, root, train, None)
        sets = [IdxDataset(root, train, tf, folder=facts.torchvision_class)
                for train, tf in ((True, train_tf), (False, test_tf))]
    else:
        sets = [_torchvision(cfg, facts, root, train, tf)
                for train, tf in ((True, train_tf), (False, test_tf))]
    return sets[0], sets[1], facts.num_classes


_SOURCES = {"digits": _digits, "imagefolder": _imagefolder}


def labels_of(dataset) -> np.ndarray:
    """The labels of a loaded set (torchvision keeps them in ``targets``, SVHN and STL10 in
    ``labels``), without reading its images."""
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels
    return np.asarray(labels, dtype=np.int64)


class Splits(NamedTuple):
    """The data of a run: ``val`` is None without ``data.val_fraction``."""
    train: object
    val: object
    test: object
    num_classes: int


def build_datasets(cfg: Config) -> Splits:
    """The run's splits: ``data.val_fraction`` of the training data held out for validation
    (stratified, seeded by ``data.split_seed``; test-time transforms), then
    ``data.train_subset`` images of the rest kept for training (stratified, same seed); so
    the validation images do not depend on the budget. Raises ConfigError for a missing or
    empty root, a subset above the images left, and a fraction that leaves no validation image."""
    d = cfg.data
    train_tf, test_tf = build_transforms(cfg, True), build_transforms(cfg, False)
    facts = facts_of(d.dataset)
    if facts is None and d.dataset not in _SOURCES:
        raise ConfigError(f"unknown dataset '{d.dataset}'")
    load = (lambda *tfs: _named(cfg, facts, *tfs)) if facts else (
        lambda *tfs: _SOURCES[d.dataset](cfg, *tfs))
    if d.train_subset is None and not d.val_fraction:
        train, test, n = load(train_tf, test_tf)
        return Splits(train, None, test, n)
    train, test, n = load(None, test_tf)
    labels = labels_of(train)
    pool, val = np.arange(len(labels)), None
    if d.val_fraction:
        pool, held = stratified_split(labels, d.val_fraction, d.split_seed)
        if len(held) == 0:
            raise ConfigError(f"data.val_fraction={d.val_fraction} holds out no image of the "
                              f"{len(labels)} training images: raise it")
        val = TransformedSubset(train, held, test_tf, labels)
    if d.train_subset is not None:
        if d.train_subset > len(pool):
            raise ConfigError(f"data.train_subset={d.train_subset} is above the {len(pool)} "
                              f"training images of {d.dataset}{_after_val(d)}: lower "
                              "data.train_subset, or null for all")
        pool = pool[stratified_subset(labels[pool], d.train_subset, d.split_seed)]
    return Splits(TransformedSubset(train, pool, train_tf, labels), val, test, n)


def _after_val(d) -> str:
    return f" left after data.val_fraction={d.val_fraction}" if d.val_fraction else ""


# --------------------------------------------------------------------------- sampling
class ResumableSampler(Sampler):
    """A :class:`DistributedSampler` whose epoch can start at any position.

    ``set_epoch(epoch, start)`` fixes the shuffle (seeded by ``seed + epoch``, as
    DistributedSampler does) and skips the first ``start`` indices of this rank's share.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__()
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank,
                                        shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(self.inner)
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return len(self.inner) - self.start


class ShardSampler(Sampler):
    """Evaluation shard of one rank: every ``world``-th index, no padding, no duplicates."""

    def __init__(self, n: int, num_replicas: int, rank: int):
        super().__init__()
        self.indices = list(range(rank, n, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class TrainLoader:
    """Epoch-wise training batches that can start mid-epoch.

    Full batches only (``drop_last``), so every epoch has ``steps_per_epoch`` steps on every
    rank. The DataLoader gets its own generator, re-seeded each epoch, so creating an
    iterator never draws from the global torch RNG (which the augmentations use).
    """

    def __init__(self, dataset, batch_size: int, num_workers: int, seed: int,
                 num_replicas: int = 1, rank: int = 0, pin_memory: bool = False,
                 worker_init_fn=None):
        self.sampler = ResumableSampler(dataset, num_replicas, rank, seed)
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = len(self.sampler.inner) // batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the {len(self.sampler.inner)} "
                              "training images per process: lower data.batch_size")
        self.generator = torch.Generator()
        self.loader = DataLoader(
            SkippingView(dataset),
            batch_sampler=BatchSampler(self.sampler, batch_size, drop_last=True),
            num_workers=num_workers, pin_memory=pin_memory, generator=self.generator,
            persistent_workers=False, worker_init_fn=worker_init_fn, collate_fn=collate)

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch, start_step * self.batch_size)
        self.generator.manual_seed(self.seed * 100003 + epoch)
        return iter(self.loader)


def build_eval_loader(dataset, batch_size: int, num_workers: int, num_replicas: int = 1,
                      rank: int = 0, pin_memory: bool = False, worker_init_fn=None) -> DataLoader:
    return DataLoader(SkippingView(dataset), batch_size=batch_size,
                      sampler=ShardSampler(len(dataset), num_replicas, rank),
                      num_workers=num_workers, pin_memory=pin_memory,
                      worker_init_fn=worker_init_fn, collate_fn=collate)


def loader_init(imports):
    """The loader workers' ``worker_init_fn``: import ``model.imports`` in each worker
    (a spawned worker starts with a fresh interpreter); None when there is nothing to import."""
    if not imports:
        return None
    import functools

    from .imports import worker_init

    return functools.partial(worker_init, list(imports))


def build_mixup(cfg: Config, num_classes: int):
    """A timm Mixup (also applies label smoothing), or None when mixup and cutmix are off."""
    a = cfg.aug
    if a.mixup <= 0 and a.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob,
                 switch_prob=a.mixup_switch_prob, mode="batch", label_smoothing=a.smoothing,
                 num_classes=num_classes)
