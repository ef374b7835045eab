"""How well a scorer's verdicts on contexts agree with the truth: balanced accuracy and AUROC.

Detection and fuzzing (Paulo et al. 2024) both end the same way: a list of contexts whose
true label is known (activating or not; highlights correct or not) and, for each, the
scorer's yes/no answer and, where the model gave one, its probability of "yes". This module
turns those into the two figures recorded per feature. Plain Python arithmetic: a few dozen
verdicts per feature need no array library, and the tests check it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import ConfigError


@dataclass(frozen=True)
class Verdict:
    """The scorer's judgement of one context.

    ``answer``: True for yes, False for no, None when the reply said neither.
    ``p_yes``: the model's probability of "yes" (from its logits or the endpoint's
    logprobs), None when it gave none.
    """

    answer: bool | None
    p_yes: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        if self.p_yes is not None and not 0.0 <= self.p_yes <= 1.0:
            raise ConfigError(f"a probability of yes must lie in [0, 1], got {self.p_yes}")


@dataclass(frozen=True)
class Score:
    """One scoring method's figures for one feature.

    ``auroc_from`` says what the AUROC ranks: "probability" (every verdict came with a
    probability of yes) or "answers" (some did not, so the 0/1 answers are ranked, and the
    AUROC then equals the balanced accuracy). ``unparsed``: replies that were neither yes
    nor no, counted as no.
    """

    balanced_accuracy: float | None
    auroc: float | None
    n: int
    auroc_from: str
    unparsed: int = 0

    def to_json(self) -> dict:
        return {"balanced_accuracy": self.balanced_accuracy, "auroc": self.auroc, "n": self.n,
                "auroc_from": self.auroc_from, "unparsed": self.unparsed}


def balanced_accuracy(labels: Sequence[bool], predictions: Sequence[bool]) -> float | None:
    """The mean of the true-positive and true-negative rates; None unless both classes occur.

    Balanced, not plain, accuracy: held-out activating contexts and random ones need not come
    in equal numbers, and a scorer that always says "no" must not score well for it.
    """
    if len(labels) != len(predictions):
        raise ConfigError(f"{len(labels)} labels but {len(predictions)} predictions")
    positives = [p for y, p in zip(labels, predictions) if y]
    negatives = [p for y, p in zip(labels, predictions) if not y]
    if not positives or not negatives:
        return None
    true_positive_rate = sum(1 for p in positives if p) / len(positives)
    true_negative_rate = sum(1 for p in negatives if not p) / len(negatives)
    return (true_positive_rate + true_negative_rate) / 2


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """The area under the ROC curve: the probability that a random positive scores above a
    random negative, ties counting one half (the Mann-Whitney U statistic over n⁺·n⁻).
    None unless both classes occur.

    Computed from mid-ranks, so tied scores (0/1 answers, or a model that gives the same
    probability twice) are handled exactly: with 0/1 scores it equals the balanced accuracy.
    """
    if len(labels) != len(scores):
        raise ConfigError(f"{len(labels)} labels but {len(scores)} scores")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and scores[order[stop + 1]] == scores[order[start]]:
            stop += 1
        mid_rank = (start + stop) / 2 + 1  # ranks count from 1
        for j in range(start, stop + 1):
            ranks[order[j]] = mid_rank
        start = stop + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def score_verdicts(labels: Sequence[bool], verdicts: Sequence[Verdict]) -> Score:
    """Balanced accuracy of the answers, and AUROC of the probabilities of yes where every
    verdict has one (else of the answers). A reply that said neither yes nor no counts as no."""
    if len(labels) != len(verdicts):
        raise ConfigError(f"{len(labels)} labels but {len(verdicts)} verdicts")
    answers = [bool(v.answer) for v in verdicts]
    with_probability = bool(verdicts) and all(v.p_yes is not None for v in verdicts)
    ranked = [float(v.p_yes) for v in verdicts] if with_probability else [float(a) for a in answers]
    return Score(
        balanced_accuracy=balanced_accuracy(labels, answers),
        auroc=auroc(labels, ranked),
        n=len(verdicts),
        auroc_from="probability" if with_probability else "answers",
        unparsed=sum(1 for v in verdicts if v.answer is None),
    )
