"""The synthetic COCO set (valid for pycocotools, boxes inside, masks = boxes), CocoSet's
samples, COCOeval on the ground truth, and the one-line errors for bad data."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402

from vig_pyg.detection import CocoDataError, CocoSet, SyntheticSpec, coco_evaluate  # noqa: E402
from vig_pyg.detection.coco import ground_truth_results, to_coco_results  # noqa: E402
from vig_pyg.detection.synthetic import ensure_synthetic, rle_encode  # noqa: E402

SPEC = SyntheticSpec(canvas=64, num_train=12, num_val=6, max_objects=3, scale=(12, 26), seed=3)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return ensure_synthetic(SPEC, str(tmp_path_factory.mktemp("cache")))


def _paths(root, split):
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def test_synthetic_json_is_valid_coco(root):
    for split, n in (("train", 12), ("val", 6)):
        coco = COCO(_paths(root, split)[0])
        assert len(coco.imgs) == n and len(coco.cats) == 10
        assert sorted(c["name"] for c in coco.cats.values()) == [str(d) for d in range(10)]
        assert len(coco.anns) >= n
        for ann in coco.anns.values():
            img = coco.imgs[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            mask = coco.annToMask(ann)  # pycocotools' own RLE decoder
            ys, xs = np.nonzero(mask)
            assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == \
                [x, y, w, h]
            assert mask.sum() == ann["area"] and 1 <= ann["category_id"] <= 10
        assert all(os.path.isfile(os.path.join(root, split, im["file_name"]))
                   for im in coco.imgs.values())


def test_synthetic_set_is_reproducible(root, tmp_path):
    again = ensure_synthetic(SPEC, str(tmp_path))
    for split in ("train", "val"):
        with open(_paths(root, split)[0]) as a, open(_paths(again, split)[0]) as b:
            assert json.load(a) == json.load(b)
    other = ensure_synthetic(dataclasses.replace(SPEC, seed=4), str(tmp_path))
    with open(_paths(root, "val")[0]) as a, open(_paths(other, "val")[0]) as b:
        assert json.load(a)["annotations"] != json.load(b)["annotations"]


def test_rle_matches_a_column_major_rule():
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 0] = mask[1, 0] = mask[2, 2] = True
    # column-major: col0 = 1 1 0, col1 = 0 0 0, col2 = 0 0 1, col3 = 0 0 0
    assert rle_encode(mask)["counts"] == [0, 2, 6, 1, 3]


def test_samples_follow_the_json(root):
    json_path, images = _paths(root, "train")
    ds = CocoSet(json_path, images, train=True, masks=True)
    coco = COCO(json_path)
    assert ds.num_classes == 10 and ds.cat_ids == list(range(1, 11))
    for i in range(3):
        image, target = ds[i]
        anns = coco.loadAnns(coco.getAnnIds(target["image_id"]))
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
        ref = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                             a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32)
        torch.testing.assert_close(target["boxes"], ref)
        assert target["labels"].tolist() == [a["category_id"] for a in anns]  # ids 1..10 = labels
        for m, a in zip(target["masks"], anns):
            assert torch.equal(m, torch.from_numpy(coco.annToMask(a)))


@pytest.mark.parametrize("masks", [False, True])
def test_cocoeval_on_ground_truth_gives_ap_one(root, masks):
    coco = COCO(_paths(root, "val")[0])
    boxes, segms = ground_truth_results(coco, masks=True)
    stats = coco_evaluate(coco, segms if masks else boxes, "segm" if masks else "bbox")
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    shifted = [dict(b, bbox=[b["bbox"][0] + b["bbox"][2] / 2, *b["bbox"][1:]]) for b in boxes]
    assert coco_evaluate(coco, shifted, "bbox")["AP"] < 0.5  # the check can fail


def test_detector_outputs_convert_to_coco_results(root):
    coco = COCO(_paths(root, "val")[0])
    image_id = next(iter(coco.imgs))
    anns = coco.loadAnns(coco.getAnnIds(image_id))
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32)
    masks = torch.stack([torch.from_numpy(coco.annToMask(a)).float() for a in anns])[:, None]
    out = dict(boxes=boxes, labels=torch.tensor([a["category_id"] for a in anns]),
               scores=torch.ones(len(anns)), masks=masks)
    b, s = to_coco_results([out], [image_id], list(range(1, 11)), masks=True)
    assert coco_evaluate(coco, b, "bbox", [image_id])["AP50"] == pytest.approx(1.0)
    assert coco_evaluate(coco, s, "segm", [image_id])["AP"] == pytest.approx(1.0)


def _copy(root, tmp_path, edit, name="ann.json"):
    json_path, images = _paths(root, "val")
    data = json.load(open(json_path))
    edit(data)
    out = tmp_path / name
    out.write_text(json.dumps(data))
    return str(out), images


def test_bad_data_is_one_line_each(root, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [,]}')
    cases = [(str(bad), _paths(root, "val")[1], None, "not valid JSON"),
             (str(tmp_path / "none.json"), _paths(root, "val")[1], None, "does not exist")]
    j, im = _copy(root, tmp_path, lambda d: d["images"][0].update(file_name="gone.png"), "a.json")
    cases.append((j, im, None, "missing"))
    j, im = _copy(root, tmp_path, lambda d: d["annotations"][0].update(category_id=42), "b.json")
    cases.append((j, im, None, "category_id 42"))
    j, im = _copy(root, tmp_path, lambda d: None, "c.json")
    cases.append((j, im, 3, "num_classes=3"))
    for json_path, images, n, words in cases:
        with pytest.raises(CocoDataError) as exc:
            CocoSet(json_path, images, num_classes=n)
        assert "\n" not in str(exc.value) and words in str(exc.value), str(exc.value)


def test_image_without_annotations_is_a_negative(root, tmp_path):
    def drop_first(d):
        first = d["images"][0]["id"]
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != first]
    j, im = _copy(root, tmp_path, drop_first)
    ds = CocoSet(j, im, train=True, masks=True, num_classes=10)
    image, target = ds[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 64, 64)
