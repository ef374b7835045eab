"""One probe experiment: activations of the datasets, the held-out split, the fit, the scores.

``run_probe`` fits the same probe at each of several hook points (a layer sweep reads them
all in one forward pass per dataset) and scores it on the held-out part of the training
statements and on each whole test dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..progress import ProgressCallback
from .activations import Position, centre, parse_position, statement_activations
from .datasets import TruthDataset, paired_rows
from .metrics import ProbeScore, accuracy, auroc, score_probe, train_test_split
from .probes import PROBES, Probe, make_probe

HELD_OUT = "held-out"


@dataclass(frozen=True)
class ProbeRun:
    """What to fit and how to split: the probe and its settings, the token, centring."""

    probe: str = "mass_mean"
    params: dict[str, Any] = field(default_factory=dict)
    position: Position = "last"
    centre: bool = False
    test_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise ConfigError(f"no probe {self.probe!r}; choose from {', '.join(PROBES)}")
        object.__setattr__(self, "position", parse_position(self.position))
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be between 0 and 1, not {self.test_fraction}")
        make_probe(self.probe, **self.params)  # unknown or bad settings fail here


@dataclass
class HookResult:
    """The probe fitted at one hook point, and its scores (held-out first)."""

    hook: str
    probe: Probe
    n_train: int
    scores: list[ProbeScore]

    def to_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "n_train": self.n_train, "scores": [dataclasses.asdict(s) for s in self.scores]}


def training_split(run: ProbeRun, datasets: Sequence[TruthDataset],
                   rows: Sequence[int] | None = None) -> tuple[Tensor, list[int], list[int]]:
    """The labels of the pooled ``datasets`` (of their ``rows`` only, when given) and the
    training and held-out indices into them, by ``run``'s seed and fraction: stratified by
    label, and statements sharing a pair key kept on one side, so a city's negated
    statement is never trained on while its affirmative one is held out. Every command
    that splits (``probe train``, ``lora``, ``intervene``) splits through here."""
    if not datasets:
        raise ConfigError("give at least one training dataset")
    labels = torch.tensor([label for ds in datasets for label in ds.labels])
    groups: list[Any] = []
    for k, ds in enumerate(datasets):
        groups += list(ds.pairs) if ds.pairs is not None else [(k, i) for i in range(len(ds))]
    if rows is not None:
        labels, groups = labels[list(rows)], [groups[i] for i in rows]
    train_idx, test_idx = train_test_split(labels.tolist(), run.test_fraction, run.seed, groups)
    return labels, train_idx, test_idx


def run_probe(lm, run: ProbeRun, train_sets: Sequence[TruthDataset], hooks: Sequence[str], *,
              test_sets: Sequence[TruthDataset] = (), paired: TruthDataset | None = None,
              cache_dir: str | Path | None = None, use_cache: bool = True, batch_size: int = 32,
              progress: ProgressCallback | None = None) -> list[HookResult]:
    """Fit ``run.probe`` on ``train_sets`` (pooled) at each hook point and score it.

    CCS trains on one dataset and its negations in ``paired`` (matched by pair key). Each
    dataset is centred on its own mean when ``run.centre``. The split keeps statements that
    share a pair key together, so a city's negated statement is never trained on while its
    affirmative one is held out.
    """
    if not train_sets:
        raise ConfigError("give at least one training dataset")
    needs = PROBES[run.probe].needs
    if needs == "partners":
        if paired is None or len(train_sets) != 1:
            raise ConfigError("the ccs probe trains on one dataset and its negations: give one training dataset and "
                              "the paired (negated) one")
        pairs = paired_rows(train_sets[0], paired)
    elif paired is not None:
        raise ConfigError("a paired dataset is for the ccs probe only")
    everything = list(train_sets) + list(test_sets) + ([paired] if paired is not None else [])
    acts: dict[int, dict[str, Tensor]] = {}
    for ds in everything:
        if id(ds) not in acts:
            got = statement_activations(lm, ds, hooks, run.position, cache_dir=cache_dir, use_cache=use_cache,
                                        batch_size=batch_size, progress=progress)
            acts[id(ds)] = {h: centre(a) if run.centre else a for h, a in got.items()}

    rows = [i for i, _ in pairs] if needs == "partners" else None
    labels, train_idx, test_idx = training_split(run, train_sets, rows)
    polarities = torch.tensor([p for ds in train_sets for p in ds.polarities])
    if rows is not None:
        polarities = polarities[rows]
    results = []
    for hook in hooks:
        X = torch.cat([acts[id(ds)][hook] for ds in train_sets])
        partners = None
        if needs == "partners":
            X = X[[i for i, _ in pairs]]
            partners = acts[id(paired)][hook][[j for _, j in pairs]]
        probe = make_probe(run.probe, **run.params)
        probe.fit(X[train_idx], labels[train_idx], polarities=polarities[train_idx],
                  partners=partners[train_idx] if partners is not None else None)
        held = X[test_idx]
        scores = [ProbeScore(HELD_OUT, len(test_idx), accuracy(probe.scores(held), labels[test_idx], probe.threshold),
                             auroc(probe.scores(held), labels[test_idx]))]
        for ds in test_sets:
            scores.append(score_probe(probe, acts[id(ds)][hook], torch.tensor(ds.labels), ds.name))
        results.append(HookResult(hook, probe, len(train_idx), scores))
    return results


def write_layer_plot(path: str | Path, results: Sequence[HookResult], title: str = "") -> None:
    """Accuracy (solid) and AUROC (dotted) against the layer, one colour per scored set."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from ..hooks import HookPoint
    from ..report import write_png

    layers = [HookPoint.parse(r.hook).layer for r in results]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for k, name in enumerate(s.dataset for s in results[0].scores):
        colour = f"C{k}"
        ax.plot(layers, [r.scores[k].accuracy for r in results], "-o", color=colour, ms=3, label=f"{name} accuracy")
        ax.plot(layers, [r.scores[k].auroc for r in results], ":", color=colour, label=f"{name} AUROC")
    ax.axhline(0.5, color="grey", lw=0.8)
    ax.set_xlabel(f"layer ({HookPoint.parse(results[0].hook).site})")
    ax.set_ylabel("accuracy, AUROC")
    ax.set_ylim(0.0, 1.02)  # generalisation can fall well below chance (negation flips a narrow direction)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_png(fig, Path(path), dpi=120)
