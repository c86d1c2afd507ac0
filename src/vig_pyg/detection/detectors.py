"""torchvision's RetinaNet, Faster R-CNN and Mask R-CNN on a pyramid ViG + FPN.

Labels: ``num_classes`` object classes with labels ``1..num_classes``; torchvision's
models get ``num_classes + 1`` outputs, index 0 being background (R-CNN) or an unused
class (RetinaNet), as torchvision's own COCO models do.

Anchors follow mmdetection's defaults relative to each level's stride ``s`` (so they stay
right when ``out_indices`` or the input scale change): RetinaNet ``4 s * 2^(i/3)``,
i = 0, 1, 2, R-CNN ``8 s``; aspect ratios 0.5, 1, 2. ``anchor_scale`` replaces the 4 / 8
(small objects on small images want smaller anchors).
"""
from __future__ import annotations

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ..errors import VigPygError
from .backbone import ViGBackbone

DETECTORS = ("retinanet", "fasterrcnn", "maskrcnn")
#: stage indices fed to the FPN and the extra levels, per detector (the paper's mmdetection
#: settings: RetinaNet P3-P7, R-CNN P2-P6)
DEFAULT_LEVELS = {"retinanet": ((1, 2, 3), "p6p7"), "fasterrcnn": ((0, 1, 2, 3), "pool"),
                  "maskrcnn": ((0, 1, 2, 3), "pool")}
ASPECT_RATIOS = (0.5, 1.0, 2.0)


class DetectorError(VigPygError):
    """A detector that cannot be built as asked; the message names the fix."""


def build_detector(kind: str, backbone: str = "pvig_s", num_classes: int = 80, *,
                   out_indices=None, frozen_stages: int = -1, norm_eval: bool = True,
                   checkpoint=None, fpn_channels: int = 256, anchor_scale: float | None = None,
                   representation_size: int = 1024, mask_channels: int = 256,
                   min_size=800, max_size: int = 1333, image_mean=(0.5, 0.5, 0.5),
                   image_std=(0.5, 0.5, 0.5), backbone_overrides: dict | None = None,
                   **kwargs) -> nn.Module:
    """A torchvision detector with a :class:`ViGBackbone`.

    ``min_size`` may be a list (torchvision picks one per training batch: multi-scale
    training). ``image_mean`` / ``image_std`` default to the release's 0.5 / 0.5.
    ``backbone_overrides`` go to ``create_model`` (``channels``, ``blocks``, ``k``,
    ``img_size``, ...); other ``kwargs`` to the torchvision class (``box_score_thresh``,
    ``detections_per_img``, ...).
    """
    if kind not in DETECTORS:
        raise DetectorError(f"unknown detector {kind!r}: use one of {', '.join(DETECTORS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise DetectorError(f"num_classes must be a positive int (object classes, background "
                            f"excluded), got {num_classes!r}")
    default_indices, extra = DEFAULT_LEVELS[kind]
    body = ViGBackbone(backbone, out_indices or default_indices, frozen_stages, norm_eval,
                       checkpoint, fpn_channels, extra, **(backbone_overrides or {}))
    scale = anchor_scale if anchor_scale is not None else (4.0 if kind == "retinanet" else 8.0)
    common = dict(min_size=min_size, max_size=max_size, image_mean=list(image_mean),
                  image_std=list(image_std), **kwargs)
    if kind == "retinanet":
        octaves = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
        anchors = AnchorGenerator(
            tuple(tuple(round(scale * s * o) for o in octaves) for s in body.strides),
            (ASPECT_RATIOS,) * len(body.strides))
        return RetinaNet(body, num_classes + 1, anchor_generator=anchors, **common)
    anchors = AnchorGenerator(tuple((round(scale * s),) for s in body.strides),
                              (ASPECT_RATIOS,) * len(body.strides))
    names = [str(i) for i in range(len(body.out_indices))]  # the FPN maps, not "pool"
    c = body.out_channels
    rcnn = dict(rpn_anchor_generator=anchors,
                rpn_head=RPNHead(c, len(ASPECT_RATIOS)),
                box_roi_pool=MultiScaleRoIAlign(names, 7, 2),
                box_head=TwoMLPHead(c * 7 * 7, representation_size),
                box_predictor=FastRCNNPredictor(representation_size, num_classes + 1))
    if kind == "fasterrcnn":
        return FasterRCNN(body, None, **rcnn, **common)
    return MaskRCNN(body, None, **rcnn, mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
                    mask_head=MaskRCNNHeads(c, (mask_channels,) * 4, 1),
                    mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels,
                                                     num_classes + 1), **common)


__all__ = ["build_detector", "DETECTORS", "DetectorError"]
