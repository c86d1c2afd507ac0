"""The model zoo: the seven released variants and their facts, as one table (data only).

The builder that turns a name into a network is :mod:`.factory` (``create_model``); timm's
registration is :mod:`.timm_registry`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ViGConfig


@dataclass(frozen=True)
class ZooModel:
    """One released variant: its architecture and the facts the code is held to (224 px,
    1000 classes; docs/architecture.md, "Model zoo")."""
    kind: str
    arch: dict             # isotropic: channels, depth; pyramid: channels, blocks
    params_m: float        # parameters, millions (frozen relative-position tables included)
    trainable_m: float     # trainable parameters, millions
    gmacs: float           # multiply-accumulates per image (FlopCounterMode / 2), billions
    top1: float            # paper ImageNet-1k top-1 of the released weights
    crop_pct: float = 0.9  # the release's evaluation crop


#: The zoo: the one table of per-model facts (builder, model card, timm cfgs and tests).
ZOO: dict[str, ZooModel] = {
    "vig_ti": ZooModel("isotropic", dict(channels=192, depth=12), 7.18, 7.18, 1.30, 73.9),
    "vig_s": ZooModel("isotropic", dict(channels=320, depth=16), 22.75, 22.75, 4.52, 80.4),
    "vig_b": ZooModel("isotropic", dict(channels=640, depth=16), 86.84, 86.84, 17.64, 82.3),
    "pvig_ti": ZooModel("pyramid", dict(channels=(48, 96, 240, 384), blocks=(2, 2, 6, 2)),
                        12.49, 10.71, 1.70, 78.2),
    "pvig_s": ZooModel("pyramid", dict(channels=(80, 160, 400, 640), blocks=(2, 2, 6, 2)),
                       29.02, 27.25, 4.55, 82.1),
    "pvig_m": ZooModel("pyramid", dict(channels=(96, 192, 384, 768), blocks=(2, 2, 16, 2)),
                       51.68, 49.53, 8.85, 83.1),
    "pvig_b": ZooModel("pyramid", dict(channels=(128, 256, 512, 1024), blocks=(2, 2, 18, 2)),
                       95.21, 92.98, 16.80, 83.7, crop_pct=0.95),
}


@dataclass(frozen=True)
class ConvVariant:
    """vig_ti with another aggregator (the paper's ablation)."""
    params_m: float
    gmacs: float
    top1: float


#: vig_ti's aggregator ablation (docs/architecture.md, "Model zoo").
VIG_TI_CONVS: dict[str, ConvVariant] = {
    "mr": ConvVariant(7.18, 1.30, 73.9), "edge": ConvVariant(7.18, 2.35, 74.3),
    "sage": ConvVariant(7.30, 1.58, 74.0), "gin": ConvVariant(6.96, 1.26, 72.8),
}


def pretrained_cfg(cfg: ViGConfig) -> dict:
    """timm's pretrained cfg of a model (what ``timm.data.resolve_data_config`` reads): the
    release's preprocessing, mean = std = 0.5, bicubic, its crop."""
    entry = ZOO.get(cfg.name)
    notes = (f"ImageNet-1k top-1 {entry.top1} (paper); no download: pass the release file "
             f"as checkpoint=PATH",) if entry else ()
    return dict(url="", num_classes=cfg.num_classes, input_size=(cfg.in_chans, *cfg.img_size),
                pool_size=None, crop_pct=entry.crop_pct if entry else 0.9,
                interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                first_conv="stem.convs.0", classifier="prediction.4", license="mit",
                architecture=cfg.name or None, notes=notes)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (and registered with timm)."""
    return list(ZOO)


__all__ = ["ZOO", "ZooModel", "VIG_TI_CONVS", "ConvVariant", "list_models", "pretrained_cfg"]
