"""Sparse feature circuits: which features, through which paths, cause a behaviour.

* ``data``: the JSONL file of clean/patch prefixes and answers, checked and tokenised
  (``read_circuit_data``), in batches of one token length (``CircuitBatch``);
* ``metrics``: what is explained, one number per example from the logits
  (``logit_difference``, ``answer_logprob``, or any ``Metric``);
* ``graph``: the model with several dictionaries spliced in (``SplicedModel``), whose
  features and error terms are nodes that can be read, set and differentiated;
* ``attribution``: node effects by attribution patching, integrated gradients and exact
  activation patching (``NodeEffects``);
* ``edges``: edge effects among chosen nodes, the metric as the sink (``edge_effects``);
* ``circuit``: nodes and edges past thresholds, as JSON (``find_circuit``, ``Circuit``);
* ``ablation``: each node's mean, the value an ablated node takes (``MeanAblation``);
* ``scoring``: how well a circuit stands for the model: faithfulness and completeness, and
  their curve over circuit size;
* ``mask``: the baseline, a learned hard-concrete mask over the same nodes (subnetwork
  probing), with faithfulness against nodes kept;
* ``page``: the circuit drawn as a self-contained HTML graph (``saekit circuit`` writes it);
* ``feature_trimming``: SHIFT, removing a spurious signal from a linear probe by ablating
  the features that carry it (``shift``); the sets it needs, and a
  synthetic spurious-correlation task to try it on (``spurious_data``);
* ``sva``: subject–verb agreement prompts built for a model's tokenizer (``--data sva``).
"""

from .ablation import MeanAblation, MeanPrompts
from .attribution import (
    DEFAULT_STEPS,
    METHODS,
    Node,
    NodeEffect,
    NodeEffects,
    PatchPrefixes,
    PatchSource,
    ZeroAblation,
    attribution_patching,
    exact_patching,
    integrated_gradients,
    node_effects,
)
from .circuit import Circuit, CircuitNode, circuit_from_effects, find_circuit, read_circuit, select_nodes
from .data import CircuitBatch, CircuitData, CircuitExample, circuit_examples, read_circuit_data
from .edges import EDGE_METHODS, METRIC, Edge, EdgeEffects, edge_effects
from .graph import Nodes, SplicedModel, SplicedRun
from .mask import (
    DEFAULT_SPARSITIES,
    MaskCurve,
    MaskResult,
    mask_candidates,
    mask_curve,
    masked_metric,
    train_mask,
)
from .metrics import Metric, answer_logprob, default_metric, logit_difference
from .page import write_circuit_page
from .scoring import (
    Faithfulness,
    FaithfulnessCurve,
    ablated_metric,
    faithfulness,
    faithfulness_curve,
    plot_faithfulness_curve,
)
from .feature_trimming import FeatureJudgement, ProbeLogit, ShiftAccuracy, ShiftResult, shift
from .spurious_data import LabelledSet, SpuriousTask, read_spurious_task, spurious_task
from .sva import DATASETS as SVA_DATASETS, SvaOptions, sva_records, write_sva_data

__all__ = [
    "DEFAULT_SPARSITIES", "DEFAULT_STEPS", "EDGE_METHODS", "METHODS", "METRIC", "Circuit", "CircuitBatch", "CircuitData",
    "CircuitExample", "CircuitNode", "Edge", "EdgeEffects", "Faithfulness", "FaithfulnessCurve", "FeatureJudgement",
    "LabelledSet", "MaskCurve", "MaskResult", "MeanAblation", "MeanPrompts", "Metric", "Node", "NodeEffect",
    "NodeEffects", "Nodes", "PatchPrefixes", "PatchSource", "ProbeLogit", "ShiftAccuracy", "ShiftResult",
    "SVA_DATASETS", "SplicedModel", "SplicedRun", "SpuriousTask", "SvaOptions", "ZeroAblation", "ablated_metric", "answer_logprob",
    "attribution_patching", "circuit_examples", "circuit_from_effects", "default_metric", "edge_effects",
    "exact_patching", "faithfulness", "faithfulness_curve", "find_circuit", "integrated_gradients",
    "logit_difference", "mask_candidates", "mask_curve", "masked_metric", "node_effects",
    "plot_faithfulness_curve", "read_circuit", "read_circuit_data", "read_spurious_task", "select_nodes", "shift", "spurious_task",
    "sva_records", "train_mask", "write_circuit_page", "write_sva_data",
]
