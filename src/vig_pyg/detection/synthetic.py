"""The built-in detection set: scikit-learn's digits pasted on textured canvases, as COCO.

Every canvas (``canvas`` x ``canvas`` RGB) is a random texture: a smooth colour field
(bicubically upsampled 4x4 noise) plus a sine grating of random orientation and period.
On it go 1 to ``max_objects`` digits (ten classes, "0".."9", category ids 1..10), each an
8x8 glyph of scikit-learn's digits upsampled bicubically to a random side in
``scale`` (times a random aspect in [0.8, 1.25]) and blended with a colour that contrasts
with the canvas: ``pixel = (1 - a) * background + a * colour``, ``a = ink / 16``. The
instance mask is ``a >= 0.5`` and the box is the mask's tight bounding box, so masks and
boxes agree exactly. Digits do not overlap (boxes 2 px apart), so no mask is occluded.
Train and val canvases draw their glyphs from disjoint 80 / 20 % splits of the 1,797
images, so the validation handwriting is unseen.

Files (COCO layout, generated once per parameter set, then reused)::

    ROOT/train/000000.png ...   ROOT/annotations/instances_train.json
    ROOT/val/000000.png ...     ROOT/annotations/instances_val.json

Masks are stored as uncompressed COCO RLE (column-major run lengths, starting with
background), which pycocotools and torchvision read directly.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

CLASSES = [str(d) for d in range(10)]
_STAMP = "complete.json"


@dataclass(frozen=True)
class SyntheticSpec:
    """What a synthetic set is made of; its hash names the cache directory."""
    canvas: int = 128
    num_train: int = 2000
    num_val: int = 200
    max_objects: int = 4
    scale: tuple = (16, 48)     # digit side in pixels (before the aspect jitter)
    seed: int = 0
    version: int = 1            # bump when the generator changes

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def default_cache_dir() -> str:
    """``$VIG_PYG_CACHE`` or ``~/.cache/vig_pyg``."""
    return os.environ.get("VIG_PYG_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "vig_pyg")


def synthetic_root(spec: SyntheticSpec, cache_dir: str | None = None) -> str:
    return os.path.join(cache_dir or default_cache_dir(), f"digits_coco-{spec.key()}")


def ensure_synthetic(spec: SyntheticSpec = SyntheticSpec(), cache_dir: str | None = None,
                     progress: bool = False) -> str:
    """Generates the set unless a complete copy exists; returns its root. A stamp written
    last marks completion, so an interrupted generation is redone, never half-used."""
    root = synthetic_root(spec, cache_dir)
    if os.path.exists(os.path.join(root, _STAMP)):
        return root
    tmp = root + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    glyphs, labels = _glyphs()
    order = np.random.default_rng(spec.seed).permutation(len(labels))
    cut = int(0.8 * len(labels))
    for split, count, pool, offset in (("train", spec.num_train, order[:cut], 0),
                                       ("val", spec.num_val, order[cut:], 1)):
        rng = np.random.default_rng([spec.seed, offset])
        write_split(tmp, split, count, glyphs[pool], labels[pool], spec, rng, progress)
    with open(os.path.join(tmp, _STAMP), "w") as fh:
        json.dump(asdict(spec), fh)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _glyphs():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def write_split(root, split, count, glyphs, labels, spec, rng, progress=False) -> str:
    """Draws ``count`` canvases into ``ROOT/split`` and writes their COCO json."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    steps = range(count)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"synthetic {split}", leave=False, mininterval=0.5)
    for image_id in steps:
        canvas, objects = draw_canvas(spec, glyphs, labels, rng)
        name = f"{image_id:06d}.png"
        Image.fromarray(canvas).save(os.path.join(root, split, name))
        images.append(dict(id=image_id, file_name=name, width=spec.canvas, height=spec.canvas))
        for label, mask in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, label, mask))
    coco = dict(info=dict(description=f"vig_pyg synthetic digits ({split})", version="1"),
                images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory="digit")
                            for i, n in enumerate(CLASSES)])
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(path, "w") as fh:
        json.dump(coco, fh)
    return path


def _annotation(ann_id: int, image_id: int, label: int, mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return dict(id=ann_id, image_id=image_id, category_id=int(label) + 1, iscrowd=0,
                bbox=[int(x0), int(y0), int(x1 - x0), int(y1 - y0)], area=int(mask.sum()),
                segmentation=rle_encode(mask))


def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE: run lengths of the column-major flattened mask, the first run
    counting zeros (possibly 0 of them)."""
    flat = np.asarray(mask, dtype=np.uint8).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return dict(size=[int(mask.shape[0]), int(mask.shape[1])], counts=runs)


def texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """``[size, size, 3]`` float in [0, 1]: smooth colour field + a sine grating."""
    coarse = rng.uniform(0.15, 0.85, (4, 4, 3)).astype(np.float32)
    field = np.stack([np.asarray(Image.fromarray(coarse[..., c], mode="F").resize(
        (size, size), Image.BICUBIC)) for c in range(3)], axis=-1)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period
                  + rng.uniform(0, 2 * np.pi))
    tint = rng.uniform(-1, 1, 3).astype(np.float32)
    return np.clip(field + 0.12 * wave[..., None] * tint, 0.0, 1.0)


def draw_canvas(spec: SyntheticSpec, glyphs, labels, rng):
    """One canvas (uint8 ``[H, W, 3]``) and its ``[(label, bool mask)]`` list."""
    size = spec.canvas
    image = texture(size, rng)
    taken: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        j = int(rng.integers(len(labels)))
        side = rng.uniform(*spec.scale)
        aspect = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
        h = int(np.clip(round(side * aspect), 6, size - 4))
        w = int(np.clip(round(side / aspect), 6, size - 4))
        spot = _free_spot(taken, h, w, size, rng)
        if spot is None:
            continue
        y, x = spot
        alpha = np.clip(np.asarray(Image.fromarray(glyphs[j], mode="F").resize(
            (w, h), Image.BICUBIC)), 0.0, 1.0)
        mask = alpha >= 0.5
        if not mask.any():
            continue
        patch = image[y:y + h, x:x + w]
        colour = _contrasting(patch.mean(axis=(0, 1)), rng)
        image[y:y + h, x:x + w] = (1 - alpha[..., None]) * patch + alpha[..., None] * colour
        full = np.zeros((size, size), dtype=bool)
        full[y:y + h, x:x + w] = mask
        taken.append((y, x, h, w))
        objects.append((int(labels[j]), full))
    return (image * 255).round().astype(np.uint8), objects


def _free_spot(taken, h, w, size, rng, tries: int = 30):
    for _ in range(tries):
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        if all(y + h + 2 <= ty or ty + th + 2 <= y or x + w + 2 <= tx or tx + tw + 2 <= x
               for ty, tx, th, tw in taken):
            return y, x
    return None


def _contrasting(background: np.ndarray, rng) -> np.ndarray:
    """Dark ink on a bright canvas, bright ink on a dark one (channel values 0-0.25 or
    0.75-1)."""
    dark = background.mean() > 0.5
    base = rng.uniform(0.0, 0.25, 3) if dark else rng.uniform(0.75, 1.0, 3)
    return base.astype(np.float32)


__all__ = ["SyntheticSpec", "ensure_synthetic", "synthetic_root", "default_cache_dir",
           "rle_encode", "CLASSES", "draw_canvas", "texture"]
