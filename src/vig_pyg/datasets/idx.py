"""IDX files, the format of the MNIST family (MNIST, Fashion-MNIST, KMNIST), and a data set
over the four files of one such set.

An IDX file is: two zero bytes, a dtype code (0x08: unsigned byte, the only one these sets
use), the number of dimensions ``nd``, ``nd`` big-endian uint32 sizes, then the values in
row-major order. The files may be gzipped (a ``.gz`` name or the gzip magic ``1f 8b``).

:class:`IdxDataset` finds the files either in torchvision's layout
(``ROOT/<Class>/raw/train-images-idx3-ubyte``) or directly in ROOT (as Debian's
``dataset-fashion-mnist`` installs ``/usr/share/datasets/fashion-mnist/*.gz``), and yields
what torchvision's MNIST classes yield: a PIL image of mode "L" and an int label.
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Callable, Optional

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08


def _damaged(path: str, what: str) -> ConfigError:
    return ConfigError(f"IDX file '{path}' is damaged ({what}): replace it with an intact copy "
                       "(or delete it and set data.download=true)")


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read IDX file '{path}' ({exc.strerror}): check data.root "
                          "and the file's permissions") from None
    if path.endswith(".gz") or raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip stream
            raise _damaged(path, f"gzip: {exc}") from None
    return raw


def read_idx(path: str, ndim: Optional[int] = None) -> np.ndarray:
    """The uint8 array stored in the IDX file ``path`` (gzipped or not); ``ndim``, when
    given, is the number of dimensions the file must have. Raises ConfigError naming the
    file for a bad magic, another dtype, a wrong dimension count or a wrong data length."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise _damaged(path, "bad magic: not an IDX file")
    code, nd = data[2], data[3]
    if code != _UBYTE:
        raise _damaged(path, f"dtype code 0x{code:02x}, expected 0x08 (unsigned byte)")
    if ndim is not None and nd != ndim:
        raise _damaged(path, f"{nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(data) < header:
        raise _damaged(path, "truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise _damaged(path, f"{len(data) - header} data bytes for shape {shape}, "
                             f"expected {expected}: truncated or padded")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def idx_file_names(train: bool) -> tuple:
    """The (images, labels) base names of a split, without ``.gz``."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_idx_file(root: str, name: str, folder: Optional[str] = None) -> str:
    """The path of ``name`` (or ``name.gz``) under ``ROOT/<folder>/raw`` (torchvision's
    layout, searched first when ``folder`` is given) or directly in ROOT."""
    dirs = ([os.path.join(root, folder, "raw")] if folder else []) + [root]
    for d in dirs:
        for candidate in (name, name + ".gz"):
            path = os.path.join(d, candidate)
            if os.path.isfile(path):
                return path
    where = " or ".join(f"'{os.path.join(d, name)}[.gz]'" for d in dirs)
    raise ConfigError(f"IDX file {where} not found: point data.root at the directory holding "
                      "the four IDX files (or set data.download=true)")


class IdxDataset(Dataset):
    """One split of an MNIST-family set: ``(PIL image "L", int label)`` pairs.

    ``folder`` is torchvision's sub-directory name (``FashionMNIST``, ``MNIST``, ``KMNIST``)
    for its layout ``ROOT/<folder>/raw``; files directly in ROOT are found either way.
    """

    def __init__(self, root: str, train: bool = True, transform: Optional[Callable] = None,
                 folder: Optional[str] = None):
        image_name, label_name = idx_file_names(train)
        image_path = find_idx_file(root, image_name, folder)
        label_path = find_idx_file(root, label_name, folder)
        self.data = read_idx(image_path, ndim=3)
        labels = read_idx(label_path, ndim=1)
        if len(labels) != len(self.data):
            raise ConfigError(f"IDX files '{image_path}' ({len(self.data)} images) and "
                              f"'{label_path}' ({len(labels)} labels) do not match: use the "
                              "images and labels of the same split and release")
        self.targets = labels.astype(np.int64).tolist()
        self.transform = transform
        self.files = (image_path, label_path)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i])  # a 2-D uint8 array gives mode "L"
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]
