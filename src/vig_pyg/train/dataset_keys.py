"""Which ``data.*`` keys each ``data.dataset`` reads: a table, and the check that a key the
chosen set does not read keeps its default (an option that does nothing is an error).

Keys every set reads (``img_size``, ``batch_size``, ``mean``, ``crop_pct``, ``train_subset``,
``val_fraction``, ...) are not in the table. ``data.split_seed`` seeds the digits' own
train/test split, and on every set the draws of ``data.train_subset`` and
``data.val_fraction``: elsewhere it is read only when one of those is set.
"""
from __future__ import annotations

from ..config_schema import KeyReaders, check_unused
from ..datasets.table import DATASETS

DATA_KEYS = KeyReaders(
    section="data",
    selector="dataset",
    reads={
        "digits": ("test_fraction", "split_seed"),
        "imagefolder": ("root", "train_split", "val_split", "skip_bad_images"),  # image files
        # the table's sets: files under root (torchvision's layout), fetched by download
        **{name: ("root", "download") for name in DATASETS},
    },
    about={
        "digits": "scikit-learn's digits, embedded, split by data.test_fraction",
        "imagefolder": "local class folders data.root/<train_split> and data.root/<val_split>",
        **{name: f"{facts.torchvision_class}, with its own train and test split"
           for name, facts in DATASETS.items()},
    },
    also_read_by={"split_seed": ("train_subset", "val_fraction")},
)


def check_data_keys(cfg) -> None:
    """A ``data.*`` key the chosen ``data.dataset`` does not read holds its default."""
    check_unused(cfg, DATA_KEYS)
