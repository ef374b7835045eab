"""How much of the behaviour a circuit carries: faithfulness and completeness by mean ablation.

With every node outside a circuit ``C`` mean-ablated (set to its mean; error nodes too,
so nothing outside ``C`` is left running), the metric is ``m(C)``; with every node
ablated it is ``m(∅)``, with none ``m(M)`` (the model). Then (Marks et al. 2024, "Sparse
Feature Circuits", §3; Wang et al. 2023)::

    faithfulness(C) = (m(C) − m(∅)) / (m(M) − m(∅))

1 for the whole model, 0 for the empty circuit. Completeness asks what is left without
the circuit: ``C`` itself ablated, the rest running, gives ``m(M∖C)`` and the
faithfulness of the complement, ``(m(M∖C) − m(∅)) / (m(M) − m(∅))``, near 0 for a complete
circuit. Each is the ratio of the metric's means over the examples.

The ablated nodes of a point are set during the pass to their means, the kept ones to
what this pass computes (so they respond to ablations upstream of them), at every hook
point, in forward order. The means are a ``MeanAblation`` (``ablation``), the same the
mask baseline (``mask``) ablates to, so that the two curves compare like for like: by
default per aligned position over the file's patch prompts (over the clean ones when it has
none), as in Marks et al.'s code; see ``ablation`` for why and for the alternatives.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checks import is_integer
from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .ablation import MeanAblation
from .attribution import Node, NodeEffects, check_inputs
from .circuit import Circuit
from .data import CircuitData
from .edges import checked_nodes
from .graph import Nodes, SplicedModel
from .metrics import Metric, default_metric


# ---------------------------------------------------------------------------


def _masks(model: SplicedModel, nodes: Sequence[Node], n_positions: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Per point, which nodes are kept: features ``(T, F)`` and error ``(T,)`` booleans."""
    dev = model.lm.device
    out = {p: (torch.zeros(n_positions, model.dictionary(p).cfg.d_sae, dtype=torch.bool, device=dev),
               torch.zeros(n_positions, dtype=torch.bool, device=dev)) for p in model.points}
    for n in nodes:
        t = slice(None) if n.position is None else n.position
        if n.feature is None:
            out[n.point][1][t] = True
        else:
            out[n.point][0][t, n.feature] = True
    return out


def ablated_metric(
    model: SplicedModel, data: CircuitData, keep: Collection[Node] | None, metric: Metric | None = None, *,
    ablation: MeanAblation | None = None, ablate_kept: bool = False, batch_size: int = 8,
) -> float:
    """The metric's mean with every node outside ``keep`` set to its mean (``keep`` None:
    no node ablated). ``ablate_kept``: the other way round, the nodes of ``keep`` ablated
    and the rest running. ``keep``: nodes at aligned positions or summed over positions
    (position None: the feature at every position)."""
    check_inputs(model, data, batch_size)
    metric = metric or default_metric(data)
    T = data.max_length
    nodes = [] if not keep else checked_nodes(model, keep, T)
    if keep is None:
        masks = None
    else:
        masks = _masks(model, nodes, T)
        if ablate_kept:
            masks = {p: (~f, ~e) for p, (f, e) in masks.items()}
    ablation = ablation or MeanAblation.from_data(model, data, batch_size)
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in data.batches(batch_size):
            batch = batch.to(model.lm.device)
            settings = None
            if masks is not None:
                means = ablation.nodes_for(model, batch)
                L = batch.length
                settings = {p: _mixer(masks[p][0][-L:], masks[p][1][-L:], means[p]) for p in model.points}
            logits = model.run(batch.clean_ids, bos=batch.bos, set_nodes=settings).logits
            total += float(metric(logits, batch).double().sum())
            n += batch.size
    return total / n


def _mixer(keep_f: Tensor, keep_e: Tensor, means: Nodes):
    def mix(computed: Nodes) -> Nodes:
        return Nodes(torch.where(keep_f, computed.features, means.features),
                     torch.where(keep_e[:, None], computed.error, means.error))

    return mix


@dataclass(frozen=True)
class Faithfulness:
    """The metric's means: the model (``m_model``), everything ablated (``m_empty``), the
    circuit alone (``m_circuit``), the circuit ablated (``m_without``); and the ratios."""

    n_nodes: int
    m_model: float
    m_empty: float
    m_circuit: float
    m_without: float

    @property
    def faithfulness(self) -> float:
        return _ratio(self.m_circuit, self.m_empty, self.m_model)

    @property
    def complement_faithfulness(self) -> float:
        """Faithfulness of the model without the circuit: near 0 when the circuit is complete."""
        return _ratio(self.m_without, self.m_empty, self.m_model)

    def to_json(self) -> dict[str, Any]:
        return {"n_nodes": self.n_nodes, "m_model": self.m_model, "m_empty": self.m_empty,
                "m_circuit": self.m_circuit, "m_without_circuit": self.m_without,
                "faithfulness": _finite(self.faithfulness),
                "complement_faithfulness": _finite(self.complement_faithfulness)}


def _ratio(m: float, empty: float, full: float) -> float:
    return (m - empty) / (full - empty) if full != empty else math.nan


def _finite(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _nodes_of(circuit: Circuit | Collection[Node]) -> list[Node]:
    return circuit.node_list() if isinstance(circuit, Circuit) else list(circuit)


def _baselines(model, data, metric, ablation, batch_size) -> tuple[float, float]:
    full = ablated_metric(model, data, None, metric, ablation=ablation, batch_size=batch_size)
    empty = ablated_metric(model, data, [], metric, ablation=ablation, batch_size=batch_size)
    if full == empty:
        raise DataError(
            f"the model and the model with every node mean-ablated give the same metric ({full:.4g}), so "
            "faithfulness is undefined; the metric must depend on the nodes (check the answers and the dictionaries)"
        )
    return full, empty


def faithfulness(
    model: SplicedModel, data: CircuitData, circuit: Circuit | Collection[Node], metric: Metric | None = None, *,
    ablation: MeanAblation | None = None, batch_size: int = 8,
) -> Faithfulness:
    """Faithfulness and completeness of ``circuit`` (a ``Circuit`` or a collection of
    nodes) by mean ablation (default: means over ``data``), see the module doc."""
    nodes = _nodes_of(circuit)
    metric = metric or default_metric(data)
    ablation = ablation or MeanAblation.from_data(model, data, batch_size)
    full, empty = _baselines(model, data, metric, ablation, batch_size)
    kw = dict(ablation=ablation, batch_size=batch_size)
    return Faithfulness(
        n_nodes=len(set(nodes)), m_model=full, m_empty=empty,
        m_circuit=ablated_metric(model, data, nodes, metric, **kw),
        m_without=ablated_metric(model, data, nodes, metric, ablate_kept=True, **kw),
    )


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Faithfulness (and completeness) of the top-n nodes by |effect|, for each n."""

    points: list[Faithfulness]
    summed: bool

    @property
    def sizes(self) -> list[int]:
        return [p.n_nodes for p in self.points]

    @property
    def values(self) -> list[float]:
        return [p.faithfulness for p in self.points]

    def to_json(self) -> dict[str, Any]:
        return {"summed_over_positions": self.summed, "points": [p.to_json() for p in self.points]}


def faithfulness_curve(
    model: SplicedModel, data: CircuitData, effects: NodeEffects | Circuit, sizes: Sequence[int],
    metric: Metric | None = None, *, summed: bool | None = None, ablation: MeanAblation | None = None,
    batch_size: int = 8, progress: ProgressCallback | None = None,
) -> FaithfulnessCurve:
    """For each n of ``sizes``: the n nodes of largest |effect| (from node ``effects``, per
    position or ``summed`` over positions; or from a ``Circuit``'s nodes), their
    faithfulness and that of the model without them. One pass over the data per
    circuit (two per size, two for the baselines)."""
    if not sizes or any(not is_integer(n) or n < 0 for n in sizes):
        raise ConfigError(f"sizes must be a list of whole numbers of nodes (0 or more), got {sizes!r}")
    if isinstance(effects, Circuit):
        if summed is not None and summed != effects.summed:
            raise ConfigError("this circuit's nodes are " + ("summed over positions" if effects.summed else "per position"))
        summed = effects.summed

        def top(n: int) -> list[Node]:
            return effects.top(n)
    elif isinstance(effects, NodeEffects):
        summed = bool(summed)

        def top(n: int) -> list[Node]:
            return [e.node for e in effects.top(n, summed=summed)] if n else []
    else:
        raise ConfigError(f"rank nodes by NodeEffects or a Circuit, got {type(effects).__name__}")
    metric = metric or default_metric(data)
    ablation = ablation or MeanAblation.from_data(model, data, batch_size)
    full, empty = _baselines(model, data, metric, ablation, batch_size)
    phase = Phase(progress, "faithfulness curve", len(sizes), unit="circuits")
    out = []
    kw = dict(ablation=ablation, batch_size=batch_size)
    for n in sorted(set(sizes)):
        nodes = top(n)
        out.append(Faithfulness(len(nodes), full, empty, ablated_metric(model, data, nodes, metric, **kw),
                                ablated_metric(model, data, nodes, metric, ablate_kept=True, **kw)))
        phase.advance(1)
    return FaithfulnessCurve(out, summed)


def plot_faithfulness_curve(
    curves: FaithfulnessCurve | dict[str, FaithfulnessCurve], path: str | os.PathLike[str], title: str | None = None,
) -> None:
    """A PNG of faithfulness (solid) and the complement's faithfulness (dashed) against the
    number of nodes, one colour per curve (a dict labels several, e.g. a baseline's)."""
    from matplotlib.figure import Figure

    from ..io.files import check_writable_file
    from ..report import write_png

    check_writable_file(path, "path")
    named = curves if isinstance(curves, dict) else {"attribution": curves}
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (label, curve) in enumerate(named.items()):
        colour = f"C{i}"
        xs = curve.sizes
        ax.plot(xs, curve.values, "o-", color=colour, label=f"{label}: F(C)")
        ax.plot(xs, [p.complement_faithfulness for p in curve.points], "x--", color=colour, label=f"{label}: F(M\\C)")
    ax.set_xscale("symlog", linthresh=1)  # logarithmic, with room for the empty circuit at 0
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("nodes kept (top n by |effect|)")
    ax.set_ylabel("faithfulness")
    ax.set_title(title or "faithfulness against circuit size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, Path(path), dpi=110)
