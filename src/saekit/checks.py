"""Type checks for the plain values users pass (sizes, indices, coefficients), shared by
every module that validates them.

A bool is not a number here: Python counts ``True`` as the integer 1, so a flag passed
where a count belongs (or JSON ``true`` where a file records a size) would otherwise be
taken for one.
"""

from __future__ import annotations

from typing import Any


def is_integer(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool`` (finite or not: check that apart)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
