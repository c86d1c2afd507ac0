"""The input preprocessing of a run: size, evaluation crop, interpolation, mean and std, each
with where it came from.

Weights are only as good as the transform they are evaluated with: the release's ViG
weights expect mean = std = 0.5, bicubic resizing and a centre crop of ``crop_pct`` 0.9
(0.95 for pvig_b), which the zoo records in each model's ``pretrained_cfg``. Each of
``data.mean``, ``data.std``, ``data.interpolation`` and ``data.crop_pct`` is resolved in
this order:

1. ``config``: the value given in the config;
2. ``dataset``: for ``digits`` and the sets of :mod:`vig_pyg.datasets.table`, which are
   used at their native size: no crop (1.0), bicubic, and the table's statistics where the
   set's entry says so (``stats_by_default``), else 0.5;
3. ``model``: the zoo model's ``pretrained_cfg`` (imagefolder), read from the zoo's table
   without building the network;
4. ``default``: a model without a pretrained cfg gets 1.0, bicubic and 0.5.

The evaluation transform resizes the shorter side to ``floor(img_size / crop_pct)`` (timm's
rounding) and crops the centre ``img_size`` square; training's transforms take the
interpolation, mean and std from here too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..datasets.table import facts_of
from .config import Config, ConfigError, in_chans

#: The keys resolved here, in the order they are printed.
KEYS = ("crop_pct", "interpolation", "mean", "std")

#: Native-size sets (digits and the table's): not cropped, resized bicubically.
_NATIVE = dict(crop_pct=1.0, interpolation="bicubic")
#: A model without a pretrained cfg.
_GENERIC = dict(crop_pct=1.0, interpolation="bicubic", mean=(0.5,), std=(0.5,))


@dataclass(frozen=True)
class Preprocessing:
    """Resolved preprocessing; ``sources`` maps each of :data:`KEYS` (and ``img_size``) to
    ``config``, ``dataset``, ``model`` or ``default``."""
    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple
    std: tuple
    sources: dict

    @property
    def resize_size(self) -> int:
        """The shorter side before the centre crop: ``floor(img_size / crop_pct)``, as
        timm's ``transforms_imagenet_eval`` rounds it."""
        return math.floor(self.img_size / self.crop_pct)

    def describe(self) -> str:
        """One line: every value with its source."""
        s = self.sources
        return (f"preprocessing: size {self.img_size} ({s['img_size']}), crop_pct "
                f"{self.crop_pct:g} ({s['crop_pct']}; resize {self.resize_size}, centre crop "
                f"{self.img_size}), interpolation {self.interpolation} ({s['interpolation']}), "
                f"mean {_fmt(self.mean)} ({s['mean']}), std {_fmt(self.std)} ({s['std']})")


def _fmt(values: tuple) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def eval_preprocessing(cfg: Config) -> Preprocessing:
    """The preprocessing of ``cfg``'s run (see the module's docstring for the order)."""
    d, chans = cfg.data, in_chans(cfg)
    fallback, origin = _fallback(cfg, chans)
    values, sources = {}, {"img_size": "config"}
    for key in KEYS:
        given = getattr(d, key)
        if given is not None:
            values[key] = tuple(given) if key in ("mean", "std") else given
            sources[key] = "config"
        else:
            values[key], sources[key] = fallback[key], origin
    return Preprocessing(img_size=d.img_size, sources=sources, **values)


def _fallback(cfg: Config, chans: int) -> tuple[dict, str]:
    """``(values, source)`` for the keys the config leaves null."""
    name = cfg.data.dataset
    facts = facts_of(name)
    if facts is not None or name == "digits":
        return dict(_NATIVE, **_dataset_stats(facts, chans)), "dataset"
    model = model_preprocessing(cfg.model.name)
    if model is None:
        return {k: _per_channel(v, chans, "default") if k in ("mean", "std") else v
                for k, v in _GENERIC.items()}, "default"
    model = {k: model[k] for k in KEYS}
    for key in ("mean", "std"):
        model[key] = _per_channel(model[key], chans, f"model {cfg.model.name}'s {key}")
    return model, "model"


def _dataset_stats(facts, chans: int) -> dict:
    """The set's mean/std with one value per channel: the table's statistics for a set with
    ``stats_by_default`` (a grey set's value repeated for a 3-channel model, whose input
    repeats the grey channel), else 0.5. A colour set's statistics do not describe its grey
    conversion, so in_chans=1 gets 0.5."""
    out = {}
    for key in ("mean", "std"):
        stats = tuple(getattr(facts, key)) if facts is not None else ()
        if facts is None or not facts.stats_by_default or len(stats) not in (1, chans):
            out[key] = (0.5,) * chans
        else:
            out[key] = stats * (chans // len(stats))
    return out


def _per_channel(values, chans: int, what: str) -> tuple:
    """``values`` with one entry per input channel: as is when the counts agree, a uniform
    value repeated; other statistics do not describe another channel count."""
    values = tuple(values)
    if len(values) == chans:
        return values
    if len(set(values)) == 1:
        return values[:1] * chans
    raise ConfigError(f"{what} has {len(values)} values but model.in_chans={chans}: set "
                      f"data.mean and data.std with {chans} values each")


def model_preprocessing(name: str) -> Optional[dict]:
    """The zoo model ``name``'s ``pretrained_cfg`` (mean, std, interpolation, crop_pct, ...),
    from the zoo's table as timm's registration reads it (no network is built); None for a
    model outside the zoo."""
    from ..models.config import ViGConfig
    from ..models.zoo import ZOO, pretrained_cfg

    entry = ZOO.get(name)
    if entry is None:
        return None
    return pretrained_cfg(ViGConfig(kind=entry.kind, name=name))


__all__ = ["Preprocessing", "eval_preprocessing", "model_preprocessing", "KEYS"]
