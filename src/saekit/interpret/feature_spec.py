"""Which features a command works on: ``--features 0-199,300,512-515`` parsed into indices.

One parser for every verb that takes a feature list (``saekit dashboard``, ``saekit explain``),
so the syntax and its error messages are the same everywhere.
"""

from __future__ import annotations

import operator
import re
from typing import Iterable

from ..errors import ConfigError

_ITEM = re.compile(r"^(\d+)(?:\s*-\s*(\d+))?$")


def parse_feature_spec(spec: str, d_sae: int) -> list[int]:
    """The sorted, unique feature indices that ``spec`` names.

    ``spec`` is comma-separated items, each an index (``300``) or an inclusive range
    (``0-199``); whitespace around items is ignored. Raises ConfigError on bad syntax, an
    index outside ``0..d_sae-1`` (the message names the valid range), a reversed range, or
    a spec that names nothing.
    """
    if d_sae <= 0:
        raise ConfigError(f"the dictionary has {d_sae} features, so no feature can be chosen")
    text = (spec or "").strip()
    if not text:
        raise ConfigError("--features is empty; give indices and ranges such as 0-199,300,512-515")
    chosen: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ConfigError(f"--features {spec!r} has an empty item; separate indices and ranges with single commas")
        match = _ITEM.match(item)
        if match is None:
            raise ConfigError(f"--features: {item!r} is neither an index (e.g. 300) nor a range (e.g. 0-199)")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        if stop < start:
            raise ConfigError(f"--features: the range {item!r} runs backwards; write it {stop}-{start}")
        for index in (start, stop):
            if index >= d_sae:
                raise ConfigError(f"--features: feature {index} is out of range; this dictionary has {d_sae} "
                                  f"features, 0-{d_sae - 1}")
        chosen.update(range(start, stop + 1))
    return sorted(chosen)


def feature_indices(features: Iterable[int], d_sae: int) -> list[int]:
    """``features`` (integers, or a tensor of them) as a list of ints in the order given,
    checked: not empty, every one an integer from 0 to ``d_sae`` − 1. For the Python API,
    where a caller passes indices instead of a ``--features`` string."""
    if hasattr(features, "tolist"):
        features = features.tolist()
    chosen: list[int] = []
    for f in features:
        try:
            if isinstance(f, bool):
                raise TypeError
            chosen.append(operator.index(f))
        except TypeError:
            raise ConfigError(f"features must be integers, got {f!r}") from None
    if not chosen:
        raise ConfigError("features is empty; give at least one feature index")
    bad = [i for i in chosen if not 0 <= i < d_sae]
    if bad:
        raise ConfigError(
            f"feature {bad[0]} is out of range: this dictionary has {d_sae} features, indices 0 to {d_sae - 1}"
            + (f" ({len(bad)} indices are out of range)" if len(bad) > 1 else "")
        )
    return chosen
