"""The data of a SHIFT experiment: sets of texts with two binary labels, and a synthetic task.

A ``LabelledSet`` holds texts (or stored activations) with an *intended* and a *spurious*
0/1 label each; a ``SpuriousTask`` holds the sets SHIFT needs (an ambiguous training and
test set where the two concepts always agree; a balanced test set and a small judge set
where they are decorrelated). ``spurious_task`` builds one deterministically from a
seed: sentences whose topic (sports or cooking) is the intended concept and whose
subject's gender the spurious one, said four times per sentence so that a probe trained
on the ambiguous set leans on it. ``read_spurious_task`` reads a user's task from a JSONL
file (one text per line, with its two labels and its set), each problem named by line.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..checks import is_integer
from ..data import jsonl_records, read_data_file
from ..errors import ConfigError, DataError


def _labels(values: Sequence[int] | Tensor, what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in (values.tolist() if isinstance(values, Tensor) else values))
    if any(v not in (0, 1) for v in out):
        raise DataError(f"{what}: labels must be 0 or 1")
    return out


@dataclass(frozen=True)
class LabelledSet:
    """Texts (or stored activations, one row per example) with two binary labels each:
    the ``intended`` concept and the ``spurious`` one.

    Exactly one of ``texts`` (for a model) and ``activations`` (``(N, d)``, for a
    dictionary on stored activations) is given.
    """

    name: str
    intended: tuple[int, ...]
    spurious: tuple[int, ...]
    texts: tuple[str, ...] | None = None
    activations: Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "intended", _labels(self.intended, f"{self.name}: intended"))
        object.__setattr__(self, "spurious", _labels(self.spurious, f"{self.name}: spurious"))
        n = len(self.intended)
        if n == 0:
            raise DataError(f"{self.name}: no examples")
        if len(self.spurious) != n:
            raise DataError(f"{self.name}: {n} intended labels but {len(self.spurious)} spurious ones")
        if (self.texts is None) == (self.activations is None):
            raise ConfigError(f"{self.name}: give either texts or activations, not both or neither")
        if self.texts is not None:
            texts = tuple(self.texts)
            if len(texts) != n or not all(isinstance(t, str) and t.strip() for t in texts):
                raise DataError(f"{self.name}: need one non-empty text per label ({len(texts)} texts, {n} labels)")
            object.__setattr__(self, "texts", texts)
        else:
            a = self.activations
            if not isinstance(a, Tensor) or a.ndim != 2 or a.shape[0] != n:
                shape = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
                raise DataError(f"{self.name}: activations must be (examples, width) with one row per label "
                                f"({n}), got {shape}")
            if not torch.isfinite(a).all():
                raise DataError(f"{self.name}: the activations hold NaN or Inf")

    def __len__(self) -> int:
        return len(self.intended)

    def groups(self) -> dict[tuple[int, int], int]:
        """How many examples each (intended, spurious) pair of labels has."""
        out = {(i, s): 0 for i in (0, 1) for s in (0, 1)}
        for i, s in zip(self.intended, self.spurious):
            out[(i, s)] += 1
        return out


@dataclass(frozen=True)
class SpuriousTask:
    """The sets of a SHIFT experiment.

    ``train``: ambiguous (the spurious label equals the intended one on every example;
    code the spurious concept so that its value 1 goes with the intended value 1).
    ``ambiguous_test``: held out, ambiguous too. ``balanced_test``: decorrelated, every
    (intended, spurious) group present. ``judge``: small and decorrelated, for the
    automatic judge only (None when the features to ablate are given).
    ``intended_name``/``spurious_name`` say what the concepts are, for reports.
    """

    train: LabelledSet
    ambiguous_test: LabelledSet
    balanced_test: LabelledSet
    judge: LabelledSet | None = None
    intended_name: str = "intended"
    spurious_name: str = "spurious"

    def __post_init__(self) -> None:
        sets = self.sets()
        for role, s in sets.items():
            if not isinstance(s, LabelledSet):
                raise ConfigError(f"the task's {role} set must be a LabelledSet, got {type(s).__name__}")
        if len({s.texts is None for s in sets.values()}) > 1:
            raise ConfigError("give every set of the task as texts, or every set as activations, not a mixture")
        for role in ("train", "ambiguous_test"):
            s = sets[role]
            if s.intended != s.spurious:
                raise DataError(f"the {role} set ({s.name}) must be ambiguous: the spurious label equal to the intended "
                                "one on every example (code the spurious concept so that its 1 goes with the "
                                "intended 1)")
            if len(set(s.intended)) < 2:
                raise DataError(f"the {role} set ({s.name}) needs examples of both labels")
        for role in ("balanced_test", "judge"):
            s = sets.get(role)
            if s is not None:
                empty = [g for g, n in s.groups().items() if n == 0]
                if empty:
                    raise DataError(f"the {role} set ({s.name}) must hold every (intended, spurious) pair of labels; "
                                    f"it has none with intended={empty[0][0]}, spurious={empty[0][1]}")
        widths = {s.activations.shape[1] for s in sets.values() if s.activations is not None}
        if len(widths) > 1:
            raise DataError(f"the sets' activations have different widths ({sorted(widths)}); read them at one "
                            "hook point")

    def sets(self) -> dict[str, LabelledSet]:
        out = {"train": self.train, "ambiguous_test": self.ambiguous_test, "balanced_test": self.balanced_test}
        if self.judge is not None:
            out["judge"] = self.judge
        return out


# The synthetic task's sentences: an intended concept (topic: sports = 1, cooking = 0) in
# one noun phrase, and a spurious one (the subject's gender: male = 1, female = 0) in four
# pronouns. Measured on the embedded model's resid_post.9, mean-pooled, default sizes: a
# logistic probe trained where the two co-occur reads gender (balanced test: topic 0.56,
# gender 0.94), as Marks et al.'s profession classifier leaned on gender; with the topic
# in a whole verb phrase and gender in the subject alone it read the topic instead (1.0
# and 0.5), and there would be nothing to remove.
_PRONOUNS = {1: ("He", "he", "his", "him"), 0: ("She", "she", "her", "her")}
_OPENINGS = ("{P} said {p} liked {topic}", "{P} told us {p} enjoyed {topic}", "{P} wrote that {p} loved {topic}",
             "{P} mentioned that {p} was into {topic}")
_CLOSINGS = (", and {poss} {other} told {obj} so too.", ", so {poss} {other} joined {obj}.",
             ", and {poss} {other} agreed with {obj}.", ", but {poss} {other} teased {obj} about it.")
_TOPICS = {
    1: ("football", "tennis", "the marathon", "swimming", "basketball", "the cycling race", "the rugby match",
        "skiing", "the boxing match", "golf", "baseball", "the hockey game"),
    0: ("the soup recipe", "baking bread", "the pasta sauce", "roasting chicken", "the apple pie", "frying eggs",
        "the curry", "making pancakes", "the stew", "grilling fish", "the chocolate cake", "the salad dressing"),
}
_OTHERS = ("friend", "cousin", "neighbour", "colleague", "roommate", "partner")


def spurious_task(seed: int = 0, *, n_train: int = 64, n_test: int = 64, n_judge: int = 16) -> SpuriousTask:
    """A synthetic spurious-correlation task: sentences such as "He said he liked
    swimming, and his partner told him so too."

    The intended concept is the topic (1: sports, 0: cooking), the spurious one the
    subject's gender (1: male, 0: female). ``train`` (``n_train`` texts) and
    ``ambiguous_test`` (``n_test``) hold only male sports and female cooking sentences,
    half each; ``balanced_test`` (``n_test``) and ``judge`` (``n_judge``) all four
    groups in equal shares. No sentence appears twice across the sets; the same seed
    gives the same sets.
    """
    for name, n, step in (("n_train", n_train, 2), ("n_test", n_test, 4), ("n_judge", n_judge, 4)):
        if not is_integer(n) or n < step or n % step:
            raise ConfigError(f"{name} must be a positive multiple of {step} (equal groups), got {n!r}")
    rng = random.Random(seed)
    pools: dict[tuple[int, int], list[str]] = {}
    for topic in (0, 1):
        for gender in (0, 1):
            P, p, poss, obj = _PRONOUNS[gender]
            texts = [opening.format(P=P, p=p, topic=t) + closing.format(poss=poss, other=other, obj=obj)
                     for opening in _OPENINGS for t in _TOPICS[topic] for closing in _CLOSINGS for other in _OTHERS]
            rng.shuffle(texts)
            pools[(topic, gender)] = texts
    need = {(1, 1): n_train // 2 + n_test // 2 + n_test // 4 + n_judge // 4,
            (0, 0): n_train // 2 + n_test // 2 + n_test // 4 + n_judge // 4,
            (1, 0): n_test // 4 + n_judge // 4, (0, 1): n_test // 4 + n_judge // 4}
    for group, n in need.items():
        if n > len(pools[group]):
            raise ConfigError(f"the synthetic task has {len(pools[group])} distinct sentences per group; these sizes "
                              f"need {n} of one group")

    def take(group: tuple[int, int], n: int) -> list[tuple[str, int, int]]:
        chosen, pools[group] = pools[group][:n], pools[group][n:]
        return [(t, group[0], group[1]) for t in chosen]

    def labelled(name: str, rows: list[tuple[str, int, int]]) -> LabelledSet:
        rng.shuffle(rows)
        return LabelledSet(name, tuple(r[1] for r in rows), tuple(r[2] for r in rows), texts=tuple(r[0] for r in rows))

    ambiguous = [(1, 1), (0, 0)]
    every = [(1, 1), (0, 0), (1, 0), (0, 1)]
    return SpuriousTask(
        train=labelled("train (ambiguous)", [r for g in ambiguous for r in take(g, n_train // 2)]),
        ambiguous_test=labelled("ambiguous test", [r for g in ambiguous for r in take(g, n_test // 2)]),
        balanced_test=labelled("balanced test", [r for g in every for r in take(g, n_test // 4)]),
        judge=labelled("judge (balanced)", [r for g in every for r in take(g, n_judge // 4)]),
        intended_name="topic (1: sports, 0: cooking)", spurious_name="gender (1: male, 0: female)",
    )


# ---------------------------------------------------------------------------
# A user's task from a JSONL file

SET_NAMES: tuple[str, ...] = ("train", "ambiguous_test", "balanced_test", "judge")
TASK_FIELDS: tuple[str, ...] = ("text", "intended", "spurious", "set")
_LINE_FORMAT = ('each line is {"text": ..., "intended": 0 or 1, "spurious": 0 or 1, "set": one of '
                + ", ".join(SET_NAMES) + "}")


def read_spurious_task(path: str | os.PathLike[str], *, intended_name: str = "intended",
                       spurious_name: str = "spurious") -> SpuriousTask:
    """A ``SpuriousTask`` from a JSONL file: one text per line, ``{"text": ...,
    "intended": 0|1, "spurious": 0|1, "set": ...}`` with ``set`` one of ``train``,
    ``ambiguous_test``, ``balanced_test`` and ``judge`` (see ``SpuriousTask``; the judge
    lines may be left out when the features to ablate are given). Other fields are
    ignored; blank lines are skipped. Every problem is a ``DataError`` naming the file's
    line where one applies. ``intended_name``/``spurious_name`` say what the concepts are.
    """
    file = Path(path)
    text = read_data_file(file, f"give a JSONL file where {_LINE_FORMAT}")
    for what, name in (("intended_name", intended_name), ("spurious_name", spurious_name)):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{what} names the concept for reports; give a non-empty string, got {name!r}")

    def bad(n: int, e: json.JSONDecodeError) -> DataError:
        return DataError(f"{file}, line {n}: not valid JSON ({e.msg} at column {e.colno}); {_LINE_FORMAT}")

    rows: dict[str, list[tuple[int, str, int, int]]] = {name: [] for name in SET_NAMES}
    for n, record in jsonl_records(text.splitlines(), bad):
        where = f"{file}, line {n}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}; {_LINE_FORMAT}")
        missing = [f for f in TASK_FIELDS if f not in record]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}; {_LINE_FORMAT}")
        body, role = record["text"], record["set"]
        if not isinstance(body, str) or not body.strip():
            raise DataError(f"{where}: text must be a non-empty string, got {body!r}")
        if role not in SET_NAMES:
            raise DataError(f"{where}: unknown set {role!r}; the sets are {', '.join(SET_NAMES)}")
        labels = []
        for f in ("intended", "spurious"):
            v = record[f]
            # 0 or 1 as JSON numbers only: true/false, "1" or 1.0 are more likely a mistake than a label.
            if type(v) is not int or v not in (0, 1):
                raise DataError(f"{where}: {f} must be 0 or 1, got {json.dumps(v)}")
            labels.append(v)
        rows[role].append((n, body, labels[0], labels[1]))
    if not any(rows.values()):
        raise DataError(f"{file} holds no lines; {_LINE_FORMAT}")
    absent = [name for name in SET_NAMES[:3] if not rows[name]]
    if absent:
        raise DataError(f"{file}: no line has \"set\": \"{absent[0]}\"; a task needs train, ambiguous_test and "
                        "balanced_test lines (and judge lines for the automatic judge)")

    def labelled(name: str) -> LabelledSet | None:
        r = rows[name]
        if not r:
            return None
        return LabelledSet(name, tuple(x[2] for x in r), tuple(x[3] for x in r), texts=tuple(x[1] for x in r))

    sets = {name: labelled(name) for name in SET_NAMES}
    try:
        return SpuriousTask(train=sets["train"], ambiguous_test=sets["ambiguous_test"],  # type: ignore[arg-type]
                            balanced_test=sets["balanced_test"], judge=sets["judge"],  # type: ignore[arg-type]
                            intended_name=intended_name, spurious_name=spurious_name)
    except DataError as e:
        # The task's own checks say what is wrong with a set; the file's line says where.
        raise DataError(f"{file}: {e}{_first_offending_line(str(e), rows)}") from None


def _first_offending_line(message: str, rows: dict[str, list[tuple[int, str, int, int]]]) -> str:
    """Where a set that must be ambiguous first breaks the rule (its two labels differ),
    as text to append to the task's own message about that set; "" for any other message."""
    for name in ("train", "ambiguous_test"):
        if message.startswith(f"the {name} set") and "must be ambiguous" in message:
            n, _, intended, spurious = next(r for r in rows[name] if r[2] != r[3])
            return f"; line {n} has intended {intended} but spurious {spurious}"
    return ""
