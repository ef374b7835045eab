"""The library's progress records: it never prints, it reports to a callback.

Three kinds of record go to a ``progress`` callback (``saekit.cli.progress.ProgressBars``
draws them): a training log record (``step``, ``tokens`` and figures), ``{"status":
text}`` for a slow step without counts, and ``{"phase", "done", "total", "unit"}`` for a
phase with counts (a pass over a corpus), which ``Phase`` reports.
"""

from __future__ import annotations

from typing import Any, Callable

ProgressCallback = Callable[[dict[str, Any]], None]


class Phase:
    """One phase's advance, reported to a ``progress`` callback (a no-op without one)."""

    def __init__(self, progress: ProgressCallback | None, phase: str, total: int | None, unit: str = "tok"):
        self.progress, self.phase, self.total, self.unit, self.done = progress, phase, total, unit, 0
        self._report()

    def advance(self, n: int) -> None:
        # Capped: reading whole sequences overshoots the tokens asked for by up to one.
        self.done = self.done + n if self.total is None else min(self.done + n, self.total)
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress({"phase": self.phase, "done": self.done, "total": self.total, "unit": self.unit})
