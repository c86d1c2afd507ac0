"""The facts of the classification data sets known by name: one entry per set, read by
``data.dataset`` (loading, class count, channels, normalisation) and nowhere restated.

Sources of the facts (class counts, channels and sizes from each set's paper or README;
mean/std are the commonly used per-channel statistics of the training images in [0, 1]):

* MNIST: LeCun et al., "Gradient-based learning applied to document recognition" (1998),
  yann.lecun.com/exdb/mnist; mean 0.1307, std 0.3081 as in PyTorch's MNIST example.
* Fashion-MNIST: Xiao et al., arXiv:1708.07747, github.com/zalandoresearch/fashion-mnist.
* KMNIST: Clanuwat et al., arXiv:1812.01718, github.com/rois-codh/kmnist.
* CIFAR-10 / CIFAR-100: Krizhevsky, "Learning Multiple Layers of Features from Tiny
  Images" (2009), www.cs.toronto.edu/~kriz/cifar.html.
* SVHN: Netzer et al., NIPS workshop 2011, ufldl.stanford.edu/housenumbers.
* STL-10: Coates et al., AISTATS 2011, cs.stanford.edu/~acoates/stl10 (train/test are the
  labelled splits; "unlabeled" is not used).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DatasetFacts:
    """One data set: how torchvision names and splits it, and what its images are."""
    name: str                   # the data.dataset value
    torchvision_class: str      # class in torchvision.datasets
    num_classes: int
    channels: int               # 1: grey ("L" images), 3: RGB
    size: int                   # native height = width in pixels
    mean: tuple                 # per channel, images in [0, 1]
    std: tuple
    train_args: tuple           # (key, value) pairs selecting the training split
    test_args: tuple            # ... and the test split
    idx: bool = False           # four IDX files (MNIST family): read by vig_pyg.datasets.idx
    # data.mean/std null: this set's statistics (True) or 0.5 (False). CIFAR keeps 0.5, the
    # official ViG normalisation its earlier default was, so existing runs keep their meaning.
    stats_by_default: bool = True

    def split_args(self, train: bool) -> dict:
        """The torchvision constructor's split arguments (``train=`` or ``split=``)."""
        return dict(self.train_args if train else self.test_args)


_TRAIN_FLAG = ((("train", True),), (("train", False),))
_SPLIT_NAME = ((("split", "train"),), (("split", "test"),))

DATASETS = {f.name: f for f in (
    DatasetFacts("mnist", "MNIST", 10, 1, 28, (0.1307,), (0.3081,), *_TRAIN_FLAG, idx=True),
    DatasetFacts("fashionmnist", "FashionMNIST", 10, 1, 28, (0.2860,), (0.3530,), *_TRAIN_FLAG,
                 idx=True),
    DatasetFacts("kmnist", "KMNIST", 10, 1, 28, (0.1918,), (0.3483,), *_TRAIN_FLAG, idx=True),
    DatasetFacts("cifar10", "CIFAR10", 10, 3, 32, (0.4914, 0.4822, 0.4465),
                 (0.2470, 0.2435, 0.2616), *_TRAIN_FLAG, stats_by_default=False),
    DatasetFacts("cifar100", "CIFAR100", 100, 3, 32, (0.5071, 0.4865, 0.4409),
                 (0.2673, 0.2564, 0.2762), *_TRAIN_FLAG, stats_by_default=False),
    DatasetFacts("svhn", "SVHN", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                 *_SPLIT_NAME),
    DatasetFacts("stl10", "STL10", 10, 3, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713),
                 *_SPLIT_NAME),
)}


def facts_of(name: str) -> Optional[DatasetFacts]:
    """The entry of ``name``, or None for a set outside the table (digits, imagefolder)."""
    return DATASETS.get(name)
