"""The generalisation matrix: a probe fitted on each training dataset, scored on each test dataset.

Row i, column j is the probe fitted on the training split of dataset i and scored on
dataset j: on j's held-out split when j is dataset i itself (so the diagonal is the usual
held-out figure), on the whole of j otherwise. Every dataset's activations come from one
forward pass (or the cache), however many rows and columns it appears in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..progress import ProgressCallback
from .activations import centre, statement_activations
from .datasets import TruthDataset
from .metrics import ProbeScore, accuracy, auroc, train_test_split
from .probes import PROBES, Probe, make_probe
from .training import ProbeRun


def same_dataset(a: TruthDataset, b: TruthDataset) -> bool:
    """The same statements with the same labels (a dataset named twice, or a CSV of a built one)."""
    return a.content_hash == b.content_hash and a.labels == b.labels


def dataset_split(dataset: TruthDataset, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The training and held-out rows of ``dataset``, a statement's pair-mates kept together."""
    return train_test_split(list(dataset.labels), test_fraction, seed, dataset.pairs)


@dataclass(frozen=True)
class MatrixRow:
    """The probe fitted on one training dataset and its score on each test dataset."""

    train: str
    n_train: int
    scores: tuple[ProbeScore, ...]
    held_out: tuple[bool, ...]  # per test column: scored on the held-out split (the test set is this row's)

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.held_out):
            raise ConfigError("a matrix row needs one held-out flag per score")


@dataclass
class GeneralisationMatrix:
    """Rows: training datasets; columns: test datasets; optionally a prompting row."""

    probe: str
    hook: str
    model: str
    position: Any
    centred: bool
    test_fraction: float
    seed: int
    train: list[str]
    test: list[str]
    rows: list[MatrixRow]
    probes: list[Probe] = dataclasses.field(default_factory=list, repr=False)
    prompting: Any = None  # a prompting.PromptingResult, drawn as an extra row

    def accuracies(self) -> list[list[float]]:
        return [[s.accuracy for s in row.scores] for row in self.rows]

    def aurocs(self) -> list[list[float]]:
        return [[s.auroc for s in row.scores] for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "probe": self.probe, "hook": self.hook, "position": self.position,
            "centred": self.centred, "test_fraction": self.test_fraction, "seed": self.seed,
            "train": self.train, "test": self.test,
            "accuracy": self.accuracies(), "auroc": self.aurocs(),
            "n": [[s.n for s in row.scores] for row in self.rows],
            "held_out": [list(row.held_out) for row in self.rows],
            "n_train": [row.n_train for row in self.rows],
        }
        if self.prompting is not None:
            out["prompting"] = self.prompting.to_dict()
        return out


def generalisation_matrix(lm, run: ProbeRun, train_sets: Sequence[TruthDataset], test_sets: Sequence[TruthDataset],
                          hook: str, *, cache_dir: str | Path | None = None, use_cache: bool = True,
                          batch_size: int = 32, progress: ProgressCallback | None = None) -> GeneralisationMatrix:
    """Fit ``run.probe`` on the training split of each of ``train_sets`` at ``hook`` and score
    it on each of ``test_sets`` (held-out split on the diagonal, the whole set elsewhere)."""
    if not train_sets or not test_sets:
        raise ConfigError("the matrix needs at least one training and one test dataset")
    if PROBES[run.probe].needs == "partners":
        raise ConfigError("the ccs probe trains on a dataset paired with its negations, which a matrix row does not "
                          "have; use saekit probe train --probe ccs --test-dataset ..., or another probe here")
    splits = {id(ds): dataset_split(ds, run.test_fraction, run.seed) for ds in train_sets}  # fails before the model
    acts: dict[str, Tensor] = {}
    for ds in [*train_sets, *test_sets]:
        key = ds.content_hash
        if key not in acts:
            got = statement_activations(lm, ds, [hook], run.position, cache_dir=cache_dir, use_cache=use_cache,
                                        batch_size=batch_size, progress=progress)[hook]
            acts[key] = centre(got) if run.centre else got
    rows, probes = [], []
    for ds in train_sets:
        train_idx, test_idx = splits[id(ds)]
        X, y = acts[ds.content_hash], torch.tensor(ds.labels)
        probe = make_probe(run.probe, **run.params)
        probe.fit(X[train_idx], y[train_idx], polarities=torch.tensor(ds.polarities)[train_idx])
        scores, held = [], []
        for test in test_sets:
            own = same_dataset(ds, test)
            rows_scored = test_idx if own else list(range(len(test)))
            Xt, yt = acts[test.content_hash][rows_scored], torch.tensor(test.labels)[rows_scored]
            s = probe.scores(Xt)
            scores.append(ProbeScore(test.name, len(rows_scored), accuracy(s, yt, probe.threshold), auroc(s, yt)))
            held.append(own)
        rows.append(MatrixRow(ds.name, len(train_idx), tuple(scores), tuple(held)))
        probes.append(probe)
    return GeneralisationMatrix(run.probe, hook, lm.name, run.position, run.centre, run.test_fraction, run.seed,
                                [d.name for d in train_sets], [d.name for d in test_sets], rows, probes)


def write_matrix_plot(path: str | Path, matrix: GeneralisationMatrix, title: str = "") -> None:
    """The accuracy matrix as an annotated heat-map (rows train, columns test), the prompting
    baseline as a last row under a line; each cell shows accuracy over AUROC, a held-out
    cell marked with an asterisk."""
    from matplotlib.figure import Figure

    from ..report import write_png

    acc = [list(r) for r in matrix.accuracies()]
    roc = [list(r) for r in matrix.aurocs()]
    labels = list(matrix.train)
    stars = [list(row.held_out) for row in matrix.rows]
    if matrix.prompting is not None:
        acc.append([s.accuracy for s in matrix.prompting.scores])
        roc.append([s.auroc for s in matrix.prompting.scores])
        labels.append(f"prompting ({matrix.prompting.shots}-shot)")
        stars.append([False] * len(matrix.test))
    n_rows, n_cols = len(acc), len(matrix.test)
    fig = Figure(figsize=(1.3 * n_cols + 2.6, 0.6 * n_rows + 1.8))
    ax = fig.subplots()
    image = ax.imshow(acc, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            text = f"{acc[i][j]:.2f}{'*' if stars[i][j] else ''}\n{roc[i][j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if 0.2 < acc[i][j] < 0.85 else "white")
    if matrix.prompting is not None:
        ax.axhline(n_rows - 1.5, color="black", lw=1.5)
    ax.set_xticks(range(n_cols), matrix.test, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), labels, fontsize=8)
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    ax.set_title(title or f"{matrix.probe} at {matrix.hook}: accuracy (AUROC below; * held-out split)", fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy", fraction=0.04)
    fig.tight_layout()
    write_png(fig, Path(path), dpi=120)
