"""Detection run configuration: detection's sections on :mod:`vig_pyg.config_schema`.

Sections ``model``, ``data``, ``optim``, ``sched``, ``train``, ``log``; defaults, then a
YAML file, then ``--set section.key=value`` overrides; values are YAML converted to each
key's type, unknown keys are an error naming the valid ones (the mechanism shared with
the training config), and so is a ``data.*`` key the chosen ``data.dataset`` does not
read (:data:`DATA_KEYS`) unless it holds its default.
The defaults are the paper's COCO 1x recipe (12 epochs, AdamW, lr 1e-4, weight decay
0.05, step decay at epochs 8 and 11); ``configs/detect_demo.yaml`` shrinks it for a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..config_schema import (KeyReaders, Schema, Sections, check_choices, check_positive,
                             check_unused)
from ..errors import ConfigError


@dataclass
class DetModelConfig:
    """Detector and backbone (``vig_pyg.detection.build_detector``)."""
    detector: str = "maskrcnn"           # retinanet, fasterrcnn, maskrcnn
    backbone: str = "pvig_s"             # a pyramid zoo model: pvig_ti, pvig_s, pvig_m, pvig_b
    num_classes: Optional[int] = None    # object classes; null: the data's category count
    checkpoint: Optional[str] = None     # ImageNet classifier weights for the backbone (ours or the release's)
    k: int = 9                           # neighbours per node
    conv: str = "mr"                     # graph convolution
    drop_path_rate: float = 0.1          # stochastic depth of the last block
    overrides: dict = field(default_factory=dict)  # other create_model arguments: channels, blocks, reduce_ratios
    out_indices: Optional[list] = None   # stages into the FPN; null: retinanet [1, 2, 3], R-CNN [0, 1, 2, 3]
    frozen_stages: int = -1              # freeze stem + stages 0..N (-1: none)
    norm_eval: bool = True               # keep the backbone's BatchNorms in eval mode
    fpn_channels: int = 256
    anchor_scale: Optional[float] = None  # anchor side / stride; null: 4 (retinanet) or 8 (R-CNN)
    representation_size: int = 1024      # R-CNN box head width
    mask_channels: int = 256             # Mask R-CNN mask head width
    min_size: list = field(default_factory=lambda: [800])  # shorter side; several: multi-scale training
    max_size: int = 1333                 # longer side cap
    extra: dict = field(default_factory=dict)  # other torchvision detector arguments (box_score_thresh, ...)


@dataclass
class DetDataConfig:
    """COCO folders or the built-in synthetic digits."""
    dataset: str = "synthetic"           # synthetic (built in) or coco
    root: Optional[str] = None           # coco: ROOT/annotations/instances_{train,val}2017.json, ROOT/{train,val}2017/
    train_json: Optional[str] = None     # explicit paths (override root)
    train_images: Optional[str] = None
    val_json: Optional[str] = None
    val_images: Optional[str] = None
    canvas: int = 128                    # synthetic: canvas side (px)
    num_train: int = 2000                # synthetic: training canvases
    num_val: int = 200                   # synthetic: validation canvases
    max_objects: int = 4                 # synthetic: digits per canvas (1..N)
    scale: list = field(default_factory=lambda: [16, 48])  # synthetic: digit side range (px)
    seed: int = 0                        # synthetic: generator seed
    cache_dir: Optional[str] = None      # synthetic: where it is generated ($VIG_PYG_CACHE or ~/.cache/vig_pyg)
    batch_size: int = 2                  # per process
    eval_batch_size: int = 4
    num_workers: int = 0                 # loader processes (0: bit-exact resume)
    hflip: float = 0.5                   # horizontal flip probability (synthetic digits: 0)
    max_eval_images: int = 0             # evaluate on the first N val images (0: all)


@dataclass
class DetOptimConfig:
    """Optimizer (timm.optim.create_optimizer_v2; no weight decay on biases and norms)."""
    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.05
    momentum: float = 0.9
    clip_grad: Optional[float] = None    # gradient norm clipping (null: off)


@dataclass
class DetSchedConfig:
    """Learning rate per optimizer step: linear warmup, then step decay or cosine."""
    name: str = "step"                   # step (mmdetection 1x) or cosine
    warmup_steps: int = 500
    warmup_ratio: float = 0.001          # lr factor at step 0 of the warmup
    milestones: list = field(default_factory=lambda: [8, 11])  # step: epochs where lr *= gamma
    gamma: float = 0.1
    min_ratio: float = 0.0               # cosine: final lr factor


@dataclass
class DetTrainConfig:
    """Loop, precision, determinism and checkpointing (as vig-pyg train)."""
    epochs: int = 12
    seed: int = 0
    amp: str = "auto"                    # auto, none, bf16, fp16 (cuda)
    device: str = "auto"                 # auto, cpu, cuda, cuda:N
    deterministic: bool = False
    threads: str = "auto"                # CPU threads: auto (measured), default or N
    ckpt_every_steps: int = 0            # also checkpoint every N steps (0: epoch ends only)
    eval_every: int = 1                  # evaluate every N epochs (and after the last)
    max_steps: int = 0                   # stop after N optimizer steps (0: full schedule)


@dataclass
class DetLogConfig:
    output_dir: str = "runs"
    name: Optional[str] = None           # default: <detector>-<backbone>-<dataset>
    progress: bool = True
    tensorboard: bool = True


@dataclass
class DetectConfig(Sections):
    model: DetModelConfig = field(default_factory=DetModelConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    optim: DetOptimConfig = field(default_factory=DetOptimConfig)
    sched: DetSchedConfig = field(default_factory=DetSchedConfig)
    train: DetTrainConfig = field(default_factory=DetTrainConfig)
    log: DetLogConfig = field(default_factory=DetLogConfig)


SCHEMA = Schema(DetectConfig)
set_key = SCHEMA.set
apply_dict = SCHEMA.apply_dict


CHOICES = {
    "model.detector": ("retinanet", "fasterrcnn", "maskrcnn"),
    "data.dataset": ("synthetic", "coco"),
    "sched.name": ("step", "cosine"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
}


#: Which ``data.*`` keys each ``data.dataset`` reads; the others must keep their defaults
#: (batch sizes, workers, ``hflip`` and ``max_eval_images`` serve both and are not listed).
DATA_KEYS = KeyReaders(
    section="data",
    selector="dataset",
    reads={"synthetic": ("canvas", "num_train", "num_val", "max_objects", "scale", "seed",
                         "cache_dir"),
           "coco": ("root", "train_json", "train_images", "val_json", "val_images")},
    about={"synthetic": "the built-in set", "coco": "COCO-layout files"},
)


def validate(cfg: DetectConfig) -> DetectConfig:
    """Checks that need no model or data."""
    check_choices(cfg, CHOICES)
    check_unused(cfg, DATA_KEYS)
    check_positive(cfg, ("data.batch_size", "data.eval_batch_size", "train.epochs",
                         "train.eval_every", "data.canvas", "data.num_train", "data.num_val",
                         "data.max_objects", "model.fpn_channels", "model.max_size"))
    if cfg.data.dataset == "coco" and not cfg.data.root and not (
            cfg.data.train_json and cfg.data.train_images):
        raise ConfigError("data.dataset=coco needs data.root=DIR (COCO 2017 layout) or "
                          "data.train_json/train_images/val_json/val_images")
    if not cfg.model.min_size or any(not isinstance(s, (int, float)) or s <= 0
                                     for s in cfg.model.min_size):
        raise ConfigError(f"model.min_size needs positive sizes, got {cfg.model.min_size}")
    if len(cfg.data.scale) != 2 or not 4 <= cfg.data.scale[0] <= cfg.data.scale[1] < cfg.data.canvas:
        raise ConfigError(f"data.scale must be [low, high] with 4 <= low <= high < data.canvas, "
                          f"got {cfg.data.scale}")
    return cfg


def build_config(path: Optional[str] = None, overrides=None, base: Optional[dict] = None
                 ) -> DetectConfig:
    """Defaults, then ``base`` (a saved config), then the YAML file, then ``overrides``."""
    cfg = SCHEMA.compose(path, overrides, base)
    return validate(cfg)


__all__ = ["DetectConfig", "DATA_KEYS", "build_config", "set_key", "apply_dict", "validate",
           "ConfigError"]
