"""Inspect one or several models end to end: capture, statistics, pictures, summary.

:func:`inspect_run` is what ``vig-pyg inspect`` and ``make demo`` call. It writes to
``output``: ``overlay_<model>_<image>.png``, ``indegree_<model>_<image>.png`` (for the first
``max_pictures`` images), ``stats_vs_depth.png`` (every model in the same plots),
``stats.csv`` (one row per model, block and image, plus ``image = all`` rows) and
``summary.txt``.
"""
from __future__ import annotations

import os
import re

import torch
from torch import Tensor, nn

from ..errors import VigPygError
from .capture import capture, graphers
from .images import load_images, normalise
from .plots import check_centres, default_centres, plot_in_degree, plot_overlay, \
    plot_stats_vs_depth
from .stats import foreground_mask, format_table, stats_table, write_csv

#: Columns of the summary's table (the CSV has all of ``stats.COLUMNS``).
SUMMARY_COLUMNS = ["model", "block", "grid", "r", "reach_mean", "reach_median", "beyond",
                   "self_loops", "indeg_max", "indeg_gini", "jaccard_prev", "diversity_in",
                   "diversity_conv", "dirichlet_in", "cosine_in", "homophily"]


def load_for_inspection(checkpoint=None, model: str | None = None, conv: str = "mr",
                        seed: int = 0) -> nn.Module:
    """A model to inspect: a vig_pyg checkpoint (``load_model``), a release file with its
    ``model`` name (``create_model(model, checkpoint=...)``), or ``model`` with random
    weights (seeded)."""
    from ..models import create_model, load_model, read_checkpoint

    if checkpoint is None:
        if model is None:
            raise VigPygError("nothing to inspect: pass --checkpoint PATH or --model NAME")
        torch.manual_seed(seed)
        return create_model(model, conv=conv)
    state, meta = read_checkpoint(checkpoint)
    if meta.get("config"):
        if model is not None and meta.get("model_name") != model:
            raise VigPygError(f"checkpoint {os.fspath(checkpoint)!r} is a "
                              f"{meta.get('model_name')}, not a {model}: drop --model or pass "
                              f"a {model} checkpoint")
        return load_model(checkpoint)
    if model is None:
        raise VigPygError(f"checkpoint {os.fspath(checkpoint)!r} carries no model config (a "
                          f"release file?): name its model with --model NAME")
    head = state.get("prediction.4.weight")
    classes = int(head.shape[0]) if head is not None else 1000
    return create_model(model, conv=conv, num_classes=classes, checkpoint=checkpoint)


def select_blocks(count: int, blocks=None, spread: int = 4) -> list[int]:
    """Grapher indices to draw: ``blocks`` (negative counts from the end) checked against
    the ``count`` Graphers, or ``spread`` of them evenly from the first to the last."""
    if blocks is None:
        n = min(spread, count)
        return sorted({round(i * (count - 1) / max(n - 1, 1)) for i in range(n)})
    out = []
    for b in blocks:
        if not -count <= b < count:
            raise VigPygError(f"block {b} is out of range: the model has {count} Grapher "
                              f"blocks, 0..{count - 1}")
        out.append(b % count)
    return out


def _label(model: nn.Module, taken: set, fallback: str) -> str:
    cfg = getattr(model, "config", None)
    label = f"{cfg.name}-{cfg.conv}" if cfg is not None else fallback
    label = re.sub(r"[^A-Za-z0-9_.:-]+", "_", label)
    if label in taken:
        label = f"{label}-{len(taken)}"
    taken.add(label)
    return label


def _as_images(images, size) -> tuple[Tensor, list[str]]:
    if isinstance(images, Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise VigPygError(f"images must be a [B, 3, H, W] tensor in [0, 1], got "
                              f"{tuple(images.shape)}")
        return images.float(), [f"img{i}" for i in range(images.shape[0])]
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    return load_images(images, size)


def inspect_run(models, output, images=None, classes=None, masks=None, blocks=None,
                centres=None, radius: float = 2.0, mean=0.5, std=0.5,
                max_pictures: int = 3, names=None) -> dict:
    """Capture, measure and draw the graphs of ``models`` on ``images``.

    Args:
        models: a model, a vig_pyg checkpoint path, or a list of them (compared in the
            same plots and table).
        output: directory for the files (created).
        images: ``None`` (scikit-image's photographs), image files / a folder, or a
            ``[B, 3, H, W]`` tensor in [0, 1] (resized to the first model's input size).
        classes: ``[B]`` class per image (labels its ink patches, see
            :func:`~.stats.foreground_mask`) or ``masks``: ``[B, H, W]`` pixel labels;
            either gives the homophily column.
        blocks: Grapher indices to draw (default: up to 4 spread from shallow to deep).
        centres: ``(row, col)`` patches of the first drawn block's grid (default: spread).
        radius: for the ``beyond`` column, in patches.

    Returns ``{"rows": table rows, "files": written paths, "summary": text}``.
    """
    _require("matplotlib", "PIL")
    if images is None:
        _require("skimage")
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    models = [m if isinstance(m, nn.Module) else load_for_inspection(m) for m in models]
    size = tuple(models[0].config.img_size)
    pixels, image_names = _as_images(images, size)
    if tuple(pixels.shape[-2:]) != size:
        pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bicubic",
                                                 align_corners=False).clamp(0, 1)
    names = list(names) if names else image_names
    if masks is None and classes is not None:
        masks = foreground_mask(pixels, torch.as_tensor(classes))
    os.makedirs(output, exist_ok=True)
    tables, files, taken = {}, [], set()
    display = [p.permute(1, 2, 0).numpy() for p in pixels[:max_pictures]]
    for model in models:
        label = _label(model, taken, "model")
        chosen = select_blocks(len(graphers(model)), blocks)
        result = capture(model, normalise(pixels, mean, std))
        drawn = [result.blocks[i] for i in chosen]
        spots = (check_centres(centres, drawn[0].grid) if centres
                 else default_centres(drawn[0].grid))
        tables[label] = stats_table(result.blocks, radius, masks, model=label)
        for b, image in enumerate(display):
            stem = f"{label}_{names[b]}"
            files.append(plot_overlay(image, drawn, b, spots,
                                      os.path.join(output, f"overlay_{stem}.png"),
                                      f"{label}: neighbours of {len(spots)} centres, {names[b]}"))
            files.append(plot_in_degree(image, drawn, b, os.path.join(output,
                                        f"indegree_{stem}.png"), f"{label}: {names[b]}"))
    files.append(plot_stats_vs_depth(tables, os.path.join(output, "stats_vs_depth.png")))
    rows = [row for table in tables.values() for row in table]
    files.append(write_csv(rows, os.path.join(output, "stats.csv")))
    summary = _summary(tables, len(pixels), radius)
    path = os.path.join(output, "summary.txt")
    with open(path, "w") as fh:
        fh.write(summary + "\n")
    files.append(path)
    return {"rows": rows, "files": files, "summary": summary}


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise VigPygError(f"inspect needs {', '.join(missing)}: pip install 'vig_pyg[diag]'"
                          + (" (or pass --images)" if missing == ["skimage"] else ""))


def _summary(tables: dict, num_images: int, radius: float) -> str:
    rows = [r for table in tables.values() for r in table if r["image"] == "all"]
    return "\n".join([
        f"graph statistics per Grapher block, {num_images} image(s), models: "
        f"{', '.join(tables)}",
        f"reach in patches of the block's grid; beyond = share of edges longer than "
        f"{radius:g} patches; features: in = block input, conv = after the graph convolution",
        "", format_table(rows, SUMMARY_COLUMNS)])

