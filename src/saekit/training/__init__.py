"""Training dictionaries: one trainer per dictionary, the run around it, and its folder.

``trainer`` is one dictionary's optimisation step (``graphed_step`` its loss and backward
replayed from a CUDA graph on a GPU), ``schedules`` and ``dead_features`` what it reads
and tracks, ``log_interval`` the figures it logs, ``plan`` which dictionaries one pass
trains and where each goes, ``loop`` the loop feeding them all from one buffer, ``run`` a
whole run (checks, folders, final evaluation), ``run_folder`` the rules for a run's folder
and resuming it.
"""

from .run import TrainResult, train, train_many
from .trainer import DictionaryTrainer

__all__ = ["DictionaryTrainer", "TrainResult", "train", "train_many"]
