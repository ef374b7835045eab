"""Activations for training: sources (a model, an array, a cache on disk), the shuffling buffer, the cache writer."""

from .buffer import ActivationBuffer
from .cache import CachedActivations, cache_activations, read_manifest, write_activation_cache
from .sources import (
    ActivationSource,
    ArrayActivations,
    ModelActivations,
    default_hook,
    expand_hook_spec,
    is_hook_pattern,
    open_activation_source,
    parse_hook_spec,
    select_hook_points,
)

__all__ = [
    "ActivationBuffer",
    "ActivationSource",
    "ArrayActivations",
    "CachedActivations",
    "ModelActivations",
    "cache_activations",
    "default_hook",
    "expand_hook_spec",
    "is_hook_pattern",
    "open_activation_source",
    "parse_hook_spec",
    "read_manifest",
    "select_hook_points",
    "write_activation_cache",
]
