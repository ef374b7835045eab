"""Asking a model for a verdict on a statement: the prompt, and the probability of each answer.

Both the few-shot prompting baseline (``prompting``) and the interventions along a probe's
direction (``intervention``) put a statement to the model as "<few-shot examples>
<statement> This statement is:" and read how likely " TRUE" and " FALSE" are next. This
module is that shared part: ``VerdictPrompt`` writes the prompt and its examples,
``answer_token_ids`` tokenizes the answers, and ``answer_logprobs`` scores every answer
after every prompt, optionally with vectors added at chosen positions.

An answer of several tokens (SmolLM2 writes " TRUE" as "ĠTR", "UE") is scored by its
whole probability, the product of each token's probability given the prompt and the
tokens before it. The tokens every prompt starts with (the few-shot examples, most of
each prompt) are run once and their keys and values reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..progress import Phase

DEFAULT_TEMPLATE = "{statement} This statement is:"
DEFAULT_ANSWERS = (" TRUE", " FALSE")
_PLACEHOLDER = "{statement}"
_MIN_SHARED_PREFIX = 4  # shorter shared starts are not worth a cached pass


@dataclass(frozen=True)
class VerdictPrompt:
    """How a statement is put to the model: ``prefix`` (few-shot examples) then ``template``
    with ``{statement}`` replaced; ``answers`` are the true and the false verdict."""

    template: str = DEFAULT_TEMPLATE
    prefix: str = ""
    answers: tuple[str, str] = DEFAULT_ANSWERS

    def __post_init__(self) -> None:
        if self.template.count(_PLACEHOLDER) != 1:
            raise ConfigError(f"the template {self.template!r} must contain {_PLACEHOLDER} exactly once, e.g. "
                              f"{DEFAULT_TEMPLATE!r}")
        if len(self.answers) != 2 or not all(self.answers) or self.answers[0] == self.answers[1]:
            raise ConfigError(f"give two different, non-empty answers (the true one first), not {self.answers!r}")

    def prompt(self, statement: str) -> tuple[str, int, int]:
        """The prompt text and the character span [start, end) of the statement in it."""
        before, _, after = self.template.partition(_PLACEHOLDER)
        start = len(self.prefix) + len(before)
        return self.prefix + before + statement + after, start, start + len(statement)

    def example(self, statement: str, true: bool) -> str:
        """One few-shot line: the prompt with its answer (as ``prefix`` holds them)."""
        before, _, after = self.template.partition(_PLACEHOLDER)
        return before + statement + after + self.answers[0 if true else 1] + "\n"


@dataclass
class EncodedPrompt:
    """One prompt as token ids, the statement's token span and the positions to edit."""

    ids: list[int]
    statement: tuple[int, int]
    edit: list[int]


def answer_token_ids(tokenizer: Any, answers: Sequence[str]) -> list[list[int]]:
    """Each answer's token ids as they follow a prompt (no special tokens)."""
    out = []
    for answer in answers:
        ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ConfigError(f"the answer {answer!r} has no tokens")
        out.append(ids)
    if out[0] == out[1]:
        raise ConfigError(f"the answers {answers[0]!r} and {answers[1]!r} are the same tokens")
    return out


def shared_prefix_length(prompts: Sequence[EncodedPrompt]) -> int:
    """How many leading tokens every prompt shares and no edit touches (at least one token of
    each prompt left after them): the part whose keys and values can be computed once."""
    if not prompts:
        return 0
    first = prompts[0].ids
    n = min(len(p.ids) for p in prompts) - 1
    for p in prompts:
        if p.edit:
            n = min(n, min(p.edit))
        k = 0
        while k < n and p.ids[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def answer_logprobs(lm: Any, prompts: Sequence[EncodedPrompt], answer_ids: Sequence[Sequence[int]],
                    vectors: dict[str, Tensor], scale: float | Tensor, batch_size: int = 8,
                    share_prefix: bool = True, phase: Phase | None = None) -> Tensor:
    """log P(answer | prompt) for each prompt and answer, (N, answers), with ``scale ×
    vectors[hook]`` added at each prompt's edit positions at every hook.

    Autograd is left on (wrap the call in ``torch.no_grad()`` to only measure); a tensor
    ``scale`` that requires grad gives the derivative along the vector. Rows are
    right-padded, so a prompt's positions do not depend on its batch. With
    ``share_prefix`` the tokens every prompt starts with (the few-shot examples), which no
    edit reaches, are run once and their keys and values reused: most of a few-shot prompt.
    ``phase`` advances by the prompts done.
    """
    import copy
    import inspect

    from ..hooks import edit_activations

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    if not prompts:
        return torch.zeros(0, len(answer_ids), dtype=torch.float64)
    device = lm.device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    shared, prefix_cache = shared_prefix_length(prompts) if share_prefix else 0, None
    # transformers 5 calls the key-value cache ``cache``; earlier versions ``past_key_values``.
    cache_name = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    if shared >= _MIN_SHARED_PREFIX:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([prompts[0].ids[:shared]], device=device), use_cache=True)
        prefix_cache = out.get(cache_name)
    if prefix_cache is None:  # too short to be worth it, or a model without a cache
        shared = 0
    # Answers that share all but their last token share a row: single-token answers (the
    # usual case) are both read from the prompt's own row.
    stems: dict[tuple[int, ...], int] = {}
    for ids in answer_ids:
        stems.setdefault(tuple(ids[:-1]), len(stems))
    rows = [(p, list(stem)) for p in range(len(prompts)) for stem in stems]
    found: dict[tuple[int, int], Tensor] = {}
    for begin in range(0, len(rows), batch_size):
        batch = rows[begin:begin + batch_size]
        lengths = [len(prompts[p].ids) + len(stem) - shared for p, stem in batch]
        width = max(lengths)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), shared + width), dtype=torch.long)
        where = torch.zeros((len(batch), width), dtype=torch.float32)
        for r, (p, stem) in enumerate(batch):
            ids[r, :lengths[r]] = torch.tensor((prompts[p].ids + stem)[shared:])
            mask[r, :shared + lengths[r]] = 1
            where[r, [e - shared for e in prompts[p].edit]] = 1.0
        where = where.to(device)

        def add(x: Tensor, v: Tensor, where: Tensor = where) -> Tensor:
            return x + scale * where[:, :, None].to(x.dtype) * v.to(device=x.device, dtype=x.dtype)

        edits = {hook: (lambda x, v=v: add(x, v)) for hook, v in vectors.items()}
        kwargs: dict[str, Any] = {"use_cache": False}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            kwargs = {cache_name: cache, "use_cache": True}
        with edit_activations(lm, edits):
            logits = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        for r, (p, stem) in enumerate(batch):
            last = len(prompts[p].ids) - 1 - shared  # the row's position that predicts the answer's first token
            # Only the positions that predict an answer token (a whole vocabulary per position).
            logprobs = torch.log_softmax(logits[r, last:last + len(stem) + 1].double(), dim=-1)
            for a, answer in enumerate(answer_ids):
                if tuple(answer[:-1]) == tuple(stem):
                    steps = torch.arange(len(answer), device=logprobs.device)
                    found[(p, a)] = logprobs[steps, torch.tensor(answer, device=logprobs.device)].sum()
        if phase is not None:  # rows run prompt by prompt, each prompt's answer stems together
            phase.advance((begin + len(batch)) // len(stems) - begin // len(stems))
    # Stacked (not written into a buffer) so that a scale requiring grad keeps its graph.
    return torch.stack([torch.stack([found[(p, a)] for a in range(len(answer_ids))]) for p in range(len(prompts))]).cpu()


def verdict_log_odds(lm: Any, prompts: Sequence[str], answer_ids: Sequence[Sequence[int]], batch_size: int = 8,
                     phase: Phase | None = None) -> Tensor:
    """log P(first answer) − log P(second answer) after each prompt text (special tokens
    added as the model is fed), in float64."""
    encoded = [EncodedPrompt(list(lm.tokenizer(p, add_special_tokens=True)["input_ids"]), (0, 0), []) for p in prompts]
    with torch.no_grad():
        logprobs = answer_logprobs(lm, encoded, answer_ids, {}, 0.0, batch_size, phase=phase)
    return logprobs[:, 0] - logprobs[:, 1]
