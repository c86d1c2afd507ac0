"""Training configuration: nested dataclasses, YAML files and ``--set key=value`` overrides.

A config has eight sections (``model``, ``data``, ``aug``, ``optim``, ``sched``, ``ema``,
``train``, ``log``); every key has a default, so a YAML file only lists what it changes.
Keys are addressed with dots on the command line: ``--set optim.lr=1e-3 train.epochs=5``.
Values are parsed as YAML (``[1, 2]``, ``null``, ``true``) and then converted to the key's
type, so ``1e-3`` is a float even though YAML 1.1 reads it as a string. Unknown keys are an
error that names the key and lists the valid ones. This module declares the sections and
their checks; the mechanism (setting keys, conversion, YAML, errors) is
:mod:`vig_pyg.config_schema`, shared with the detection config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..config_schema import Schema, Sections, check_choices, check_not_negative, check_positive
from ..config_schema import load_yaml, parse_override  # noqa: F401  (re-exported)
from ..datasets.table import DATASETS
from .dataset_keys import check_data_keys
from ..errors import ConfigError  # noqa: F401  (re-exported)


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
    dataset: str = "digits"              # digits (embedded), imagefolder, or a set of vig_pyg.datasets.table: mnist, fashionmnist, kmnist, cifar10, cifar100, svhn, stl10
    root: Optional[str] = None           # dataset directory (named sets: torchvision layout, MNIST family also the IDX files directly in ROOT; imagefolder: ROOT/train, ROOT/val)
    download: bool = False               # named sets: download into root if missing (needs network)
    img_size: int = 32                   # model input size in pixels
    batch_size: int = 64                 # per process
    eval_batch_size: int = 256           # per process
    num_workers: int = 0                 # loader worker processes (0: bit-exact resume)
    mean: Optional[list] = None          # one value per model.in_chans; null: the set's statistics from the table (cifar10/100: 0.5), else 0.5 (the official ViG weights expect 0.5 / 0.5)
    std: Optional[list] = None           # as mean
    interpolation: Optional[str] = None  # resize interpolation (timm's: bicubic, bilinear, ...); null: bicubic for digits and the table's sets, else the model's pretrained_cfg (train/preprocessing.py)
    crop_pct: Optional[float] = None     # eval: resize to floor(img_size / crop_pct), centre crop img_size; null: 1.0 for digits and the table's sets, else the model's pretrained_cfg (zoo: 0.9, pvig_b 0.95)
    train_split: str = "train"           # imagefolder: sub-directory for training
    val_split: str = "val"               # imagefolder: sub-directory for evaluation
    test_fraction: float = 0.2           # digits: held-out fraction (stratified)
    split_seed: int = 0                  # digits: seed of the fixed train/test split; all sets: seed of train_subset and val_fraction
    train_subset: Optional[int] = None   # train on a stratified subset of this many images (after the validation carve-out); null: all
    val_fraction: float = 0.0            # held out of the training data for validation (stratified, seeded by split_seed); evaluation then runs on it and the test split once, at the end; 0: none
    skip_bad_images: bool = False        # imagefolder: drop a file PIL cannot read from its batch (counted, named once on stderr) instead of stopping the run


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
    compile_mode: Optional[str] = None   # with compile: torch.compile's mode (null: torch's default), default, reduce-overhead (CUDA graphs; cuda only), max-autotune, max-autotune-no-cudagraphs
    grad_checkpointing: bool = False     # recompute each block in backward instead of keeping its activations (less memory, about one more forward per step)


@dataclass
class LogConfig:
    """Run directory and records."""
    output_dir: str = "runs"             # runs go to OUTPUT_DIR/NAME-TIMESTAMP (or --output DIR)
    name: Optional[str] = None           # default: <model>-<dataset>
    progress: bool = True                # tqdm progress bars
    tensorboard: bool = True             # TensorBoard event files in RUN/tb


@dataclass
class Config(Sections):
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
        out = super().to_dict()
        out["model"].update(out["model"].pop("options"))
        return out


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


SCHEMA = Schema(Config, extra_keys={"model": _set_model_option})
SECTIONS = SCHEMA.sections


def apply_dict(cfg: Config, data: dict, source: str = "config") -> Config:
    """Set every key of ``data`` (a mapping of sections) on ``cfg``."""
    return SCHEMA.apply_dict(cfg, data, source)


def build_config(path: Optional[str] = None, overrides: Optional[list] = None,
                 base: Optional[dict] = None) -> Config:
    """Defaults, then ``base`` (a saved config dict), then the YAML file, then ``overrides``."""
    cfg = SCHEMA.compose(path, overrides, base)
    validate(cfg)
    return cfg


CHOICES = {
    "data.dataset": ("digits", "imagefolder", *DATASETS),
    "train.amp": ("auto", "none", "bf16", "fp16"),
    "sched.name": ("cosine", "tanh", "constant"),
    "optim.clip_mode": ("norm", "value", "agc"),
}

#: ``train.compile_mode``: torch.compile's modes (``reduce-overhead`` captures CUDA graphs).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def validate(cfg: Config) -> None:
    """Checks that need no model or data (names, ranges)."""
    check_choices(cfg, CHOICES)
    check_data_keys(cfg)  # a data.* key the chosen data.dataset does not read
    check_positive(cfg, ["data.img_size", "data.batch_size", "data.eval_batch_size",
                         "train.epochs", "train.eval_every", "model.k"])
    check_not_negative(cfg, ["data.num_workers", "train.ckpt_every_steps", "train.max_steps",
                             "optim.lr", "optim.weight_decay", "sched.warmup_epochs",
                             "aug.mixup", "aug.cutmix", "aug.smoothing",
                             "model.drop_path_rate"])
    th = cfg.train.threads
    if th not in ("auto", "default") and not (th.isdigit() and int(th) > 0):
        raise ConfigError(f"train.threads='{th}' is not supported: use auto, default or a "
                          "positive number")
    if not 0 < cfg.data.test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be between 0 and 1, got {cfg.data.test_fraction}")
    chans = in_chans(cfg)
    for name in ("mean", "std"):
        v = getattr(cfg.data, name)
        if v is not None and len(v) != chans:
            raise ConfigError(f"data.{name} needs {chans} values (one per channel, "
                              f"model.in_chans={chans}), got {v}: give {chans} values or null")
    validate_splits(cfg)
    validate_preprocessing(cfg)
    if len(cfg.aug.scale) != 2 or len(cfg.aug.ratio) != 2:
        raise ConfigError("aug.scale and aug.ratio need two values each, e.g. [0.08, 1.0]")
    if not 0 <= cfg.ema.decay < 1:
        raise ConfigError(f"ema.decay must be in [0, 1), got {cfg.ema.decay}")
    if cfg.data.dataset == "imagefolder" and not cfg.data.root:
        raise ConfigError("data.dataset=imagefolder needs data.root=DIR (with DIR/train and DIR/val)")
    validate_compile_mode(cfg)
    validate_model(cfg)


def in_chans(cfg: Config) -> int:
    """The model's input channels: ``model.in_chans`` (an override of the model), else 3."""
    return int(cfg.model.options.get("in_chans", 3))


def validate_splits(cfg: Config) -> None:
    """``data.train_subset`` null or a positive int (that it is not above the training
    set's size is checked when the data is loaded); ``data.val_fraction`` in [0, 1)."""
    n = cfg.data.train_subset
    if n is not None and n <= 0:
        raise ConfigError(f"data.train_subset must be a positive number of images, got {n}: "
                          "use e.g. 1000, or null for the whole training set")
    f = cfg.data.val_fraction
    if not 0 <= f < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {f}: use e.g. 0.1 to hold "
                          "out a tenth of the training data, or 0 for no validation split")


def interpolation_names() -> tuple:
    """The resize interpolations timm's transforms take, for training and evaluation alike
    (``random`` is training-only in timm, so it is not one of them)."""
    from timm.data.transforms import str_to_interp_mode
    from torchvision.transforms import InterpolationMode

    names = []
    for mode in InterpolationMode:
        try:
            str_to_interp_mode(mode.value)
        except KeyError:
            continue
        names.append(mode.value)
    return tuple(names)


def validate_preprocessing(cfg: Config) -> None:
    """``data.crop_pct`` null or in (0, 1]; ``data.interpolation`` null or one of
    :func:`interpolation_names` (mean/std lengths are checked with the config)."""
    d = cfg.data
    if d.crop_pct is not None and not 0 < d.crop_pct <= 1:
        raise ConfigError(f"data.crop_pct must be in (0, 1], got {d.crop_pct}: e.g. 0.9, or "
                          "null for the data set's or the model's")
    names = interpolation_names()
    if d.interpolation is not None and d.interpolation not in names:
        raise ConfigError(f"data.interpolation='{d.interpolation}' is not supported: pick one "
                          f"of {', '.join(names)} (or null for the data set's or the model's)")


def validate_compile_mode(cfg: Config) -> None:
    """``train.compile_mode``: one of :data:`COMPILE_MODES`, only with ``train.compile``, and
    ``reduce-overhead`` (CUDA graphs) not on ``train.device=cpu`` (``auto`` is checked
    once the device is known: :func:`vig_pyg.train.setup.compile_options`)."""
    mode, t = cfg.train.compile_mode, cfg.train
    if mode is None:
        return
    if mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile_mode='{mode}' is not supported: pick one of "
                          + ", ".join(COMPILE_MODES) + " (or null)")
    if not t.compile:
        raise ConfigError(f"train.compile_mode={mode} but train.compile is false: set "
                          "train.compile=true or drop train.compile_mode")
    if mode == "reduce-overhead" and t.device == "cpu":
        raise ConfigError(cuda_graphs_need_cuda("cpu"))


def cuda_graphs_need_cuda(device: str) -> str:
    """The error of ``reduce-overhead`` on a device without CUDA graphs."""
    return (f"train.compile_mode=reduce-overhead captures CUDA graphs, which need CUDA, but "
            f"the run is on {device}: use train.device=cuda, or another train.compile_mode "
            f"(default, max-autotune-no-cudagraphs)")


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
