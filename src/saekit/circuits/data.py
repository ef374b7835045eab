"""The prompts a circuit is found on: a JSONL file of clean (and patch) prefixes and answers.

Each line is a JSON object::

    {"clean_prefix": "The nurse", "clean_answer": " is",
     "patch_prefix": "The nurses", "patch_answer": " are"}

``patch_prefix`` and ``patch_answer`` are optional, but every line must agree on whether
it has them (the metric and the ablation are chosen once for the whole file). Answers
are strings that the model's tokenizer turns into exactly one token, leading space
included. Other fields are ignored, so lines may carry notes of their own.

Everything is checked here, with the tokenizer alone, before any model work: an empty
file, a line that is not JSON (its number), a missing or non-text field, an answer that
is several tokens (how it splits), and clean and patch prefixes of different token
lengths (both lengths), which node effects need aligned position by position.

Prefixes are tokenised as saekit tokenises text everywhere else (``data.py``): without
the tokenizer's own special tokens, with the BOS token put first by saekit when the
tokenizer has one, so that dictionaries see the positions they were trained on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import jsonl_records, read_data_file
from ..errors import DataError

FIELDS = ("clean_prefix", "clean_answer", "patch_prefix", "patch_answer")
REQUIRED = ("clean_prefix", "clean_answer")


@dataclass(frozen=True)
class CircuitExample:
    """One line of the file, with its tokens."""

    line: int
    clean_prefix: str
    clean_answer: str
    clean_ids: tuple[int, ...]
    clean_answer_id: int
    patch_prefix: str | None = None
    patch_answer: str | None = None
    patch_ids: tuple[int, ...] | None = None
    patch_answer_id: int | None = None

    @property
    def length(self) -> int:
        return len(self.clean_ids)


@dataclass
class CircuitBatch:
    """Examples of one token length, stacked: the unit every pass works on.

    ``clean_ids`` and ``patch_ids`` are ``(B, T)`` with no padding (a batch only holds
    examples of one length, so that the answer is always predicted at the last
    position and no attention mask is needed); ``bos``: whether position 0 is the BOS
    token saekit put there. ``examples``: the examples' indices in the file's order.
    """

    clean_ids: Tensor
    clean_answer: Tensor
    patch_ids: Tensor | None = None
    patch_answer: Tensor | None = None
    bos: bool = False
    examples: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        B = self.clean_ids.shape[0]
        if self.clean_ids.ndim != 2 or self.clean_answer.shape != (B,):
            raise DataError(
                f"a circuit batch needs clean_ids (B, T) and one clean answer per row, got {tuple(self.clean_ids.shape)} "
                f"and {tuple(self.clean_answer.shape)}"
            )
        if self.patch_ids is not None and self.patch_ids.shape != self.clean_ids.shape:
            raise DataError(
                f"patch_ids {tuple(self.patch_ids.shape)} must have the shape of clean_ids {tuple(self.clean_ids.shape)}"
            )
        if self.patch_answer is not None and self.patch_answer.shape != (B,):
            raise DataError(f"patch_answer must hold one token per row ({B}), got {tuple(self.patch_answer.shape)}")

    @property
    def size(self) -> int:
        return self.clean_ids.shape[0]

    @property
    def length(self) -> int:
        return self.clean_ids.shape[1]

    def to(self, device: torch.device | str) -> CircuitBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(self, clean_ids=self.clean_ids.to(device), clean_answer=self.clean_answer.to(device),
                       patch_ids=move(self.patch_ids), patch_answer=move(self.patch_answer))

    def repeat(self, n: int) -> CircuitBatch:
        """The batch n times over, stacked (row k·B + b is row b): for running several
        interventions on the same examples in one forward pass."""

        def rep(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.repeat(n, *([1] * (t.ndim - 1)))

        return replace(self, clean_ids=rep(self.clean_ids), clean_answer=rep(self.clean_answer),
                       patch_ids=rep(self.patch_ids), patch_answer=rep(self.patch_answer),
                       examples=self.examples * n)


@dataclass
class CircuitData:
    """The examples of a file, checked and tokenised; ``batches`` groups them by length."""

    examples: list[CircuitExample]
    source: str = "<records>"
    bos: bool = False

    def __post_init__(self) -> None:
        if not self.examples:
            raise DataError(f"{self.source}: no examples; each line needs clean_prefix and clean_answer")

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def has_patch(self) -> bool:
        """Whether the examples have patch prefixes (else node effects zero-ablate)."""
        return self.examples[0].patch_ids is not None

    @property
    def has_patch_answer(self) -> bool:
        return self.examples[0].patch_answer_id is not None

    @property
    def max_length(self) -> int:
        return max(e.length for e in self.examples)

    @property
    def lengths_equal(self) -> bool:
        return len({e.length for e in self.examples}) == 1

    def batches(self, batch_size: int = 8) -> Iterator[CircuitBatch]:
        """Batches of up to ``batch_size`` examples of one token length each, lengths in
        the order they first appear in the file."""
        if batch_size <= 0:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        by_length: dict[int, list[int]] = {}
        for i, e in enumerate(self.examples):
            by_length.setdefault(e.length, []).append(i)
        for indices in by_length.values():
            for start in range(0, len(indices), batch_size):
                chosen = indices[start:start + batch_size]
                rows = [self.examples[i] for i in chosen]
                yield CircuitBatch(
                    clean_ids=torch.tensor([e.clean_ids for e in rows], dtype=torch.long),
                    clean_answer=torch.tensor([e.clean_answer_id for e in rows], dtype=torch.long),
                    patch_ids=torch.tensor([e.patch_ids for e in rows], dtype=torch.long) if self.has_patch else None,
                    patch_answer=(
                        torch.tensor([e.patch_answer_id for e in rows], dtype=torch.long) if self.has_patch_answer else None
                    ),
                    bos=self.bos,
                    examples=chosen,
                )


def _one_token(tokenizer: Any, text: str, where: str) -> int:
    pieces = tokenizer.encode(text, add_special_tokens=False)
    if len(pieces) != 1:
        shown = [tokenizer.decode([p]) for p in pieces]
        raise DataError(
            f"{where}: the answer {text!r} is {len(pieces)} tokens of this tokenizer ({shown}), not one; "
            "give answers that are single tokens (mind the leading space, e.g. ' is')"
        )
    return int(pieces[0])


def _prefix_ids(tokenizer: Any, text: str, where: str) -> tuple[int, ...]:
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        raise DataError(f"{where}: the prefix is empty; the answer needs a prefix to follow")
    bos = tokenizer.bos_token_id
    return tuple(([] if bos is None else [int(bos)]) + [int(i) for i in ids])


def circuit_examples(
    records: Iterable[Mapping[str, Any]], tokenizer: Any, *, aligned: bool = True, max_length: int | None = None,
) -> CircuitData:
    """Check and tokenise records (dicts with the fields of a line; see the module doc).

    ``aligned``: refuse clean and patch prefixes of different token lengths (every node
    effect method compares them position by position). ``max_length``: the model's
    context; longer prefixes are refused.
    """
    numbered = ((n, f"record {n}", r) for n, r in enumerate(records, start=1))
    return _check(numbered, tokenizer, "<records>", aligned, max_length)


def read_circuit_data(
    path: str | os.PathLike[str], tokenizer: Any, *, aligned: bool = True, max_length: int | None = None
) -> CircuitData:
    """Read and check a JSONL file of prompts (see the module doc); blank lines are skipped,
    and errors name the file's own line numbers."""
    file = Path(path)
    text = read_data_file(file, "give a JSONL file of clean_prefix/clean_answer lines")
    if not text.strip():
        raise DataError(f"{file} is empty; each line needs a JSON object with clean_prefix and clean_answer")

    def bad(n: int, e: json.JSONDecodeError) -> DataError:
        return DataError(f"{file}, line {n}: not valid JSON ({e.msg} at column {e.colno})")

    numbered = ((n, f"{file}, line {n}", record) for n, record in jsonl_records(text.splitlines(), bad))
    return _check(numbered, tokenizer, str(file), aligned, max_length)


def _check(
    numbered: Iterable[tuple[int, str, Any]], tokenizer: Any, source: str, aligned: bool, max_length: int | None
) -> CircuitData:
    examples: list[CircuitExample] = []
    first_has: tuple[bool, bool] | None = None
    for n, where, record in numbered:
        if not isinstance(record, Mapping):
            raise DataError(
                f"{where}: expected a JSON object with clean_prefix and clean_answer, got {type(record).__name__}"
            )
        missing = [name for name in REQUIRED if record.get(name) is None]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}; each line needs clean_prefix and clean_answer")
        for name in FIELDS:
            value = record.get(name)
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: {name} must be a string, got {type(value).__name__} {value!r}")
        has = (record.get("patch_prefix") is not None, record.get("patch_answer") is not None)
        if first_has is None:
            first_has = has
        elif has != first_has:
            name, here = next((f, h) for f, h, h0 in zip(("patch_prefix", "patch_answer"), has, first_has) if h != h0)
            raise DataError(
                f"{where}: {name} is {'given' if here else 'missing'} here but {'missing' if here else 'given'} on the "
                "first line; give every line the same fields (the metric and the ablation are chosen once for the "
                "whole file)"
            )
        clean_ids = _prefix_ids(tokenizer, record["clean_prefix"], f"{where}: clean_prefix")
        patch_ids = None
        if has[0]:
            patch_ids = _prefix_ids(tokenizer, record["patch_prefix"], f"{where}: patch_prefix")
            if aligned and len(patch_ids) != len(clean_ids):
                raise DataError(
                    f"{where}: the clean prefix is {len(clean_ids)} tokens and the patch prefix {len(patch_ids)}; "
                    "node effects compare them position by position, so they must have the same token length "
                    f"(clean {record['clean_prefix']!r}, patch {record['patch_prefix']!r})"
                )
        for ids, name in ((clean_ids, "clean_prefix"), (patch_ids, "patch_prefix")):
            if ids is not None and max_length is not None and len(ids) > max_length:
                raise DataError(f"{where}: {name} is {len(ids)} tokens, more than the model's {max_length}-token context")
        examples.append(CircuitExample(
            line=n,
            clean_prefix=record["clean_prefix"],
            clean_answer=record["clean_answer"],
            clean_ids=clean_ids,
            clean_answer_id=_one_token(tokenizer, record["clean_answer"], f"{where}: clean_answer"),
            patch_prefix=record.get("patch_prefix"),
            patch_answer=record.get("patch_answer"),
            patch_ids=patch_ids,
            patch_answer_id=_one_token(tokenizer, record["patch_answer"], f"{where}: patch_answer") if has[1] else None,
        ))
    return CircuitData(examples, source=source, bos=tokenizer.bos_token_id is not None)
