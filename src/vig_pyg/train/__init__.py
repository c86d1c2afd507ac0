"""Training and evaluation: YAML configs, timm recipe, exact resume, DDP.

``fit(config, overrides=(), output=None, resume=None) -> summary`` is one run (what
``vig-pyg train``, the sweeps and a notebook call); ``run_eval`` is ``vig-pyg eval``.
"""
from .cli import add_eval_parser, add_train_parser
from .config import Config, ConfigError, build_config

__all__ = ["add_train_parser", "add_eval_parser", "Config", "ConfigError", "build_config",
           "fit", "run_eval"]


def __getattr__(name):  # heavy imports (timm, torchvision) only when used
    if name == "fit":
        from .training import fit
        return fit
    if name == "run_eval":
        from .evaluate import run_eval
        return run_eval
    raise AttributeError(name)
