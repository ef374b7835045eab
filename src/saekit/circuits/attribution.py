"""Node effects: how much each feature and each error term moves the metric.

The indirect effect of a node ``a`` (a feature at a position, or a hook point's error
term at a position) is what the metric does when ``a`` alone takes its value from the
patch run and everything downstream follows: ``IE = m(clean | do(a = a_patch)) − m(clean)``
(Marks et al. 2024, "Sparse Feature Circuits", arXiv:2403.19647, §2). Three ways to get it, all
averaged over the examples of the file:

* ``exact_patching``: that definition, one forward pass per node (patched in every
  example of a batch at once, and several nodes per pass on copies of the batch) from
  the node's block on. The reference, for a chosen small set of nodes. A node without a
  position is a feature (or error term) patched at every position at once: the exact
  counterpart of the effects summed over positions, which add up per-position first-order
  terms and so leave out how the positions interact.
* ``attribution_patching`` (AtP): its first-order approximation
  ``IE ≈ (a_patch − a_clean) · ∂m/∂a`` at the clean run, for every node at once from one
  forward and one backward pass per batch (Marks et al.; Nanda 2023, "Attribution
  patching"; Syed et al. 2023). An error node's effect is that product summed over its ``d`` components.
* ``integrated_gradients``: the gradient averaged over N points of the straight line from
  clean to patch, ``IE ≈ (a_patch − a_clean) · (1/N) Σ_{k<N} ∂m/∂a |_{a_clean + (k/N)(a_patch − a_clean)}``
  (Marks et al., with N = 10; α = k/N for k = 0..N−1 as in their code,
  github.com/saprmarks/feature-circuits attribution.py ``_pe_ig``, so N = 1 is AtP).
  The features and the error term of a hook point move together along the line. By
  default each hook point is integrated on its own, the rest of the model running
  freely, as in Marks et al.'s code (``path="per_point"``: N passes per hook point);
  ``path="joint"`` moves every hook point at once (N passes in all), see
  ``integrated_gradients``.

Without patch prefixes, the patch values are zeros (zero ablation, features and error
alike), as in Marks et al. A ``PatchSource`` can supply other patch values (a mean
ablation, a perturbation for a test).

Effects are kept per position, positions aligned at the end of the prompts (index
``n_positions − 1`` is the last token, where the answer is predicted, in every example;
when all prompts have one length that is simply the token index), and summed over
positions on request. Per hook point they are sparse ``(positions, d_sae)`` tensors: a
feature that is zero in both runs has no effect, and a 100k-feature dictionary over 128
positions would take 51 MB per hook point dense. (While computing, the per-batch
gradients, ``(batch, positions, d_sae)``, and the sums, ``(positions, d_sae)``, are dense
on the model's device.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from ..checks import is_integer
from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .data import CircuitBatch, CircuitData
from .graph import Nodes, SplicedModel
from .metrics import Metric, default_metric, metric_name

Method = Literal["atp", "ig", "exact"]
METHODS: tuple[str, ...] = ("atp", "ig", "exact")
IGPath = Literal["per_point", "joint"]
DEFAULT_STEPS = 10


# ---------------------------------------------------------------------------
# Where the patch values come from


class PatchSource(Protocol):
    """The patch values of every node for a batch.

    ``states`` returns them per hook point, and the metric of the patch run when there is
    one (else None: the metric is then measured with every hook point set to its patch
    values on the clean prompts). ``clean``: the batch's clean nodes.
    """

    name: str

    def states(
        self, model: SplicedModel, batch: CircuitBatch, clean: dict[str, Nodes], metric: Metric
    ) -> tuple[dict[str, Nodes], Tensor | None]: ...


class PatchPrefixes:
    """The nodes of the patch prompts (the file's ``patch_prefix``)."""

    name = "patch prefixes"

    def states(
        self, model: SplicedModel, batch: CircuitBatch, clean: dict[str, Nodes], metric: Metric
    ) -> tuple[dict[str, Nodes], Tensor | None]:
        if batch.patch_ids is None:
            raise DataError("these examples have no patch_prefix; use ZeroAblation (or give patch prefixes)")
        with torch.no_grad():
            run = model.run(batch.patch_ids, bos=batch.bos)
            return {p: n.detach() for p, n in run.computed.items()}, metric(run.logits, batch).detach()


class ZeroAblation:
    """Every node patched to zero, features and error terms alike."""

    name = "zero ablation"

    def states(
        self, model: SplicedModel, batch: CircuitBatch, clean: dict[str, Nodes], metric: Metric
    ) -> tuple[dict[str, Nodes], Tensor | None]:
        return {p: n.zeros_like() for p, n in clean.items()}, None


def default_source(data: CircuitData) -> PatchSource:
    return PatchPrefixes() if data.has_patch else ZeroAblation()


# ---------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class Node:
    """A node: a feature (``feature`` its index) or the error term (``feature`` None) of a
    hook point, at an aligned position (None: summed over positions)."""

    point: str
    feature: int | None
    position: int | None = None

    def label(self) -> str:
        what = "error" if self.feature is None else f"f{self.feature}"
        return f"{self.point}/{what}" + ("" if self.position is None else f"@{self.position}")


@dataclass(frozen=True)
class NodeEffect:
    node: Node
    effect: float


@dataclass
class NodeEffects:
    """Mean node effects over ``n_examples`` examples, per hook point.

    ``features[point]``: sparse ``(n_positions, d_sae)``, ``errors[point]``: sparse
    ``(n_positions,)``, both on the CPU; an entry absent is an effect of zero (for
    ``exact``, a node not measured). ``all_positions`` (``exact`` only): the effects of the
    nodes patched at every position at once (position None), keyed by those nodes; the
    summed views (``summed=True``) report them in place of the sum of per-position
    effects. ``metric_clean`` and ``metric_patch`` are the metric's means on the clean and
    the patch runs; ``total_effect`` their difference.
    """

    method: str
    metric: str
    patch: str
    points: list[str]
    features: dict[str, Tensor]
    errors: dict[str, Tensor]
    n_examples: int
    n_positions: int
    lengths_equal: bool
    metric_clean: float
    metric_patch: float
    steps: int | None = None
    ig_path: str | None = None
    measured: list[Node] = field(default_factory=list)  # exact patching: the nodes asked for
    all_positions: dict[Node, float] = field(default_factory=dict)  # exact patching: nodes patched at every position

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if set(self.features) != set(self.points) or set(self.errors) != set(self.points):
            raise ConfigError("node effects need feature and error effects for every hook point")
        for p in self.points:
            if self.features[p].ndim != 2 or self.features[p].shape[0] != self.n_positions:
                raise DataError(f"{p}: feature effects must be (positions, d_sae), got {tuple(self.features[p].shape)}")
            if tuple(self.errors[p].shape) != (self.n_positions,):
                raise DataError(f"{p}: error effects must be ({self.n_positions},), got {tuple(self.errors[p].shape)}")
        for node in self.all_positions:
            if not isinstance(node, Node) or node.position is not None or node.point not in self.points:
                raise DataError(f"effects of nodes patched at every position are keyed by Node(point, feature) of "
                                f"these hook points, with no position; got {node!r}")

    @property
    def total_effect(self) -> float:
        return self.metric_patch - self.metric_clean

    def feature_effects(self, point: str, summed: bool = False) -> Tensor:
        """Dense ``(n_positions, d_sae)``, or ``(d_sae,)`` summed over positions (for a
        feature patched at every position at once, that effect)."""
        dense = self._get(self.features, point).to_dense()
        if not summed:
            return dense
        out = dense.sum(0)
        for feature, value in self._whole(point).items():
            if feature is not None:
                out[feature] = value
        return out

    def error_effects(self, point: str, summed: bool = False) -> Tensor:
        """Dense ``(n_positions,)``, or a 0-d tensor summed over positions (for an error
        term patched at every position at once, that effect)."""
        dense = self._get(self.errors, point).to_dense()
        if not summed:
            return dense
        whole = self._whole(point).get(None)
        return dense.sum() if whole is None else torch.tensor(whole, dtype=dense.dtype)

    def effect(self, node: Node) -> float:
        """One node's effect: at its position, or summed over positions when it has none
        (for exact patching, the node patched at every position at once where measured)."""
        if not isinstance(node, Node):
            raise ConfigError(f"give a saekit.circuits.Node(point, feature, position), got {node!r}")
        summed = node.position is None
        if node.feature is None:
            errors = self.error_effects(node.point, summed)
            return float(errors if summed else errors[self._position(node)])
        feats = self.feature_effects(node.point, summed)
        if not 0 <= node.feature < feats.shape[-1]:
            raise ConfigError(f"{node.label()}: feature {node.feature} is not a feature of the dictionary "
                              f"(0 to {feats.shape[-1] - 1})")
        return float(feats[node.feature] if summed else feats[self._position(node), node.feature])

    def _position(self, node: Node) -> int:
        t = node.position
        if not is_integer(t) or not -self.n_positions <= t < self.n_positions:
            raise ConfigError(f"{node.label()}: position {t!r} is outside the {self.n_positions} positions")
        return t % self.n_positions

    def _whole(self, point: str) -> dict[int | None, float]:
        """The effects of ``point``'s nodes patched at every position at once, by feature (None: error)."""
        return {n.feature: v for n, v in self.all_positions.items() if n.point == point}

    def point_total(self, point: str) -> float:
        """The sum of the effects of every node of ``point`` (features and error, all positions)."""
        feats, errs = self._get(self.features, point), self._get(self.errors, point)
        return float(feats.values().double().sum() + errs.values().double().sum())

    def total(self) -> float:
        """The sum of every node's effect over all hook points."""
        return sum(self.point_total(p) for p in self.points)

    def _get(self, table: dict[str, Tensor], point: str) -> Tensor:
        if point not in table:
            raise ConfigError(f"no node effects for {point!r}; the hook points are {', '.join(self.points)}")
        return table[point]

    def entries(self, summed: bool = False) -> Iterable[NodeEffect]:
        """Every node with an effect (nonzero, or measured), per position or summed."""
        for p in self.points:
            feats, errs = self.features[p].coalesce(), self.errors[p].coalesce()
            if summed:
                whole = self._whole(p)
                per_feature = torch.sparse.sum(feats, dim=0).coalesce() if feats._nnz() else None
                seen = set()
                if per_feature is not None:
                    for (i,), v in zip(per_feature.indices().T.tolist(), per_feature.values().tolist()):
                        seen.add(i)
                        yield NodeEffect(Node(p, i), whole.get(i, v))
                for i, v in whole.items():
                    if i is not None and i not in seen:
                        yield NodeEffect(Node(p, i), v)
                if errs._nnz() or None in whole:
                    yield NodeEffect(Node(p, None), whole.get(None, float(errs.values().sum())))
            else:
                for (t, i), v in zip(feats.indices().T.tolist(), feats.values().tolist()):
                    yield NodeEffect(Node(p, i, t), v)
                for (t,), v in zip(errs.indices().T.tolist(), errs.values().tolist()):
                    yield NodeEffect(Node(p, None, t), v)

    def top(self, k: int = 20, summed: bool = False) -> list[NodeEffect]:
        """The ``k`` nodes of largest |effect| (per position, or summed over positions)."""
        if not is_integer(k) or k <= 0:
            raise ConfigError(f"k must be a positive whole number, got {k!r}")
        candidates: list[NodeEffect] = []
        for p in self.points:
            # The k largest of each table, found by torch: a point can hold millions of entries.
            if summed:
                per_feature = self.feature_effects(p, summed=True)
                values, features = per_feature.abs().topk(min(k, per_feature.numel()))
                candidates += [NodeEffect(Node(p, i), float(per_feature[i])) for i, v in
                               zip(features.tolist(), values.tolist()) if v > 0]
                if self.errors[p]._nnz() or None in self._whole(p):
                    candidates.append(NodeEffect(Node(p, None), float(self.error_effects(p, summed=True))))
                continue
            feats, errs = self.features[p].coalesce(), self.errors[p].coalesce()
            for table, is_error in ((feats, False), (errs, True)):
                if not table._nnz():
                    continue
                order = table.values().abs().topk(min(k, table._nnz())).indices
                for (*where,), v in zip(table.indices()[:, order].T.tolist(), table.values()[order].tolist()):
                    node = Node(p, None, where[0]) if is_error else Node(p, where[1], where[0])
                    candidates.append(NodeEffect(node, v))
        return sorted(candidates, key=lambda e: -abs(e.effect))[:k]

    def to_json(self, min_abs: float = 0.0) -> dict[str, Any]:
        """Everything, nodes sorted by |effect| (those below ``min_abs`` left out), per
        position and summed over positions."""

        def rows(summed: bool) -> list[dict[str, Any]]:
            kept = [e for e in self.entries(summed) if abs(e.effect) >= min_abs]
            kept.sort(key=lambda e: -abs(e.effect))
            out = []
            for e in kept:
                feature = "error" if e.node.feature is None else e.node.feature  # as circuit.json writes it
                row: dict[str, Any] = {"hook": e.node.point, "feature": feature}
                if not summed:
                    row["position"] = e.node.position
                row["effect"] = e.effect if math.isfinite(e.effect) else str(e.effect)
                out.append(row)
            return out

        return {
            "method": self.method, "steps": self.steps, "ig_path": self.ig_path, "metric": self.metric,
            "patch": self.patch, "n_examples": self.n_examples, "n_positions": self.n_positions,
            "positions": "token index" if self.lengths_equal else "aligned at the end: n_positions - 1 is the last token",
            "metric_clean": self.metric_clean, "metric_patch": self.metric_patch, "total_effect": self.total_effect,
            "hook_points": self.points, "min_abs": min_abs,
            "nodes": rows(summed=False), "nodes_summed_over_positions": rows(summed=True),
        }

    def write_json(self, path: str | os.PathLike[str], min_abs: float = 0.0) -> None:
        from ..io.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(min_abs), indent=1) + "\n")


# ---------------------------------------------------------------------------
# The methods


@dataclass
class _Accumulator:
    """Sums of per-example effects, positions aligned at the end, on the model's device."""

    model: SplicedModel
    n_positions: int
    features: dict[str, Tensor] = field(init=False)
    errors: dict[str, Tensor] = field(init=False)
    metric_clean: float = 0.0
    metric_patch: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        dev = self.model.lm.device
        self.features = {
            p: torch.zeros(self.n_positions, self.model.dictionary(p).cfg.d_sae, device=dev) for p in self.model.points
        }
        self.errors = {p: torch.zeros(self.n_positions, device=dev) for p in self.model.points}

    def add(self, point: str, features: Tensor, errors: Tensor) -> None:
        """``features`` (B, T, F) and ``errors`` (B, T): one batch's per-example effects."""
        start = self.n_positions - features.shape[1]
        self.features[point][start:] += features.detach().sum(0)
        self.errors[point][start:] += errors.detach().sum(0)

    def add_metrics(self, clean: Tensor, patch: Tensor) -> None:
        self.metric_clean += float(clean.double().sum())
        self.metric_patch += float(patch.double().sum())
        self.n += clean.shape[0]


def check_count(name: str, value: Any) -> None:
    """``value`` is a whole number of at least 1 (a bool is not): steps, batch sizes,
    nodes per pass."""
    if not is_integer(value) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")


def check_inputs(model: SplicedModel, data: CircuitData, batch_size: int, purpose: str = "node effects",
                 why_aligned: str = "need them aligned (the same token length)") -> None:
    """What every pass over a prompt file checks first: the model with its dictionaries, the
    data, the batch size, prompts the model can take, and (with patch prompts) clean and
    patch prefixes of one token length. ``purpose`` and ``why_aligned`` word the errors."""
    if not isinstance(model, SplicedModel):
        raise ConfigError(f"{purpose} need a SplicedModel (the model with its dictionaries), got {type(model).__name__}")
    if not isinstance(data, CircuitData):
        raise ConfigError(f"{purpose} need CircuitData (read_circuit_data), got {type(data).__name__}")
    check_count("batch_size", batch_size)
    limit = model.lm.max_length
    if data.max_length > limit:
        raise DataError(f"{data.source}: a prompt is {data.max_length} tokens, more than the model's {limit}")
    if data.has_patch:
        bad = next((e for e in data.examples if len(e.patch_ids or ()) != e.length), None)
        if bad is not None:
            raise DataError(
                f"{data.source}, line {bad.line}: the clean prefix is {bad.length} tokens and the patch prefix "
                f"{len(bad.patch_ids or ())}; {purpose} {why_aligned}"
            )


def clean_run_with_gradients(model: SplicedModel, batch: CircuitBatch, metric: Metric) -> tuple[Any, Tensor]:
    """The clean prompts run with every node tracked, and the metric's gradient taken: the
    run (its nodes hold ∂m/∂node in ``.grad``) and the metric per example."""
    with torch.enable_grad():
        run = model.run(batch.clean_ids, bos=batch.bos, track=True)
        m_clean = metric(run.logits, batch)
        _check_metric(m_clean, batch)
        if not m_clean.requires_grad:
            raise ConfigError("the metric must be differentiable in the logits (it returned a detached tensor)")
        m_clean.sum().backward()
    return run, m_clean


def _clean_and_patch(
    model: SplicedModel, batch: CircuitBatch, metric: Metric, source: PatchSource, clean: dict[str, Nodes],
    m_clean: Tensor,
) -> tuple[dict[str, Nodes], Tensor]:
    """The patch nodes and the patch run's metric (measured with every point set to its
    patch nodes when the source has no run of its own)."""
    patch, m_patch = source.states(model, batch, clean, metric)
    missing = [p for p in model.points if p not in patch]
    if missing:
        raise ConfigError(f"the patch source {source.name!r} gave no nodes for {', '.join(missing)}")
    if m_patch is None:
        with torch.no_grad():
            m_patch = metric(model.run(batch.clean_ids, bos=batch.bos, set_nodes=patch).logits, batch)
    _check_metric(m_clean, batch)
    return patch, m_patch.detach()


def _check_metric(m: Tensor, batch: CircuitBatch) -> None:
    if not isinstance(m, Tensor) or tuple(m.shape) != (batch.size,):
        shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
        raise ConfigError(f"the metric must return one value per example, shape ({batch.size},); got {shape}")


def _delta_effects(grad: Nodes, clean: Nodes, patch: Nodes) -> tuple[Tensor, Tensor]:
    """Per-node effects ``(a_patch − a_clean) · grad``: features (B, T, F), error (B, T)."""
    return (
        (patch.features - clean.features) * grad.features,
        ((patch.error - clean.error) * grad.error).sum(-1),
    )


def _run_batches(
    model: SplicedModel, data: CircuitData, metric: Metric | None, source: PatchSource | None, batch_size: int,
    progress: ProgressCallback | None, label: str,
    per_batch: Callable[[CircuitBatch, Metric, PatchSource, _Accumulator], None],
) -> tuple[_Accumulator, Metric, PatchSource]:
    check_inputs(model, data, batch_size)
    metric = metric or default_metric(data)
    source = source or default_source(data)
    acc = _Accumulator(model, data.max_length)
    phase = Phase(progress, label, len(data), unit="ex")
    for batch in data.batches(batch_size):
        per_batch(batch.to(model.lm.device), metric, source, acc)
        phase.advance(batch.size)
    return acc, metric, source


def _result(
    acc: _Accumulator, data: CircuitData, metric: Metric, source: PatchSource, method: str, **extra: Any
) -> NodeEffects:
    n = acc.n
    return NodeEffects(
        method=method, metric=metric_name(metric), patch=source.name, points=acc.model.points,
        features={p: (t / n).cpu().to_sparse().coalesce() for p, t in acc.features.items()},
        errors={p: (t / n).cpu().to_sparse().coalesce() for p, t in acc.errors.items()},
        n_examples=n, n_positions=acc.n_positions, lengths_equal=data.lengths_equal,
        metric_clean=acc.metric_clean / n, metric_patch=acc.metric_patch / n, **extra,
    )


def attribution_patching(
    model: SplicedModel, data: CircuitData, metric: Metric | None = None, *, source: PatchSource | None = None,
    batch_size: int = 8, progress: ProgressCallback | None = None,
) -> NodeEffects:
    """Attribution patching: ``(a_patch − a_clean) · ∂m/∂a`` at the clean run for every node
    (see the module doc); one forward and one backward pass per batch, plus the patch run.

    ``metric``: default the logit difference when the file has patch answers, else the
    answer's log-probability. ``source``: default the patch prefixes when the file has
    them, else zero ablation.
    """

    def per_batch(batch: CircuitBatch, metric: Metric, source: PatchSource, acc: _Accumulator) -> None:
        run, m_clean = clean_run_with_gradients(model, batch, metric)
        clean = {p: n.detach() for p, n in run.nodes.items()}
        patch, m_patch = _clean_and_patch(model, batch, metric, source, clean, m_clean)
        for p in model.points:
            grad = Nodes(run.nodes[p].features.grad, run.nodes[p].error.grad)
            acc.add(p, *_delta_effects(grad, clean[p], patch[p]))
        acc.add_metrics(m_clean.detach(), m_patch)

    acc, metric, source = _run_batches(model, data, metric, source, batch_size, progress, "node effects: atp", per_batch)
    return _result(acc, data, metric, source, "atp")


def integrated_gradients(
    model: SplicedModel, data: CircuitData, metric: Metric | None = None, *, steps: int = DEFAULT_STEPS,
    path: IGPath = "per_point", source: PatchSource | None = None, batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> NodeEffects:
    """Integrated gradients with ``steps`` points on the line from clean to patch (see the
    module doc), features and error of a hook point interpolated together.

    ``path="per_point"`` (Marks et al.'s procedure): each hook point is interpolated on its
    own while the rest of the model runs freely; N forward and backward passes per hook
    point and batch. Then, for each point, the effects of all its nodes add up to
    ``m(clean | point := patch) − m(clean)`` (up to the Riemann sum's error), which is the
    whole effect ``m(patch) − m(clean)`` when the point is a residual stream
    (``resid_pre``/``resid_post``: everything after it depends on the prompt only through it).

    ``path="joint"``: every hook point is interpolated at once, each set to its point on
    the line, so a node's effect counts only the paths that reach the metric without
    passing through another spliced point; N passes in all. Then the effects of all nodes
    of all points add up to ``m(clean | every point := patch) − m(clean)``, the whole
    effect when some spliced point is a residual stream, and an upstream node whose every
    path crosses a later spliced residual stream gets no effect at all.
    """
    check_count("steps", steps)
    if path not in ("per_point", "joint"):
        raise ConfigError(f"path must be 'per_point' or 'joint', got {path!r}")

    def per_batch(batch: CircuitBatch, metric: Metric, source: PatchSource, acc: _Accumulator) -> None:
        with torch.no_grad():
            run = model.run(batch.clean_ids, bos=batch.bos)
            m_clean = metric(run.logits, batch)
        clean = {p: n.detach() for p, n in run.computed.items()}
        patch, m_patch = _clean_and_patch(model, batch, metric, source, clean, m_clean)
        groups = [[p] for p in model.points] if path == "per_point" else [model.points]
        for group in groups:
            layer = min(model.layer(p) for p in group)
            start = _resid_pre(model, batch, layer)
            sums = {p: None for p in group}
            for k in range(steps):
                alpha = k / steps
                with torch.enable_grad():
                    step = model.run(
                        batch.clean_ids, bos=batch.bos, points=group, track=True, start=start,
                        set_nodes={p: clean[p].lerp(patch[p], alpha) for p in group},
                    )
                    metric(step.logits, batch).sum().backward()
                for p in group:
                    g = Nodes(step.nodes[p].features.grad, step.nodes[p].error.grad)
                    total = sums[p]
                    sums[p] = g if total is None else Nodes(total.features + g.features, total.error + g.error)
            for p in group:
                mean = Nodes(sums[p].features / steps, sums[p].error / steps)
                acc.add(p, *_delta_effects(mean, clean[p], patch[p]))
        acc.add_metrics(m_clean, m_patch)

    label = f"node effects: ig ({path})"
    acc, metric, source = _run_batches(model, data, metric, source, batch_size, progress, label, per_batch)
    return _result(acc, data, metric, source, "ig", steps=steps, ig_path=path)


def _resid_pre(model: SplicedModel, batch: CircuitBatch, layer: int) -> tuple[int, Tensor] | None:
    """Where a pass that changes nothing before block ``layer`` can start (None: at the embeddings)."""
    from ..hooks import read_activations

    if layer == 0:
        return None
    name = f"resid_pre.{layer}"
    with torch.no_grad():
        return layer, read_activations(model.lm, [name], batch.clean_ids)[name]


def exact_patching(
    model: SplicedModel, data: CircuitData, nodes: Sequence[Node], metric: Metric | None = None, *,
    source: PatchSource | None = None, batch_size: int = 8, nodes_per_pass: int = 8,
    progress: ProgressCallback | None = None,
) -> NodeEffects:
    """The reference: each of ``nodes`` patched alone (to its patch value, in every example),
    the model re-run from the node's block on, ``m(patched) − m(clean)`` averaged.

    ``nodes``: features or error terms at aligned positions (negative positions count
    from the end; an example too short for a position counts as an effect of zero), or
    with position None: the feature (or error term) patched at every position of every
    example at once, the exact counterpart of the effects summed over positions (in the
    result's ``all_positions`` and its summed views). ``nodes_per_pass`` nodes of one hook
    point share a forward pass, each on its own copy of the batch. The result holds only
    these nodes (``measured``).
    """
    check_inputs(model, data, batch_size)
    check_count("nodes_per_pass", nodes_per_pass)
    T = data.max_length
    chosen = [_checked_node(model, n, T) for n in nodes]
    if not chosen:
        raise ConfigError("give at least one node to patch")
    chosen = list(dict.fromkeys(chosen))
    by_point: dict[str, list[Node]] = {}
    for n in chosen:
        by_point.setdefault(n.point, []).append(n)
    sums: dict[Node, float] = dict.fromkeys(chosen, 0.0)

    def per_batch(batch: CircuitBatch, metric: Metric, source: PatchSource, acc: _Accumulator) -> None:
        B, L = batch.size, batch.length
        with torch.no_grad():
            run = model.run(batch.clean_ids, bos=batch.bos)
            m_clean = metric(run.logits, batch)
            clean = {p: n.detach() for p, n in run.computed.items()}
            patch, m_patch = _clean_and_patch(model, batch, metric, source, clean, m_clean)
            for point, point_nodes in by_point.items():
                # A node without a position is patched at all of this batch's positions.
                here = [(n, slice(None) if n.position is None else n.position - (T - L))
                        for n in point_nodes if n.position is None or n.position >= T - L]
                start = _resid_pre(model, batch, model.layer(point))
                for i in range(0, len(here), nodes_per_pass):
                    chunk = here[i:i + nodes_per_pass]
                    c = len(chunk)
                    p_nodes = patch[point]

                    def patched(computed: Nodes, chunk: list = chunk, p_nodes: Nodes = p_nodes) -> Nodes:
                        f, e = computed.features.clone(), computed.error.clone()
                        for k, (node, t) in enumerate(chunk):
                            rows = slice(k * B, (k + 1) * B)
                            if node.feature is None:
                                e[rows, t] = p_nodes.error[:, t]
                            else:
                                f[rows, t, node.feature] = p_nodes.features[:, t, node.feature]
                        return Nodes(f, e)

                    copies = batch.repeat(c)
                    begin = None if start is None else (start[0], start[1].repeat(c, 1, 1))
                    logits = model.run(copies.clean_ids, bos=batch.bos, points=[point], set_nodes={point: patched},
                                       start=begin).logits
                    effects = (metric(logits, copies).reshape(c, B) - m_clean).double().sum(1)
                    for (node, _), v in zip(chunk, effects.tolist()):
                        sums[node] += v
        acc.add_metrics(m_clean, m_patch)

    acc, metric, source = _run_batches(model, data, metric, source, batch_size, progress, "node effects: exact", per_batch)
    n = acc.n
    features, errors = {}, {}
    for p in model.points:
        F = model.dictionary(p).cfg.d_sae
        placed = [node for node in by_point.get(p, []) if node.position is not None]
        feats = [(node.position, node.feature, sums[node] / n) for node in placed if node.feature is not None]
        errs = [(node.position, sums[node] / n) for node in placed if node.feature is None]
        features[p] = torch.sparse_coo_tensor(
            torch.tensor([[t for t, _, _ in feats], [i for _, i, _ in feats]], dtype=torch.long).reshape(2, -1),
            torch.tensor([v for _, _, v in feats], dtype=torch.float32), (T, F), check_invariants=True,
        ).coalesce()
        errors[p] = torch.sparse_coo_tensor(
            torch.tensor([[t for t, _ in errs]], dtype=torch.long).reshape(1, -1),
            torch.tensor([v for _, v in errs], dtype=torch.float32), (T,), check_invariants=True,
        ).coalesce()
    return NodeEffects(
        method="exact", metric=metric_name(metric), patch=source.name, points=model.points, features=features,
        errors=errors, n_examples=n, n_positions=T, lengths_equal=data.lengths_equal,
        metric_clean=acc.metric_clean / n, metric_patch=acc.metric_patch / n, measured=chosen,
        all_positions={node: sums[node] / n for node in chosen if node.position is None},
    )


def _checked_node(model: SplicedModel, node: Node, n_positions: int) -> Node:
    if not isinstance(node, Node):
        raise ConfigError(f"nodes to patch are saekit.circuits.Node(point, feature, position), got {node!r}")
    d = model.dictionary(node.point)  # names the points there are when it is not one
    F = d.cfg.d_sae
    if node.feature is not None and (not is_integer(node.feature)
                                     or not 0 <= node.feature < F):
        raise ConfigError(f"{node.label()}: feature {node.feature!r} is not a feature of the dictionary (0 to {F - 1})")
    position = node.position
    if position is None:
        return node  # patched at every position
    if not is_integer(position) or not -n_positions <= position < n_positions:
        raise ConfigError(
            f"{node.label()}: position {node.position!r} is outside the prompts' {n_positions} positions "
            f"(0 to {n_positions - 1}, or -1 for the last)"
        )
    return Node(node.point, node.feature, node.position % n_positions)


def node_effects(
    model: SplicedModel, data: CircuitData, metric: Metric | None = None, *, method: Method = "atp",
    steps: int = DEFAULT_STEPS, nodes: Sequence[Node] | None = None, **options: Any,
) -> NodeEffects:
    """``attribution_patching``, ``integrated_gradients`` (``steps``) or ``exact_patching``
    (``nodes``) by name; ``options`` go to the method."""
    if method == "atp":
        return attribution_patching(model, data, metric, **options)
    if method == "ig":
        return integrated_gradients(model, data, metric, steps=steps, **options)
    if method == "exact":
        if nodes is None:
            raise ConfigError("exact patching needs the nodes to patch (nodes=[Node(point, feature, position), ...]; "
                              "position None patches a node at every position)")
        return exact_patching(model, data, nodes, metric, **options)
    raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
