"""Dictionary architectures, one file each, on the base class in ``base.py``."""

from .base import (
    ARCHITECTURES,
    Dictionary,
    DictionaryConfig,
    LossOutput,
    LossParams,
    build_dictionary,
    geometric_median,
    same_weights,
)
from .gated import GatedDictionary
from .jumprelu import JumpReLUDictionary
from .relu import ReLUDictionary
from .topk import BatchTopKDictionary, TopKDictionary

__all__ = [
    "ARCHITECTURES",
    "Dictionary",
    "DictionaryConfig",
    "LossOutput",
    "LossParams",
    "build_dictionary",
    "geometric_median",
    "same_weights",
    "ReLUDictionary",
    "GatedDictionary",
    "TopKDictionary",
    "BatchTopKDictionary",
    "JumpReLUDictionary",
]
