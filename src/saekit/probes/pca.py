"""The top principal components of statement activations, and their scatter coloured by label.

Marks & Tegmark (2023) saw true and false statements separate along the first principal
components of the residual stream; optionally each dataset is centred on its own mean
first (as they do), so that what differs between datasets (topic, negation) does not take
the top components.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..progress import ProgressCallback
from .activations import Position, centre, statement_activations
from .datasets import TruthDataset


@dataclass(frozen=True)
class Components:
    """``k`` principal directions of the rows of a matrix, and what they explain."""

    mean: Tensor  # (d,)
    directions: Tensor  # (k, d), unit rows, by decreasing variance
    variance: Tensor  # (k,) the variance along each direction
    explained: Tensor  # (k,) its share of the total variance

    def project(self, X: Tensor) -> Tensor:
        """(N, k): the coordinates of ``X`` along the directions, about the mean."""
        return (X.float() - self.mean) @ self.directions.T


def principal_components(X: Tensor, k: int = 2) -> Components:
    """The top ``k`` principal components of the rows of ``X`` (N, d), by SVD of the centred
    matrix; each direction's sign is chosen so that its largest loading is positive, so
    the result does not flip between runs."""
    if X.ndim != 2:
        raise ConfigError(f"principal components need a matrix (N, d), not shape {tuple(X.shape)}")
    n, d = X.shape
    if not 1 <= k <= min(n - 1, d):
        raise ConfigError(f"{k} components asked for, but {n} points in {d} dimensions give at most "
                          f"{min(n - 1, d)}")
    Xd = X.double()
    mean = Xd.mean(0)
    _, s, vt = torch.linalg.svd(Xd - mean, full_matrices=False)
    variance = s ** 2 / (n - 1)
    total = variance.sum()
    if not total > 0:
        raise DataError("the activations do not vary (every row is the same), so they have no principal components")
    directions = vt[:k]
    signs = torch.sign(directions.gather(1, directions.abs().argmax(1, keepdim=True)))
    directions = directions * signs
    return Components(mean.float(), directions.float(), variance[:k].float(), (variance[:k] / total).float())


@dataclass
class PCAResult:
    """Pooled activations of several datasets projected on their top components."""

    hook: str
    model: str
    centred: bool
    datasets: list[str]
    components: Components
    projections: Tensor  # (N, k)
    labels: Tensor  # (N,)
    which: Tensor  # (N,) index into ``datasets``

    def label_gaps(self) -> list[list[float]]:
        """[component][dataset]: the mean true minus the mean false statement along the
        component, in its standard deviations; per dataset, since negation can flip it and
        a pooled gap would hide two opposite ones."""
        out = []
        for i, var in enumerate(self.components.variance):
            proj = self.projections[:, i] / float(var) ** 0.5
            row = []
            for d in range(len(self.datasets)):
                own = self.which == d
                row.append(float(proj[own & (self.labels == 1)].mean() - proj[own & (self.labels == 0)].mean()))
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "hook": self.hook, "centred": self.centred, "datasets": self.datasets,
                "explained_variance_ratio": [float(v) for v in self.components.explained],
                "variance": [float(v) for v in self.components.variance],
                "true_minus_false_sd": self.label_gaps(),
                "n": [int((self.which == i).sum()) for i in range(len(self.datasets))]}


def dataset_pca(lm, datasets: Sequence[TruthDataset], hook: str, k: int = 2, *, position: Position = "last",
                centre_each: bool = False, cache_dir: str | Path | None = None, use_cache: bool = True,
                batch_size: int = 32, progress: ProgressCallback | None = None) -> PCAResult:
    """The top ``k`` principal components of the pooled activations of ``datasets`` at ``hook``
    (each centred on its own mean first when ``centre_each``)."""
    if not datasets:
        raise ConfigError("give at least one dataset")
    blocks, labels, which = [], [], []
    for i, ds in enumerate(datasets):
        acts = statement_activations(lm, ds, [hook], position, cache_dir=cache_dir, use_cache=use_cache,
                                     batch_size=batch_size, progress=progress)[hook]
        blocks.append(centre(acts) if centre_each else acts)
        labels += list(ds.labels)
        which += [i] * len(ds)
    X = torch.cat(blocks)
    comps = principal_components(X, k)
    return PCAResult(hook, lm.name, centre_each, [d.name for d in datasets], comps, comps.project(X),
                     torch.tensor(labels), torch.tensor(which))


_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def write_pca_plot(path: str | Path, result: PCAResult, title: str = "") -> None:
    """PC1 against PC2 (a grid of every pair for more components): true statements blue,
    false red, one marker per dataset; each axis labelled with its share of the variance."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ..report import write_png

    k = result.projections.shape[1]
    if k < 2:
        raise ConfigError("a scatter needs at least 2 components")
    side = k - 1
    fig = Figure(figsize=(3.4 * side + 1.6, 3.2 * side + 0.6))
    axes = fig.subplots(side, side, squeeze=False)
    P = result.projections.numpy()
    for row in range(side):
        for col in range(side):
            ax = axes[row][col]
            i, j = col, row + 1  # lower triangle: column PC i, row PC j
            if i >= j:
                ax.set_visible(False)
                continue
            for d in range(len(result.datasets)):
                for label, colour in ((1, "tab:blue"), (0, "tab:red")):
                    rows = ((result.which == d) & (result.labels == label)).numpy()
                    ax.scatter(P[rows, i], P[rows, j], s=6, c=colour, marker=_MARKERS[d % len(_MARKERS)],
                               alpha=0.5, linewidths=0)
            ex = result.components.explained
            ax.set_xlabel(f"PC{i + 1} ({float(ex[i]):.1%})", fontsize=8)
            ax.set_ylabel(f"PC{j + 1} ({float(ex[j]):.1%})", fontsize=8)
            ax.tick_params(labelsize=7)
    handles = [Line2D([], [], ls="", marker="o", color="tab:blue", label="true"),
               Line2D([], [], ls="", marker="o", color="tab:red", label="false")]
    handles += [Line2D([], [], ls="", marker=_MARKERS[d % len(_MARKERS)], color="grey", label=name)
                for d, name in enumerate(result.datasets)]
    fig.legend(handles=handles, loc="upper right", fontsize=7)
    centred = ", each dataset centred" if result.centred else ""
    fig.suptitle(title or f"{' + '.join(result.datasets)} at {result.hook}{centred}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.86 if side == 1 else 1, 0.95))
    write_png(fig, Path(path), dpi=120)
