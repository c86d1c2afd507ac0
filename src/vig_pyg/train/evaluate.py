"""``vig-pyg eval``: accuracy, loss and throughput of a checkpoint on a dataset's test split."""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import torch

from . import checkpoint as ckpt_io
from . import distributed as D
from .config import ConfigError, build_config
from .data import build_datasets, build_eval_loader
from .engine import (build_model, check_input_size, evaluate, resolve_device, resolve_precision)


def run_eval(checkpoint: str, config_path: Optional[str] = None, overrides: Optional[list] = None,
             weights: str = "auto", json_path: Optional[str] = None, progress: bool = True) -> dict:
    """Evaluate ``checkpoint``: a vig-pyg training checkpoint (its saved config is the base)
    or model weights in the official-release layout or ours (loaded by ``create_model``)."""
    wall0 = time.perf_counter()
    if not os.path.exists(checkpoint):
        raise ConfigError(f"checkpoint '{checkpoint}' does not exist: check the path "
                          "(a training run keeps RUN/checkpoints/last.pt)")
    if os.path.isdir(checkpoint):
        checkpoint = ckpt_io.resolve_resume_path(checkpoint)
    state = ckpt_io.load_file(checkpoint)
    training = ckpt_io.is_training_checkpoint(state)
    base = state.get("config") if training and not config_path else None
    cfg = build_config(config_path, overrides, base=base)
    if weights not in ("auto", "ema", "model"):
        raise ConfigError(f"--weights {weights}: use auto, ema or model")
    device = resolve_device(cfg)
    if device.type == "cpu" and cfg.train.threads.isdigit():
        torch.set_num_threads(int(cfg.train.threads))
    precision = resolve_precision(cfg, device)
    channels_last = cfg.train.channels_last if cfg.train.channels_last is not None else device.type == "cuda"
    _, test_set, num_classes = build_datasets(cfg)
    torch.manual_seed(cfg.train.seed)
    if training:
        model = build_model(cfg, num_classes, with_checkpoint=False)
        which = weights
        if which == "auto":
            which = "ema" if state.get("ema") is not None else "model"
        if which == "ema" and state.get("ema") is None:
            raise ConfigError(f"checkpoint '{checkpoint}' has no EMA weights: use --weights model")
        ckpt_io.load_model_state(model, state[which], checkpoint, cfg.model.name)
    else:
        if weights == "ema":
            raise ConfigError("--weights ema needs a vig-pyg training checkpoint; this file holds "
                              "one set of weights: use --weights auto")
        which = "file"
        cfg.model.checkpoint = checkpoint
        model = build_model(cfg, num_classes, with_checkpoint=True)
    del state
    model.to(device)
    check_input_size(model, cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = build_eval_loader(test_set, cfg.data.eval_batch_size, cfg.data.num_workers)
    res = evaluate(model, loader, device, precision, channels_last, D.DistInfo(), progress, "eval")
    out = {"checkpoint": os.path.abspath(checkpoint), "weights": which, "model": cfg.model.name,
           "dataset": cfg.data.dataset, "split": "test" if cfg.data.dataset != "imagefolder" else cfg.data.val_split,
           "img_size": cfg.data.img_size, "precision": precision.name, "device": str(device),
           "top1": res["top1"], "top5": res["top5"], "loss": res["loss"], "images": res["images"],
           "img_per_s": res["img_per_s"], "wall_time_s": time.perf_counter() - wall0}
    print(f"{cfg.model.name} on {out['dataset']} ({out['split']}, {res['images']} images, "
          f"{cfg.data.img_size} px, {which} weights): top-1 {res['top1']:.2f}%  top-5 "
          f"{res['top5']:.2f}%  loss {res['loss']:.4f}  {res['img_per_s']:.1f} img/s", flush=True)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(out, fh, indent=2)
    return out
