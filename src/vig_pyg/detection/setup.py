"""The objects a detection run trains: the detector, its optimizer and the learning-rate
schedule (a function of the global step, so a resumed run continues it exactly)."""
from __future__ import annotations

import math

from torch import nn

from ..train.config import ConfigError
from .config import DetectConfig
from .detectors import build_detector


def make_detector(cfg: DetectConfig, num_classes: int, with_checkpoint: bool = True) -> nn.Module:
    m = cfg.model
    overrides = dict(m.overrides)
    overrides.update(k=m.k, conv=m.conv, drop_path_rate=m.drop_path_rate)
    sizes = [int(s) for s in m.min_size]
    return build_detector(
        m.detector, m.backbone, num_classes, out_indices=m.out_indices,
        frozen_stages=m.frozen_stages, norm_eval=m.norm_eval,
        checkpoint=m.checkpoint if with_checkpoint else None, fpn_channels=m.fpn_channels,
        anchor_scale=m.anchor_scale, representation_size=m.representation_size,
        mask_channels=m.mask_channels, min_size=tuple(sizes) if len(sizes) > 1 else sizes[0],
        max_size=m.max_size, backbone_overrides=overrides, **m.extra)


def make_optimizer(cfg: DetectConfig, model: nn.Module):
    from timm.optim import create_optimizer_v2, list_optimizers

    o = cfg.optim
    if o.name not in list_optimizers():
        raise ConfigError(f"unknown optimizer '{o.name}': set optim.name to a timm optimizer "
                          "such as adamw, sgd")
    kwargs = dict(opt=o.name, lr=o.lr, weight_decay=o.weight_decay)
    if "sgd" in o.name or "momentum" in o.name:
        kwargs["momentum"] = o.momentum
    optimizer = create_optimizer_v2(model, **kwargs)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def lr_factor(cfg: DetectConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warmup from ``warmup_ratio`` over ``warmup_steps``, times the decay:
    ``step``: ``gamma ** #(milestones <= epoch)``; ``cosine``:
    ``min + (1 - min) (1 + cos(pi t / T)) / 2`` with ``T = epochs * steps_per_epoch``
    (``train.max_steps`` stops a run early without changing its schedule)."""
    total_steps = cfg.train.epochs * steps_per_epoch
    s = cfg.sched
    warm = 1.0
    if step < s.warmup_steps:
        warm = s.warmup_ratio + (1 - s.warmup_ratio) * step / s.warmup_steps
    if s.name == "step":
        epoch = step // steps_per_epoch
        return warm * s.gamma ** sum(epoch >= m for m in s.milestones)
    t = min(step / max(total_steps, 1), 1.0)
    return warm * (s.min_ratio + (1 - s.min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


__all__ = ["make_detector", "make_optimizer", "lr_factor"]
