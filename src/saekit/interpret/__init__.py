"""Putting features to work: interventions with them on a running model (steering), and codes
found by inference-time optimisation (``ito``)."""

from .ito import fista, gradient_pursuit, matching_pursuit, orthogonal_matching_pursuit
from .ito_comparison import CodeComparison, compare_codes
from .steering import (
    AblateFeatures,
    AddFeature,
    ClampFeatures,
    ScaleSweep,
    SteeredGeneration,
    generate_with_and_without,
    scale_sweep,
    steer,
)

__all__ = [
    "AblateFeatures", "AddFeature", "ClampFeatures", "CodeComparison", "ScaleSweep", "SteeredGeneration", "compare_codes", "fista",
    "generate_with_and_without", "gradient_pursuit", "matching_pursuit", "orthogonal_matching_pursuit", "scale_sweep",
    "steer",
]
