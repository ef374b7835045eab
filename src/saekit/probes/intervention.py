"""Interventions along a probe's direction: does adding it make the model call a statement true?

Marks & Tegmark (2023, "The Geometry of Truth", section 5) test whether a truth direction
is used by the model, not only readable from it: they add the direction to the residual
stream at a range of layers, over the last tokens of a statement, inside a prompt that asks
for a verdict ("<few-shot examples> <statement> This statement is:"), and measure
P(" TRUE") − P(" FALSE") for the next token, on true and on false statements separately.
Adding should raise it (false statements treated as true), subtracting should lower it.

The vector added at scale α is ``α · v`` with ``v = ((μ_true − μ_false) · u) u``: ``u`` the
probe's unit direction, ``μ`` the mean activations of the true and of the false statements
at the probe's hook point (read as the probe reads them). That is Marks & Tegmark's scaling:
for a mass-mean probe ``v`` is the difference of the class means itself, so α = 1 moves the
average false statement onto the average true one along ``u`` (and α = −1 the reverse); for
any other probe it is the same displacement measured along that probe's direction. With
``unit=True`` the vector is ``α · u`` instead, α in the activations' own units.

An answer of several tokens (SmolLM2 writes " TRUE" as "ĠTR", "UE") is scored by its whole
probability, the product of each token's probability given the prompt and the tokens
before it; the vector is added at prompt positions only, never at the answer's.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .verdicts import EncodedPrompt, VerdictPrompt, answer_logprobs

DEFAULT_POSITIONS = "last:2"  # Marks & Tegmark: the statement's final word and its full stop
_INDICES = re.compile(r"^-?\d+(,-?\d+)*$")


# ----------------------------------------------------------------------------- where


@dataclass(frozen=True)
class EditPositions:
    """Which tokens of each prompt get the vector.

    ``last:K``: the statement's last K tokens (``last`` alone: K = 1); ``from-end``: every
    token from the statement's last one to the end of the prompt (the question after it
    included); or indices ``0,-1``: counted from the statement's first token (0, 1, ...) or
    from its last (−1, −2, ...). An index may reach into the template around the statement,
    but never outside the prompt.
    """

    kind: str
    count: int = 0
    indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("last", "from_end", "indices"):
            raise ConfigError(f"unknown kind of edit positions {self.kind!r}")
        if self.kind == "last" and self.count < 1:
            raise ConfigError(f"last:{self.count}: give at least one token (e.g. last:2)")
        if self.kind == "indices" and (not self.indices or len(set(self.indices)) != len(self.indices)):
            raise ConfigError("give distinct token indices, e.g. -2,-1")

    @classmethod
    def parse(cls, text: str) -> "EditPositions":
        value = str(text).strip().lower()
        if value in ("from-end", "from_end"):
            return cls("from_end")
        if value == "last":
            return cls("last", 1)
        if value.startswith("last:"):
            count = value[5:]
            if not count.isdigit():
                raise ConfigError(f"positions {text!r}: after 'last:' comes a number of tokens, e.g. last:2")
            return cls("last", int(count))
        if _INDICES.match(value.replace(" ", "")):
            return cls("indices", indices=tuple(int(v) for v in value.replace(" ", "").split(",")))
        raise ConfigError(f"positions {text!r} is none of: last:K (the statement's last K tokens), from-end (every "
                          "token from the statement's last to the prompt's end), or indices like -2,-1 (0 the "
                          "statement's first token, -1 its last)")

    def __str__(self) -> str:
        if self.kind == "last":
            return f"last:{self.count}"
        if self.kind == "from_end":
            return "from-end"
        return ",".join(str(i) for i in self.indices)

    def resolve(self, start: int, end: int, length: int) -> list[int]:
        """Absolute positions in a prompt of ``length`` tokens whose statement spans
        [start, end); raises ConfigError for any that falls outside the prompt."""
        if self.kind == "from_end":
            return list(range(end - 1, length))
        if self.kind == "last":
            positions = list(range(end - self.count, end))
        else:
            positions = [start + i if i >= 0 else end + i for i in self.indices]
        outside = [p for p in positions if not 0 <= p < length]
        if outside:
            raise ConfigError(f"positions {self} reach outside the prompt: it has {length} tokens and the statement "
                              f"is tokens {start}..{end - 1}; choose positions within it (e.g. last:{end - start})")
        return positions


# ----------------------------------------------------------------------------- what


def few_shot_prefix(statements: Sequence[str], labels: Sequence[int], fmt: VerdictPrompt, shots: int,
                    seed: int = 0) -> tuple[str, list[int]]:
    """``shots`` examples (alternating true and false, the first true) drawn with ``seed``
    from the given statements; returns the prefix and the indices used, which the caller
    keeps out of the statements intervened on."""
    if shots < 0:
        raise ConfigError(f"the number of few-shot examples must be >= 0, not {shots}")
    if shots == 0:
        return "", []
    import random

    rng = random.Random(f"shots-{seed}")
    by_label = {label: [i for i, v in enumerate(labels) if v == label] for label in (1, 0)}
    for rows in by_label.values():
        rng.shuffle(rows)
    need = {1: (shots + 1) // 2, 0: shots // 2}
    if any(len(by_label[label]) < need[label] for label in (0, 1)):
        raise DataError(f"{shots} few-shot examples need {need[1]} true and {need[0]} false statements to draw from; "
                        "lower --shots")
    chosen = [by_label[1 if k % 2 == 0 else 0][k // 2] for k in range(shots)]
    return "".join(fmt.example(statements[i], labels[i] == 1) for i in chosen), chosen


def encode_prompts(tokenizer: Any, statements: Sequence[str], fmt: VerdictPrompt, positions: EditPositions,
                   max_length: int) -> list[EncodedPrompt]:
    """Tokenize each statement's prompt (special tokens as the model is fed) and find the
    statement's tokens by their character offsets; every check happens here, before any
    forward pass: a prompt too long for the model, positions outside the prompt."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("locating a statement's tokens in its prompt needs a fast (Rust) tokenizer, which "
                          "reports character offsets; load the model with its tokenizer.json")
    out = []
    for i, statement in enumerate(statements):
        text, c0, c1 = fmt.prompt(statement)
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
        ids, offsets, special = list(enc["input_ids"]), enc["offset_mapping"], enc["special_tokens_mask"]
        own = [k for k, ((a, b), s) in enumerate(zip(offsets, special)) if not s and a < c1 and b > c0]
        if not own:
            raise DataError(f"statement {i} ({statement!r}) has no tokens of its own in its prompt")
        answer_room = 8  # an answer's tokens follow the prompt
        if len(ids) + answer_room > max_length:
            raise DataError(f"the prompt of statement {i} is {len(ids)} tokens long and the model reads at most "
                            f"{max_length}; use fewer few-shot examples or a shorter template")
        start, end = own[0], own[-1] + 1
        try:
            edit = positions.resolve(start, end, len(ids))
        except ConfigError as e:
            raise ConfigError(f"statement {i} ({statement!r}): {e}") from None
        out.append(EncodedPrompt(ids, (start, end), edit))
    return out


# ----------------------------------------------------------------------------- the vector


def intervention_vector(direction: Tensor, true_acts: Tensor, false_acts: Tensor, unit: bool = False) -> Tensor:
    """The vector added at scale 1: ``((μ_true − μ_false) · u) u`` (Marks & Tegmark's), or the
    unit direction ``u`` itself when ``unit``."""
    u = direction.detach().double().cpu().flatten()
    if not float(u.norm()) > 0 or not torch.isfinite(u).all():
        raise ConfigError("the probe's direction is zero or not finite; refit the probe")
    u = u / u.norm()
    if unit:
        return u.float()
    if len(true_acts) == 0 or len(false_acts) == 0:
        raise DataError("scaling the direction needs activations of both true and false statements")
    if true_acts.shape[1] != u.shape[0] or false_acts.shape[1] != u.shape[0]:
        raise ConfigError(f"the probe's direction has width {u.shape[0]} but the activations have width "
                          f"{true_acts.shape[1]} (another hook point or model?)")
    gap = float((true_acts.double().mean(0) - false_acts.double().mean(0)) @ u)
    return (gap * u).float()


def random_like(vector: Tensor, seed: int = 0) -> Tensor:
    """A random vector of ``vector``'s norm: the control that tells a direction's own effect
    from the effect of any push of that size (Marks & Tegmark compare with one too)."""
    noise = torch.randn(vector.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (noise / noise.norm() * vector.double().norm()).to(vector.dtype)


def hooks_text(hooks: Sequence[str]) -> str:
    """``resid_post.8-12`` for consecutive layers of one site, else the names joined."""
    from ..hooks import HookPoint

    points = [HookPoint.parse(h) for h in hooks]
    layers = [p.layer for p in points]
    if len(points) > 2 and len({p.site for p in points}) == 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{points[0].site}.{layers[0]}-{layers[-1]}"
    return ", ".join(hooks)


# ----------------------------------------------------------------------------- running


@dataclass
class SweepResult:
    """Mean P(true answer) − P(false answer) over the true and over the false statements, per
    scale; ``*_mass`` the mean P(true answer) + P(false answer) (how much the model puts on
    either verdict at all); ``*_diffs`` the per-statement values, one row per scale."""

    scales: list[float]
    hooks: list[str]
    positions: str
    template: str
    answers: list[str]
    vector_norm: float
    n_true: int
    n_false: int
    true_diff: list[float]
    false_diff: list[float]
    true_mass: list[float]
    false_mass: list[float]
    true_diffs: list[list[float]] = field(default_factory=list)
    false_diffs: list[list[float]] = field(default_factory=list)

    def baseline(self) -> tuple[float, float]:
        """The values at scale 0 (the sweep always measures it)."""
        k = self.scales.index(0.0)
        return self.true_diff[k], self.false_diff[k]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        t0, f0 = self.baseline()
        record["true_change"] = [v - t0 for v in self.true_diff]
        record["false_change"] = [v - f0 for v in self.false_diff]
        return record


def intervention_sweep(lm: Any, true_prompts: Sequence[EncodedPrompt], false_prompts: Sequence[EncodedPrompt],
                       answer_ids: Sequence[Sequence[int]], vectors: dict[str, Tensor], scales: Sequence[float], *,
                       fmt: VerdictPrompt, positions: EditPositions, batch_size: int = 8,
                       progress: ProgressCallback | None = None) -> SweepResult:
    """P(true answer) − P(false answer) at each scale (0 added when missing, as the baseline)."""
    if not true_prompts or not false_prompts:
        raise DataError("the sweep needs both true and false statements to intervene on")
    if not vectors:
        raise ConfigError("give at least one hook point to add the vector at")
    values = sorted({float(s) for s in scales} | {0.0})
    if not all(math.isfinite(s) for s in values):
        raise ConfigError("the scales must be finite numbers")
    prompts = list(true_prompts) + list(false_prompts)
    n_true = len(true_prompts)
    phase = Phase(progress, "intervention sweep", len(values), unit="scales")
    diffs, masses = [], []
    for scale in values:
        with torch.no_grad():
            probs = answer_logprobs(lm, prompts, answer_ids, vectors, scale, batch_size).exp()
        diffs.append(probs[:, 0] - probs[:, 1])
        masses.append(probs.sum(1))
        phase.advance(1)
    norm = float(next(iter(vectors.values())).norm())
    return SweepResult(
        scales=values, hooks=list(vectors), positions=str(positions), template=fmt.template, answers=list(fmt.answers),
        vector_norm=norm, n_true=n_true, n_false=len(prompts) - n_true,
        true_diff=[float(d[:n_true].mean()) for d in diffs], false_diff=[float(d[n_true:].mean()) for d in diffs],
        true_mass=[float(m[:n_true].mean()) for m in masses], false_mass=[float(m[n_true:].mean()) for m in masses],
        true_diffs=[d[:n_true].tolist() for d in diffs], false_diffs=[d[n_true:].tolist() for d in diffs])


def write_intervention_plot(path: str | Path, result: SweepResult, title: str = "") -> None:
    """Mean P(true) − P(false) against the scale, for the true and the false statements."""
    from matplotlib.figure import Figure

    from ..report import write_png

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    ax.plot(result.scales, result.true_diff, "-o", color="C2", ms=4, label=f"true statements (n={result.n_true})")
    ax.plot(result.scales, result.false_diff, "-o", color="C3", ms=4, label=f"false statements (n={result.n_false})")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axvline(0.0, color="grey", lw=0.8, ls=":")
    a, b = (repr(x) for x in result.answers)
    ax.set_xlabel(f"α (α × a vector of norm {result.vector_norm:.3g} added at {hooks_text(result.hooks)}, "
                  f"positions {result.positions})", fontsize=8)
    ax.set_ylabel(f"mean P({a}) − P({b})")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_png(fig, Path(path), dpi=120)
