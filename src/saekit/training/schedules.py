"""The learning-rate and sparsity-coefficient schedules: pure functions of training progress.

Progress is the fraction of the run's tokens done, read at the middle of each step (see
``DictionaryTrainer.train_step``); being pure functions of it is what lets a resumed
run continue on exactly the schedule of an uninterrupted one.
"""

from __future__ import annotations


def lr_multiplier(progress: float, warmup: float, decay: float) -> float:
    """Linear warm-up from 0, flat, then linear decay to 0 over the last ``decay``."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if decay > 0 and progress > 1.0 - decay:
        return max(0.0, (1.0 - progress) / decay)
    return 1.0


def sparsity_multiplier(progress: float, warmup: float) -> float:
    """Linear warm-up of the sparsity coefficient from 0 over the first ``warmup`` of the run."""
    return min(1.0, progress / warmup) if warmup else 1.0
