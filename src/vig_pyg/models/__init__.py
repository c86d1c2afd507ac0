"""The ViG model zoo (isotropic ViG and pyramid PViG) on PyTorch Geometric."""
from .checkpoint import load_checkpoint, load_model, read_checkpoint, save_checkpoint
from .config import BlockSpec, ModelConfigError, ViGConfig
from .info import model_card, model_cards
from .vig import ViG
from .zoo import (ZOO, create_model, list_models, list_overrides, model_config,
                  validate_model_options)

__all__ = [
    "ViG", "ViGConfig", "BlockSpec", "ModelConfigError", "ZOO", "create_model", "list_models",
    "list_overrides", "model_config", "validate_model_options", "load_checkpoint",
    "load_model", "read_checkpoint", "save_checkpoint", "model_card", "model_cards",
]
