"""Putting features to work: what makes each fire (``examples``, ``directions``) shown as a
static site (``dashboard``), explained and scored by a language model (``explanations``), interventions with them on a running model (``steering``), and
codes found by inference-time optimisation (``ito``, ``ito_comparison``)."""

from .dashboard import write_dashboard
from .directions import OutputTokens, nearest_features, output_tokens
from .examples import Example, FeatureExamples, collect_examples
from .explanations import explain_features, read_explanations
from .feature_spec import parse_feature_spec
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
    "AblateFeatures", "AddFeature", "ClampFeatures", "CodeComparison", "Example", "FeatureExamples", "OutputTokens",
    "ScaleSweep", "SteeredGeneration", "collect_examples", "compare_codes", "explain_features", "fista", "nearest_features",
    "output_tokens", "parse_feature_spec", "read_explanations", "write_dashboard",
    "generate_with_and_without", "gradient_pursuit", "matching_pursuit", "orthogonal_matching_pursuit", "scale_sweep",
    "steer",
]
