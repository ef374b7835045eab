"""Edge effects: how much each chosen node moves each chosen node downstream of it.

The weight of the edge from an upstream node ``u`` to a downstream node ``d`` is the
effect on the metric of patching ``u`` that reaches the metric through ``d`` along paths
that cross no other spliced hook point (Marks et al. 2024, "Sparse Feature Circuits",
arXiv:2403.19647, §2 and appendix; their code, github.com/saprmarks/feature-circuits,
``attribution.py`` ``jvp`` and ``circuit.py`` ``get_circuit``)::

    w(u → d) = ∇_d m · (∂d/∂u) · Δu        (intermediate hook points held fixed)

``∇_d m`` is the metric's whole gradient at ``d`` (every path from ``d`` to the metric);
``∂d/∂u`` the Jacobian of ``d`` in ``u`` with every spliced point between them held (no
gradient through them), at the clean run; ``Δu = u_patch − u_clean``. With attribution
patching (``method="atp"``) ``∇_d m`` is taken at the clean run; with the integrated
gradients variant (``method="ig"``) it is the mean gradient along ``d``'s straight line from
clean to patch (as node effects by IG), the Jacobian still at the clean run, as in Marks et
al.'s code.

Edges run from each point to every later point, with the points between held, so with
residual-stream points only (``resid_post.l``) the edges that are not exactly zero join
successive points (everything from one reaches the next through it), and with attention
and MLP outputs among them an upstream node also reaches later outputs and the next
residual stream directly, as ``get_circuit`` does (``resid → attn``, ``resid → mlp`` with
``attn`` held, ``resid → resid`` with ``attn`` and ``mlp`` held, ...).

The graph's sink is the metric: the edge ``u → metric`` is ``u``'s direct effect (every
later spliced point held), which for the last point is its node effect.

Only the chosen nodes (those passing a node threshold) are sources and targets, error
nodes included. Nothing dense over (nodes × nodes × positions) is ever held: one forward
pass per batch with ``nodes_per_pass`` copies of it, then one backward pass per
``nodes_per_pass`` downstream nodes (each copy carries one of them), each giving that node's
edges from every upstream node at once; the weights are accumulated as a sparse tensor.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..checks import is_integer
from ..errors import ConfigError
from ..progress import Phase, ProgressCallback
from .attribution import (
    DEFAULT_STEPS,
    Node,
    PatchSource,
    check_count,
    check_inputs,
    clean_run_with_gradients,
    _clean_and_patch,
    _resid_pre,
    default_source,
)
from .data import CircuitBatch, CircuitData
from .graph import Nodes, SplicedModel
from .metrics import Metric, default_metric, metric_name

EDGE_METHODS: tuple[str, ...] = ("atp", "ig")
METRIC = "metric"  # the sink's name in labels and JSON


@dataclass(frozen=True)
class Edge:
    """An edge: ``upstream`` → ``downstream`` (None: the metric), its mean ``weight``."""

    upstream: Node
    downstream: Node | None
    weight: float


@dataclass
class EdgeEffects:
    """Mean edge weights over ``n_examples`` examples among ``nodes``.

    ``weights``: sparse ``(len(nodes) + 1, len(nodes))`` on the CPU, row = downstream node
    (the last row is the metric), column = upstream node; an entry absent is a weight of
    zero. All nodes have a position, or none has (summed over positions).
    """

    method: str
    metric: str
    patch: str
    points: list[str]
    nodes: list[Node]
    weights: Tensor
    n_examples: int
    n_positions: int
    lengths_equal: bool
    metric_clean: float
    metric_patch: float
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.method not in EDGE_METHODS:
            raise ConfigError(f"unknown edge method {self.method!r}; choose one of {', '.join(EDGE_METHODS)}")
        n = len(self.nodes)
        if tuple(self.weights.shape) != (n + 1, n):
            raise ConfigError(f"edge weights must be ({n + 1}, {n}) for {n} nodes, got {tuple(self.weights.shape)}")

    @property
    def summed(self) -> bool:
        return bool(self.nodes) and self.nodes[0].position is None

    def edges(self, min_abs: float = 0.0) -> list[Edge]:
        """The edges with |weight| ≥ ``min_abs`` (and nonzero), largest |weight| first."""
        w = self.weights.coalesce()
        n = len(self.nodes)
        out = []
        for (down, up), v in zip(w.indices().T.tolist(), w.values().tolist()):
            if v != 0 and abs(v) >= min_abs:
                out.append(Edge(self.nodes[up], None if down == n else self.nodes[down], v))
        return sorted(out, key=lambda e: -abs(e.weight))

    def weight(self, upstream: Node, downstream: Node | None) -> float:
        """The weight of one edge (zero when absent); ``downstream`` None is the metric."""
        index = {node: i for i, node in enumerate(self.nodes)}
        for node in (upstream, downstream):
            if node is not None and node not in index:
                raise ConfigError(f"{node.label()} is not one of these edges' nodes")
        row = len(self.nodes) if downstream is None else index[downstream]
        return float(self.weights.to_dense()[row, index[upstream]])

    def to_json(self, min_abs: float = 0.0) -> dict[str, Any]:
        return {
            "method": self.method, "steps": self.steps, "metric": self.metric, "patch": self.patch,
            "hook_points": self.points, "n_examples": self.n_examples, "n_positions": self.n_positions,
            "summed_over_positions": self.summed, "metric_clean": self.metric_clean,
            "metric_patch": self.metric_patch, "min_abs": min_abs,
            "edges": [{"from": e.upstream.label(), "to": METRIC if e.downstream is None else e.downstream.label(),
                       "weight": e.weight if math.isfinite(e.weight) else str(e.weight)} for e in self.edges(min_abs)],
        }

    def write_json(self, path: str | os.PathLike[str], min_abs: float = 0.0) -> None:
        from ..io.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(min_abs), indent=1) + "\n")


# ---------------------------------------------------------------------------


def checked_nodes(model: SplicedModel, nodes: Iterable[Node], n_positions: int) -> list[Node]:
    """``nodes`` checked against the model (points, feature indices, positions; negative
    positions count from the end), without repeats, in the model's point order; all with
    a position or all summed over positions (None)."""
    out: list[Node] = []
    for node in nodes:
        if not isinstance(node, Node):
            raise ConfigError(f"circuit nodes are saekit.circuits.Node(point, feature, position), got {node!r}")
        F = model.dictionary(node.point).cfg.d_sae  # names the points there are when it is not one
        f = node.feature
        if f is not None and (not is_integer(f) or not 0 <= f < F):
            raise ConfigError(f"{node.label()}: feature {f!r} is not a feature of the dictionary (0 to {F - 1})")
        t = node.position
        if t is not None:
            if not is_integer(t) or not -n_positions <= t < n_positions:
                raise ConfigError(
                    f"{node.label()}: position {t!r} is outside the prompts' {n_positions} positions "
                    f"(0 to {n_positions - 1}, or -1 for the last; None for summed over positions)"
                )
            t %= n_positions
        out.append(Node(node.point, f, t))
    if not out:
        raise ConfigError("give at least one node to find edges among (none passed the node threshold?)")
    if len({n.position is None for n in out}) > 1:
        raise ConfigError(
            "give nodes all with positions or all summed over positions (position None), not a mix: edges join "
            "nodes of one kind"
        )
    order = {p: i for i, p in enumerate(model.points)}
    return sorted(dict.fromkeys(out), key=lambda n: (order[n.point], -1 if n.position is None else n.position,
                                                     -1 if n.feature is None else n.feature))


@dataclass
class _PointIndex:
    """One point's chosen nodes as index tensors into a batch's (B, T, F) and (B, T)."""

    feat_rows: Tensor  # global node indices of the feature nodes
    feat_t: Tensor  # their batch positions (-1: summed)
    feat_f: Tensor
    err_rows: Tensor
    err_t: Tensor


def _index(nodes: list[Node], point: str, offset: int, device: torch.device) -> _PointIndex:
    """The nodes of ``point`` present in a batch whose positions start ``offset`` aligned
    positions late (shorter prompts): nodes at positions before it are absent."""
    feats = [(i, n) for i, n in enumerate(nodes) if n.point == point and n.feature is not None
             and (n.position is None or n.position >= offset)]
    errs = [(i, n) for i, n in enumerate(nodes) if n.point == point and n.feature is None
            and (n.position is None or n.position >= offset)]

    def t(n: Node) -> int:
        return -1 if n.position is None else n.position - offset

    def long(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return _PointIndex(long([i for i, _ in feats]), long([t(n) for _, n in feats]), long([n.feature for _, n in feats]),
                       long([i for i, _ in errs]), long([t(n) for _, n in errs]))


def _per_node(products: Nodes, idx: _PointIndex, summed: bool) -> tuple[Tensor, Tensor]:
    """Per-node values from per-component products ``features`` (R, T, F) and ``error``
    (R, T, d): (R, n_feature_nodes) and (R, n_error_nodes), summed over positions when
    the nodes are."""
    err = products.error.sum(-1)
    if summed:
        # At most one summed error node per point: the error term at every position.
        return products.features.sum(1)[:, idx.feat_f], err.sum(1, keepdim=True).expand(-1, len(idx.err_rows))
    return products.features[:, idx.feat_t, idx.feat_f], err[:, idx.err_t]


def _grads(run_nodes: dict[str, Nodes], points: Sequence[str]) -> dict[str, Nodes]:
    """The leaves' gradients (zero where the metric does not depend on them)."""

    def grad(t: Tensor) -> Tensor:
        return torch.zeros_like(t) if t.grad is None else t.grad

    return {p: Nodes(grad(run_nodes[p].features), grad(run_nodes[p].error)) for p in points}


def _total_gradients(
    model: SplicedModel, batch: CircuitBatch, metric: Metric, clean: dict[str, Nodes], patch: dict[str, Nodes],
    steps: int, points: Sequence[str],
) -> dict[str, Nodes]:
    """``∇_p m`` for each of ``points`` (every path to the metric): the mean along ``p``'s
    own line from clean to patch, the rest of the model free (as ``integrated_gradients``)."""
    return {p: _mean_gradient_on_line(model, batch, metric, clean, patch, steps, p, [p], hold=()) for p in points}


def _mean_gradient_on_line(
    model: SplicedModel, batch: CircuitBatch, metric: Metric, clean: dict[str, Nodes], patch: dict[str, Nodes],
    steps: int, point: str, points: Sequence[str], hold: Sequence[str],
) -> Nodes:
    """The metric's gradient at ``point``, averaged over ``steps`` places on the line from its
    clean nodes to its patch nodes (k/steps, k = 0..steps−1, as integrated gradients takes
    them), running from the point's block with ``points`` spliced and ``hold`` held."""
    start = _resid_pre(model, batch, model.layer(point))
    total: Nodes | None = None
    for k in range(steps):
        with torch.enable_grad():
            run = model.run(batch.clean_ids, bos=batch.bos, points=points, track=True, start=start, hold=hold,
                            set_nodes={point: clean[point].lerp(patch[point], k / steps)})
            metric(run.logits, batch).sum().backward()
        g = _grads(run.nodes, [point])[point]
        total = g if total is None else Nodes(total.features + g.features, total.error + g.error)
    return Nodes(total.features / steps, total.error / steps)


def _direct_gradients(
    model: SplicedModel, batch: CircuitBatch, metric: Metric, clean: dict[str, Nodes], patch: dict[str, Nodes],
    steps: int, points: Sequence[str],
) -> dict[str, Nodes]:
    """The metric's gradient at each of ``points`` through no later spliced point, the mean
    along the point's own line from clean to patch (every spliced point held). Zero without
    any pass for a point that has no such path (a later residual stream carries it all)."""
    with torch.enable_grad():
        run = model.run(batch.clean_ids, bos=batch.bos, track=True, hold=model.points)
        leaves = [t for p in points for t in (run.nodes[p].features, run.nodes[p].error)]
        reached = torch.autograd.grad(metric(run.logits, batch).sum(), leaves, allow_unused=True)
    out: dict[str, Nodes] = {}
    for j, p in enumerate(points):
        if reached[2 * j] is None and reached[2 * j + 1] is None:  # no path at all: zero all along the line
            out[p] = Nodes(torch.zeros_like(clean[p].features), torch.zeros_like(clean[p].error))
            continue
        spliced = [q for q in model.points if model.layer(q) >= model.layer(p)]
        out[p] = _mean_gradient_on_line(model, batch, metric, clean, patch, steps, p, spliced, hold=spliced)
    return out


def edge_effects(
    model: SplicedModel, data: CircuitData, nodes: Iterable[Node], metric: Metric | None = None, *,
    method: str = "atp", steps: int = DEFAULT_STEPS, source: PatchSource | None = None, batch_size: int = 8,
    nodes_per_pass: int = 8, progress: ProgressCallback | None = None,
) -> EdgeEffects:
    """The edges among ``nodes`` (see the module doc), averaged over the examples.

    ``nodes``: the chosen nodes, features or error terms, all at aligned positions or all
    summed over positions (position None); usually those passing a node threshold
    (``Circuit`` picks them). ``method``: ``"atp"`` or ``"ig"`` (``steps`` points per line).
    ``metric`` and ``source`` as for node effects. ``nodes_per_pass`` downstream nodes
    share a backward pass, each on its own copy of the batch (memory grows with it).
    """
    check_inputs(model, data, batch_size)
    if method not in EDGE_METHODS:
        raise ConfigError(f"unknown edge method {method!r}; choose one of {', '.join(EDGE_METHODS)}")
    check_count("steps", steps)
    check_count("nodes_per_pass", nodes_per_pass)
    T = data.max_length
    chosen = checked_nodes(model, nodes, T)
    summed = chosen[0].position is None
    metric = metric or default_metric(data)
    source = source or default_source(data)
    n_nodes = len(chosen)
    order = {p: i for i, p in enumerate(model.points)}
    sources = [p for p in model.points if any(n.point == p for n in chosen)]
    # Downstream nodes: those with a chosen node at an earlier point, then the metric.
    first = min(order[p] for p in sources)
    targets = [i for i, n in enumerate(chosen) if order[n.point] > first]
    dev = model.lm.device
    acc = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n_nodes + 1, n_nodes),
                                  check_invariants=True)
    sums = {"clean": 0.0, "patch": 0.0, "n": 0}
    phase = Phase(progress, f"edges: {method}", len(data), unit="ex")

    for batch in data.batches(batch_size):
        batch = batch.to(dev)
        B, L = batch.size, batch.length
        offset = T - L
        index = {p: _index(chosen, p, offset, dev) for p in sources}
        rows: list[Tensor] = []
        cols: list[Tensor] = []
        vals: list[Tensor] = []

        def add(down: Tensor, up: Tensor, values: Tensor) -> None:
            """``values`` (len(down), len(up)) summed over the batch."""
            if down.numel() and up.numel():
                rows.append(down[:, None].expand(-1, len(up)).reshape(-1).cpu())
                cols.append(up[None, :].expand(len(down), -1).reshape(-1).cpu())
                vals.append(values.detach().reshape(-1).float().cpu())

        # The clean nodes, ∇m at every point (atp), the patch nodes.
        run, m_clean = clean_run_with_gradients(model, batch, metric)
        clean = {p: n.detach() for p, n in run.nodes.items()}
        left = _grads(run.nodes, model.points)
        del run
        patch, m_patch = _clean_and_patch(model, batch, metric, source, clean, m_clean.detach())
        delta = {p: Nodes(patch[p].features - clean[p].features, patch[p].error - clean[p].error) for p in sources}
        if method == "ig":
            # Left vectors are only needed where a downstream node is.
            left = _total_gradients(model, batch, metric, clean, patch, steps,
                                    [p for p in model.points if any(chosen[i].point == p for i in targets)])
            # Edges to the metric: each source point's direct effect, by IG along its line.
            direct = _direct_gradients(model, batch, metric, clean, patch, steps, sources)
            for p in sources:
                prod = Nodes(direct[p].features * delta[p].features, direct[p].error * delta[p].error)
                f, e = _per_node(prod, index[p], summed)
                sink = torch.tensor([n_nodes], device=dev)
                add(sink, index[p].feat_rows, f.sum(0, keepdim=True))
                add(sink, index[p].err_rows, e.sum(0, keepdim=True))

        # Downstream nodes present in this batch, then (atp) the metric.
        present = [i for i in targets if chosen[i].position is None or chosen[i].position >= offset]
        jobs: list[int | None] = list(present) + ([None] if method == "atp" else [])
        c = min(nodes_per_pass, len(jobs)) if jobs else 0
        if c:
            copies = batch.repeat(c)
            with torch.enable_grad():
                # One forward pass, every point held: the gradient at an upstream node from a
                # downstream one then only follows paths that cross no other spliced point.
                run = model.run(copies.clean_ids, bos=batch.bos, track=True, hold=model.points)
                weighted = {p: Nodes(left[p].features.repeat(c, 1, 1) * run.computed[p].features,
                                     left[p].error.repeat(c, 1, 1) * run.computed[p].error) for p in left}
                m_copies = metric(run.logits, copies) if None in jobs else None
                leaves = [t for p in sources for t in (run.nodes[p].features, run.nodes[p].error)]
                for start in range(0, len(jobs), c):
                    chunk = jobs[start:start + c]
                    losses = []
                    for k, job in enumerate(chunk):
                        rows_k = slice(k * B, (k + 1) * B)
                        if job is None:
                            losses.append(m_copies[rows_k].sum())
                            continue
                        n = chosen[job]
                        w = weighted[n.point]
                        t = slice(None) if n.position is None else n.position - offset
                        if n.feature is None:
                            losses.append(w.error[rows_k, t].sum())
                        else:
                            losses.append(w.features[rows_k, t, n.feature].sum())
                    last = start + c >= len(jobs)
                    grads = torch.autograd.grad(torch.stack(losses).sum(), leaves, retain_graph=not last,
                                                allow_unused=True)
                    for j, p in enumerate(sources):
                        gf, ge = grads[2 * j], grads[2 * j + 1]
                        if gf is None and ge is None:
                            continue
                        gf = torch.zeros_like(run.nodes[p].features) if gf is None else gf
                        ge = torch.zeros_like(run.nodes[p].error) if ge is None else ge
                        k_used = len(chunk)
                        prod = Nodes((gf[:k_used * B] * delta[p].features.repeat(k_used, 1, 1)),
                                     (ge[:k_used * B] * delta[p].error.repeat(k_used, 1, 1)))
                        f, e = _per_node(prod, index[p], summed)
                        f = f.reshape(k_used, B, -1).sum(1)
                        e = e.reshape(k_used, B, -1).sum(1)
                        # Only edges into a later point: a node's own point and those after it get none.
                        for k, job in enumerate(chunk):
                            if job is not None and order[chosen[job].point] <= order[p]:
                                continue
                            down = torch.tensor([n_nodes if job is None else job], device=dev)
                            add(down, index[p].feat_rows, f[k:k + 1])
                            add(down, index[p].err_rows, e[k:k + 1])
            del run, weighted
        if vals:
            new = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals),
                                          (n_nodes + 1, n_nodes), check_invariants=True)
            acc = (acc + new).coalesce()
        sums["clean"] += float(m_clean.detach().double().sum())
        sums["patch"] += float(m_patch.double().sum())
        sums["n"] += B
        phase.advance(B)

    n = sums["n"]
    acc = acc.coalesce()
    keep = acc.values() != 0
    weights = torch.sparse_coo_tensor(acc.indices()[:, keep], acc.values()[keep] / n, (n_nodes + 1, n_nodes),
                                      check_invariants=True).coalesce()
    return EdgeEffects(
        method=method, metric=metric_name(metric), patch=source.name, points=model.points, nodes=chosen,
        weights=weights, n_examples=n, n_positions=T, lengths_equal=data.lengths_equal,
        metric_clean=sums["clean"] / n, metric_patch=sums["patch"] / n, steps=steps if method == "ig" else None,
    )
