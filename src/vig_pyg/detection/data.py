"""The run's data: COCO folders or the synthetic set, the resumable training batches and the
evaluation loader.

Exact resume: the epoch's shuffle is a function of (seed, epoch) and restarts at the saved
batch; the loader's generator is re-seeded per epoch.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import BatchSampler, DataLoader

from ..train import distributed as D
from ..train.config import ConfigError
from ..train.data import ResumableSampler, ShardSampler
from .coco import CocoSet, collate
from .config import DetectConfig


def data_paths(cfg: DetectConfig, progress: bool = False) -> dict:
    """``train_json``, ``train_images``, ``val_json``, ``val_images`` (the synthetic set is
    generated here on first use)."""
    d = cfg.data
    if d.dataset == "synthetic":
        from .synthetic import SyntheticSpec, ensure_synthetic

        spec = SyntheticSpec(canvas=d.canvas, num_train=d.num_train, num_val=d.num_val,
                             max_objects=d.max_objects, scale=tuple(d.scale), seed=d.seed)
        root = ensure_synthetic(spec, d.cache_dir, progress)
        paths = {f"{s}_json": os.path.join(root, "annotations", f"instances_{s}.json")
                 for s in ("train", "val")}
        paths.update({f"{s}_images": os.path.join(root, s) for s in ("train", "val")})
        return paths
    root = os.path.expanduser(d.root) if d.root else ""
    default = {"train_json": os.path.join(root, "annotations", "instances_train2017.json"),
               "train_images": os.path.join(root, "train2017"),
               "val_json": os.path.join(root, "annotations", "instances_val2017.json"),
               "val_images": os.path.join(root, "val2017")}
    return {k: os.path.expanduser(getattr(d, k) or v) for k, v in default.items()}


def build_sets(cfg: DetectConfig, train: bool = True, progress: bool = False):
    """``(train_set or None, val_set)`` as :class:`CocoSet` (masks for Mask R-CNN)."""
    p = data_paths(cfg, progress)
    masks = cfg.model.detector == "maskrcnn"
    n = cfg.model.num_classes
    hflip = cfg.data.hflip
    train_set = (CocoSet(p["train_json"], p["train_images"], train=True, masks=masks,
                         hflip=hflip, num_classes=n) if train else None)
    val_set = CocoSet(p["val_json"], p["val_images"], masks=False,
                      num_classes=n or (train_set.num_classes if train_set else None))
    return train_set, val_set


class TrainBatches:
    """Shuffled full batches, startable at any step of an epoch (see the module doc)."""

    def __init__(self, dataset, batch_size, num_workers, seed, info: D.DistInfo):
        self.sampler = ResumableSampler(dataset, info.world_size, info.rank, seed)
        self.batch_size, self.seed = batch_size, seed
        self.steps_per_epoch = len(self.sampler.inner) // batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the "
                              f"{len(self.sampler.inner)} training images per process")
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_sampler=BatchSampler(self.sampler, batch_size, True),
                                 num_workers=num_workers, collate_fn=collate,
                                 generator=self.generator)

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch, start_step * self.batch_size)
        self.generator.manual_seed(self.seed * 100003 + epoch)
        return iter(self.loader)


def eval_loader(val_set, cfg: DetectConfig, info: D.DistInfo) -> DataLoader:
    n = len(val_set) if cfg.data.max_eval_images <= 0 else min(cfg.data.max_eval_images,
                                                              len(val_set))
    # its own generator: creating an iterator must not draw from the global RNG
    return DataLoader(val_set, batch_size=cfg.data.eval_batch_size, collate_fn=collate,
                      sampler=ShardSampler(n, info.world_size, info.rank),
                      num_workers=cfg.data.num_workers, generator=torch.Generator())


__all__ = ["data_paths", "build_sets", "TrainBatches", "eval_loader"]
