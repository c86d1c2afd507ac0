"""Each torchvision detector on a ViG backbone: one training step (finite losses, gradients
reach the unfrozen backbone, none reach the frozen stem) and inference on two images whose
sides are not multiples of 32."""
import pytest
import torch

from vig_pyg.detection import DetectorError, build_detector

TINY = dict(backbone_overrides=dict(channels=[16, 32, 48, 64], blocks=[1, 1, 1, 1], k=4),
            fpn_channels=16, representation_size=32, mask_channels=8, min_size=100,
            max_size=160, frozen_stages=0, anchor_scale=2.0)


def _targets(sizes, num_classes):
    gen = torch.Generator().manual_seed(1)
    out = []
    for j, (h, w) in enumerate(sizes):
        n = 0 if j == 1 else 3  # the second image is a negative (no objects)
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
        wh = 12 + torch.rand(n, 2, generator=gen) * 20
        boxes = torch.cat([xy, xy + wh], dim=1)
        masks = torch.zeros(n, h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        out.append(dict(boxes=boxes, labels=torch.randint(1, num_classes + 1, (n,),
                                                          generator=gen), masks=masks))
    return out


@pytest.mark.parametrize("kind", ["retinanet", "fasterrcnn", "maskrcnn"])
def test_train_step_and_inference(kind):
    torch.manual_seed(0)
    model = build_detector(kind, "pvig_ti", num_classes=3, **TINY).train()
    sizes = [(90, 130), (100, 75)]
    images = [torch.rand(3, h, w) for h, w in sizes]
    losses = model(images, _targets(sizes, 3))
    expected = {"retinanet": {"classification", "bbox_regression"},
                "fasterrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness",
                               "loss_rpn_box_reg"}}
    expected["maskrcnn"] = expected["fasterrcnn"] | {"loss_mask"}
    assert set(losses) == expected[kind]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    body = model.backbone.body
    assert all(p.grad is None for p in body.stem.parameters())  # frozen_stages=0
    stage3 = body.backbone[-1]
    grads = [p.grad for p in stage3.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0

    model.eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, 70, 110), torch.rand(3, 123, 81)])
    for out, (h, w) in zip(outputs, [(70, 110), (123, 81)]):
        assert {"boxes", "labels", "scores"} <= set(out)
        b = out["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((out["labels"] >= 1) & (out["labels"] <= 3)).all()
        if kind == "maskrcnn":
            assert out["masks"].shape[1:] == (1, h, w)


def test_levels_and_anchors_follow_the_strides():
    retina = build_detector("retinanet", "pvig_ti", num_classes=2, **TINY)
    assert retina.backbone.strides == [8, 16, 32, 64, 128]
    sizes = retina.anchor_generator.sizes
    assert [s[0] for s in sizes] == [16, 32, 64, 128, 256]  # anchor_scale 2 x stride
    rcnn = build_detector("fasterrcnn", "pvig_ti", num_classes=2, **TINY)
    assert rcnn.backbone.strides == [4, 8, 16, 32, 64]
    assert rcnn.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert rcnn.roi_heads.box_predictor.cls_score.out_features == 3  # + background


def test_bad_detector_arguments():
    with pytest.raises(DetectorError):
        build_detector("yolo", "pvig_ti", num_classes=2)
    with pytest.raises(DetectorError):
        build_detector("retinanet", "pvig_ti", num_classes=0)
