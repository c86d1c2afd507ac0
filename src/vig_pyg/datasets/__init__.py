"""Built-in data sets that need no download (used by training, diagnostics and detection)."""
from .digits import DigitsDataset, digits_split, digits_tensor

__all__ = ["DigitsDataset", "digits_split", "digits_tensor"]
