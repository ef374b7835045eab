"""What a circuit explains: a metric m, one number per example, computed from the logits.

A metric is any callable ``metric(logits, batch) -> Tensor`` of shape ``(B,)``, where
``logits`` is ``(B, T, V)`` for the batch's ``T`` positions and ``batch`` the
``CircuitBatch`` (its answers). It must be differentiable in the logits: attribution
patching and integrated gradients take its gradient.

The two built in, as in Marks et al. 2024 ("Sparse Feature Circuits"):

* ``logit_difference``: ``logit(patch_answer) − logit(clean_answer)`` at the last
  position. Patching a node towards the patch prompt raises it, so the nodes that carry
  the behaviour have positive effects.
* ``answer_logprob``: ``log p(clean_answer)`` at the last position, for files without a
  counterfactual answer. Nodes the answer depends on have negative effects when ablated.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from ..errors import ConfigError
from .data import CircuitBatch, CircuitData


class Metric(Protocol):
    """``metric(logits (B, T, V), batch) -> (B,)``, differentiable in the logits."""

    def __call__(self, logits: Tensor, batch: CircuitBatch) -> Tensor: ...


def logit_difference(logits: Tensor, batch: CircuitBatch) -> Tensor:
    """``logit(patch_answer) − logit(clean_answer)`` at the last position, per example."""
    if batch.patch_answer is None:
        raise ConfigError(
            "the logit difference needs a patch_answer on every line; use answer_logprob for files without one"
        )
    last = logits[:, -1].float()
    return last.gather(1, batch.patch_answer[:, None]).squeeze(1) - last.gather(1, batch.clean_answer[:, None]).squeeze(1)


def answer_logprob(logits: Tensor, batch: CircuitBatch) -> Tensor:
    """``log p(clean_answer)`` at the last position, per example."""
    logprobs = torch.log_softmax(logits[:, -1].float(), dim=-1)
    return logprobs.gather(1, batch.clean_answer[:, None]).squeeze(1)


def default_metric(data: CircuitData) -> Metric:
    """The logit difference when the file has patch answers, else the answer's log-probability."""
    return logit_difference if data.has_patch_answer else answer_logprob


def metric_name(metric: Metric) -> str:
    """A name to record for ``metric``: its ``name`` attribute, function name or class name."""
    name = getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__
    return str(name)
