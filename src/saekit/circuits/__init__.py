"""Sparse feature circuits: which features, through which paths, cause a behaviour.

The pieces so far (issue 11, first part):

* ``data``: the JSONL file of clean/patch prefixes and answers, checked and tokenised
  (``read_circuit_data``), in batches of one token length (``CircuitBatch``);
* ``metrics``: what is explained, one number per example from the logits
  (``logit_difference``, ``answer_logprob``, or any ``Metric``);
* ``graph``: the model with several dictionaries spliced in (``SplicedModel``), whose
  features and error terms are nodes that can be read, set and differentiated;
* ``attribution``: node effects by attribution patching, integrated gradients and exact
  activation patching (``NodeEffects``).
"""

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
from .data import CircuitBatch, CircuitData, CircuitExample, circuit_examples, read_circuit_data
from .graph import Nodes, SplicedModel, SplicedRun
from .metrics import Metric, answer_logprob, default_metric, logit_difference

__all__ = [
    "DEFAULT_STEPS", "METHODS", "CircuitBatch", "CircuitData", "CircuitExample", "Metric", "Node", "NodeEffect",
    "NodeEffects", "Nodes", "PatchPrefixes", "PatchSource", "SplicedModel", "SplicedRun", "ZeroAblation",
    "answer_logprob", "attribution_patching", "circuit_examples", "default_metric", "exact_patching",
    "integrated_gradients", "logit_difference", "node_effects", "read_circuit_data",
]
