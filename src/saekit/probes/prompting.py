"""A calibrated few-shot prompting baseline: the model itself asked whether a statement is true.

The prompt shows k labelled statements from the training data, each as
``"<statement> This statement is: TRUE"`` (or ``FALSE``) on its own line, then the
statement to score followed by ``" This statement is:"``; its score is
log P(" TRUE") − log P(" FALSE") at the next token. Each answer must be one token of the
model's tokenizer (SmolLM2 splits " TRUE" in two, so there " True"/" False" are used). The shots are fixed by the seed
(balanced between the labels, in a seeded order) and never include the scored statement.

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
from torch import Tensor

from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .datasets import TruthDataset
from .metrics import ProbeScore, accuracy, auroc

CONTENT_FREE = ("N/A", "[MASK]", "")


@dataclass(frozen=True)
class PromptFormat:
    """How a shot and the scored statement are written, and how many shots."""

    shots: int = 4
    seed: int = 0
    cue: str = " This statement is:"
    true_word: str = " TRUE"
    false_word: str = " FALSE"
    separator: str = "\n"
    content_free: tuple[str, ...] = CONTENT_FREE

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ConfigError(f"--shots must be 0 or more, not {self.shots}")
        if self.true_word == self.false_word or not self.true_word.strip() or not self.false_word.strip():
            raise ConfigError(f"the answer words must be two different non-empty words, not {self.true_word!r} and "
                              f"{self.false_word!r}")
        if not self.content_free:
            raise ConfigError("contextual calibration needs at least one content-free input")

    def shot_text(self, statement: str, label: int) -> str:
        return f"{statement}{self.cue}{self.true_word if label else self.false_word}"

    def shots_text(self, shots: Sequence[tuple[str, int]]) -> str:
        """The labelled examples, each on its own line: what every prompt with them begins with."""
        return "".join(self.shot_text(s, y) + self.separator for s, y in shots)

    def prompt(self, shots: Sequence[tuple[str, int]], statement: str) -> str:
        return self.shots_text(shots) + f"{statement}{self.cue}"


def answer_token_ids(tokenizer, fmt: PromptFormat) -> tuple[int, int]:
    """The token ids of the true and false answer words; an error, saying how they split,
    when either is not a single token for this tokenizer."""
    ids = []
    for word in (fmt.true_word, fmt.false_word):
        got = list(tokenizer(word, add_special_tokens=False)["input_ids"])
        if len(got) != 1:
            pieces = [tokenizer.decode([t]) for t in got]
            raise DataError(f"the answer {word!r} is {len(got)} tokens for this tokenizer ({pieces!r}), not one, so "
                            "log P(true) − log P(false) is not one next-token comparison; choose answer words that "
                            "are single tokens for it (--answers ' True' ' False', say, leading space included), or "
                            "skip the baseline with --no-prompting")
        ids.append(got[0])
    return ids[0], ids[1]


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


def _padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids and attention mask: positions stay those of each row alone."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, tokens in enumerate(rows):
        ids[r, :len(tokens)] = torch.tensor(list(tokens))
        mask[r, :len(tokens)] = 1
    return ids, mask


def _log_odds_at(logits: Tensor, rows: Sequence[Sequence[int]], true_id: int, false_id: int) -> Tensor:
    last = torch.tensor([len(t) - 1 for t in rows], device=logits.device)
    logp = torch.log_softmax(logits[torch.arange(len(rows), device=logits.device), last].double(), dim=-1)
    return (logp[:, true_id] - logp[:, false_id]).cpu()


def _next_token_log_odds(lm, prompts: Sequence[str], true_id: int, false_id: int, batch_size: int,
                         phase: Phase | None) -> Tensor:
    """log P(true_id) − log P(false_id) after each prompt, each run whole."""
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    encoded = [list(tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    out = []
    for begin in range(0, len(encoded), batch_size):
        batch = encoded[begin:begin + batch_size]
        ids, mask = _padded(batch, pad)
        with torch.no_grad():
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
        out.append(_log_odds_at(logits, batch, true_id, false_id))
        if phase is not None:
            phase.advance(len(batch))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _shared_prefix_log_odds(lm, prefix: str, prompts: Sequence[str], true_id: int, false_id: int, batch_size: int,
                            phase: Phase | None) -> Tensor:
    """The same as ``_next_token_log_odds`` for prompts that all begin with ``prefix`` (the
    shots), the prefix run once and its keys and values reused: the shots are most of each
    prompt, so this is several times faster.

    The model sees exactly the token ids of each whole prompt: a prompt whose tokens do not
    begin with the prefix's own tokens (a tokenizer that merges across the boundary) is
    run whole instead.
    """
    import copy
    import inspect

    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    head = list(tok(prefix, add_special_tokens=True)["input_ids"])
    encoded = [list(tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    shared = [i for i, ids in enumerate(encoded) if head and len(ids) > len(head) and ids[:len(head)] == head]
    out = torch.zeros(len(prompts), dtype=torch.float64)
    alone = sorted(set(range(len(prompts))) - set(shared))
    if alone:
        out[alone] = _next_token_log_odds(lm, [prompts[i] for i in alone], true_id, false_id, batch_size, phase)
    if not shared:
        return out
    # transformers 5 names the key/value cache argument (and output) "cache", 4.x "past_key_values".
    name = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    with torch.no_grad():
        cache = lm.model(input_ids=torch.tensor([head], device=lm.device), use_cache=True)[name]
    for begin in range(0, len(shared), batch_size):
        rows = shared[begin:begin + batch_size]
        tails = [encoded[i][len(head):] for i in rows]
        ids, mask = _padded(tails, pad)
        mask = torch.cat([torch.ones((len(rows), len(head)), dtype=torch.long), mask], 1)
        past = copy.deepcopy(cache)  # the forward pass appends to it
        past.batch_repeat_interleave(len(rows))
        with torch.no_grad():
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=True,
                              **{name: past}).logits
        out[rows] = _log_odds_at(logits, tails, true_id, false_id)
        if phase is not None:
            phase.advance(len(rows))
    return out


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

    Checks (the answer words are single tokens, every prompt fits the context) run before
    the model does.
    """
    if len(test_sets) != len(test_rows):
        raise ConfigError("give the rows to score for each test dataset")
    if limit is not None and limit < 2:
        raise ConfigError(f"the prompting limit must be at least 2 statements per dataset, not {limit}")
    true_id, false_id = answer_token_ids(lm.tokenizer, fmt)
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
    if longest[0] > lm.max_length:
        raise DataError(f"a {fmt.shots}-shot prompt is {longest[0]} tokens long but the model reads at most "
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
        got = _shared_prefix_log_odds(lm, fmt.shots_text(shots), texts, true_id, false_id, batch_size, phase)
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
                           (fmt.true_word, fmt.false_word), {"answer_ids": [true_id, false_id]})
