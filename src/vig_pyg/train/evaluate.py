"""``vig-pyg eval``: accuracy, loss and throughput of a checkpoint on a dataset's test split."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Optional

import torch

from ..models.checkpoint import load_file
from . import checkpoint as ckpt_io
from .config import Config, ConfigError, build_config
from .data import build_datasets, build_eval_loader, loader_init
from .loop import evaluate
from .preprocessing import eval_preprocessing
from .setup import (build_model, check_input_size, load_run_weights, resolve_device,
                    resolve_precision)


def _pick_weights(ckpt: dict, training: bool, weights: str, path: str) -> tuple[str, object]:
    """Which weights of the file to evaluate -> (label, weights)."""
    if weights not in ("auto", "ema", "model"):
        raise ConfigError(f"--weights {weights}: use auto, ema or model")
    if not training:
        if weights == "ema":
            raise ConfigError("--weights ema needs a vig-pyg training checkpoint; this file holds "
                              "one set of weights: use --weights auto")
        return "file", ckpt
    which = weights if weights != "auto" else ("ema" if ckpt.get("ema") is not None else "model")
    if ckpt.get(which) is None:
        raise ConfigError(f"checkpoint '{path}' has no EMA weights: use --weights model")
    return which, ckpt[which]


def _model_for(cfg: Config, num_classes: int, training: bool, state) -> torch.nn.Module:
    if training:  # a training checkpoint's weights fit the model its config builds
        model = build_model(cfg, num_classes, initial_weights=False)
        load_run_weights(model, state, "checkpoint")
        return model
    return build_model(cfg, num_classes, weights=state)


def run_eval(checkpoint: str, config_path: Optional[str] = None, overrides: Optional[list] = None,
             weights: str = "auto", json_path: Optional[str] = None, progress: bool = True) -> dict:
    """Evaluate ``checkpoint``: a vig-pyg training checkpoint (its saved config is the base)
    or model weights in the official-release layout or ours. The file is read once."""
    wall0 = time.perf_counter()
    if os.path.isdir(checkpoint):
        checkpoint = ckpt_io.resolve_resume_path(checkpoint)
    ckpt = load_file(checkpoint)
    training = ckpt_io.is_training_checkpoint(ckpt)
    base = ckpt.get("config") if training and not config_path else None
    cfg = build_config(config_path, overrides, base=base)
    which, state = _pick_weights(ckpt, training, weights, checkpoint)
    device = resolve_device(cfg)
    if device.type == "cpu" and cfg.train.threads.isdigit():
        torch.set_num_threads(int(cfg.train.threads))
    precision = resolve_precision(cfg, device)
    prep = eval_preprocessing(cfg)
    print(f"{cfg.model.name} eval {prep.describe()}", flush=True)
    splits = build_datasets(cfg)
    test_set, num_classes = splits.test, splits.num_classes
    torch.manual_seed(cfg.train.seed)
    model = _model_for(cfg, num_classes, training, state).to(device)
    del ckpt, state
    check_input_size(model, cfg, device)
    loader = build_eval_loader(test_set, cfg.data.eval_batch_size, cfg.data.num_workers,
                               worker_init_fn=loader_init(cfg.model.imports))
    res = evaluate(model, loader, device, precision, progress=progress, desc="eval")
    split = "test" if cfg.data.dataset != "imagefolder" else cfg.data.val_split
    out = {"checkpoint": os.path.abspath(checkpoint), "weights": which, "model": cfg.model.name,
           "dataset": cfg.data.dataset, "split": split, "img_size": cfg.data.img_size,
           "precision": precision.name, "device": str(device), "top1": res["top1"],
           "top5": res["top5"], "loss": res["loss"], "images": res["images"],
           "img_per_s": res["img_per_s"], "wall_time_s": time.perf_counter() - wall0,
           "preprocessing": dataclasses.asdict(prep)}
    print(f"{cfg.model.name} on {out['dataset']} ({split}, {res['images']} images, "
          f"{cfg.data.img_size} px, {which} weights): top-1 {res['top1']:.2f}%  top-5 "
          f"{res['top5']:.2f}%  loss {res['loss']:.4f}  {res['img_per_s']:.1f} img/s", flush=True)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(out, fh, indent=2)
    return out
