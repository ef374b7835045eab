"""The mask baseline: the nodes a learned binary mask keeps (subnetwork probing).

Beside the attribution circuit (nodes ranked by their effects), a circuit can be *learned*:
one gate per node, trained so that the model with the gated-out nodes mean-ablated keeps
the metric, with a penalty on the number of gates open (Louizos et al. 2018, "Learning
Sparse Neural Networks through L0 Regularization"; used for subnetwork probing by Cao et
al. 2021, "Low-Complexity Probing via Finding Subnetworks"). The nodes are those of the
attribution circuit, error terms included, so the two compare like for like at matched
sizes:

* every feature of every spliced hook point, one node per feature summed over positions
  (``per_position=False``: one gate opens the feature at all positions) or one per
  (feature, position) (``per_position=True``), positions aligned at the end of the prompts
  as in ``attribution``;
* each hook point's error term ``x − x̂``, one node (or one per position).

A node that is masked out takes its mean value: the same ``MeanAblation`` as faithfulness
(``ablation``), by default its mean at its aligned position over the file's patch prompts, as
in Marks et al.'s code, or over the clean prompts when the file has none, so that the mask's
curve and the attribution circuit's compare like for like. A kept node keeps its value as
computed in the masked pass, on the clean prompts (downstream nodes see the upstream
ablations). Only features active somewhere in the file (on a clean or an averaged prompt,
``MeanAblation.active``) need a gate: one that is zero on every prompt has mean zero, so
keeping or ablating it is the same on the file's prompts; such features are held at their
mean (zero) and are never kept.

The gates are hard-concrete: ``z = clamp(sigmoid((log u − log(1 − u) + log α) / β)(ζ − γ) + γ, 0, 1)``
with ``u`` uniform, β = 2/3, γ = −0.1, ζ = 1.1, whose expected L0 (the expected number of
open gates) is ``Σ sigmoid(log α − β log(−γ/ζ))``. After training a node is kept when its
deterministic gate is above one half (``log α > 0``), and the result is measured with that
hard mask: kept nodes computed, all others at their means.

What is kept: the loss is ``mean_b ((m_b(masked) − m_b(M)) / (m(M) − m(∅)))² + sparsity · E[L0]``,
the squared error of each example's metric against the full model's, in units of the gap
that faithfulness measures (``m(M)`` the full model's mean metric, ``m(∅)`` the metric with
every node mean-ablated). The metric itself, not the KL of the answer distribution, because
faithfulness is measured on the metric and a user's metric need not be a distribution;
per example, not the mean, so that one example's overshoot cannot pay for another's
shortfall; in units of the gap, so that ``sparsity`` reads the same on every task: a node
stays when keeping it saves more than ``sparsity`` of squared faithfulness.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..checks import is_integer, is_real
from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .ablation import MeanAblation
from .attribution import Node, check_count, check_inputs
from .data import CircuitBatch, CircuitData
from .graph import Nodes, SplicedModel
from .metrics import Metric, default_metric, metric_name

# Hard-concrete stretch and temperature (Louizos et al. 2018, their defaults).
BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1
# Gates start open (P(z > 0) ≈ 0.99): training starts from the full model and closes
# what the metric does not need, rather than searching from nothing.
INIT_LOG_ALPHA = 3.0
DEFAULT_SPARSITIES: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)


# ---------------------------------------------------------------------------
# Node means: what a masked-out node becomes (the mean ablation faithfulness uses)


def mask_candidates(means: MeanAblation, *, per_position: bool = False) -> list[Node]:
    """The nodes a mask has gates for: the features ever active (per feature, or per
    (feature, position)) and each point's error term (once, or per position)."""
    _check_means(means)
    return [node for p in means.points for node in _point_candidates(means, p, per_position)[2]]


def _point_candidates(means: MeanAblation, point: str, per_position: bool) -> tuple[Tensor, int, list[Node]]:
    """``(feature index, n_error_gates, nodes)``: the flat indices into ``(n_positions, d_sae)``
    (per position) or the feature indices (summed) that have gates, then the error gates."""
    active = means.active[point]
    T = means.n_positions
    if per_position:
        flat = active.flatten().nonzero().squeeze(1)
        F = active.shape[1]
        pos, feat = (flat // F).tolist(), (flat % F).tolist()
        nodes = [Node(point, f, t) for t, f in zip(pos, feat)] + [Node(point, None, t) for t in range(T)]
        return flat, T, nodes
    index = active.any(0).nonzero().squeeze(1)
    return index, 1, [Node(point, f) for f in index.tolist()] + [Node(point, None)]


# ---------------------------------------------------------------------------
# The masked pass


@dataclass
class _Prepared:
    """What every pass over a batch needs, computed once: the batch on the device, the
    full model's metric on it, and the residual stream to start the pass from."""

    batch: CircuitBatch
    m_full: Tensor
    start: tuple[int, Tensor] | None


def _prepare(model: SplicedModel, data: CircuitData, metric: Metric, batch_size: int) -> list[_Prepared]:
    from ..hooks import read_activations

    layer = min(model.layer(p) for p in model.points)
    out = []
    for batch in data.batches(batch_size):
        batch = batch.to(model.lm.device)
        with torch.no_grad():
            m_full = metric(model.run(batch.clean_ids, bos=batch.bos).logits, batch)
            _check_metric(m_full, batch)
            start = None
            if layer > 0:
                name = f"resid_pre.{layer}"
                start = (layer, read_activations(model.lm, [name], batch.clean_ids)[name])
        out.append(_Prepared(batch, m_full.detach().float(), start))
    return out


def _check_metric(m: Any, batch: CircuitBatch) -> None:
    if not isinstance(m, Tensor) or tuple(m.shape) != (batch.size,):
        shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
        raise ConfigError(f"the metric must return one value per example, shape ({batch.size},); got {shape}")


Gates = dict[str, tuple[Tensor, Tensor]]  # per point: feature gates (n_positions, d_sae), error gates (n_positions,)


def _masked_logits(model: SplicedModel, prepared: _Prepared, means: MeanAblation, gates: Gates) -> Tensor:
    """One pass with every node set to ``g · value + (1 − g) · mean`` (a gate of 1 keeps the
    computed value exactly, 0 gives the mean exactly), differentiable in the gates and, through
    each point's computed nodes (which ``SplicedModel.run`` hands the setting live), in
    everything upstream."""
    batch = prepared.batch
    offset = means.n_positions - batch.length

    def setting(point: str) -> Callable[[Nodes], Nodes]:
        g_f, g_e = gates[point]
        g_f, g_e = g_f[offset:], g_e[offset:, None]
        mean = means.means[point]
        mean_f, mean_e = mean.features[offset:], mean.error[offset:]

        def masked(computed: Nodes) -> Nodes:
            return Nodes(g_f * computed.features + (1 - g_f) * mean_f, g_e * computed.error + (1 - g_e) * mean_e)

        return masked

    run = model.run(batch.clean_ids, bos=batch.bos, set_nodes={p: setting(p) for p in model.points},
                    start=prepared.start)
    return run.logits


def _hard_gates(model: SplicedModel, means: MeanAblation, kept: Collection[Node]) -> Gates:
    dev = model.lm.device
    T = means.n_positions
    gates = {p: (torch.zeros(T, model.dictionary(p).cfg.d_sae, device=dev), torch.zeros(T, device=dev))
             for p in model.points}
    for node in kept:
        g_f, g_e = gates[node.point]
        where = slice(None) if node.position is None else node.position
        if node.feature is None:
            g_e[where] = 1.0
        else:
            g_f[where, node.feature] = 1.0
    return gates


def _checked_nodes(model: SplicedModel, kept: Collection[Node], n_positions: int) -> list[Node]:
    if isinstance(kept, (str, Node)) or not isinstance(kept, Collection):
        raise ConfigError(f"give the nodes to keep as a list of saekit.circuits.Node, got {kept!r}")
    out = []
    for node in kept:
        if not isinstance(node, Node):
            raise ConfigError(f"nodes to keep are saekit.circuits.Node(point, feature, position), got {node!r}")
        F = model.dictionary(node.point).cfg.d_sae  # names the model's points when it is not one
        if node.feature is not None and (not is_integer(node.feature)
                                         or not 0 <= node.feature < F):
            raise ConfigError(f"{node.label()}: feature {node.feature!r} is not a feature of the dictionary (0 to {F - 1})")
        t = node.position
        if t is not None and (not is_integer(t) or not -n_positions <= t < n_positions):
            raise ConfigError(f"{node.label()}: position {t!r} is outside the prompts' {n_positions} positions "
                              f"(0 to {n_positions - 1}, -1 for the last, or None for all)")
        out.append(node if t is None else Node(node.point, node.feature, t % n_positions))
    return out


def _mean_metric(model: SplicedModel, prepared: list[_Prepared], means: MeanAblation, gates: Gates,
                 metric: Metric) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for prep in prepared:
            m = metric(_masked_logits(model, prep, means, gates), prep.batch)
            _check_metric(m, prep.batch)
            total += float(m.double().sum())
            n += prep.batch.size
    return total / n


def masked_metric(
    model: SplicedModel, data: CircuitData, kept: Collection[Node], metric: Metric | None = None, *,
    ablation: MeanAblation | None = None, means: MeanAblation | None = None, batch_size: int = 8,
) -> float:
    """The metric's mean over ``data`` with the nodes ``kept`` computed and every other node
    mean-ablated: ``m(C)`` for the circuit ``C = kept``.

    A node with ``position=None`` is kept at every position (a feature summed over
    positions, or a point's whole error term); one with a position only there. Every
    candidate kept (``mask_candidates``) gives the full model's metric exactly; none kept
    gives ``m(∅)``. ``ablation`` (or ``means``, its former name): default
    ``MeanAblation.from_data(model, data)``.
    """
    check_inputs(model, data, batch_size, "masks",
                 "need them aligned: mean ablation averages the patch prompts position by position")
    means = _chosen_means(ablation, means)
    kept = _checked_nodes(model, kept, data.max_length)
    metric = metric or default_metric(data)
    means = means if means is not None else MeanAblation.from_data(model, data, batch_size)
    _check_means(means, model, data)
    prepared = _prepare(model, data, metric, batch_size)
    return _mean_metric(model, prepared, means, _hard_gates(model, means, kept), metric)


# ---------------------------------------------------------------------------
# Training


class _HardConcrete(torch.nn.Module):
    """The gates of one mask: ``log α`` per candidate node, hard-concrete samples of them,
    and their expected number open."""

    def __init__(self, model: SplicedModel, means: MeanAblation, per_position: bool):
        super().__init__()
        dev = model.lm.device
        self.model, self.means, self.per_position = model, means, per_position
        self.index: dict[str, Tensor] = {}
        self.candidates: dict[str, list[Node]] = {}
        self.log_alpha = torch.nn.ParameterDict()
        for i, p in enumerate(model.points):
            index, n_error, nodes = _point_candidates(means, p, per_position)
            self.index[p], self.candidates[p] = index, nodes
            # Keyed by position in the list: hook point names hold dots, which ParameterDict refuses.
            self.log_alpha[str(i)] = torch.nn.Parameter(torch.full((len(index) + n_error,), INIT_LOG_ALPHA, device=dev))

    @property
    def n_candidates(self) -> int:
        return sum(len(c) for c in self.candidates.values())

    def sample(self, generator: torch.Generator) -> list[Tensor]:
        out = []
        for la in self.log_alpha.values():
            u = torch.rand(la.shape, generator=generator, device=la.device).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + la) / BETA)
            out.append((s * (ZETA - GAMMA) + GAMMA).clamp(0, 1))
        return out

    def expected_open(self) -> Tensor:
        shift = BETA * math.log(-GAMMA / ZETA)
        return sum(torch.sigmoid(la - shift).sum() for la in self.log_alpha.values())

    def dense(self, values: list[Tensor]) -> Gates:
        """Per point, the gate values spread over ``(n_positions, d_sae)`` and
        ``(n_positions,)``, zero where a feature has no gate."""
        T = self.means.n_positions
        gates: Gates = {}
        for p, v in zip(self.model.points, values):
            F = self.model.dictionary(p).cfg.d_sae
            index = self.index[p]
            v_f, v_e = v[:len(index)], v[len(index):]
            if self.per_position:
                g_f = v_f.new_zeros(T * F).scatter(0, index, v_f).view(T, F)
                g_e = v_e
            else:
                g_f = v_f.new_zeros(F).scatter(0, index, v_f).expand(T, F)
                g_e = v_e.expand(T)
            gates[p] = (g_f, g_e)
        return gates

    def kept(self) -> list[Node]:
        """The nodes whose deterministic gate is above one half (``log α > 0``)."""
        return [node for p, la in zip(self.model.points, self.log_alpha.values())
                for node, open_ in zip(self.candidates[p], (la > 0).tolist()) if open_]


@dataclass
class MaskResult:
    """A trained mask: the nodes it keeps and the metric with everything else mean-ablated.

    ``metric_masked`` is ``m(C)`` with the hard mask, ``metric_full`` ``m(M)``,
    ``metric_empty`` ``m(∅)``; ``faithfulness`` is ``(m(C) − m(∅)) / (m(M) − m(∅))``.
    ``history``: per step, the fit term and the expected number of open gates.
    """

    sparsity: float
    nodes: list[Node]
    n_candidates: int
    metric_masked: float
    metric_full: float
    metric_empty: float
    per_position: bool
    steps: int
    lr: float
    seed: int
    metric: str
    seconds: float = 0.0
    history: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if any(not isinstance(n, Node) for n in self.nodes):
            raise ConfigError("a mask's nodes are saekit.circuits.Node")
        if len(self.nodes) > self.n_candidates:
            raise ConfigError(f"a mask cannot keep {len(self.nodes)} of {self.n_candidates} candidate nodes")

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def faithfulness(self) -> float:
        return _faithfulness(self.metric_masked, self.metric_full, self.metric_empty)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "mask (hard concrete)", "sparsity": self.sparsity, "per_position": self.per_position,
            "steps": self.steps, "lr": self.lr, "seed": self.seed, "metric": self.metric, "seconds": self.seconds,
            "n_candidates": self.n_candidates, "n_nodes": self.n_nodes, "metric_masked": self.metric_masked,
            "metric_full": self.metric_full, "metric_empty": self.metric_empty, "faithfulness": self.faithfulness,
            "nodes": [{"hook": n.point, "feature": n.feature, "position": n.position} for n in self.nodes],
            "final_fit": self.history[-1][0] if self.history else None,
        }


def _faithfulness(m_c: float, m_full: float, m_empty: float) -> float:
    return (m_c - m_empty) / (m_full - m_empty)


def _chosen_means(ablation: MeanAblation | None, means: MeanAblation | None) -> MeanAblation | None:
    if ablation is not None and means is not None:
        raise ConfigError("give the means once: ablation= (means= is its former name)")
    return ablation if ablation is not None else means


def _check_means(means: Any, model: SplicedModel | None = None, data: CircuitData | None = None) -> None:
    if not isinstance(means, MeanAblation):
        raise ConfigError("the mask ablates to a MeanAblation (MeanAblation.from_data(model, data)), got "
                          f"{type(means).__name__}")
    if means.pooled or means.active is None:
        raise ConfigError("the mask needs means per aligned position with the features ever active: "
                          "MeanAblation.from_data(model, data), not from_batches")
    if model is not None:
        if means.points != model.points:
            # Gates are laid out per point of the model; means for other points would name other nodes.
            raise ConfigError(f"these means are for {', '.join(means.points)}, the model's points are "
                              f"{', '.join(model.points)}; take them with this model (MeanAblation.from_data)")
        means.check_fits(model, data)


def _check_training(sparsities: Sequence[float], steps: int, lr: float, seed: int, per_position: bool) -> None:
    for s in sparsities:
        if not is_real(s) or not math.isfinite(s) or s < 0:
            raise ConfigError(f"sparsity must be a finite number of at least 0 (the L0 penalty per node), got {s!r}")
    check_count("steps", steps)
    if not is_real(lr) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if not is_integer(seed):
        raise ConfigError(f"seed must be a whole number, got {seed!r}")
    if not isinstance(per_position, bool):
        raise ConfigError(f"per_position must be True or False, got {per_position!r}")


@dataclass
class _Setup:
    """What every mask on one model, file and metric shares."""

    model: SplicedModel
    metric: Metric
    means: MeanAblation
    prepared: list[_Prepared]
    metric_full: float
    metric_empty: float


def _setup(model: SplicedModel, data: CircuitData, metric: Metric | None, means: MeanAblation | None,
           batch_size: int, progress: ProgressCallback | None) -> _Setup:
    metric = metric or default_metric(data)
    means = means if means is not None else MeanAblation.from_data(model, data, batch_size, progress=progress)
    _check_means(means, model, data)
    prepared = _prepare(model, data, metric, batch_size)
    n = sum(p.batch.size for p in prepared)
    m_full = float(sum(float(p.m_full.double().sum()) for p in prepared)) / n
    m_empty = _mean_metric(model, prepared, means, _hard_gates(model, means, []), metric)
    if not math.isfinite(m_full) or not math.isfinite(m_empty):
        raise DataError(f"the metric is not finite on these prompts (full model {m_full}, all nodes ablated {m_empty})")
    if abs(m_full - m_empty) <= 1e-6 * max(1.0, abs(m_full)):
        raise DataError(
            f"the metric is {m_full:.6g} with every node kept and {m_empty:.6g} with every node mean-ablated: the "
            "nodes do not move it, so there is nothing for a mask to keep (faithfulness divides by that difference); "
            "choose prompts and hook points where the behaviour depends on the nodes"
        )
    return _Setup(model, metric, means, prepared, m_full, m_empty)


def _train(setup: _Setup, sparsity: float, steps: int, lr: float, seed: int, per_position: bool,
           progress: ProgressCallback | None) -> MaskResult:
    began = time.perf_counter()
    model, means, metric = setup.model, setup.means, setup.metric
    gates = _HardConcrete(model, means, per_position)
    optimizer = torch.optim.Adam(gates.parameters(), lr=lr)
    generator = torch.Generator(device=model.lm.device).manual_seed(seed)
    scale = setup.metric_full - setup.metric_empty
    history: list[tuple[float, float]] = []
    phase = Phase(progress, f"mask (sparsity {sparsity:g})", steps, unit="step")
    for step in range(steps):
        prep = setup.prepared[step % len(setup.prepared)]
        with torch.enable_grad():
            m = metric(_masked_logits(model, prep, means, gates.dense(gates.sample(generator))), prep.batch)
            _check_metric(m, prep.batch)
            if not m.requires_grad:
                raise ConfigError("the metric must be differentiable in the logits (it returned a detached tensor)")
            fit = (((m.float() - prep.m_full) / scale) ** 2).mean()
            expected = gates.expected_open()
            loss = fit + sparsity * expected
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if not math.isfinite(float(loss.detach())):
            raise DataError(f"the mask's loss became {float(loss.detach())} at step {step}; lower lr (now {lr})")
        history.append((float(fit.detach()), float(expected.detach())))
        phase.advance(1)
    kept = gates.kept()
    m_masked = _mean_metric(model, setup.prepared, means, _hard_gates(model, means, kept), metric)
    return MaskResult(
        sparsity=float(sparsity), nodes=kept, n_candidates=gates.n_candidates, metric_masked=m_masked,
        metric_full=setup.metric_full, metric_empty=setup.metric_empty, per_position=per_position, steps=steps,
        lr=float(lr), seed=seed, metric=metric_name(metric), seconds=time.perf_counter() - began, history=history,
    )


def train_mask(
    model: SplicedModel, data: CircuitData, *, metric: Metric | None = None, sparsity: float = 1e-3,
    steps: int = 200, lr: float = 0.1, seed: int = 0, per_position: bool = False,
    ablation: MeanAblation | None = None, means: MeanAblation | None = None, batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> MaskResult:
    """Learn a binary mask over the nodes (see the module doc) that keeps the metric on the
    clean prompts of ``data`` with as few nodes as ``sparsity`` (the L0 penalty per node,
    in units of squared faithfulness) asks.

    ``steps`` Adam steps at ``lr`` on the gates' ``log α``, one batch of ``batch_size``
    prompts per step, in turn; ``seed`` fixes the gates' noise. ``per_position``: one
    node per (feature, position) instead of per feature. ``metric``: default the logit
    difference when the file has patch answers, else the answer's log-probability.
    ``ablation`` (or ``means``, its former name): the means masked-out nodes take, default
    ``MeanAblation.from_data(model, data)``; pass the ones faithfulness uses to compare
    the two curves like for like (and to share one pass among several masks).
    """
    check_inputs(model, data, batch_size, "masks",
                 "need them aligned: mean ablation averages the patch prompts position by position")
    _check_training([sparsity], steps, lr, seed, per_position)
    means = _chosen_means(ablation, means)
    if means is not None:
        _check_means(means, model, data)
    setup = _setup(model, data, metric, means, batch_size, progress)
    return _train(setup, sparsity, steps, lr, seed, per_position, progress)


# ---------------------------------------------------------------------------
# The curve


@dataclass
class MaskCurve:
    """Masks trained at several sparsities: faithfulness against the number of nodes kept,
    to set beside the attribution circuit's curve at matched sizes."""

    results: list[MaskResult]

    def __post_init__(self) -> None:
        if not self.results:
            raise ConfigError("a mask curve needs at least one trained mask")

    def __iter__(self) -> Iterator[MaskResult]:
        return iter(self.results)

    def points(self) -> list[tuple[int, float]]:
        """``(nodes kept, faithfulness)`` per mask, in the order of the sparsities."""
        return [(r.n_nodes, r.faithfulness) for r in self.results]

    def to_json(self) -> dict[str, Any]:
        first = self.results[0]
        return {
            "method": "mask (hard concrete)", "metric": first.metric, "per_position": first.per_position,
            "n_candidates": first.n_candidates, "metric_full": first.metric_full, "metric_empty": first.metric_empty,
            "curve": [{"sparsity": r.sparsity, "n_nodes": r.n_nodes, "faithfulness": r.faithfulness,
                       "metric_masked": r.metric_masked, "seconds": r.seconds} for r in self.results],
            "masks": [r.to_json() for r in self.results],
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        from ..io.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")


def mask_curve(
    model: SplicedModel, data: CircuitData, *, metric: Metric | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES, steps: int = 200, lr: float = 0.1, seed: int = 0,
    per_position: bool = False, ablation: MeanAblation | None = None, means: MeanAblation | None = None,
    batch_size: int = 8, progress: ProgressCallback | None = None,
) -> MaskCurve:
    """``train_mask`` at each of ``sparsities`` (same seed, same mean ablation, same
    prompts), a larger penalty keeping fewer nodes: faithfulness against circuit size."""
    check_inputs(model, data, batch_size, "masks",
                 "need them aligned: mean ablation averages the patch prompts position by position")
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Sequence) or not sparsities:
        raise ConfigError(f"sparsities must be a non-empty list of penalties, got {sparsities!r}")
    _check_training(sparsities, steps, lr, seed, per_position)
    means = _chosen_means(ablation, means)
    if means is not None:
        _check_means(means, model, data)
    setup = _setup(model, data, metric, means, batch_size, progress)
    return MaskCurve([_train(setup, s, steps, lr, seed, per_position, progress) for s in sparsities])
