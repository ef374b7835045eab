"""A circuit: the nodes that pass a node threshold and the edges among them that pass an
edge threshold, with the metric as the sink (Marks et al. 2024, "Sparse Feature Circuits").

``find_circuit`` does it all: node effects (``attribution``), the nodes kept, their edges
(``edges``), the edges kept. The result is plain data, written as JSON::

    {"metadata": {...: dictionaries, model, method, thresholds, data file, examples},
     "nodes": [{"id": "resid_post.9/f657@3", "hook": "resid_post.9", "feature": 657,
                "position": 3, "effect": 1.37}, ... ("feature": "error" for an error node,
                "position": null when summed over positions)],
     "edges": [{"from": "resid_post.6/f12@3", "to": "resid_post.9/f657@3", "weight": 0.41},
               {"from": "resid_post.9/f657@3", "to": "metric", "weight": 1.37}, ...]}

and read back with ``Circuit.from_json`` / ``read_circuit``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import is_integer, is_real
from ..errors import ConfigError, DataError
from ..progress import ProgressCallback
from .attribution import DEFAULT_STEPS, Node, NodeEffect, NodeEffects, PatchSource, node_effects
from .data import CircuitData
from .edges import METRIC, Edge, EdgeEffects, edge_effects
from .graph import SplicedModel
from .metrics import Metric

FORMAT = "saekit-circuit-1"


@dataclass(frozen=True)
class CircuitNode:
    """A node of a circuit and its mean effect on the metric."""

    node: Node
    effect: float

    @property
    def id(self) -> str:
        return self.node.label()


@dataclass
class Circuit:
    """Nodes (largest |effect| first), edges among them and to the metric (largest |weight|
    first), and what they were found with (``metadata``)."""

    nodes: list[CircuitNode]
    edges: list[Edge]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("a circuit needs at least one node")
        kept = {n.node for n in self.nodes}
        if len(kept) != len(self.nodes):
            raise DataError("a circuit lists a node twice")
        if len({n.node.position is None for n in self.nodes}) > 1:
            raise DataError("a circuit's nodes are all at positions or all summed over positions, not a mix")
        for e in self.edges:
            for end in (e.upstream, e.downstream):
                if end is not None and end not in kept:
                    raise DataError(f"the edge {e.upstream.label()} -> {_label(e.downstream)} joins a node not in the circuit")

    @property
    def summed(self) -> bool:
        return self.nodes[0].node.position is None

    def node_list(self) -> list[Node]:
        return [n.node for n in self.nodes]

    def top(self, n: int) -> list[Node]:
        """The ``n`` nodes of largest |effect|."""
        return [c.node for c in sorted(self.nodes, key=lambda c: -abs(c.effect))[:n]]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "metadata": self.metadata,
            "nodes": [{"id": c.id, "hook": c.node.point, "feature": "error" if c.node.feature is None else c.node.feature,
                       "position": c.node.position, "effect": _number(c.effect)} for c in self.nodes],
            "edges": [{"from": e.upstream.label(), "to": _label(e.downstream), "weight": _number(e.weight)}
                      for e in self.edges],
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        from ..io.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, obj: Any, where: str = "the circuit") -> Circuit:
        """A circuit from ``to_json``'s object, checked (``where`` names it in errors)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("nodes"), list) or not isinstance(obj.get("edges"), list):
            raise DataError(f"{where}: not a saekit circuit (expected an object with 'nodes' and 'edges' lists)")
        by_id: dict[str, Node] = {}
        nodes = []
        for i, row in enumerate(obj["nodes"]):
            node, effect = _node_from_json(row, f"{where}: node {i}")
            by_id[node.label()] = node
            nodes.append(CircuitNode(node, effect))
        edges = []
        for i, row in enumerate(obj["edges"]):
            if not isinstance(row, dict) or not isinstance(row.get("from"), str) or not isinstance(row.get("to"), str):
                raise DataError(f"{where}: edge {i} needs 'from' and 'to' node ids and a 'weight'")
            ends = []
            for key in ("from", "to"):
                if key == "to" and row[key] == METRIC:
                    ends.append(None)
                elif row[key] in by_id:
                    ends.append(by_id[row[key]])
                else:
                    raise DataError(f"{where}: edge {i} {key} {row[key]!r}, which is not a node of the circuit")
            if ends[0] is None:
                raise DataError(f"{where}: edge {i} starts at the metric; the metric is the sink")
            edges.append(Edge(ends[0], ends[1], _float(row.get("weight"), f"{where}: edge {i} weight")))
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise DataError(f"{where}: 'metadata' must be an object")
        return cls(nodes, edges, metadata)


def read_circuit(path: str | os.PathLike[str]) -> Circuit:
    """A circuit written by ``Circuit.write_json``."""
    file = Path(path)
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{file}: no such file; give a circuit JSON written by saekit") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{file}: cannot read it ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return Circuit.from_json(obj, str(file))


def _label(node: Node | None) -> str:
    return METRIC if node is None else node.label()


def _number(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def _float(v: Any, where: str) -> float:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    if not is_real(v):
        raise DataError(f"{where} must be a number, got {v!r}")
    return float(v)


def _node_from_json(row: Any, where: str) -> tuple[Node, float]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with hook, feature, position and effect")
    hook, feature, position = row.get("hook"), row.get("feature"), row.get("position")
    if not isinstance(hook, str) or not hook:
        raise DataError(f"{where}: 'hook' must be a hook point name, got {hook!r}")
    if feature != "error" and (not is_integer(feature) or feature < 0):
        raise DataError(f"{where}: 'feature' must be a feature index or \"error\", got {feature!r}")
    if position is not None and (not is_integer(position) or position < 0):
        raise DataError(f"{where}: 'position' must be a token position or null (summed), got {position!r}")
    node = Node(hook, None if feature == "error" else feature, position)
    return node, _float(row.get("effect"), f"{where} effect")


# ---------------------------------------------------------------------------


def check_threshold(value: Any, name: str) -> float:
    if not is_real(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number of at least 0 (an |effect| to keep), got {value!r}")
    return float(value)


def select_nodes(effects: NodeEffects, threshold: float, summed: bool = False) -> list[NodeEffect]:
    """The nodes with |effect| ≥ ``threshold`` (and nonzero), per position or summed over
    positions, largest first; an error naming the largest |effect| when none passes."""
    threshold = check_threshold(threshold, "the node threshold")
    kept = [e for e in effects.entries(summed) if e.effect != 0 and abs(e.effect) >= threshold]
    if not kept:
        top = effects.top(1, summed=summed)
        where = "summed over positions" if summed else "per position"
        if not top:
            raise DataError(
                "no node has any effect on the metric (every node effect is zero); check the file's clean and "
                "patch prompts differ where the dictionaries' features do"
            )
        raise ConfigError(
            f"no node has |effect| >= {threshold:g} ({where}); the largest is {abs(top[0].effect):.4g} "
            f"({top[0].node.label()}); give a node threshold below it"
        )
    return sorted(kept, key=lambda e: -abs(e.effect))


def circuit_from_effects(
    effects: NodeEffects, edges: EdgeEffects, node_threshold: float, edge_threshold: float, summed: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Circuit:
    """The circuit of nodes passing ``node_threshold`` and the edges among them passing
    ``edge_threshold`` (the edges computed for at least those nodes)."""
    edge_threshold = check_threshold(edge_threshold, "the edge threshold")
    kept = select_nodes(effects, node_threshold, summed)
    chosen = {e.node for e in kept}
    missing = [n for n in chosen if n not in set(edges.nodes)]
    if missing:
        raise ConfigError(f"the edges were computed without {missing[0].label()}; compute them for the circuit's nodes")
    links = [e for e in edges.edges(edge_threshold) if e.upstream in chosen and (e.downstream is None or e.downstream in chosen)]
    return Circuit([CircuitNode(e.node, e.effect) for e in kept], links, dict(metadata or {}))


def find_circuit(
    model: SplicedModel, data: CircuitData, metric: Metric | None = None, *, node_threshold: float,
    edge_threshold: float, summed: bool = False, method: str = "atp", steps: int = DEFAULT_STEPS,
    source: PatchSource | None = None, batch_size: int = 8, nodes_per_pass: int = 8,
    effects: NodeEffects | None = None, sources: dict[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> Circuit:
    """Node effects (``method`` "atp" or "ig"; or ``effects`` already computed), the nodes
    with |effect| ≥ ``node_threshold`` (per position, or summed over positions with
    ``summed``), the edges among them (same method), those with |weight| ≥
    ``edge_threshold``. ``sources``: per hook point, where its dictionary came from (a
    folder or Hub name), recorded in the metadata."""
    check_threshold(node_threshold, "the node threshold")
    check_threshold(edge_threshold, "the edge threshold")
    if method not in ("atp", "ig"):
        raise ConfigError(f"a circuit's method is 'atp' or 'ig', got {method!r} (exact patching is for chosen nodes)")
    if effects is None:
        effects = node_effects(model, data, metric, method=method, steps=steps, source=source, batch_size=batch_size,
                               progress=progress)
    elif not isinstance(effects, NodeEffects) or effects.points != model.points or effects.method != method:
        raise ConfigError(f"effects must be the NodeEffects of this model's hook points, found by {method!r}")
    kept = select_nodes(effects, node_threshold, summed)
    edges = edge_effects(model, data, [e.node for e in kept], metric, method=method, steps=steps, source=source,
                         batch_size=batch_size, nodes_per_pass=nodes_per_pass, progress=progress)
    metadata = {
        "model": model.lm.name,
        "dictionaries": [_dictionary_info(model, p, (sources or {}).get(p)) for p in model.points],
        "method": method, "steps": steps if method == "ig" else None, "metric": effects.metric,
        "patch": effects.patch, "node_threshold": node_threshold, "edge_threshold": edge_threshold,
        "summed_over_positions": summed, "data_file": data.source, "n_examples": len(data),
        "n_positions": effects.n_positions,
        "positions": "token index" if data.lengths_equal else "aligned at the end: n_positions - 1 is the last token",
        "metric_clean": effects.metric_clean, "metric_patch": effects.metric_patch,
    }
    return circuit_from_effects(effects, edges, node_threshold, edge_threshold, summed, metadata)


def _dictionary_info(model: SplicedModel, point: str, source: str | None) -> dict[str, Any]:
    cfg = model.dictionary(point).cfg
    info: dict[str, Any] = {"hook_point": point, "reads": model.reads(point), "arch": cfg.arch, "d_sae": cfg.d_sae,
                            "transcoder": bool(cfg.transcoder)}
    if source is not None:
        info["source"] = source
    return info

