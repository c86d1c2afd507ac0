"""Object detection and instance segmentation with a pyramid ViG backbone.

``ViGBackbone`` (stage maps + FPN), ``build_detector`` (torchvision's RetinaNet, Faster
R-CNN, Mask R-CNN), COCO data and evaluation (``CocoSet``, ``coco_evaluate``), the built-in
synthetic digits set (``ensure_synthetic``) and the run (``fit``).
"""
from .backbone import BackboneError, ViGBackbone
from .coco import CocoDataError, CocoSet, coco_evaluate, to_coco_results
from .detectors import DETECTORS, DetectorError, build_detector
from .synthetic import SyntheticSpec, ensure_synthetic


def fit(config=None, overrides=(), output=None, resume=None) -> dict:
    """Trains a detector (see :func:`vig_pyg.detection.training.fit`)."""
    from .training import fit as _fit

    return _fit(config, overrides, output, resume)


__all__ = ["ViGBackbone", "BackboneError", "build_detector", "DETECTORS", "DetectorError",
           "CocoSet", "CocoDataError", "coco_evaluate", "to_coco_results", "SyntheticSpec",
           "ensure_synthetic", "fit"]
