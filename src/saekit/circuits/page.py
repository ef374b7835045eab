"""A circuit drawn as one self-contained HTML page: inline SVG, CSS and a little JS, no
external assets, so it opens from a file:// URL anywhere and can be mailed around.

Layout: one row per hook point in forward order, the most downstream at the top and the
metric (the sink) above them all, so the graph reads bottom-up like the forward pass.
Within a row the nodes stand in columns by token position (left to right; one column when
effects are summed over positions), and within a position by |effect|. A node is a box
labelled by its feature index ("ε" for the hook point's error term) and its position's
token; its fill is blue for a positive effect on the metric and red for a negative one,
darker for a larger |effect|. Edges are lines whose width follows |weight| and whose
colour its sign. Hovering a node or edge shows the exact values; with a dashboard, a
feature node links to its page there.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError
from .attribution import Node
from .circuit import Circuit

BOX_W, BOX_H = 64, 34       # a node's box
GAP_X, ROW_H = 10, 110      # between boxes in a row; between rows (room for the edges)
LEFT = 150                  # the hook point names' margin
POSITIVE, NEGATIVE = (37, 99, 235), (220, 38, 38)  # blue, red


@dataclass(frozen=True)
class DashboardLinks:
    """Where a dashboard's feature pages are: its ``feature.html`` (as the page links it),
    the hook point it was built for and the features it shows."""

    href: str
    hook: str
    features: frozenset[int]

    def link(self, feature: int) -> str | None:
        return f"{self.href}#{feature}" if feature in self.features else None


def dashboard_links(folder: str | os.PathLike[str], page: str | os.PathLike[str]) -> DashboardLinks:
    """Read a dashboard folder written by ``saekit dashboard``: its hook point and features,
    and its feature page as a link relative to ``page`` (a ``file://`` URL where no
    relative path exists, another drive say)."""
    from ..interpret.dashboard import is_complete_dashboard

    folder = Path(folder)
    if not is_complete_dashboard(folder):
        raise DataError(f"--dashboard {folder} holds no finished saekit dashboard; give a folder saekit dashboard wrote")
    try:
        manifest = json.loads((folder / "dashboard.json").read_text(encoding="utf-8"))
        meta_js = (folder / "data" / "meta.js").read_text(encoding="utf-8")
        meta = json.loads(meta_js[meta_js.index(",") + 1:meta_js.rindex(")")])
        features = frozenset(_index_features(folder, int(meta.get("index_chunks", 0))))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"--dashboard {folder}: cannot read its manifest ({e}); rewrite it with saekit dashboard") from None
    target = (folder / "feature.html").resolve()
    try:
        href = Path(os.path.relpath(target, Path(page).resolve().parent)).as_posix()
    except ValueError:
        href = target.as_uri()
    return DashboardLinks(href, str(manifest.get("hook") or ""), features)


def _index_features(folder: Path, chunks: int) -> list[int]:
    """The features the dashboard's index lists (each index row starts with its feature)."""
    out: list[int] = []
    for i in range(chunks):
        text = (folder / "data" / f"index-{i:05d}.js").read_text(encoding="utf-8")
        rows = json.loads(text[text.index(",") + 1:text.rindex(")")])["rows"]
        out.extend(int(r[0]) for r in rows)
    return out


def _colour(sign_positive: bool, strength: float) -> str:
    """The sign's colour, from near white (strength 0) to full (strength 1)."""
    r, g, b = POSITIVE if sign_positive else NEGATIVE
    s = 0.15 + 0.85 * max(0.0, min(1.0, strength))
    mix = [round(255 - (255 - c) * s) for c in (r, g, b)]
    return f"rgb({mix[0]},{mix[1]},{mix[2]})"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _node_text(node: Node) -> str:
    return "ε" if node.feature is None else str(node.feature)


def write_circuit_page(
    circuit: Circuit, path: str | os.PathLike[str], *, dashboard: DashboardLinks | Sequence[DashboardLinks] | None = None,
    token_labels: Sequence[str] | None = None,
) -> None:
    """Write ``circuit`` as a self-contained HTML page at ``path`` (atomically).

    ``dashboard``: one or several ``DashboardLinks`` (``dashboard_links(folder, path)``);
    a feature node of the dashboard's hook point links to its page. ``token_labels``: the
    text of each token position (a node at position p is labelled with token_labels[p])."""
    from ..io.files import atomic_write_text

    atomic_write_text(path, circuit_page(circuit, dashboard=dashboard, token_labels=token_labels))


def circuit_page(
    circuit: Circuit, *, dashboard: DashboardLinks | Sequence[DashboardLinks] | None = None,
    token_labels: Sequence[str] | None = None,
) -> str:
    """The page's HTML (see ``write_circuit_page``)."""
    boards = [dashboard] if isinstance(dashboard, DashboardLinks) else list(dashboard or [])
    meta = circuit.metadata
    reads = {d.get("hook_point"): d.get("reads") for d in meta.get("dictionaries", []) if isinstance(d, dict)}
    points = [str(d.get("hook_point")) for d in meta.get("dictionaries", []) if isinstance(d, dict)]
    for c in circuit.nodes:  # a circuit built by hand may carry no metadata
        if c.node.point not in points:
            points.append(c.node.point)
    rows = [p for p in points if any(c.node.point == p for c in circuit.nodes)]
    rows_top_down = list(reversed(rows))  # downstream at the top

    # Columns: token positions, each as wide as its fullest row.
    positions = sorted({c.node.position for c in circuit.nodes}, key=lambda p: -1 if p is None else p)
    per_cell: dict[tuple[str, int | None], list] = {}
    for c in sorted(circuit.nodes, key=lambda c: -abs(c.effect)):
        per_cell.setdefault((c.node.point, c.node.position), []).append(c)
    width_of = {pos: max(len(per_cell.get((p, pos), [])) for p in rows) for pos in positions}
    x0: dict[int | None, float] = {}
    x = LEFT
    for pos in positions:
        x0[pos] = x
        x += width_of[pos] * (BOX_W + GAP_X) + 2 * GAP_X
    width = max(x + 20, 480)
    top = 90
    y_of = {p: top + ROW_H * (i + 1) for i, p in enumerate(rows_top_down)}
    height = top + ROW_H * (len(rows) + 1)
    xy: dict[Node, tuple[float, float]] = {}
    for (point, pos), cell in per_cell.items():
        for j, c in enumerate(cell):
            xy[c.node] = (x0[pos] + j * (BOX_W + GAP_X), y_of[point])
    sink = ((width - 20 + LEFT) / 2 - BOX_W, top - BOX_H / 2)
    max_effect = max(abs(c.effect) for c in circuit.nodes) or 1.0
    max_weight = max((abs(e.weight) for e in circuit.edges), default=1.0) or 1.0

    def centre(node: Node | None, end: str) -> tuple[float, float]:
        if node is None:
            return sink[0] + BOX_W, sink[1] + BOX_H
        bx, by = xy[node]
        return bx + BOX_W / 2, (by if end == "top" else by + BOX_H)

    svg: list[str] = []
    for i, p in enumerate(rows_top_down):
        y = y_of[p]
        reads_note = f" (reads {reads[p]})" if reads.get(p) and reads.get(p) != p else ""
        svg.append(f'<text class="row" x="8" y="{y + BOX_H / 2 + 4:.0f}">{_esc(p)}</text>')
        if reads_note:
            svg.append(f'<text class="reads" x="8" y="{y + BOX_H / 2 + 18:.0f}">{_esc(reads_note.strip())}</text>')
    for pos in positions:
        if pos is None:
            continue
        label = f"@{pos}"
        if token_labels is not None and 0 <= pos < len(token_labels):
            label += f" {token_labels[pos]!r}"
        svg.append(f'<text class="pos" x="{x0[pos]:.0f}" y="{height - 12:.0f}">{_esc(label)}</text>')
    for e in sorted(circuit.edges, key=lambda e: abs(e.weight)):  # the strongest drawn last, on top
        x1, y1 = centre(e.upstream, "top")
        x2, y2 = centre(e.downstream, "bottom")
        w = 1.0 + 5.0 * abs(e.weight) / max_weight  # the weakest kept edge still visible
        colour = _colour(e.weight >= 0, 0.55 + 0.45 * abs(e.weight) / max_weight)
        to = "metric" if e.downstream is None else e.downstream.label()
        tip = f"{e.upstream.label()} → {to}\nweight {e.weight:+.6g}"
        svg.append(f'<line class="edge" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                   f'stroke="{colour}" stroke-width="{w:.2f}" data-from="{_esc(e.upstream.label())}" '
                   f'data-to="{_esc(to)}"><title>{_esc(tip)}</title></line>')
    svg.append(f'<g class="node sink" data-id="metric"><rect x="{sink[0]:.1f}" y="{sink[1]:.1f}" width="{2 * BOX_W}" '
               f'height="{BOX_H}" rx="6"/><text x="{sink[0] + BOX_W:.1f}" y="{sink[1] + BOX_H / 2 + 5:.1f}">metric</text>'
               f'<title>{_esc(_metric_tip(meta))}</title></g>')
    for c in circuit.nodes:
        bx, by = xy[c.node]
        strength = abs(c.effect) / max_effect
        fill = _colour(c.effect >= 0, strength)
        ink = "#fff" if strength > 0.55 else "#111"
        token = ""
        if c.node.position is not None and token_labels is not None and 0 <= c.node.position < len(token_labels):
            token = token_labels[c.node.position]
        tip = (f"{c.id}\n{'error term (x − x̂)' if c.node.feature is None else f'feature {c.node.feature}'} at "
               f"{c.node.point}" + ("" if c.node.position is None else f", position {c.node.position}")
               + (f" {token!r}" if token else "") + f"\neffect {c.effect:+.6g}")
        link = None
        if c.node.feature is not None:
            for board in boards:
                if board.hook in (c.node.point, reads.get(c.node.point)):
                    link = board.link(c.node.feature)
                    if link:
                        break
        sub = "Σ pos" if c.node.position is None else (f"{token!r}" if token else f"@{c.node.position}")
        body = (f'<rect x="{bx:.1f}" y="{by:.1f}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="{fill}"/>'
                f'<text x="{bx + BOX_W / 2:.1f}" y="{by + 14:.1f}" fill="{ink}">{_esc(_node_text(c.node))}</text>'
                f'<text class="sub" x="{bx + BOX_W / 2:.1f}" y="{by + 27:.1f}" fill="{ink}">{_esc(_short(sub))}</text>'
                f'<title>{_esc(tip)}</title>')
        kind = "error" if c.node.feature is None else "feature"
        attrs = f'class="node {kind}" data-id="{_esc(c.id)}" data-effect="{c.effect!r}"'
        if link:
            svg.append(f'<a href="{_esc(link)}" target="_blank"><g {attrs}>{body}</g></a>')
        else:
            svg.append(f'<g {attrs}>{body}</g>')

    summary = _summary(circuit)
    nodes_json = json.dumps([c.id for c in circuit.nodes]).replace("</", "<\\/")
    return _TEMPLATE.format(
        title=_esc(f"circuit: {meta.get('data_file', '')}"), summary=summary, width=f"{width:.0f}",
        height=f"{height:.0f}", svg="\n".join(svg), nodes_json=nodes_json,
    )


def _short(text: str, limit: int = 10) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _metric_tip(meta: Mapping[str, Any]) -> str:
    parts = [str(meta.get("metric", "the metric"))]
    for key in ("metric_clean", "metric_patch"):
        if isinstance(meta.get(key), (int, float)):
            parts.append(f"{key.replace('metric_', '')}: {meta[key]:+.6g}")
    return "\n".join(parts)


def _summary(circuit: Circuit) -> str:
    meta = circuit.metadata
    facts = [("nodes", len(circuit.nodes)), ("edges", len(circuit.edges))]
    for key in ("model", "method", "metric", "node_threshold", "edge_threshold", "n_examples", "data_file"):
        if meta.get(key) is not None:
            facts.append((key.replace("_", " "), meta[key]))
    for key in ("metric_clean", "metric_patch"):
        if isinstance(meta.get(key), (int, float)):
            facts.append((key.replace("_", " "), f"{meta[key]:+.4g}"))
    items = "".join(f"<span><b>{_esc(k)}</b> {_esc(v)}</span>" for k, v in facts)
    return (f'<div class="facts">{items}</div><p class="legend">Rows: hook points, downstream at the top, the metric '
            'above them. Boxes: a feature (its index) or ε, a hook point\'s error term; blue raises the metric, red '
            'lowers it, darker is a larger |effect|. Lines: edges, wider for a larger |weight|, coloured by sign. '
            'Hover for exact values; click a feature to open its dashboard page when there is one.</p>')


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 16px; color: #111; background: #fff; }}
.facts {{ display: flex; flex-wrap: wrap; gap: 4px 14px; }}
.facts span {{ white-space: nowrap; }}
.legend {{ color: #555; max-width: 900px; }}
svg text {{ font: 12px system-ui, sans-serif; text-anchor: middle; pointer-events: none; }}
svg text.row, svg text.reads, svg text.pos {{ text-anchor: start; fill: #333; }}
svg text.row {{ font-weight: 600; }}
svg text.reads, svg text.pos {{ font-size: 11px; fill: #666; }}
svg text.sub {{ font-size: 10px; }}
.node rect {{ stroke: #333; stroke-width: 1; cursor: default; }}
.node.error rect {{ stroke-dasharray: 3 2; }}
a .node rect {{ cursor: pointer; stroke-width: 1.5; }}
.sink rect {{ fill: #f4f4f5; stroke: #111; stroke-width: 2; }}
.edge {{ stroke-linecap: round; opacity: 0.75; }}
.dim {{ opacity: 0.12; }}
#info {{ height: 4.5em; overflow: hidden; font-family: ui-monospace, monospace; white-space: pre; }}  /* a fixed height: text that pushed the graph down moved the node from under the pointer, and the hover flickered */
</style></head>
<body>
<h1>Feature circuit</h1>
{summary}
<div id="info"></div>
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">
{svg}
</svg>
<script>
// Hovering a node shows its values and dims the edges it is not on.
const circuitNodes = {nodes_json};
const info = document.getElementById("info");
for (const g of document.querySelectorAll("g.node")) {{
  const id = g.dataset.id;
  g.addEventListener("mouseenter", () => {{
    info.textContent = g.querySelector("title").textContent;
    for (const e of document.querySelectorAll("line.edge")) {{
      if (e.dataset.from !== id && e.dataset.to !== id) e.classList.add("dim");
    }}
  }});
  g.addEventListener("mouseleave", () => {{
    info.textContent = "";
    for (const e of document.querySelectorAll("line.edge")) e.classList.remove("dim");
  }});
}}
</script>
</body></html>
"""
