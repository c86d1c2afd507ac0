"""The ViG model zoo (isotropic ViG and pyramid PViG) on PyTorch Geometric."""
from .checkpoint import load_checkpoint, load_model, read_checkpoint, save_checkpoint
from .config import BlockSpec, ModelConfigError, ViGConfig
from .finite import NonFiniteError, check_finite
from .info import model_card, model_cards
from .vig import ViG
from .factory import create_model, list_overrides, model_config, validate_model_options
from .zoo import ZOO, list_models
from . import timm_registry  # noqa: F401,E402  (registers the zoo with timm)

__all__ = [
    "ViG", "ViGConfig", "BlockSpec", "ModelConfigError", "ZOO", "create_model", "list_models",
    "list_overrides", "model_config", "validate_model_options", "load_checkpoint",
    "load_model", "read_checkpoint", "save_checkpoint", "model_card", "model_cards",
    "check_finite", "NonFiniteError",
]
