"""Detection checkpoints -> evaluation numbers and pictures of predictions."""
from __future__ import annotations

import json
import os

import torch

from ..train import checkpoint as ckpt_io
from ..train.config import ConfigError
from ..train.setup import resolve_device, resolve_precision
from .config import build_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# colour-blind-friendly palette (Okabe-Ito), one colour per class, cycled
PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
           "#000000", "#999999", "#FFFFFF"]


def read_detection_checkpoint(path: str) -> dict:
    """A ``vig-pyg detect train`` checkpoint (run directory or file), checked."""
    from .state import FORMAT

    path = ckpt_io.resolve_resume_path(path) if os.path.isdir(path) else path
    payload = ckpt_io.load_file(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return payload
    if isinstance(payload, dict) and (payload.get("format") in ("vig_pyg", ckpt_io.FORMAT)
                                      or any("prediction." in str(k) for k in payload)):
        raise ConfigError(f"'{path}' holds classifier weights, not a detector: to start a "
                          f"detector from them use vig-pyg detect train --set "
                          f"model.checkpoint={path}")
    raise ConfigError(f"'{path}' is not a vig-pyg detection checkpoint: pass a run of vig-pyg "
                      "detect train (RUN or RUN/checkpoints/last.pt)")


def load_detector(path: str, config=None, overrides=()):
    """``(detector in eval mode, config, checkpoint payload)``; the run's own config unless
    ``config`` (a YAML path) is given; ``overrides`` adjust it."""
    from .setup import make_detector

    payload = read_detection_checkpoint(path)
    cfg = build_config(config, overrides, base=payload.get("config") if config is None else None)
    model = make_detector(cfg, int(payload["num_classes"]), with_checkpoint=False)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint '{path}' does not fit the configured detector "
                          f"({str(exc).strip().splitlines()[0][:160]}): drop --config / --set "
                          "model.* to use the run's own settings") from None
    return model.eval(), cfg, payload


def run_eval(checkpoint: str, config=None, overrides=(), json_path=None, progress=True) -> dict:
    """COCO AP of a detection checkpoint on its config's validation set (printed)."""
    from .data import build_sets, eval_loader
    from .loop import evaluate
    from ..train.distributed import DistInfo

    model, cfg, payload = load_detector(checkpoint, config, overrides)
    device = resolve_device(cfg)
    model.to(device)
    _, val_set = build_sets(cfg, train=False, progress=progress)
    if val_set.num_classes != int(payload["num_classes"]):
        raise ConfigError(f"the validation json has {val_set.num_classes} categories, the "
                          f"detector {payload['num_classes']}: evaluate on data of its classes")
    masks = cfg.model.detector == "maskrcnn"
    metrics = evaluate(model, eval_loader(val_set, cfg, DistInfo()), val_set, device,
                       resolve_precision(cfg, device), masks, progress=progress)
    line = " ".join(f"box_{k} {metrics[f'box_{k}']:.3f}" for k in ("AP", "AP50", "AP75", "APs",
                                                                   "APm", "APl"))
    if masks:
        line += "  |  " + " ".join(f"mask_{k} {metrics[f'mask_{k}']:.3f}"
                                   for k in ("AP", "AP50", "AP75"))
    print(f"{line}  ({metrics['images']} images, {metrics['img_per_s']:.1f} img/s)")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(metrics, fh, indent=2)
    return metrics


def list_images(paths) -> list[str]:
    """Image files from files and directories (sorted); a one-line error for none/missing."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(os.path.join(p, f) for f in os.listdir(p)
                          if f.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise ConfigError(f"image path '{p}' does not exist: pass image files or folders")
    if not out:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {list(paths)}")
    return out


def draw(image: torch.Tensor, output: dict, class_names, score_threshold: float = 0.5,
         mask_threshold: float = 0.5) -> torch.Tensor:
    """uint8 ``[3, H, W]`` with the kept detections' masks (translucent) and boxes drawn."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = output["scores"] >= score_threshold
    labels = output["labels"][keep].tolist()
    colours = [PALETTE[(lab - 1) % len(PALETTE)] for lab in labels]
    if "masks" in output and keep.any():
        masks = output["masks"][keep][:, 0] >= mask_threshold
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colours)
    text = [f"{class_names[lab - 1]} {s:.2f}" for lab, s in
            zip(labels, output["scores"][keep].tolist())]
    return draw_bounding_boxes(image, output["boxes"][keep], text, colors=colours, width=1)


@torch.no_grad()
def run_predict(checkpoint: str, images, output_dir: str, score_threshold: float = 0.5,
                overrides=()) -> list[str]:
    """Draws the detections on every image and writes ``OUTPUT/<name>.png``."""
    from torchvision.io import ImageReadMode, decode_image, write_png

    files = list_images(images)
    model, cfg, payload = load_detector(checkpoint, None, overrides)
    device = resolve_device(cfg)
    model.to(device)
    names = payload.get("class_names") or [str(i) for i in range(1, payload["num_classes"] + 1)]
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path in files:
        try:
            image = decode_image(path, mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            raise ConfigError(f"cannot read image '{path}' ({str(exc).splitlines()[0][:120]})") from None
        out = model([image.float().div(255).to(device)])[0]
        out = {k: v.cpu() for k, v in out.items()}
        target = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        write_png(draw(image, out, names, score_threshold), target)
        kept = int((out["scores"] >= score_threshold).sum())
        print(f"{path}: {kept} detections -> {target}")
        written.append(target)
    return written


__all__ = ["run_eval", "run_predict", "load_detector", "read_detection_checkpoint", "draw",
           "list_images"]
