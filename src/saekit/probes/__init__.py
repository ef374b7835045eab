"""Linear probes for truth: datasets of true and false statements, their activations, probes.

``datasets`` reads CSVs and builds balanced, deterministic truth datasets; ``activations``
reads a model's activations at one token of each statement, cached on disk; ``probes``
fits the probes (logistic regression, mass-mean, LDA, CCS, the two-direction probe of
"Truth is Universal") behind one interface; ``metrics`` splits and scores them.
"""

from .activations import DEFAULT_CACHE_DIR, Position, centre, default_cache_dir, parse_position, statement_activations
from .datasets import BUILDERS, TruthDataset, build_dataset, load_dataset, paired_rows, read_csv_dataset, write_csv_dataset
from .metrics import ProbeScore, accuracy, auroc, score_probe, train_test_split
from .probes import (CCSProbe, LDAProbe, LogisticRegressionProbe, MassMeanProbe, Probe, PROBES, TwoDirectionProbe,
                     load_probe, make_probe)

__all__ = [
    "BUILDERS", "CCSProbe", "DEFAULT_CACHE_DIR", "centre", "default_cache_dir", "LDAProbe", "LogisticRegressionProbe", "MassMeanProbe", "PROBES",
    "Position", "Probe", "ProbeScore", "TruthDataset", "TwoDirectionProbe", "accuracy", "auroc", "build_dataset",
    "load_dataset", "load_probe", "make_probe", "paired_rows", "parse_position", "read_csv_dataset", "score_probe",
    "statement_activations", "train_test_split", "write_csv_dataset",
]
