"""Training and evaluation: YAML configs, timm recipe, exact resume, DDP (``vig-pyg train/eval``)."""
from .cli import add_eval_parser, add_train_parser
from .config import Config, ConfigError, build_config

__all__ = ["add_train_parser", "add_eval_parser", "Config", "ConfigError", "build_config",
           "train", "run_eval"]


def __getattr__(name):  # heavy imports (timm, torchvision) only when used
    if name == "train":
        from .engine import train
        return train
    if name == "run_eval":
        from .evaluate import run_eval
        return run_eval
    raise AttributeError(name)
