"""Subject–verb agreement prompts: a built-in prompt file for circuits, made for a tokenizer.

Each prompt ends just before the verb, and its clean and patch prefixes differ only in the
number of the subject, so the answer is the verb form that agrees with it (Linzen et al.
2016; the task of Marks et al. 2024, "Sparse Feature Circuits")::

    {"clean_prefix": "The nurse near the windows", "clean_answer": " is",
     "patch_prefix": "The nurses near the windows", "patch_answer": " are"}

Three templates: ``simple`` ("The nurse" → " is"), ``pp`` (across a prepositional phrase
whose noun, the attractor, has the other number by default: "The nurse near the windows")
and ``rc`` (across a relative clause: "The nurse that the doctors like"). The verb pairs
are " is"/" are", " was"/" were" and " has"/" have".

Which prompts survive depends on the tokenizer: the circuits need answers that are single
tokens, and clean and patch prefixes of equal token length (node effects compare them
position by position). "nurse"/"nurses" are one token each to most BPE vocabularies and
5/6 bytes to a byte-level one, where only the irregular plurals that keep their length
("man"/"men") align. By default only the prompts of the most common token length are
kept, so that a position means the same word in every prompt (per-position nodes and
the graph's token labels need that).

The result is deterministic: the candidates are walked in an order fixed by ``seed``
(templates and numbers taken in turn) and the first ``n`` that pass are kept, so the same
tokenizer and options give the same file.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product, zip_longest
from typing import Any

from ..checks import is_integer
from ..errors import ConfigError, DataError

# (singular, plural). Regular and irregular plurals: the irregular ones that keep their
# length ("man"/"men") are the only ones a byte-level tokenizer aligns.
SUBJECTS: tuple[tuple[str, str], ...] = (
    ("nurse", "nurses"), ("doctor", "doctors"), ("teacher", "teachers"), ("pilot", "pilots"),
    ("author", "authors"), ("farmer", "farmers"), ("manager", "managers"), ("officer", "officers"),
    ("student", "students"), ("dancer", "dancers"), ("lawyer", "lawyers"), ("singer", "singers"),
    ("driver", "drivers"), ("guard", "guards"), ("senator", "senators"), ("athlete", "athletes"),
    ("customer", "customers"), ("worker", "workers"), ("engineer", "engineers"), ("painter", "painters"),
    ("man", "men"), ("woman", "women"), ("goose", "geese"), ("mouse", "mice"),
)
# The attractors of the prepositional phrase.
PLACES: tuple[tuple[str, str], ...] = (
    ("window", "windows"), ("car", "cars"), ("table", "tables"), ("door", "doors"), ("tree", "trees"),
    ("house", "houses"), ("desk", "desks"), ("gate", "gates"), ("chair", "chairs"), ("tower", "towers"),
)
PREPOSITIONS: tuple[str, ...] = ("near", "behind", "beside", "by")
# The relative clause's subject (the attractor) and its verb, (singular, plural) each.
AGENTS: tuple[tuple[str, str], ...] = (
    ("doctor", "doctors"), ("teacher", "teachers"), ("manager", "managers"), ("guard", "guards"),
    ("student", "students"), ("farmer", "farmers"), ("man", "men"), ("woman", "women"),
)
RC_VERBS: tuple[tuple[str, str], ...] = (("likes", "like"), ("knows", "know"), ("hates", "hate"), ("admires", "admire"))
# The answers, (singular, plural), leading space included.
VERBS: tuple[tuple[str, str], ...] = ((" is", " are"), (" was", " were"), (" has", " have"))

TEMPLATES: tuple[str, ...] = ("simple", "pp", "rc")
NUMBERS: tuple[str, ...] = ("singular", "plural", "both")


@dataclass(frozen=True)
class SvaOptions:
    """What to build.

    ``n``: prompts wanted (fewer when fewer pass for the tokenizer); ``seed``: the order
    the candidates are tried in; ``templates``: of ``TEMPLATES``; ``verbs``: the answer
    pairs by their singular form (" is", " was", " has"); ``clean_number``: the clean
    subject's number, ``"both"`` for half of each (the logit difference points towards the
    patch answer either way, so a number feature's effect has one sign over the file);
    ``attractor``: the phrase's noun has the other number than the clean subject (else the
    same); ``one_length``: keep only the prompts of the most common token length.
    """

    n: int = 64
    seed: int = 0
    templates: tuple[str, ...] = ("pp",)
    verbs: tuple[str, ...] = tuple(s for s, _ in VERBS)
    clean_number: str = "singular"
    attractor: bool = True
    one_length: bool = True

    def __post_init__(self) -> None:
        if not is_integer(self.n) or self.n < 1:
            raise ConfigError(f"the number of prompts must be a whole number of at least 1, got {self.n!r}")
        if not is_integer(self.seed):
            raise ConfigError(f"seed must be a whole number, got {self.seed!r}")
        object.__setattr__(self, "templates", _names(self.templates, TEMPLATES, "template"))
        object.__setattr__(self, "verbs", _names(self.verbs, tuple(s for s, _ in VERBS), "verb"))
        if self.clean_number not in NUMBERS:
            raise ConfigError(f"clean_number must be one of {', '.join(NUMBERS)}, got {self.clean_number!r}")


def _names(given: Any, known: Sequence[str], what: str) -> tuple[str, ...]:
    values = (given,) if isinstance(given, str) else tuple(given)
    if not values:
        raise ConfigError(f"give at least one {what} (of {', '.join(map(repr, known))})")
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ConfigError(f"unknown {what} {unknown[0]!r}; choose of {', '.join(map(repr, known))}")
    return tuple(dict.fromkeys(values))


# The built-in prompt files by name (``saekit circuit --data sva``).
DATASETS: dict[str, SvaOptions] = {
    "sva": SvaOptions(templates=("pp",)),
    "sva-simple": SvaOptions(templates=("simple",)),
    "sva-rc": SvaOptions(templates=("rc",)),
}


@dataclass(frozen=True)
class _Candidate:
    template: str
    clean_prefix: str
    patch_prefix: str
    clean_answer: str
    patch_answer: str

    def record(self) -> dict[str, str]:
        return {"clean_prefix": self.clean_prefix, "clean_answer": self.clean_answer,
                "patch_prefix": self.patch_prefix, "patch_answer": self.patch_answer, "template": self.template}


def _phrases(template: str, plural_attractor: bool) -> list[str]:
    """The words after the subject, for one attractor number."""
    k = int(plural_attractor)
    if template == "simple":
        return [""]
    if template == "pp":
        return [f" {prep} the {place[k]}" for prep, place in product(PREPOSITIONS, PLACES)]
    return [f" that the {agent[k]} {verb[k]}" for agent, verb in product(AGENTS, RC_VERBS)]


def _candidates(options: SvaOptions) -> list[_Candidate]:
    """Every prompt the options allow, in the order they are tried: each (template, clean
    number) group shuffled by the seed, then the groups taken in turn, so that a mix of
    templates or numbers is balanced (a relative clause has 32 times the variants of the
    simple template, and would otherwise crowd it out)."""
    numbers = (False, True) if options.clean_number == "both" else (options.clean_number == "plural",)
    verbs = [pair for pair in VERBS if pair[0] in options.verbs]
    rng = random.Random(options.seed)
    groups = []
    for template, plural in product(options.templates, numbers):
        group = []
        for subject, (singular_verb, plural_verb) in product(SUBJECTS, verbs):
            clean, patch = (subject[1], subject[0]) if plural else subject
            answers = (plural_verb, singular_verb) if plural else (singular_verb, plural_verb)
            attractor_plural = (not plural) if options.attractor else plural
            for phrase in _phrases(template, attractor_plural):
                group.append(_Candidate(template, f"The {clean}{phrase}", f"The {patch}{phrase}", *answers))
        rng.shuffle(group)
        groups.append(group)
    return [c for turn in zip_longest(*groups) for c in turn if c is not None]


@dataclass
class _Checker:
    """Token counts for a tokenizer, each string encoded once."""

    tokenizer: Any
    counts: dict[str, int] = field(default_factory=dict)

    def length(self, text: str) -> int:
        if text not in self.counts:
            self.counts[text] = len(self.tokenizer.encode(text, add_special_tokens=False))
        return self.counts[text]

    def split(self, text: str) -> list[str]:
        return [self.tokenizer.decode([i]) for i in self.tokenizer.encode(text, add_special_tokens=False)]


def sva_records(tokenizer: Any, options: SvaOptions | None = None) -> list[dict[str, str]]:
    """Up to ``options.n`` prompts for ``tokenizer`` (see the module doc), as the dicts of a
    prompt file's lines (each also names its ``template``, which the circuits ignore).

    Raises ``DataError`` when no prompt passes: no verb pair is single tokens (how they
    split is said), or no clean and patch prefixes have equal token lengths.
    """
    options = options or SvaOptions()
    checker = _Checker(tokenizer)
    verbs = [pair for pair in VERBS if pair[0] in options.verbs]
    single = [pair for pair in verbs if all(checker.length(v) == 1 for v in pair)]
    if not single:
        splits = "; ".join(f"{v!r} is {checker.split(v)}" for pair in verbs for v in pair if checker.length(v) != 1)
        raise DataError(
            f"no subject–verb agreement prompt fits this tokenizer: the answers must be single tokens, but {splits}; "
            "use a model whose tokenizer has them (any BPE vocabulary of English does), or write the prompt file yourself"
        )
    candidates = _candidates(options)
    by_length: dict[int, list[_Candidate]] = {}
    kept: list[_Candidate] = []
    for c in candidates:
        if not (checker.length(c.clean_answer) == 1 and checker.length(c.patch_answer) == 1):
            continue
        length = checker.length(c.clean_prefix)
        if checker.length(c.patch_prefix) != length:
            continue
        if not options.one_length:
            kept.append(c)
            if len(kept) == options.n:
                break
            continue
        bucket = by_length.setdefault(length, [])
        bucket.append(c)
        if len(bucket) == options.n:
            kept = bucket
            break
    else:
        if options.one_length and by_length:
            # No length reached n: the fullest, the shorter on a tie.
            kept = max(sorted(by_length.items()), key=lambda item: len(item[1]))[1]
    if not kept:
        raise DataError(
            "no subject–verb agreement prompt fits this tokenizer: for every subject the singular and plural "
            f"prefixes have different token lengths (e.g. {checker.split('The nurse')} against "
            f"{checker.split('The nurses')}), and the circuits compare them position by position"
        )
    return [c.record() for c in kept]


def write_sva_data(path: str | os.PathLike[str], tokenizer: Any, options: SvaOptions | None = None) -> int:
    """Write ``sva_records(tokenizer, options)`` as a prompt file (JSONL, atomically) at
    ``path``; returns the number of prompts written."""
    from ..io.files import atomic_write_text, check_writable_file

    check_writable_file(path, "path")
    records = sva_records(tokenizer, options)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records)
