"""One builder for every zoo model: ``create_model(name, ...)``, and the checks of its
options (``model_config``, ``validate_model_options``; one-line :class:`ModelConfigError`).

>>> model = create_model("pvig_ti", num_classes=10, img_size=(224, 160))
"""
from __future__ import annotations

import difflib
from numbers import Real
from typing import Any, Callable

from ..errors import VigPygError
from ..layers.activation import check_activation
from .checkpoint import load_checkpoint
from .config import KNN_BACKENDS, ModelConfigError, ViGConfig
from .vig import ViG
from .zoo import ZOO, ZooModel, list_models


# ---------------------------------------------------------------------------- options
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v) -> bool:
    return _is_int(v) or (isinstance(v, (list, tuple)) and len(v) > 0
                          and all(_is_int(x) for x in v))


def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _activation(v) -> bool:
    try:
        check_activation(v)
    except VigPygError:
        return False
    return True


#: Every override: name -> (kinds it applies to, value check, what it takes).
OVERRIDES: dict[str, tuple[tuple, Callable[[Any], bool], str]] = {
    "channels": ((), _is_int, "an int (the width of every block)"),
    "depth": (("isotropic",), _is_int, "an int (number of blocks)"),
    "stem_stride": (("isotropic",), _is_int, "one of 1, 2, 4, 8, 16 (16 as released)"),
    "blocks": (("pyramid",), _ints, "a list of ints, blocks per stage"),
    "reduce_ratios": (("pyramid",), _ints, "a list of ints, key pooling per stage"),
    "stochastic": ((), lambda v: isinstance(v, bool), "a bool (stochastic dilation)"),
    "epsilon": ((), _number, "a number in [0, 1]"),
    "dropout": ((), _number, "a number in [0, 1) (before the classifier)"),
    "knn_backend": ((), lambda v: v in KNN_BACKENDS, f"one of {list(KNN_BACKENDS)}"),
    "in_chans": ((), _is_int, "an int (input channels)"),
    "act": ((), _activation, "an activation name, e.g. 'gelu', 'relu', 'leakyrelu', "
                             "'prelu', 'hswish'"),
    "grapher_fc": ((), lambda v: isinstance(v, bool), "a bool (Grapher fc1/fc2; False: the "
                                                      "graph conv maps C -> C)"),
    "ffn": ((), lambda v: isinstance(v, bool), "a bool (the FFN of every block)"),
    "groups": ((), _is_int, "an int dividing every stage's channels (4 as released; "
                            "pyg: convs are dense and ignore it)"),
    "relative_pos": ((), lambda v: isinstance(v, bool),
                     "a bool (the relative-position distance term; default pyramid yes, "
                     "isotropic no)"),
    "dilation": ((), lambda v: isinstance(v, bool) or (_is_int(v) and v >= 1),
                 "True (the release's schedule), False (1 everywhere) or a max dilation"),
    "graph": ((), lambda v: isinstance(v, str) or (isinstance(v, (list, tuple)) and all(
        isinstance(x, str) for x in v)), "a graph builder name (vig_pyg.graph."
                                         "list_graph_builders()), or a list of one per stage"),
    "graph_options": ((), lambda v: v is None or isinstance(v, (dict, list, tuple)),
                      "a dict of the builder's options, or a list of one per stage"),
    "conv_options": ((), lambda v: v is None or isinstance(v, dict),
                     "a dict of the aggregator's keyword arguments, e.g. {'sign': 'i-j'}"),
}
_PYRAMID_CHANNELS = (lambda v: isinstance(v, (list, tuple)) and _ints(v),
                     "a list of ints, one per stage")


def list_overrides(name: str) -> list[str]:
    """The ``**overrides`` :func:`create_model` accepts for model ``name``."""
    kind = _entry(name).kind
    return [key for key, (kinds, _, _) in OVERRIDES.items() if not kinds or kind in kinds]


def _entry(name: str) -> ZooModel:
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


def _check_overrides(name: str, kind: str, overrides: dict) -> None:
    valid = list_overrides(name)
    unknown = [key for key in overrides if key not in valid]
    if unknown:
        raise ModelConfigError(f"unknown override(s) {unknown} for {name} ({kind}); valid "
                               f"overrides: {valid}")
    for key, value in overrides.items():
        _, ok, takes = OVERRIDES[key]
        if key == "channels" and kind == "pyramid":
            ok, takes = _PYRAMID_CHANNELS
        if not ok(value):
            raise ModelConfigError(f"{name}: override {key}={value!r} is invalid; {key} takes "
                                   f"{takes}")


def _check_args(num_classes, k, drop_path_rate) -> None:
    if not _is_int(num_classes) or num_classes < 0:
        raise ModelConfigError(f"num_classes must be an int >= 0 (0: no classifier), got "
                               f"{num_classes!r}")
    if not _is_int(k) or k < 1:
        raise ModelConfigError(f"k (neighbours per node) must be an int >= 1, got {k!r}")
    if not _number(drop_path_rate):
        raise ModelConfigError(f"drop_path_rate must be a number in [0, 1), got "
                               f"{drop_path_rate!r}")


def model_config(name: str, num_classes: int = 1000, conv: str = "mr", k: int = 9,
                 drop_path_rate: float = 0.0, img_size=224, **overrides) -> ViGConfig:
    """The validated :class:`ViGConfig` that :func:`create_model` builds; every problem
    raises :class:`ModelConfigError` (one line naming the valid choices)."""
    entry = _entry(name)
    kind = entry.kind
    _check_overrides(name, kind, overrides)
    _check_args(num_classes, k, drop_path_rate)
    _check_conv(conv)
    fields = dict(entry.arch)
    fields.update(overrides)
    if kind == "isotropic":
        fields["blocks"] = (fields.pop("depth"),)
        fields["reduce_ratios"] = (1,)
    else:
        fields.setdefault("reduce_ratios", (4, 2, 1, 1))
        fields["stem_stride"] = 4
    cfg = ViGConfig(kind=kind, name=name, num_classes=num_classes, conv=conv, k=k,
                    drop_path_rate=drop_path_rate, img_size=img_size, **fields)
    return cfg.validate()


def validate_model_options(name: str, conv: str = "mr", **options) -> ViGConfig:
    """Checks what :func:`create_model` would be given (without building anything) and
    returns the config; ``options`` are its keywords (``num_classes``, ``k``,
    ``drop_path_rate``, ``img_size``, overrides; ``checkpoint`` is ignored). Raises
    :class:`ModelConfigError` with one line naming the valid choices."""
    options.pop("checkpoint", None)
    return model_config(name, conv=conv, **options)


def create_model(name: str, num_classes: int = 1000, conv: str = "mr", k: int = 9,
                 drop_path_rate: float = 0.0, checkpoint=None, img_size=224, **overrides):
    """Builds a zoo model.

    Args:
        name: one of :func:`list_models`.
        num_classes: classifier outputs (0: none; the model returns the 1024-d embedding).
        conv: graph convolution (``vig_pyg.conv.list_convs()``; ``mr`` is the release's).
        k: neighbours per node (isotropic models grow it linearly to 2k over the blocks).
        drop_path_rate: stochastic depth of the last block (linear from 0).
        checkpoint: a path (or an already loaded dict) with weights: an official release
            file or a :func:`~vig_pyg.models.save_checkpoint` file; position tables are
            resized bicubically when ``img_size`` differs from the checkpoint's.
        img_size: the input size the position tables are built for (int or (H, W)); the
            model accepts other sizes too, resizing the tables on the fly.
        **overrides: see :data:`OVERRIDES` / :func:`list_overrides`: isotropic
            ``channels``, ``depth``, ``stem_stride``; pyramid ``channels``, ``blocks``,
            ``reduce_ratios``; both ``stochastic``, ``epsilon``, ``dropout``,
            ``knn_backend``, ``in_chans``, ``act``, the ablation switches
            ``grapher_fc``, ``ffn``, ``groups``, ``relative_pos``, ``dilation``, and
            ``graph`` (a graph builder, ``vig_pyg.graph.list_graph_builders()``; default
            ``knn``) with ``graph_options`` (its options; a list of one per stage for a
            pyramid, e.g. ``graph="axial", graph_options=[{"hop": 4}, {"hop": 2}, {"hop": 2},
            {"hop": 1}]``), and ``conv_options`` (the aggregator's keyword arguments, e.g.
            ``{"sign": "i-j", "zero_start": True}`` for ``mr``).
    """
    model = ViG(model_config(name, num_classes, conv, k, drop_path_rate, img_size, **overrides))
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


__all__ = ["OVERRIDES", "list_overrides", "model_config", "validate_model_options",
           "create_model"]
