"""Linear probes for truth: datasets of true and false statements, their activations, probes.

``datasets`` reads CSVs and builds balanced, deterministic truth datasets; ``activations``
reads a model's activations at one token of each statement, cached on disk; ``probes``
fits the probes (logistic regression, mass-mean, LDA, CCS, the two-direction probe of
"Truth is Universal") behind one interface; ``metrics`` splits and scores them. Analyses:
``matrix`` (train on each dataset, test on each), ``prompting`` (the calibrated few-shot
prompting baseline), ``pca`` (principal components coloured by label), ``calibration``
(a threshold set to a false-positive rate on control texts), ``likelihood`` (truth against
the model's log-probability of each statement). ``feature_classifiers`` (with ``text_data``, texts
with two labels) pits a dictionary's features against a probe on the raw activations.
``verdicts`` asks the model whether a statement is true (the prompting baseline and the
interventions share it); ``intervention`` adds a probe's direction and measures the verdict;
``lora`` trains a linear head jointly with LoRA adapters, the stronger baseline.
"""

from .activations import DEFAULT_CACHE_DIR, Position, centre, default_cache_dir, parse_position, statement_activations
from .feature_classifiers import ClassifyConfig, ClassifyResult, classify, pooled_activations, write_curve_plot
from .calibration import (ControlTexts, FPRCalibration, RecallAtFPR, calibrate_fpr, controls_needed,
                          read_control_texts, recall_at_fpr, threshold_at_fpr)
from .datasets import BUILDERS, TruthDataset, build_dataset, load_dataset, paired_rows, read_csv_dataset, write_csv_dataset
from .likelihood import LikelihoodCorrelation, StatementLogProbs, likelihood_correlation, statement_log_probs
from .matrix import GeneralisationMatrix, MatrixRow, generalisation_matrix, write_matrix_plot
from .metrics import ProbeScore, accuracy, auroc, score_probe, train_test_split
from .probes import (CCSProbe, LDAProbe, LogisticRegressionProbe, MassMeanProbe, Probe, PROBES, TwoDirectionProbe,
                     load_probe, make_probe)
from .pca import Components, PCAResult, dataset_pca, principal_components, write_pca_plot
from .prompting import PromptFormat, PromptingResult, ShotPool, prompting_baseline
from .text_data import LabelledTexts, load_labelled_texts, read_labelled_texts
from .intervention import (EditPositions, SweepResult, encode_prompts, few_shot_prefix, intervention_sweep,
                           intervention_vector, random_like, write_intervention_plot)
from .lora import LoraProbe, LoraResult, LoraSettings, require_peft, train_lora_probe
from .training import ProbeRun, run_probe, training_split, write_layer_plot
from .verdicts import VerdictPrompt, answer_logprobs, answer_token_ids, verdict_log_odds

__all__ = [
    "BUILDERS", "CCSProbe", "DEFAULT_CACHE_DIR", "centre", "default_cache_dir", "LDAProbe", "LogisticRegressionProbe", "MassMeanProbe", "PROBES",
    "Position", "Probe", "ProbeScore", "TruthDataset", "TwoDirectionProbe", "accuracy", "auroc", "build_dataset",
    "load_dataset", "load_probe", "make_probe", "paired_rows", "parse_position", "read_csv_dataset", "score_probe",
    "statement_activations", "train_test_split", "write_csv_dataset",
    # analyses
    "Components", "ControlTexts", "FPRCalibration", "GeneralisationMatrix", "LikelihoodCorrelation", "MatrixRow",
    "PCAResult", "PromptFormat", "PromptingResult", "RecallAtFPR", "ShotPool", "StatementLogProbs",
    "answer_token_ids", "calibrate_fpr", "controls_needed", "dataset_pca", "generalisation_matrix",
    "likelihood_correlation", "principal_components", "prompting_baseline", "read_control_texts", "recall_at_fpr",
    "statement_log_probs", "threshold_at_fpr", "write_matrix_plot", "write_pca_plot",
    # dictionary features as classifiers
    "ClassifyConfig", "ClassifyResult", "LabelledTexts", "classify", "load_labelled_texts", "pooled_activations",
    "read_labelled_texts", "write_curve_plot",
    # fitting runs, interventions, the LoRA baseline, verdict prompts
    "EditPositions", "LoraProbe", "LoraResult", "LoraSettings", "ProbeRun", "SweepResult", "VerdictPrompt",
    "answer_logprobs", "encode_prompts", "few_shot_prefix", "intervention_sweep", "intervention_vector", "random_like",
    "require_peft", "run_probe", "train_lora_probe", "training_split", "verdict_log_odds", "write_intervention_plot",
    "write_layer_plot",
]
