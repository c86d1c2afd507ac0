"""COCO-format data for the detectors, and COCO evaluation (pycocotools' COCOeval).

A data set is an annotation json plus an image directory (COCO 2017: ``instances_train2017
.json`` + ``train2017/``; the built-in set: :mod:`.synthetic`). It is read with
``torchvision.datasets.CocoDetection``, wrapped by ``wrap_dataset_for_transforms_v2`` so
``torchvision.transforms.v2`` moves boxes and masks with the image, and mapped to what
torchvision's detectors train on: ``(image float [3, H, W] in [0, 1], {"boxes" XYXY,
"labels" 1..K, "masks" [N, H, W] uint8, "image_id"})``. Category ids are mapped to labels
1..K in the json's category order sorted by id; crowd regions are left out of training.
Images without annotations are negative images (empty targets), which is allowed.

The json is checked before anything trains: it must parse, every image file must exist,
every annotation must name a listed category, and K must equal the detector's
``num_classes``; each problem is one :class:`~vig_pyg.errors.VigPygError` line.
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import torch
from torchvision.datasets import CocoDetection

from ..errors import VigPygError, one_line


class CocoDataError(VigPygError):
    """A COCO json or image folder that cannot be used; the message names the fix."""


def _quiet():
    """pycocotools prints progress lines ("loading annotations..."); keep them out."""
    return contextlib.redirect_stdout(io.StringIO())


def read_coco_json(path: str) -> dict:
    """The parsed json with its required keys checked (one-line errors)."""
    if not os.path.isfile(path):
        raise CocoDataError(f"annotation file {path!r} does not exist: check data.train_json / "
                            f"data.val_json (or use data.dataset=synthetic)")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise CocoDataError(f"annotation file {path!r} is not valid JSON ({exc.msg} at line "
                            f"{exc.lineno} column {exc.colno}): fix or regenerate it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CocoDataError(f"annotation file {path!r} cannot be read ({one_line(exc)})") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations",
                                                                 "categories")):
        keys = list(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise CocoDataError(f"annotation file {path!r} is not COCO instances format (needs "
                            f"'images', 'annotations' and 'categories'; has {keys})")
    return data


def check_coco(data: dict, path: str, image_dir: str, num_classes: int | None) -> None:
    """Every image file exists, every annotation's category is listed, and the number of
    categories equals ``num_classes`` (when given)."""
    if not os.path.isdir(image_dir):
        raise CocoDataError(f"image directory {image_dir!r} (for {path!r}) does not exist: "
                            f"check data.train_images / data.val_images")
    missing = [im["file_name"] for im in data["images"]
               if not os.path.isfile(os.path.join(image_dir, im["file_name"]))]
    if missing:
        raise CocoDataError(f"{len(missing)} of the {len(data['images'])} images listed in "
                            f"{path!r} are missing from {image_dir!r} (first: "
                            f"{missing[0]!r}): point the image directory at the right folder")
    cats = sorted(c["id"] for c in data["categories"])
    known = set(cats)
    stray = next((a for a in data["annotations"] if a.get("category_id") not in known), None)
    if stray is not None:
        raise CocoDataError(f"annotation {stray.get('id')} of image {stray.get('image_id')} in "
                            f"{path!r} has category_id {stray.get('category_id')}, which is not "
                            f"among the file's {len(cats)} categories {cats[:10]}"
                            f"{'...' if len(cats) > 10 else ''}: fix the json")
    if num_classes is not None and len(cats) != num_classes:
        raise CocoDataError(f"{path!r} has {len(cats)} categories but the detector has "
                            f"num_classes={num_classes}: set model.num_classes={len(cats)} "
                            f"(or null to take it from the data)")


class _CocoFromDict(CocoDetection):
    """``CocoDetection`` on an already-read json (no second parse, no printing); crowd
    regions left out when ``drop_crowd`` (before the transforms, which may drop boxes)."""

    def __init__(self, image_dir: str, data: dict, transforms=None, drop_crowd: bool = False):
        self.drop_crowd = drop_crowd
        from pycocotools.coco import COCO

        super(CocoDetection, self).__init__(image_dir, transforms=transforms)
        with _quiet():
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        self.ids = sorted(self.coco.imgs.keys())

    def _load_target(self, id: int) -> list:
        anns = super()._load_target(id)
        return [a for a in anns if not a.get("iscrowd", 0)] if self.drop_crowd else anns


class CocoSet(torch.utils.data.Dataset):
    """A COCO json + image folder as detector samples (see the module docstring).

    Attributes: ``coco`` (the pycocotools index, for evaluation), ``cat_ids`` (label i is
    category ``cat_ids[i - 1]``), ``class_names``, ``ids`` (image ids in sample order).
    """

    def __init__(self, json_path: str, image_dir: str, *, train: bool = False,
                 masks: bool = False, hflip: float = 0.0, num_classes: int | None = None):
        from torchvision import tv_tensors  # noqa: F401  (registers the v2 wrappers)
        from torchvision.datasets import wrap_dataset_for_transforms_v2

        data = read_coco_json(json_path)
        check_coco(data, json_path, image_dir, num_classes)
        base = _CocoFromDict(image_dir, data, build_transforms(train, hflip), drop_crowd=train)
        keys = {"image_id", "boxes", "labels"} | ({"masks"} if masks else set())
        self.dataset = wrap_dataset_for_transforms_v2(base, target_keys=keys)
        self.coco = base.coco
        self.ids = base.ids
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        lut = torch.zeros(max(self.cat_ids) + 1, dtype=torch.int64)
        lut[torch.tensor(self.cat_ids)] = torch.arange(1, len(cats) + 1)
        self._label_of = lut
        self.train, self.masks = train, masks

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        h, w = image.shape[-2:]
        out = {"image_id": int(target["image_id"]),
               "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        if self.masks:
            out["masks"] = torch.zeros(0, h, w, dtype=torch.uint8)
        if "boxes" in target:  # an image with annotations
            boxes = target["boxes"].as_subclass(torch.Tensor).float()
            # training drops degenerate boxes (< 1 px wide or high), which detectors reject
            keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(dim=1) if self.train else \
                torch.ones(len(boxes), dtype=torch.bool)
            out["boxes"] = boxes[keep]
            out["labels"] = self._label_of[torch.as_tensor(target["labels"])[keep]]
            if self.masks:
                out["masks"] = target["masks"].as_subclass(torch.Tensor)[keep].to(torch.uint8)
        return image.as_subclass(torch.Tensor), out


def build_transforms(train: bool, hflip: float = 0.0):
    """``transforms.v2``: to a float image in [0, 1] (+ flips in training); boxes and masks
    follow the image. Resizing (and multi-scale training) is the detector's own transform."""
    from torchvision.transforms import v2

    steps = [v2.ToImage()]
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def collate(batch):
    """Detectors take lists: ``(images, targets)``."""
    return [b[0] for b in batch], [b[1] for b in batch]


# --------------------------------------------------------------------------- evaluation
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_results(outputs, image_ids, cat_ids, masks: bool = False,
                    mask_threshold: float = 0.5) -> tuple[list, list]:
    """Detector outputs (boxes XYXY, labels 1..K, scores[, masks [N, 1, H, W] in [0, 1]])
    -> COCO result lists for ``bbox`` and ``segm``."""
    boxes_out, segm_out = [], []
    cat = np.asarray(cat_ids)
    for out, image_id in zip(outputs, image_ids):
        b = out["boxes"].detach().float().cpu().numpy()
        scores = out["scores"].detach().float().cpu().tolist()
        cats = cat[out["labels"].cpu().numpy() - 1].tolist() if len(b) else []
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist() if len(b) else []
        for box, c, s in zip(xywh, cats, scores):
            boxes_out.append(dict(image_id=int(image_id), category_id=int(c), bbox=box, score=s))
        if masks and len(b):
            from pycocotools import mask as mask_util

            m = (out["masks"][:, 0] >= mask_threshold).cpu().numpy().astype(np.uint8)
            rles = mask_util.encode(np.asfortranarray(m.transpose(1, 2, 0)))
            for rle, c, s in zip(rles, cats, scores):
                rle["counts"] = rle["counts"].decode("ascii")
                segm_out.append(dict(image_id=int(image_id), category_id=int(c),
                                     segmentation=rle, score=s))
    return boxes_out, segm_out


def coco_evaluate(coco_gt, results: list, iou_type: str = "bbox", image_ids=None) -> dict:
    """COCOeval AP, AP50, AP75, APs, APm, APl (fractions; -1 where no ground truth) of
    ``results`` (COCO result dicts) against the ``coco_gt`` index."""
    from pycocotools.cocoeval import COCOeval

    if not results:  # loadRes cannot take an empty list; nothing predicted scores 0
        return {k: 0.0 for k in STAT_NAMES}
    with _quiet():
        dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, dt, iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats[:6])}


def ground_truth_results(coco_gt, masks: bool = False) -> tuple[list, list]:
    """The ground truth as result lists with score 1 (COCOeval gives AP 1 on them)."""
    boxes, segms = [], []
    for ann in coco_gt.dataset["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        base = dict(image_id=ann["image_id"], category_id=ann["category_id"], score=1.0)
        boxes.append(dict(base, bbox=list(ann["bbox"])))
        if masks:
            rle = coco_gt.annToRLE(ann)
            if isinstance(rle["counts"], bytes):
                rle = dict(rle, counts=rle["counts"].decode("ascii"))
            segms.append(dict(base, segmentation=rle))
    return boxes, segms


__all__ = ["CocoSet", "CocoDataError", "read_coco_json", "check_coco", "build_transforms",
           "collate", "to_coco_results", "coco_evaluate", "ground_truth_results", "STAT_NAMES"]
