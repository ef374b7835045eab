"""Dictionary architectures, one file each, on the base class in ``base.py``; the
sparse training kernels they share are in ``sparse.py``."""

from .base import (
    ARCHITECTURES,
    Dictionary,
    DictionaryConfig,
    LossOutput,
    LossParams,
    TokenGroup,
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
    "TokenGroup",
    "build_dictionary",
    "geometric_median",
    "same_weights",
    "ReLUDictionary",
    "GatedDictionary",
    "TopKDictionary",
    "BatchTopKDictionary",
    "JumpReLUDictionary",
]
