"""Truth against likelihood: does the model's probability of a statement track its label?

A probe that reads "truth" might read how likely the statement sounds; where the two agree
(affirmative city claims) it cannot be told which. This module measures, per dataset, the
log-probability the model gives each statement (summed over its tokens after the first,
since the first has nothing of the statement before it, and per token) and how well that
alone tells true from false: the point-biserial correlation with the label and the AUROC
of the log-probability used as a truth classifier. ``cities_mixed`` is built so that the
two come apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import DataError
from ..progress import Phase, ProgressCallback
from .activations import padded_batches, tokenize_statements
from .datasets import TruthDataset
from .metrics import auroc


@dataclass(frozen=True)
class StatementLogProbs:
    """Per statement: the summed log-probability of its tokens after the first, their count,
    and the mean per token."""

    total: Tensor  # (N,) float64
    n_tokens: Tensor  # (N,) long

    @property
    def mean(self) -> Tensor:
        return self.total / self.n_tokens


def statement_log_probs(lm, dataset: TruthDataset, *, batch_size: int = 32,
                        progress: ProgressCallback | None = None) -> StatementLogProbs:
    """log P(statement token t | everything before it), summed over the statement's own
    tokens after the first (a BOS the tokenizer adds is context, never scored)."""
    encoded = tokenize_statements(lm.tokenizer, dataset.statements, lm.max_length, "last")
    for i, (_, start, end) in enumerate(encoded):
        if end - start < 2:
            raise DataError(f"statement {i} of {dataset.name} ({dataset.statements[i]!r}) is one token long, so it has "
                            "no token after the first to score; remove it or lengthen it")
    totals, counts = [], []
    phase = Phase(progress, f"log-probabilities of {dataset.name}", len(encoded), unit="statements")
    for batch, ids, mask in padded_batches(lm.tokenizer, encoded, batch_size):
        with torch.no_grad():
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
        for r, (tokens, start, end) in enumerate(batch):
            # The logits at position p predict token p + 1; only the statement's rows are
            # normalised (a whole batch's in float64 would take gigabytes for a large vocabulary).
            logp = torch.log_softmax(logits[r, start:end - 1].double(), dim=-1).cpu()
            targets = torch.tensor(tokens[start + 1:end])
            totals.append(float(logp[torch.arange(len(targets)), targets].sum()))
            counts.append(end - start - 1)
        phase.advance(len(batch))
    return StatementLogProbs(torch.tensor(totals, dtype=torch.float64), torch.tensor(counts))


def point_biserial(values: Tensor, labels: Tensor) -> float:
    """Pearson's r between ``values`` and 0/1 ``labels`` (the point-biserial correlation);
    NaN when either does not vary."""
    x = values.double()
    y = labels.double()
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((xc ** 2).sum()) * float((yc ** 2).sum()))
    return float((xc * yc).sum()) / denom if denom > 0 else float("nan")


@dataclass(frozen=True)
class LikelihoodCorrelation:
    """How well a dataset's statement log-probabilities tell true from false."""

    dataset: str
    n: int
    mean_logprob_true: float
    mean_logprob_false: float
    r_total: float
    auroc_total: float
    r_per_token: float
    auroc_per_token: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def likelihood_correlation(dataset: TruthDataset, logprobs: StatementLogProbs) -> LikelihoodCorrelation:
    y = torch.tensor(dataset.labels)
    if len(y) != len(logprobs.total):
        raise DataError(f"{len(logprobs.total)} log-probabilities for the {len(y)} statements of {dataset.name}")
    total, mean = logprobs.total, logprobs.mean
    return LikelihoodCorrelation(dataset.name, len(y), float(total[y == 1].mean()), float(total[y == 0].mean()),
                                 point_biserial(total, y), auroc(total, y), point_biserial(mean, y), auroc(mean, y))
