"""Training dictionaries: one trainer per dictionary, the run around it, and its folder.

``trainer`` is one dictionary's optimisation step, ``schedules`` and ``dead_features``
what it reads and tracks, ``log_interval`` the figures it logs, ``run`` a whole run
(checks, activation buffer, checkpoints, final evaluation), ``run_folder`` the rules for
a run's output folder and resuming it.
"""

from .run import TrainResult, train
from .trainer import DictionaryTrainer

__all__ = ["DictionaryTrainer", "TrainResult", "train"]
