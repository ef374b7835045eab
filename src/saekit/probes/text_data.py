"""Texts with two classes, for ``saekit classify``: read from a CSV or JSONL file, or a truth dataset.

A file has a text column and a label column (``text`` and ``label`` unless told
otherwise). Labels are 0/1, or any two distinct values: ``false``/``true`` map to 0/1,
and two other values (``sports``, ``politics``) map in sorted order, the first to 0,
unless the caller names the one that is class 1. ``LabelledTexts.classes`` keeps what
0 and 1 stand for, so a report can say so. A truth dataset (a built-in name, or a CSV
with ``statement`` and ``label`` columns) is labelled texts with classes false and true.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..data import jsonl_records
from ..errors import ConfigError, DataError
from .datasets import BUILDERS, MIN_PER_CLASS, TruthDataset, build_dataset, read_csv_dataset, texts_hash

TEXT_SUFFIXES = (".csv", ".jsonl")
_NO_VALUE = object()  # a JSONL record without the label field


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with 0/1 labels; ``classes[0]`` and ``classes[1]`` say what 0 and 1 stand for."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, str] = ("0", "1")
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or self.name
        if len(self.labels) != len(self.texts):
            raise ConfigError(f"{where}: {len(self.texts)} texts but {len(self.labels)} labels")
        if len(self.classes) != 2 or self.classes[0] == self.classes[1]:
            raise ConfigError(f"{where}: classes must be two different names, not {self.classes!r}")
        if any(label not in (0, 1) for label in self.labels):
            raise DataError(f"{where}: labels must be 0 or 1")
        empty = [i for i, t in enumerate(self.texts) if not t.strip()]
        if empty:
            raise DataError(f"{where}: text {empty[0]} is empty ({len(empty)} empty in all); remove those rows")
        counts = Counter(self.labels)
        if len(counts) < 2:
            raise DataError(f"{where}: every text is of one class ({self.classes[next(iter(counts), 0)]!r}); "
                            "a classifier needs examples of both classes")
        if min(counts.values()) < MIN_PER_CLASS:
            raise DataError(f"{where} is too small to split into training and held-out parts: it has "
                            f"{counts[0]} texts of class {self.classes[0]!r} and {counts[1]} of {self.classes[1]!r}; "
                            f"give at least {MIN_PER_CLASS} of each")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def counts(self) -> tuple[int, int]:
        """How many texts of class 0 and of class 1."""
        n1 = sum(self.labels)
        return len(self.labels) - n1, n1

    @property
    def content_hash(self) -> str:
        return texts_hash(self.texts)


def from_truth_dataset(dataset: TruthDataset) -> LabelledTexts:
    """A truth dataset as labelled texts: 0 is false, 1 is true."""
    return LabelledTexts(dataset.name, dataset.statements, dataset.labels, ("false", "true"), dataset.source)


def _label_key(value: Any) -> str | None:
    """A label as the text it is compared by: JSON true/false as 'true'/'false', 1.0 as '1'."""
    if value is _NO_VALUE or value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float, str)):
        return str(value).strip() or None
    return json.dumps(value)  # a list or object: kept, so the message can show it


def map_labels(values: Sequence[str], where: str, positive: str | None = None) -> tuple[list[int], tuple[str, str]]:
    """0/1 labels from two distinct label values, and what 0 and 1 stand for.

    0/1 and false/true (any case) keep their meaning; two other values are sorted and the
    first is 0, unless ``positive`` names the value that is 1.
    """
    distinct = sorted(set(values))
    if len(distinct) == 1:
        raise DataError(f"{where}: every label is {distinct[0]!r}, one class only; a classifier needs texts of two classes")
    if len(distinct) > 2:
        shown = ", ".join(repr(v) for v in distinct[:6]) + (", ..." if len(distinct) > 6 else "")
        raise DataError(f"{where}: the labels take {len(distinct)} values ({shown}); classify separates two "
                        "classes, so keep the rows of two of them (or relabel them 0 and 1)")
    if positive is not None:
        if positive not in distinct:
            raise ConfigError(f"--positive {positive!r} is not one of the labels in {where} "
                              f"({distinct[0]!r}, {distinct[1]!r})")
        negative = distinct[0] if distinct[1] == positive else distinct[1]
        classes = (negative, positive)
    elif set(distinct) == {"0", "1"}:
        classes = ("0", "1")
    elif {v.lower() for v in distinct} == {"false", "true"}:
        classes = (distinct[0], distinct[1]) if distinct[0].lower() == "false" else (distinct[1], distinct[0])
    else:
        classes = (distinct[0], distinct[1])
    return [int(v == classes[1]) for v in values], classes


def _read_csv_rows(path: Path, text_field: str, label_field: str) -> tuple[list[str], list[str | None], list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM from Excel is not part of a name
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = [(f or "").strip() for f in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    texts: list[str] = []
    labels: list[str | None] = []
    for row in rows:
        row = {(k or "").strip(): v for k, v in row.items()}
        texts.append(str(row.get(text_field) or "").strip())
        labels.append(_label_key(row.get(label_field) or ""))
    return texts, labels, fields


def _read_jsonl_rows(path: Path, text_field: str, label_field: str) -> tuple[list[str], list[str | None], list[str]]:
    texts: list[str] = []
    labels: list[str | None] = []
    fields: dict[str, None] = {}
    def bad(line_no: int, e: json.JSONDecodeError) -> DataError:
        return DataError(f"{path}, line {line_no}: not valid JSON ({e.msg}); each line must be one object such as "
                         f'{{"{text_field}": "...", "{label_field}": 1}}')

    try:
        with open(path, encoding="utf-8") as fh:
            for line_no, record in jsonl_records(fh, bad):
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {line_no}: a JSON {type(record).__name__}, not an object with "
                                    f"{text_field!r} and {label_field!r}")
                fields.update(dict.fromkeys(record))
                text = record.get(text_field)
                texts.append(text.strip() if isinstance(text, str) else "" if text is None else str(text))
                labels.append(_label_key(record.get(label_field, _NO_VALUE)))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not readable as UTF-8 ({e})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return texts, labels, list(fields)


def read_labelled_texts(path: str | Path, text_field: str = "text", label_field: str = "label",
                        positive: str | None = None, name: str | None = None) -> LabelledTexts:
    """Labelled texts from a CSV or JSONL file; every error names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; give a CSV or JSONL file with {text_field!r} and {label_field!r} "
                        f"columns, or a truth dataset: {', '.join(BUILDERS)}")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: classify reads .csv and .jsonl files, not {suffix or 'a file without a suffix'}")
    reader = _read_csv_rows if suffix == ".csv" else _read_jsonl_rows
    texts, raw_labels, fields = reader(path, text_field, label_field)
    if not texts:
        raise DataError(f"{path} holds no rows; add rows with {text_field!r} and {label_field!r}")
    missing = [f for f in (text_field, label_field) if f not in fields]
    if missing:
        hint = " (a truth dataset CSV has 'statement' instead of 'text'; it is read as such)" if suffix == ".csv" else ""
        raise DataError(f"{path} has no {' or '.join(repr(m) for m in missing)} "
                        f"{'column' if suffix == '.csv' else 'field'} (it has: {', '.join(fields) or 'none'}); "
                        f"name them with --text-field and --label-field{hint}")
    row_word = "line" if suffix == ".jsonl" else "row"
    unlabelled = [i for i, v in enumerate(raw_labels) if v is None]
    if unlabelled:
        raise DataError(f"{path}: {row_word} {unlabelled[0] + 1} has no {label_field!r} ({len(unlabelled)} in all); "
                        "label every text or remove those rows")
    labels, classes = map_labels([v for v in raw_labels if v is not None], str(path), positive)
    return LabelledTexts(name or path.stem, tuple(texts), tuple(labels), classes, str(path))


def load_labelled_texts(spec: str, *, text_field: str = "text", label_field: str = "label",
                        positive: str | None = None, seed: int = 0) -> LabelledTexts:
    """A built-in truth dataset by name, a truth dataset CSV (``statement`` and ``label``), or a
    CSV/JSONL of texts and labels."""
    if spec in BUILDERS:
        if positive is not None:
            raise ConfigError(f"--positive is for files with labels of your own; in {spec} 1 is true")
        return from_truth_dataset(build_dataset(spec, seed))
    path = Path(spec)
    if not path.is_file() and path.suffix.lower() not in TEXT_SUFFIXES:
        raise DataError(f"{spec!r} is neither a file nor a built-in truth dataset ({', '.join(BUILDERS)}); give a "
                        f"CSV or JSONL file with {text_field!r} and {label_field!r}")
    if path.suffix.lower() == ".csv" and path.is_file() and text_field == "text" and positive is None:
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                header = [(f or "").strip() for f in next(csv.reader(fh), [])]
        except (OSError, UnicodeDecodeError, csv.Error):
            header = []  # read_labelled_texts reports it
        if "statement" in header and "text" not in header:
            return from_truth_dataset(read_csv_dataset(path))
    return read_labelled_texts(path, text_field, label_field, positive)
