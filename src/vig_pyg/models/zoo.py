"""The model zoo: the seven released variants as data, one builder, and timm registration.

>>> model = create_model("pvig_ti", num_classes=10, img_size=(224, 160))
>>> import timm; model = timm.create_model("vig_ti", num_classes=10)   # same builder
"""
from __future__ import annotations

import difflib
from typing import Any

from .config import KNN_BACKENDS, ModelConfigError, ViGConfig

#: The released variants (SPEC "Model zoo"). Isotropic: stride-16 stem, one stage.
ZOO: dict[str, dict[str, Any]] = {
    "vig_ti": dict(kind="isotropic", channels=192, depth=12),
    "vig_s": dict(kind="isotropic", channels=320, depth=16),
    "vig_b": dict(kind="isotropic", channels=640, depth=16),
    "pvig_ti": dict(kind="pyramid", channels=(48, 96, 240, 384), blocks=(2, 2, 6, 2)),
    "pvig_s": dict(kind="pyramid", channels=(80, 160, 400, 640), blocks=(2, 2, 6, 2)),
    "pvig_m": dict(kind="pyramid", channels=(96, 192, 384, 768), blocks=(2, 2, 16, 2)),
    "pvig_b": dict(kind="pyramid", channels=(128, 256, 512, 1024), blocks=(2, 2, 18, 2)),
}
#: Paper ImageNet top-1 of the released weights (224 px).
TOP1 = {"vig_ti": 73.9, "vig_s": 80.4, "vig_b": 82.3, "pvig_ti": 78.2, "pvig_s": 82.1,
        "pvig_m": 83.1, "pvig_b": 83.7}

_KIND_OVERRIDES = {
    "isotropic": ("channels", "depth", "stem_stride"),
    "pyramid": ("channels", "blocks", "reduce_ratios"),
}
_COMMON_OVERRIDES = ("stochastic", "epsilon", "dropout", "knn_backend", "in_chans", "act",
                     "graph", "graph_options")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (and registered with timm)."""
    return list(ZOO)


def list_overrides(name: str) -> list[str]:
    """The ``**overrides`` :func:`create_model` accepts for model ``name``."""
    return list(_KIND_OVERRIDES[_entry(name)["kind"]]) + list(_COMMON_OVERRIDES)


def _entry(name: str) -> dict:
    if name not in ZOO:
        close = difflib.get_close_matches(str(name), ZOO, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ModelConfigError(f"unknown model {name!r}{hint}; valid models: {list_models()}")
    return ZOO[name]


def _check_conv(conv: str) -> None:
    from ..conv.registry import conv_factory

    try:
        conv_factory(conv)
    except ValueError as e:
        raise ModelConfigError(str(e)) from None


def model_config(name: str, num_classes: int = 1000, conv: str = "mr", k: int = 9,
                 drop_path_rate: float = 0.0, img_size=224, **overrides) -> ViGConfig:
    """The validated :class:`ViGConfig` that :func:`create_model` builds."""
    entry = dict(_entry(name))
    kind = entry.pop("kind")
    valid = list_overrides(name)
    unknown = [key for key in overrides if key not in valid]
    if unknown:
        raise ModelConfigError(f"unknown override(s) {unknown} for {name} ({kind}); valid "
                               f"overrides: {valid}")
    if overrides.get("knn_backend", "auto") not in KNN_BACKENDS:
        raise ModelConfigError(f"knn_backend must be one of {KNN_BACKENDS}, got "
                               f"{overrides['knn_backend']!r}")
    _check_conv(conv)
    entry.update(overrides)
    if kind == "isotropic":
        depth = entry.pop("depth")
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise ModelConfigError(f"depth must be an int, got {depth!r}")
        if not isinstance(entry["channels"], int) or isinstance(entry["channels"], bool):
            raise ModelConfigError(f"channels of an isotropic model must be an int, got "
                                   f"{entry['channels']!r}")
        entry["blocks"] = (depth,)
        entry["reduce_ratios"] = (1,)
    else:
        entry.setdefault("reduce_ratios", (4, 2, 1, 1))
        entry["stem_stride"] = 4
    cfg = ViGConfig(kind=kind, name=name, num_classes=num_classes, conv=conv, k=k,
                    drop_path_rate=drop_path_rate, img_size=img_size, **entry)
    return cfg.validate()


def create_model(name: str, num_classes: int = 1000, conv: str = "mr", k: int = 9,
                 drop_path_rate: float = 0.0, checkpoint=None, img_size=224, **overrides):
    """Builds a zoo model.

    Args:
        name: one of :func:`list_models`.
        num_classes: classifier outputs.
        conv: graph convolution (``vig_pyg.conv.list_convs()``; ``mr`` is the release's).
        k: neighbours per node (isotropic models grow it linearly to 2k over the blocks).
        drop_path_rate: stochastic depth of the last block (linear from 0).
        checkpoint: a path (or an already loaded dict) with weights: an official release
            file or a :func:`~vig_pyg.models.save_checkpoint` file; position tables are
            resized bicubically when ``img_size`` differs from the checkpoint's.
        img_size: the input size the position tables are built for (int or (H, W)); the
            model accepts other sizes too, resizing the tables on the fly.
        **overrides: config fields: isotropic ``channels``, ``depth``, ``stem_stride``;
            pyramid ``channels``, ``blocks``, ``reduce_ratios``; both ``stochastic``,
            ``epsilon``, ``dropout``, ``knn_backend``, ``in_chans``, ``act``, ``graph``
            (a graph builder, ``vig_pyg.graph.list_graph_builders()``; default ``knn``) and
            ``graph_options`` (its options; a list of one per stage for a pyramid, e.g.
            ``graph="axial", graph_options=[{"hop": 4}, {"hop": 2}, {"hop": 2}, {"hop": 1}]``).
    """
    from .vig import ViG

    model = ViG(model_config(name, num_classes, conv, k, drop_path_rate, img_size, **overrides))
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model


# ---------------------------------------------------------------------------- timm
#: Pretrained configs in timm's format (timm.data.resolve_data_config reads them).
default_cfgs = {
    name: dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=None,
               crop_pct=0.95 if name == "pvig_b" else 0.9, interpolation="bicubic",
               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), first_conv="stem.convs.0",
               classifier="prediction.4", license="mit",
               notes=(f"ImageNet-1k top-1 {TOP1[name]} (paper); no download: pass the "
                      f"release file as checkpoint=PATH",))
    for name in ZOO
}

_TIMM_IGNORED = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def _timm_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        for key in _TIMM_IGNORED:
            if kwargs.pop(key, None) and key == "features_only":
                raise ModelConfigError("features_only is not supported; call "
                                       "model.forward_features(x) for the per-stage maps")
        if "drop_rate" in kwargs:
            kwargs.setdefault("dropout", kwargs.pop("drop_rate"))
        if pretrained and kwargs.get("checkpoint") is None:
            raise ModelConfigError(
                f"vig_pyg bundles no weights for {name}: download the official release file "
                f"and pass it, e.g. timm.create_model({name!r}, checkpoint='vig_ti.pth')")
        return create_model(name, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{name} ({ZOO[name]['kind']} ViG) through vig_pyg.models.create_model."
    return entrypoint


def _register_timm() -> None:
    from timm.models import register_model

    for name in ZOO:
        fn = _timm_entrypoint(name)
        globals()[name] = fn  # timm lists entrypoints in this module's __all__
        register_model(fn)


__all__ = ["ZOO", "TOP1", "list_models", "list_overrides", "model_config", "create_model"]
_register_timm()
