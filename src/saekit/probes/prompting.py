"""A calibrated few-shot prompting baseline: the model itself asked whether a statement is true.

The prompt shows k labelled statements from the training data, each as
``"<statement> This statement is: TRUE"`` (or ``FALSE``) on its own line, then the
statement to score followed by ``" This statement is:"``; its score is
log P(" TRUE") − log P(" FALSE") (an answer of several tokens, as SmolLM2 writes " TRUE",
scored by its whole probability: ``verdicts``). The shots are fixed by the seed (balanced
between the labels, in a seeded order) and never include the scored statement.

Calibration is contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): the same
shots followed by content-free inputs ("N/A", "[MASK]", the empty string) give the log-odds
the prompt alone leans to, and that offset is subtracted; a calibrated score above 0 is
predicted true. We chose it over a threshold tuned on labelled training statements because
it spends no labels beyond the k shots the model is shown, so the baseline stays what it
claims to be (few-shot prompting with k labels) and is not a 1-parameter probe fitted on
the whole training split; a threshold tuned on labels would also hide a prompt whose
ranking is good but whose bias is not, which contextual calibration corrects without them.
AUROC, which needs no threshold, is reported beside it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .datasets import TruthDataset
from .metrics import ProbeScore, accuracy, auroc
from .verdicts import DEFAULT_ANSWERS, VerdictPrompt, answer_token_ids, verdict_log_odds

CONTENT_FREE = ("N/A", "[MASK]", "")


@dataclass(frozen=True)
class PromptFormat:
    """How many shots, drawn with which seed, and how each is written: a ``VerdictPrompt``
    line per shot, then the scored statement's prompt."""

    shots: int = 4
    seed: int = 0
    cue: str = " This statement is:"
    true_word: str = DEFAULT_ANSWERS[0]
    false_word: str = DEFAULT_ANSWERS[1]
    content_free: tuple[str, ...] = CONTENT_FREE

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ConfigError(f"--shots must be 0 or more, not {self.shots}")
        if not self.true_word.strip() or not self.false_word.strip():
            raise ConfigError(f"the answer words must be non-empty, not {self.true_word!r} and {self.false_word!r}")
        if not self.content_free:
            raise ConfigError("contextual calibration needs at least one content-free input")
        self.verdict  # the same checks as the interventions' prompts (two different answers)

    @property
    def verdict(self) -> VerdictPrompt:
        return VerdictPrompt(template="{statement}" + self.cue, answers=(self.true_word, self.false_word))

    def shots_text(self, shots: Sequence[tuple[str, int]]) -> str:
        """The labelled examples, each on its own line: what every prompt with them begins with."""
        return "".join(self.verdict.example(s, y == 1) for s, y in shots)

    def prompt(self, shots: Sequence[tuple[str, int]], statement: str) -> str:
        return VerdictPrompt(self.verdict.template, self.shots_text(shots), self.verdict.answers).prompt(statement)[0]


@dataclass(frozen=True)
class ShotPool:
    """Labelled statements the shots are drawn from, in a seeded order per label."""

    true: tuple[str, ...]
    false: tuple[str, ...]

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[str, int]], seed: int) -> "ShotPool":
        rng = random.Random(f"shots-{seed}")
        true = sorted({s for s, y in rows if y == 1})  # sorted first: the order depends on the seed only
        false = sorted({s for s, y in rows if y == 0})
        rng.shuffle(true)
        rng.shuffle(false)
        return cls(tuple(true), tuple(false))

    def shots(self, k: int, seed: int, exclude: str | None = None) -> tuple[tuple[str, int], ...]:
        """``k`` shots, half of each label (the odd one's label chosen by the seed), in a
        seeded order, skipping ``exclude`` (the statement about to be scored)."""
        rng = random.Random(f"shot-order-{seed}-{k}")
        n_true = k // 2 + (k % 2 if rng.random() < 0.5 else 0)
        picked_true = [s for s in self.true if s != exclude][:n_true]
        picked_false = [s for s in self.false if s != exclude][:k - n_true]
        if len(picked_true) < n_true or len(picked_false) < k - n_true:
            raise DataError(f"{k} shots need {n_true} true and {k - n_true} false training statements besides the "
                            f"scored one; the training data have {len(self.true)} true and {len(self.false)} false")
        shots = [(s, 1) for s in picked_true] + [(s, 0) for s in picked_false]
        rng.shuffle(shots)
        return tuple(shots)


@dataclass
class PromptingResult:
    """The baseline's figures per test dataset, with what it was run with."""

    shots: int
    seed: int
    shot_examples: list[tuple[str, int]]  # the shots most statements saw (one swapped when it was the scored one)
    content_free_offset: float | None  # the calibration offset of those shots (None: no statement saw them)
    scores: list[ProbeScore]
    raw_accuracy: list[float]  # at threshold 0 before calibration, to show what calibration does
    limit: int | None = None
    answers: tuple[str, str] = (" TRUE", " FALSE")
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"shots": self.shots, "seed": self.seed, "answers": list(self.answers),
                "calibration": "contextual (Zhao et al. 2021)",
                "content_free_offset": self.content_free_offset,
                "shot_examples": [{"statement": s, "label": y} for s, y in self.shot_examples],
                "limit": self.limit, "accuracy": [s.accuracy for s in self.scores],
                "auroc": [s.auroc for s in self.scores], "n": [s.n for s in self.scores],
                "uncalibrated_accuracy": self.raw_accuracy, "test": [s.dataset for s in self.scores]}


def stratified_subset(labels: Sequence[int], rows: Sequence[int], limit: int | None, seed: int) -> list[int]:
    """At most ``limit`` of ``rows``, as near half of each label as the rows allow, seeded."""
    rows = list(rows)
    if limit is None or len(rows) <= limit:
        return rows
    rng = random.Random(f"prompt-subset-{seed}")
    by_label = {y: [r for r in rows if labels[r] == y] for y in (0, 1)}
    for group in by_label.values():
        rng.shuffle(group)
    n_true = min(len(by_label[1]), max(limit // 2, limit - len(by_label[0])))
    return sorted(by_label[1][:n_true] + by_label[0][:limit - n_true])


def prompting_baseline(lm, shot_rows: Sequence[tuple[str, int]], test_sets: Sequence[TruthDataset],
                       test_rows: Sequence[Sequence[int]], fmt: PromptFormat = PromptFormat(), *,
                       batch_size: int = 8, limit: int | None = None,
                       progress: ProgressCallback | None = None) -> PromptingResult:
    """Score ``test_rows[j]`` of each ``test_sets[j]`` by calibrated few-shot prompting, the
    shots drawn from ``shot_rows`` (labelled training statements).

    Checks (every prompt fits the context, with room for the answers) run before the model
    does.
    """
    if len(test_sets) != len(test_rows):
        raise ConfigError("give the rows to score for each test dataset")
    if limit is not None and limit < 2:
        raise ConfigError(f"the prompting limit must be at least 2 statements per dataset, not {limit}")
    answer_ids = answer_token_ids(lm.tokenizer, (fmt.true_word, fmt.false_word))
    pool = ShotPool.from_rows(shot_rows, fmt.seed)
    chosen = [stratified_subset(ds.labels, rows, limit, fmt.seed) for ds, rows in zip(test_sets, test_rows)]
    prompts: list[str] = []
    shot_sets: list[tuple[tuple[str, int], ...]] = []
    for ds, rows in zip(test_sets, chosen):
        for r in rows:
            shots = pool.shots(fmt.shots, fmt.seed, exclude=ds.statements[r])
            prompts.append(fmt.prompt(shots, ds.statements[r]))
            shot_sets.append(shots)
    distinct = sorted(set(shot_sets))
    free_prompts = [fmt.prompt(shots, text) for shots in distinct for text in fmt.content_free]
    longest = max(((len(lm.tokenizer(p, add_special_tokens=True)["input_ids"]), p) for p in prompts + free_prompts),
                  key=lambda t: t[0])
    room = max(len(ids) for ids in answer_ids) - 1  # an answer's tokens before its last follow the prompt
    if longest[0] + room > lm.max_length:
        raise DataError(f"a {fmt.shots}-shot prompt is {longest[0]} tokens long (and its answers {room + 1}) but the "
                        f"model reads at most "
                        f"{lm.max_length}; use fewer --shots (it begins {longest[1][:80]!r})")
    phase = Phase(progress, "prompting baseline", len(prompts) + len(free_prompts), unit="prompts")
    # One pass per shot set (almost always one), its prefix run once for the content-free
    # inputs and the statements together.
    n_free = len(fmt.content_free)
    offsets: dict[tuple[tuple[str, int], ...], float] = {}
    raw = torch.zeros(len(prompts), dtype=torch.float64)
    for shots in distinct:
        rows = [i for i, s in enumerate(shot_sets) if s == shots]
        texts = [fmt.prompt(shots, t) for t in fmt.content_free] + [prompts[i] for i in rows]
        got = verdict_log_odds(lm, texts, answer_ids, batch_size, phase)  # the shots run once, shared
        offsets[shots] = float(got[:n_free].mean())
        raw[rows] = got[n_free:]
    calibrated = raw - torch.tensor([offsets[s] for s in shot_sets], dtype=raw.dtype)
    scores, raw_acc = [], []
    begin = 0
    for ds, rows in zip(test_sets, chosen):
        end = begin + len(rows)
        y = torch.tensor([ds.labels[r] for r in rows])
        if len(set(y.tolist())) < 2:
            raise DataError(f"the prompting baseline scored only one label of {ds.name}; raise the limit")
        scores.append(ProbeScore(ds.name, len(rows), accuracy(calibrated[begin:end], y), auroc(calibrated[begin:end], y)))
        raw_acc.append(accuracy(raw[begin:end], y))
        begin = end
    usual = pool.shots(fmt.shots, fmt.seed)
    return PromptingResult(fmt.shots, fmt.seed, list(usual), offsets.get(usual), scores, raw_acc, limit,
                           (fmt.true_word, fmt.false_word), {"answer_ids": answer_ids})
