"""scikit-learn's handwritten digits, the built-in data set (shipped with scikit-learn: no
download): 1,797 8x8 grey images of 10 classes, upsampled bicubically to ``img_size`` RGB,
with a fixed stratified train/test split (``test_fraction``, ``seed``).

It lives below the training package so that training, diagnostics and detection read the
same images and the same split.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


def digits_split(test_fraction: float = 0.2, seed: int = 0):
    """Indices ``(train, test)`` of the fixed stratified split of sklearn's digits, and labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           stratify=labels, random_state=seed, shuffle=True)
    return np.sort(train_idx), np.sort(test_idx), labels


class DigitsDataset(Dataset):
    """sklearn's 8x8 digits as ``img_size`` x ``img_size`` RGB PIL images (labels 0-9)."""

    classes = [str(i) for i in range(10)]

    def __init__(self, train: bool = True, img_size: int = 32, transform=None,
                 test_fraction: float = 0.2, split_seed: int = 0):
        from sklearn.datasets import load_digits

        train_idx, test_idx, labels = digits_split(test_fraction, split_seed)
        idx = train_idx if train else test_idx
        images = load_digits().images[idx]  # float 0..16
        grey = np.clip(images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
        self.images = [Image.fromarray(g, mode="L").resize((img_size, img_size), Image.BICUBIC)
                       .convert("RGB") for g in grey]
        self.targets = labels[idx].tolist()
        self.indices = idx
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]




def digits_tensor(train: bool = False, img_size: int = 32, test_fraction: float = 0.2,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The split as ``(images [N, 3, img_size, img_size] in [0, 1], labels [N])``."""
    ds = DigitsDataset(train, img_size, test_fraction=test_fraction, split_seed=seed)
    pixels = np.stack([np.asarray(img, dtype=np.float32) for img in ds.images]) / 255.0
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)
