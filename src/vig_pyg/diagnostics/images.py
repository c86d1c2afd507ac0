"""Images to inspect: files, a folder, or scikit-image's sample photographs (no download).

Every image becomes RGB, is resized bicubically to the model's input size and scaled to
[0, 1]; :func:`normalise` then applies the model's mean and std (0.5 for ViG's weights).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from ..errors import VigPygError

#: scikit-image's photographs used when no images are given.
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea")
_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def _to_tensor(pil, size) -> Tensor:
    from PIL import Image

    img = pil.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _open(path: str, size) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as pil:
            return _to_tensor(pil, size)
    except (UnidentifiedImageError, OSError, ValueError):
        raise VigPygError(f"{path!r} is not an image PIL can read: pass PNG or JPEG files "
                          f"or a folder of them") from None


def image_files(paths) -> list[str]:
    """Files given directly, plus the image files (by extension, sorted) of folders."""
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.lower().endswith(_EXTENSIONS))
            if not found:
                raise VigPygError(f"folder {path!r} holds no images ({'/'.join(_EXTENSIONS)}): "
                                  f"point --images at image files or a folder of them")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise VigPygError(f"{path!r} does not exist: pass image files or a folder")
    return files


def load_images(paths=None, size=(224, 224)) -> tuple[Tensor, list[str]]:
    """``([B, 3, H, W]`` in [0, 1], names); ``paths=None`` loads :data:`SAMPLE_PHOTOS`."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if not paths:
        from PIL import Image
        from skimage import data

        tensors = [_to_tensor(Image.fromarray(getattr(data, n)()), size) for n in SAMPLE_PHOTOS]
        return torch.stack(tensors), list(SAMPLE_PHOTOS)
    files = image_files(paths)
    names = [os.path.splitext(os.path.basename(f))[0] for f in files]
    return torch.stack([_open(f, size) for f in files]), names


def normalise(images: Tensor, mean=0.5, std=0.5) -> Tensor:
    """``(x - mean) / std`` per channel (scalars or 3-sequences)."""
    mean = torch.as_tensor(mean, dtype=images.dtype).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype).view(-1, 1, 1)
    return (images - mean) / std
