"""Progress bars on stderr, drawn from the library's progress records."""

from __future__ import annotations

import time
from typing import Any


def amount(value: Any, spec: str) -> str:
    """A figure of a progress record; None (not known yet) as "n/a"."""
    return "n/a" if value is None else format(value, spec)


class ProgressBars:
    """tqdm bars on stderr drawn from the library's progress records.

    Three kinds of record arrive:

    * a training log record (``step``, ``tokens``, figures, ``tokens_per_s``): advances
      the training bar. Its rate and time left come from the record's current rate, not
      tqdm's average, which would count the first buffer fill as training time.
      ``fvu`` and ``dead_frac`` may be None (not known yet) and read "n/a";
    * ``{"status": text}``, a slow step without counts: shown on the training bar
      while training runs, on a line of its own once it is over;
    * ``{"phase", "done", "total", "unit"}``: a bar per phase, closed when it is done
      or the next phase starts. During training (a buffer refill) it is drawn below
      the training bar and goes when done; afterwards (evaluation) each one stays.

    Training is over once its bar is full, or at a status after the first step (the
    trainer reports statuses for the slow steps around its loop, such as the final
    evaluation; a run whose data ran out never fills its bar). Then the
    training bar is closed, so it does not sit there while evaluation runs. Without a
    total (``saekit eval``) there is no training bar. Nothing is drawn before the first
    record, so nothing appears before validation has succeeded.
    """

    TRAIN_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tok [{elapsed}{postfix}]"

    def __init__(self, desc: str, total: int | None = None, file: Any = None):
        self.desc, self.total, self.file = desc, total, file
        self.train_bar: Any = None
        self.training_over = total is None
        self.stepped = False
        self.first_step: tuple[float, int] | None = None  # (time, tokens) of the first training record
        self.side_bar: Any = None  # the current phase's bar, or a status line
        self.side_name: str | None = None
        self.shown_run: str | None = None  # with several dictionaries, whose figures the bar shows

    def __call__(self, record: dict[str, Any]) -> None:
        if "step" in record and "tokens" in record:
            self._step(record)
            return
        full = self.train_bar is not None and self.train_bar.n >= self.total
        if full or self.stepped and "status" in record:
            self._end_training()
        if "phase" in record:
            self._phase(record)
        elif "status" in record:
            self._status(str(record["status"]))

    def _tqdm(self, **kwargs: Any) -> Any:
        from tqdm.auto import tqdm

        return tqdm(file=self.file, dynamic_ncols=True, **kwargs)

    def _training_bar(self) -> Any:
        if self.train_bar is None:
            self.train_bar = self._tqdm(total=self.total, desc=self.desc, unit="tok", unit_scale=True,
                                        bar_format=self.TRAIN_FORMAT)
        return self.train_bar

    def _end_training(self) -> None:
        self.training_over = True
        if self.train_bar is not None:
            self.train_bar.close()
            self.train_bar = None

    def _step(self, record: dict[str, Any]) -> None:
        # Several dictionaries log the same step; the bar shows the first one's figures.
        run = record.get("run")
        if run is not None:
            self.shown_run = self.shown_run or run
            if run != self.shown_run:
                return
        self.stepped, self.training_over = True, False
        bar = self._training_bar()
        bar.set_description_str(self.desc, refresh=False)  # a status shown before is over
        rate = record.get("tokens_per_s")
        tokens = int(record["tokens"])
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = (now, tokens)
        parts = []
        if rate:
            parts.append(f"{si(rate)} tok/s")
            # Time left from the pace since the first step (refills of the shuffle buffer
            # included, the fill before training not): one interval's rate swings with
            # every refill, and the time left with it.
            t0, n0 = self.first_step
            pace = (tokens - n0) / (now - t0) if tokens > n0 and now > t0 else rate
            if self.total and tokens < self.total:
                parts.append(f"{duration((self.total - tokens) / pace)} left")
        if record.get("data_wait_frac") is not None:
            parts.append(f"waiting for data {record['data_wait_frac']:.0%}")
        if run is not None:
            parts.append(run)
        parts += [f"loss {amount(record.get('loss'), '.3g')}", f"l0 {amount(record.get('l0'), '.1f')}",
                  f"fvu {amount(record.get('fvu'), '.3f')}", f"dead {amount(record.get('dead_frac'), '.1%')}"]
        bar.set_postfix_str(", ".join(parts), refresh=False)
        bar.update(tokens - bar.n)

    def _status(self, text: str) -> None:
        if not self.training_over:
            self._training_bar().set_description_str(f"{self.desc}: {text}")
            return
        self._close_side()
        self.side_bar = self._tqdm(total=None, desc=text, bar_format="{desc} [{elapsed}]", leave=False)

    def _phase(self, record: dict[str, Any]) -> None:
        if not self.training_over:
            self._training_bar()  # first, so that it keeps the top line
        phase = str(record["phase"])
        if phase != self.side_name:
            self._close_side()
            # leave=None: a bar below the training bar goes when done, one on the top line stays.
            self.side_bar = self._tqdm(total=record.get("total"), desc=phase, unit=record.get("unit", "tok"),
                                       unit_scale=True, leave=None)
            self.side_name = phase
        self.side_bar.update(int(record["done"]) - self.side_bar.n)
        if record.get("total") and self.side_bar.n >= record["total"]:
            self._close_side()  # now, so its time and rate are the phase's own

    def _close_side(self) -> None:
        if self.side_bar is not None:
            self.side_bar.close()
            self.side_bar, self.side_name = None, None

    def close(self) -> None:
        self._close_side()
        self._end_training()


def si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"
