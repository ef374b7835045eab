"""How well a probe separates true from false: the held-out split, accuracy and AUROC."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, DataError


@dataclass(frozen=True)
class ProbeScore:
    """A probe's figures on one set of statements."""

    dataset: str
    n: int
    accuracy: float
    auroc: float

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ConfigError(f"a score over {self.n} statements means nothing")


def accuracy(scores: Tensor, labels: Tensor, threshold: float = 0.0) -> float:
    """The share of statements on the right side of ``threshold`` (score > threshold: true)."""
    labels = labels.to(torch.long).cpu()
    return float(((scores.cpu() > threshold).long() == labels).float().mean())


def auroc(scores: Tensor, labels: Tensor) -> float:
    """The probability that a random true statement scores above a random false one (ties
    count half): the Mann-Whitney statistic, which needs no threshold."""
    scores, labels = scores.detach().double().cpu(), labels.to(torch.long).cpu()
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError("AUROC needs both true and false statements")
    # Mid-ranks, so tied scores share their ranks.
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    i = 0
    n = len(scores)
    while i < n:
        j = i
        while j + 1 < n and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = float(ranks[labels == 1].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def train_test_split(labels: Sequence[int], test_fraction: float = 0.25, seed: int = 0,
                     groups: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """Training and held-out indices, deterministic for ``seed`` and stratified by label.

    ``groups`` keeps statements that share a key on the same side (a city's affirmative
    and negated statement, say), so a held-out figure never scores a statement whose twin
    was trained on; a group goes with the label of its first statement.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"the held-out fraction must be between 0 and 1, not {test_fraction}")
    n = len(labels)
    keys = [groups[i] if groups is not None and groups[i] not in (None, "") else ("row", i) for i in range(n)]
    members: dict[Any, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        members[key].append(i)
    by_label: dict[int, list[Any]] = defaultdict(list)
    for key, rows in members.items():
        by_label[int(labels[rows[0]])].append(key)
    rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for label in sorted(by_label):
        keys_of = by_label[label]
        rng.shuffle(keys_of)
        n_test = max(1, round(len(keys_of) * test_fraction))
        if n_test >= len(keys_of):
            raise DataError(f"too few statements labelled {label} to hold {test_fraction:.0%} out and train on the "
                            "rest; add statements or lower the held-out fraction")
        for k, key in enumerate(keys_of):
            (test if k < n_test else train).extend(members[key])
    train_labels = {int(labels[i]) for i in train}
    test_labels = {int(labels[i]) for i in test}
    if train_labels != {0, 1} or test_labels != {0, 1}:
        raise DataError("the split left one side with a single label; add statements or lower the held-out fraction")
    return sorted(train), sorted(test)


def score_probe(probe: Any, acts: Tensor, labels: Tensor, dataset: str) -> ProbeScore:
    """``probe``'s accuracy (at its threshold) and AUROC on ``acts`` with true ``labels``."""
    scores = probe.scores(acts)
    return ProbeScore(dataset, int(len(labels)), accuracy(scores, labels, probe.threshold), auroc(scores, labels))
