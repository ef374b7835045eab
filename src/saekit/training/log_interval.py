"""Log figures over every token trained since the previous log record."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..dictionaries import TokenGroup

# Log fields that measure time, not training: a resumed run writes every other field
# exactly as an uninterrupted one would.
TIMING_FIELDS = ("tokens_per_s", "data_wait_frac", "read_gb_per_s")

if TYPE_CHECKING:
    from .trainer import DictionaryTrainer, StepResult


class LogInterval:
    """Figures over every token trained since the last log record, not over one batch.

    A figure of one batch means nothing for small batches (a one-token batch has no
    variance, so its FVU was 2.5e13); summed over the interval, FVU is measured around
    the interval's mean as docs/metrics.md defines it, and is None only while fewer than
    two tokens have been seen.
    """

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start, self.steps, self.n, self.resampled = now, 0, 0, 0
        self.waited = 0.0  # seconds spent waiting for activations (the model or the disk)
        # Running sums stay on the dictionary's device as float64 tensors, read only in
        # record(): a float() per step would make a GPU wait for every step.
        self.sums: dict[str, Tensor] = {}

    def _add(self, name: str, value: Tensor) -> None:
        value = value.detach().double()
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    @torch.no_grad()
    def add(self, step: StepResult, waited: float = 0.0, group: TokenGroup | None = None) -> None:
        """One step: ``step.reconstructed`` is what ``step.out.x_hat`` reconstructs (the
        input, or a transcoder's target), in scaled units like the loss; ``waited``:
        seconds spent waiting for this batch. With a ``group`` (data parallel) the step's
        figures are summed over every rank's share, one collective per step, so every
        rank holds the whole batch's sums (and any rank's checkpoint has them)."""
        x, out = step.reconstructed, step.out
        self.resampled += step.resampled
        self.waited += waited
        self.steps += 1
        loss_terms = {"loss": out.loss, **{f"loss_{name}": value for name, value in out.terms.items()}}
        if group is None:
            self.n += x.shape[0]
            figures = {"err": (x - out.x_hat).pow(2).sum(), "sum_sq": x.pow(2).sum(), "l0": out.n_active, **loss_terms}
            sum_x = x.sum(0)
        else:
            # The loss terms are means over each share: weighted by the share's tokens,
            # summed over the ranks and divided by the batch's tokens, the batch's means.
            n_share = float(x.shape[0])
            local = [(x - out.x_hat).pow(2).sum(), x.pow(2).sum(), out.n_active.to(x.dtype), x.new_tensor(n_share)]
            local += [v.detach().to(x.dtype) * n_share for v in loss_terms.values()]
            total = group.sum(torch.cat([torch.stack(local), x.sum(0)]).double())
            names = ["err", "sum_sq", "l0", "n", *loss_terms]
            figures = dict(zip(names, total[: len(names)]))
            n_batch = figures.pop("n")
            figures.update({name: figures[name] / n_batch for name in loss_terms})
            self.n += int(n_batch)
            sum_x = total[len(names):]
        for name, value in figures.items():
            self._add(name, value)
        self._add("sum_x", sum_x)

    def state(self) -> dict[str, Any]:
        """The sums so far (checkpointed, so the first record after a resume covers the
        same steps, with the same figures, as in an uninterrupted run)."""
        return {"steps": self.steps, "n": self.n, "resampled": self.resampled,
                "sums": {name: t.cpu() for name, t in self.sums.items()}}

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        self.steps, self.n, self.resampled = int(state["steps"]), int(state["n"]), int(state["resampled"])
        self.sums = {name: t.to(device) for name, t in state["sums"].items()}

    def record(self, trainer: DictionaryTrainer, now: float) -> dict[str, Any]:
        assert self.steps > 0
        sums = {name: t.cpu() for name, t in self.sums.items()}
        err, sum_sq = float(sums.pop("err")), float(sums.pop("sum_sq"))
        variance = sum_sq - float(sums.pop("sum_x").pow(2).sum()) / self.n
        fvu = err / variance if self.n >= 2 and variance > 1e-12 * max(sum_sq, 1e-30) else None
        l0 = float(sums.pop("l0")) / self.n
        return {
            "step": trainer.step,
            "tokens": trainer.tokens,
            **{name: float(total) / self.steps for name, total in sums.items()},  # loss and loss_*
            "mse": err / self.n * trainer.output_scale**2,  # raw units, as in eval.json
            "fvu": fvu,
            "l0": l0,
            "dead_frac": trainer.tracker.dead_fraction(trainer.tokens),
            "lr": trainer.opt.param_groups[0]["lr"],
            "tokens_per_s": self.n / max(now - self.start, 1e-9),  # this interval's rate
            # How much of the interval went to waiting for activations: near 1, the run is
            # bound by the model or the disk; near 0, by the dictionaries' own steps.
            "data_wait_frac": min(1.0, self.waited / max(now - self.start, 1e-9)),
            **({"resampled": self.resampled} if self.resampled else {}),
        }
