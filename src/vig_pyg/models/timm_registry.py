"""The zoo registered with timm: ``timm.create_model("vig_ti", num_classes=10)`` builds
through :func:`~vig_pyg.models.create_model`, and ``features_only=True`` gives timm's
feature extractor over :meth:`~vig_pyg.models.ViG.forward_intermediates`.

>>> import timm; model = timm.create_model("vig_ti", num_classes=10)   # same builder
>>> feats = timm.create_model("pvig_s", features_only=True, out_indices=(1, 2, 3))
"""
from __future__ import annotations

from .config import ModelConfigError, ViGConfig
from .factory import create_model
from .zoo import ZOO, pretrained_cfg

#: Pretrained configs in timm's format, from the table.
default_cfgs = {name: pretrained_cfg(ViGConfig(kind=entry.kind, name=name))
                for name, entry in ZOO.items()}

_TIMM_IGNORED = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
_FEATURE_KEYS = ("out_indices", "output_fmt", "feature_cls", "flatten_sequential",
                 "feature_cfg")


def _features_only(model, name: str, options: dict):
    """timm's ``features_only=True``: the model wrapped in timm's ``FeatureGetterNet``,
    which prunes the stages after the last one asked for and the head, and returns the maps
    of ``out_indices`` (default: every stage) from :meth:`ViG.forward_intermediates`."""
    from timm.models._features import FeatureGetterNet  # not re-exported by timm.models

    cls = options.pop("feature_cls", "getter")
    options.pop("flatten_sequential", None)
    options.update(options.pop("feature_cfg", None) or {})
    if cls not in ("getter", None):
        raise ModelConfigError(f"{name}: feature_cls={cls!r} is not supported; ViG models "
                               f"extract features with forward_intermediates ('getter')")
    out_indices = options.pop("out_indices", tuple(range(len(model.feature_info))))
    net = FeatureGetterNet(model, out_indices=out_indices,
                           output_fmt=options.pop("output_fmt", "NCHW"))
    net.pretrained_cfg = net.default_cfg = model.pretrained_cfg
    return net


def _timm_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        for key in _TIMM_IGNORED:
            kwargs.pop(key, None)
        features = kwargs.pop("features_only", False)
        feature_options = {key: kwargs.pop(key) for key in _FEATURE_KEYS if key in kwargs}
        if feature_options and not features:
            raise ModelConfigError(f"{sorted(feature_options)} need features_only=True")
        if "drop_rate" in kwargs:
            kwargs.setdefault("dropout", kwargs.pop("drop_rate"))
        if pretrained and kwargs.get("checkpoint") is None:
            raise ModelConfigError(
                f"vig_pyg bundles no weights for {name}: download the official release file "
                f"and pass it, e.g. timm.create_model({name!r}, checkpoint='vig_ti.pth')")
        model = create_model(name, **kwargs)
        return _features_only(model, name, feature_options) if features else model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{name} ({ZOO[name].kind} ViG) through vig_pyg.models.create_model."
    return entrypoint


def _register_timm() -> None:
    from timm.models import register_model

    for name in ZOO:
        fn = _timm_entrypoint(name)
        globals()[name] = fn  # timm lists entrypoints in this module's __all__
        register_model(fn)


_register_timm()
