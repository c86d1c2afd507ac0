"""Training configuration: nested dataclasses, YAML files and ``--set key=value`` overrides.

A config has eight sections (``model``, ``data``, ``aug``, ``optim``, ``sched``, ``ema``,
``train``, ``log``); every key has a default, so a YAML file only lists what it changes.
Keys are addressed with dots on the command line: ``--set optim.lr=1e-3 train.epochs=5``.
Values are parsed as YAML (``[1, 2]``, ``null``, ``true``) and then converted to the key's
type, so ``1e-3`` is a float even though YAML 1.1 reads it as a string. Unknown keys are an
error that names the key and lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from ..errors import ConfigError, one_line  # noqa: F401  (ConfigError: re-exported)


@dataclass
class ModelConfig:
    """The network: the arguments of ``vig_pyg.models.create_model``.

    Besides the keys below, the section takes every override the chosen model accepts
    (``vig_pyg.models.list_overrides(name)``: ``channels``, ``depth``, ``stem_stride``,
    ``blocks``, ``reduce_ratios``, ``act``, ``dropout``, ...), written like the others:
    ``--set model.channels=64 model.depth=4``. They are kept in ``options`` and checked by
    the models package itself, with the same errors as ``create_model``'s.
    """
    name: str = "vig_ti"                 # a zoo name: vig_ti, vig_s, vig_b, pvig_ti, pvig_s, pvig_m, pvig_b
    conv: str = "mr"                     # any name of vig_pyg.conv.list_convs(), pyg:<Class>, or a registered layer
    k: int = 9                           # neighbours per node
    drop_path_rate: float = 0.0          # stochastic depth rate of the last block
    checkpoint: Optional[str] = None     # initial weights (official release or ours), e.g. to fine-tune
    imports: list = field(default_factory=list)  # modules (or .py files) imported first, e.g. a @register_conv layer
    options: dict = field(default_factory=dict)  # the model's other overrides (see above)


@dataclass
class DataConfig:
    """Dataset, input pipeline and loader."""
    dataset: str = "digits"              # digits (embedded), cifar10, cifar100, imagefolder
    root: Optional[str] = None           # dataset directory (cifar*: torchvision layout; imagefolder: ROOT/train, ROOT/val)
    download: bool = False               # cifar*: download into root if missing (needs network)
    img_size: int = 32                   # model input size in pixels
    batch_size: int = 64                 # per process
    eval_batch_size: int = 256           # per process
    num_workers: int = 0                 # loader worker processes (0: bit-exact resume)
    mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])  # the official ViG weights expect 0.5 / 0.5
    std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    interpolation: str = "bicubic"       # resize interpolation
    crop_pct: float = 1.0                # eval: resize to img_size / crop_pct, centre crop img_size (ImageNet: 0.875)
    train_split: str = "train"           # imagefolder: sub-directory for training
    val_split: str = "val"               # imagefolder: sub-directory for evaluation
    test_fraction: float = 0.2           # digits: held-out fraction (stratified)
    split_seed: int = 0                  # digits: seed of the fixed train/test split


@dataclass
class AugConfig:
    """Training augmentation (timm.data.create_transform) and label mixing (timm.data.Mixup)."""
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"  # timm policy string; null: off
    scale: list = field(default_factory=lambda: [0.08, 1.0])  # random-resized-crop area range
    ratio: list = field(default_factory=lambda: [0.75, 1.3333333333333333])
    hflip: float = 0.5                   # horizontal flip probability
    color_jitter: float = 0.4            # ignored by timm while auto_augment is on
    re_prob: float = 0.25                # random erasing probability
    re_mode: str = "pixel"
    mixup: float = 0.8                   # mixup alpha (0: off)
    cutmix: float = 1.0                  # cutmix alpha (0: off)
    mixup_prob: float = 1.0              # probability a batch is mixed
    mixup_switch_prob: float = 0.5       # probability of cutmix instead of mixup
    smoothing: float = 0.1               # label smoothing


@dataclass
class OptimConfig:
    """Optimizer (timm.optim.create_optimizer_v2); no weight decay on biases and norms."""
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9                # sgd-style optimizers only
    eps: float = 1e-8
    clip_grad: Optional[float] = None    # gradient clipping threshold (null: off)
    clip_mode: str = "norm"              # norm, value, agc


@dataclass
class SchedConfig:
    """Learning-rate schedule (timm.scheduler), updated every optimizer step."""
    name: str = "cosine"                 # cosine, tanh, constant (all with linear warmup)
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5


@dataclass
class EmaConfig:
    """Exponential moving average of the weights (timm.utils.ModelEmaV3)."""
    enabled: bool = True
    decay: float = 0.9998
    warmup: bool = False                 # ramp the decay up from 0 (useful for short runs)
    evaluate: bool = True                # report EMA accuracy (and use it as the headline result)


@dataclass
class TrainConfig:
    """Loop, precision, determinism and checkpointing."""
    epochs: int = 100
    seed: int = 0
    amp: str = "auto"                    # auto (cuda: bf16 or fp16; cpu: bf16 with AVX512-BF16/AMX, else off), none, bf16, fp16 (cuda only)
    deterministic: bool = False          # torch.use_deterministic_algorithms + fixed seeds
    ckpt_every_steps: int = 0            # also checkpoint every N optimizer steps (0: epoch ends only)
    eval_every: int = 1                  # evaluate every N epochs (and always after the last)
    max_steps: int = 0                   # stop after N optimizer steps (0: full schedule); for smoke tests
    sync_bn: bool = False                # SyncBatchNorm under DDP (cuda)
    device: str = "auto"                 # auto, cpu, cuda, cuda:N
    threads: str = "auto"                # CPU intra-op threads: auto (1 or all, by measured speed), default (torch's), or N
    compile: bool = False                # torch.compile the model (also --compile)


@dataclass
class LogConfig:
    """Run directory and records."""
    output_dir: str = "runs"             # runs go to OUTPUT_DIR/NAME-TIMESTAMP (or --output DIR)
    name: Optional[str] = None           # default: <model>-<dataset>
    progress: bool = True                # tqdm progress bars
    tensorboard: bool = True             # TensorBoard event files in RUN/tb


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        """Plain sections; the model's options sit beside its other keys, as written."""
        out = dataclasses.asdict(self)
        out["model"].update(out["model"].pop("options"))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = [f.name for f in dataclasses.fields(Config)]


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _valid_keys(cls) -> list:
    return [f.name for f in dataclasses.fields(cls)]


def _unknown(key: str, prefix: str, valid: list) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    where = f"in '{prefix[:-1]}' " if prefix else ""
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}; valid keys {where}are: "
                       + ", ".join(valid))


def _number_or_text(value: Any) -> Any:
    """List items: YAML 1.1 reads ``1e-3`` as text; such text becomes the number it spells,
    other text (a module name) stays text."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type of ``key`` (raises ConfigError)."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        inner = [a for a in typing.get_args(typ) if a is not type(None)][0]
        return _coerce(value, inner, key)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if typ is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                value = float(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if typ is list:
            if isinstance(value, tuple):
                value = list(value)
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, list):
                raise ValueError
            return [_number_or_text(v) for v in value]
        if typ is dict:
            if value is None:
                return {}
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        pass
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"config key '{key}' expects {name}, got {value!r}")


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    section = parts[0]
    if section not in SECTIONS:
        raise _unknown(section, "", SECTIONS)
    if len(parts) == 1:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{section}' is a section; set its keys, e.g. "
                              f"'{section}.{_valid_keys(type(getattr(cfg, section)))[0]}=...'")
        for k, v in value.items():
            _set(cfg, f"{section}.{k}", v)
        return
    obj = getattr(cfg, section)
    key = parts[1]
    valid = _valid_keys(type(obj))
    if section == "model" and key not in valid:
        _set_model_option(obj, parts[1:], value)
        return
    if key not in valid:
        raise _unknown(key, section + ".", valid)
    typ = _hints(type(obj))[key]
    if len(parts) > 2:
        if typ is not dict:
            raise ConfigError(f"config key '{section}.{key}' has no sub-keys (got '{dotted}')")
        getattr(obj, key)[".".join(parts[2:])] = value
        return
    if typ is dict and isinstance(value, str):
        value = yaml.safe_load(value)
    setattr(obj, key, _coerce(value, typ, f"{section}.{key}"))


def _set_model_option(model: ModelConfig, parts: list, value: Any) -> None:
    """``model.<key>`` that is not one of ModelConfig's own fields: an override of the model,
    checked later by the models package (:func:`validate_model`)."""
    key = parts[0]
    if key in ("overrides", "options"):
        raise ConfigError(f"model.{key} is not a key: write the model's options directly in "
                          "the model section, e.g. model.channels=64 model.depth=4")
    if len(parts) > 1:
        raise ConfigError(f"config key 'model.{key}' has no sub-keys (got "
                          f"'model.{'.'.join(parts)}')")
    model.options[key] = value


def apply_dict(cfg: Config, data: dict, source: str = "config") -> Config:
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    for section, body in data.items():
        if section not in SECTIONS:
            raise _unknown(str(section), "", SECTIONS)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys")
        for key, value in body.items():
            _set(cfg, f"{section}.{key}", value)
    return cfg


def parse_override(item: str) -> tuple:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not KEY=VALUE (e.g. optim.lr=1e-3)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_yaml(path: str) -> dict:
    try:
        with open(path) as fh:
            return yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found: check the path "
                          "(shipped configs: configs/demo.yaml, configs/cifar10.yaml, configs/imagenet.yaml)") from None
    except yaml.YAMLError as exc:
        first = one_line(exc)
        raise ConfigError(f"config file '{path}' is not valid YAML ({first}): fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror})") from None


def build_config(path: Optional[str] = None, overrides: Optional[list] = None,
                 base: Optional[dict] = None) -> Config:
    """Defaults, then ``base`` (a saved config dict), then the YAML file, then ``overrides``."""
    cfg = Config()
    if base is not None:
        apply_dict(cfg, base, "saved config")
    if path is not None:
        apply_dict(cfg, load_yaml(path), path)
    for item in overrides or []:
        key, value = parse_override(item)
        _set(cfg, key, value)
    validate(cfg)
    return cfg


CHOICES = {
    "data.dataset": ("digits", "cifar10", "cifar100", "imagefolder"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
    "sched.name": ("cosine", "tanh", "constant"),
    "optim.clip_mode": ("norm", "value", "agc"),
}


def validate(cfg: Config) -> None:
    """Checks that need no model or data (names, ranges)."""
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            fix = "pick one of " + ", ".join(choices)
            raise ConfigError(f"{dotted}='{value}' is not supported: {fix}")
    positive = ["data.img_size", "data.batch_size", "data.eval_batch_size", "train.epochs",
                "train.eval_every", "model.k"]
    for dotted in positive:
        section, key = dotted.split(".")
        if getattr(getattr(cfg, section), key) <= 0:
            raise ConfigError(f"{dotted} must be positive, got {getattr(getattr(cfg, section), key)}")
    for dotted in ["data.num_workers", "train.ckpt_every_steps", "train.max_steps", "optim.lr",
                   "optim.weight_decay", "sched.warmup_epochs", "aug.mixup", "aug.cutmix",
                   "aug.smoothing", "model.drop_path_rate"]:
        section, key = dotted.split(".")
        if getattr(getattr(cfg, section), key) < 0:
            raise ConfigError(f"{dotted} must not be negative, got {getattr(getattr(cfg, section), key)}")
    th = cfg.train.threads
    if th not in ("auto", "default") and not (th.isdigit() and int(th) > 0):
        raise ConfigError(f"train.threads='{th}' is not supported: use auto, default or a "
                          "positive number")
    if not 0 < cfg.data.test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be between 0 and 1, got {cfg.data.test_fraction}")
    for name in ("mean", "std"):
        v = getattr(cfg.data, name)
        if len(v) != 3:
            raise ConfigError(f"data.{name} needs 3 values (RGB), got {v}")
    if not 0 < cfg.data.crop_pct <= 1:
        raise ConfigError(f"data.crop_pct must be in (0, 1], got {cfg.data.crop_pct}")
    if len(cfg.aug.scale) != 2 or len(cfg.aug.ratio) != 2:
        raise ConfigError("aug.scale and aug.ratio need two values each, e.g. [0.08, 1.0]")
    if not 0 <= cfg.ema.decay < 1:
        raise ConfigError(f"ema.decay must be in [0, 1), got {cfg.ema.decay}")
    if cfg.data.dataset == "imagefolder" and not cfg.data.root:
        raise ConfigError("data.dataset=imagefolder needs data.root=DIR (with DIR/train and DIR/val)")
    validate_model(cfg)


def model_kwargs(cfg: Config, num_classes: int) -> dict:
    """The ``create_model`` arguments of the model section (without the checkpoint)."""
    m = cfg.model
    return dict(num_classes=num_classes, conv=m.conv, k=m.k, drop_path_rate=m.drop_path_rate,
                img_size=cfg.data.img_size, **m.options)


def validate_model(cfg: Config) -> None:
    """The model section, checked by the models package (zoo names, ``list_convs()``,
    ``list_overrides()``) after importing ``model.imports`` (which may register convs)."""
    from ..models import ModelConfigError, validate_model_options
    from .imports import import_modules

    import_modules(cfg.model.imports)
    reserved = sorted(set(cfg.model.options) & {"num_classes", "img_size"})
    if reserved:
        fix = "data.img_size" if reserved[0] == "img_size" else "the data set"
        raise ConfigError(f"model.{reserved[0]} is set by {fix}: remove it from the model section")
    try:  # names and options; whether data.img_size fits is checked when the model is built
        validate_model_options(cfg.model.name, **{**model_kwargs(cfg, 1000), "img_size": 224})
    except ModelConfigError as exc:
        raise ConfigError(f"model section: {exc}") from None


def describe_keys() -> str:
    """All keys with their defaults, for ``--help`` and ``--print-config``."""
    return Config().to_yaml()
