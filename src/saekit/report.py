"""HTML pages that show a dictionary's evaluation: ``saekit report`` and ``saekit compare``.

Numbers in a table are easy to misread without their context, so every page states
the hook point, the model, the context regime and the number of tokens behind each
figure (shared/docs/METRICS.md, "Reporting"), and puts the two regimes (``fixed``,
``documents``) side by side so drift on long inputs cannot hide.

Each page is one self-contained HTML file: the plots are PNGs embedded as ``data:``
URIs, the styling is inline, and nothing is fetched, so a page can be mailed or
archived and still opens offline years later.

A figure stored as ``"nan"``/``"inf"``/``"-inf"`` (how eval.json keeps non-finite
values) is shown as such and left out of plots, never replaced by a number.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import logging
import math
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .errors import FormatError, SaekitError
from .evaluation import DENSE_THRESHOLD
from .formats import CONFIG_FILE, EVAL_FILE, LOG_FILE, REPORT_FILE, TRAINING_FILE, atomic_write_text, read_json
from .hub import default_output, parse_hub_spec, resolve

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["write_report", "compare", "load_evaluated", "Evaluated", "REPORT_FILE", "COMPARE_FILE"]

log = logging.getLogger(__name__)

# The config files of SAELens / sparsify (cfg.json) and dictionary_learning (config.json).
PEER_CONFIG_FILES = ("cfg.json", "config.json")
COMPARE_FILE = "compare.html"
REGIMES = ("fixed", "documents")
REGIME_COLOURS = {"fixed": "C0", "documents": "C1"}
# Figures measured on the activations (n_tokens) and on next-token predictions
# (n_ce_tokens: one fewer per sequence), in the order METRICS.md lists them.
RECONSTRUCTION = (
    "mse", "fvu", "variance_explained", "cosine", "l0", "l1", "l1_weighted",
    "frac_alive", "n_dead", "n_dense", "relative_reconstruction_bias",
)  # fmt: skip
DOWNSTREAM = ("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_diff", "loss_recovered", "kl")
# Keys of a regime that describe the measurement rather than being figures.
REGIME_META = ("context_length", "n_sequences", "n_tokens", "n_ce_tokens", "requested_tokens")
# Log keys that are not loss terms; every other numeric key is plotted with the loss.
LOG_NON_LOSS = ("step", "tokens", "l0", "fvu", "dead_frac", "lr", "tokens_per_s", "resampled")
MARKERS = "os^vDPX*<>"

Draw = Callable[["Axes"], None]


# --------------------------------------------------------------------------- inputs


@dataclass
class Evaluated:
    """One dictionary with its evaluation: what every page is drawn from."""

    folder: Path
    name: str
    dictionary: dict[str, Any]
    evaluation: dict[str, Any]

    def regime(self, name: str) -> dict[str, Any]:
        section = self.evaluation.get(name)
        return section if isinstance(section, dict) else {}

    @property
    def hook(self) -> str:
        return str(self.dictionary.get("hook") or self.evaluation.get("hook") or "?")

    @property
    def model(self) -> str:
        return str(self.dictionary.get("model") or self.evaluation.get("model") or "?")


def load_evaluated(folder: str | os.PathLike[str], eval_path: str | os.PathLike[str] | None = None) -> Evaluated:
    """Read a dictionary folder's evaluation (eval.json, or ``eval_path``) and its description.

    ``folder`` is a local folder in any format saekit reads, or a Hub name (fetched
    with the eval.json beside it). The description comes from saekit's config.json, or
    else from the copy inside eval.json, which `saekit eval` writes for every format.
    """
    spec, location = folder, parse_hub_spec(folder)
    folder = resolve(folder)
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder; pass the folder `saekit train --out` wrote")
    epath = Path(eval_path) if eval_path is not None else folder / EVAL_FILE
    if eval_path is None and not epath.is_file() and location is not None:
        # `saekit eval HUB-NAME` writes its figures here, not into the Hub cache.
        epath = default_output(spec, EVAL_FILE)
    if not epath.is_file():
        raise FormatError(
            f"{epath} not found: the report is drawn from the evaluation. "
            f"Run `saekit eval {spec}` first (or pass the eval JSON it wrote)."
        )
    evaluation = read_json(epath)
    if not any(isinstance(evaluation.get(r), dict) for r in REGIMES):
        raise FormatError(
            f"{epath} has neither a 'fixed' nor a 'documents' section; it was not written by "
            f"`saekit eval` (or by an older saekit). Run `saekit eval {spec}` again."
        )
    cpath = folder / CONFIG_FILE
    header = read_json(cpath) if cpath.is_file() else {}
    # A dictionary_learning folder has a config.json too: only saekit's holds a "dictionary" section.
    dictionary = header.get("dictionary")
    if not isinstance(dictionary, dict):
        dictionary = evaluation.get("dictionary")
    if not isinstance(dictionary, dict):
        raise FormatError(f"{cpath} is missing and {epath} has no 'dictionary' section: which dictionary is this?")
    name = str(location).rsplit("/", 1)[-1] if location is not None else folder.resolve().name
    return Evaluated(folder, name, dictionary, evaluation)


def _read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of log.jsonl, and how many lines were unreadable (a crash can cut the last one)."""
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and "tokens" in record:
            records.append(record)
        else:
            bad += 1
    return records, bad


# --------------------------------------------------------------------------- values


def _num(value: Any) -> float:
    """A figure as a float for plotting; non-finite and missing become NaN (matplotlib skips NaN)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _fmt(value: Any) -> str:
    """A figure as people read it: 4 significant digits, counts with separators, non-finite as is."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)  # "nan", "inf", "-inf": the spelling eval.json uses
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _density(regime: Mapping[str, Any]) -> list[float] | None:
    values = regime.get("feature_density")
    return [_num(v) for v in values] if isinstance(values, list) else None


def _dead_dense(regime: Mapping[str, Any]) -> tuple[Any, Any]:
    """Dead (density 0) and dense (> 10%) counts; from the densities when present, else as stored."""
    density = _density(regime)
    if density is None:
        return regime.get("n_dead"), regime.get("n_dense")
    return sum(d == 0 for d in density), sum(d > DENSE_THRESHOLD for d in density)


# --------------------------------------------------------------------------- plotting


def _figure(panels: Sequence[Draw], alt: str, panel_size: tuple[float, float] = (4.2, 3.1)) -> str:
    """Draw panels side by side and return them as an ``<img>`` holding an embedded PNG.

    This is the one place that touches matplotlib's figure machinery. ``Figure`` is used
    without pyplot: no global state, no GUI backend chosen behind the caller's back, and
    nothing left open. matplotlib is imported here so ``import saekit`` stays fast.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * len(panels), panel_size[1]), layout="constrained")
    for ax, draw in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        with warnings.catch_warnings():
            # Empty or all-NaN series are expected (a missing regime); the page says so in text.
            warnings.simplefilter("ignore", UserWarning)
            draw(ax)
        ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


@cache
def _plain_log_formatter() -> type:
    """matplotlib's choice of log ticks, labelled 40 and 0.2 rather than 4×10¹ and 2e-01.

    L0 and FVU rarely span more than two decades, so plain numbers read faster. Built
    on first use to keep matplotlib's import out of ``import saekit``.
    """
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter


def _log_scale_if_positive(ax: Axes, axis: str, values: Sequence[float]) -> None:
    """Log scale where it helps; a linear one when nothing is positive (log would be empty)."""
    if not any(v > 0 for v in values):
        return
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(_plain_log_formatter()())
    target.set_minor_formatter(_plain_log_formatter()())


def _lines(
    ax: Axes,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylog: bool = False,
    marker: str = "",
    colours: Mapping[str, str] | None = None,
    vlines: Sequence[float] = (),
) -> None:
    """Several labelled y-against-x series on one axes (position buckets, training curves)."""
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker=marker, label=label, color=(colours or {}).get(label))
    for x in vlines:
        ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
    if ylog:
        _log_scale_if_positive(ax, "y", [y for _, ys in series.values() for y in ys])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)


def _density_hist(ax: Axes, density: list[float] | None, title: str) -> None:
    alive = [math.log10(d) for d in density or [] if d > 0]
    if alive:
        ax.hist(alive, bins=40, color="C2")
    else:
        ax.text(0.5, 0.5, "no alive features" if density else "no densities", ha="center", transform=ax.transAxes)
    ax.axvline(math.log10(DENSE_THRESHOLD), color="red", linestyle="--", linewidth=0.8)
    ax.set(title=title, xlabel="log10(feature density)", ylabel="features")


def _l0_hist(ax: Axes, regimes: Mapping[str, Mapping[str, Any]]) -> None:
    """L0 distributions as fractions of tokens, so regimes with different token counts overlay."""
    for name, regime in regimes.items():
        hist = regime.get("l0_histogram") or {}
        edges, counts = [_num(e) for e in hist.get("edges", [])], [_num(c) for c in hist.get("counts", [])]
        total = sum(c for c in counts if c == c)
        if not counts or not total:
            continue
        if len(edges) == len(counts):  # bin starts only: close the last bin
            edges.append(edges[-1] + (edges[-1] - edges[-2] if len(edges) > 1 else 1.0))
        ax.stairs([c / total for c in counts], edges, label=name, color=REGIME_COLOURS.get(name))
        ax.axvline(_num(regime.get("l0")), color=REGIME_COLOURS.get(name), linestyle="--", linewidth=0.8)
    ax.set(title="L0 per token (dashed: mean)", xlabel="active features per token", ylabel="fraction of tokens")
    ax.legend(fontsize=8)


def _frontier(ax: Axes, entries: Sequence[Evaluated], metric: str, ylabel: str) -> None:
    """Sparsity against fidelity: one marker per architecture, one colour per regime.

    Points of one architecture in one regime are joined in order of L0, which traces
    that architecture's frontier the way papers draw it.
    """
    from matplotlib.lines import Line2D

    archs = sorted({str(e.dictionary.get("arch")) for e in entries})
    markers = dict(zip(archs, itertools.cycle(MARKERS)))
    xs_all: list[float] = []
    for regime in REGIMES:
        by_arch: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        for e in entries:
            x, y = _num(e.regime(regime).get("l0")), _num(e.regime(regime).get(metric))
            if x == x and y == y:
                by_arch[str(e.dictionary.get("arch"))].append((x, y, e.name))
        for arch, points in by_arch.items():
            points.sort()
            xs, ys, _ = zip(*points)
            xs_all.extend(xs)
            ax.plot(xs, ys, marker=markers[arch], color=REGIME_COLOURS[regime], linestyle="-", linewidth=0.8)
            for x, y, name in points:
                ax.annotate(name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    _log_scale_if_positive(ax, "x", xs_all)
    handles = [Line2D([], [], marker=markers[a], color="black", linestyle="none", label=a) for a in archs]
    handles += [Line2D([], [], color=REGIME_COLOURS[r], label=r) for r in REGIMES]
    ax.legend(handles=handles, fontsize=8)
    ax.set(title=f"L0 against {ylabel}", xlabel="L0 (active features per token)", ylabel=ylabel)


# --------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
.nonfinite { color: #b00; font-weight: bold; }
.note { color: #666; font-style: italic; }
.banner { background: #fff3cd; border: 1px solid #e0b000; padding: 0.6em 1em; margin: 1em 0; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
"""


def _page(title: str, sections: Sequence[str], banner: str | None = None) -> str:
    banner_html = f'<div class="banner">⚠ {html.escape(banner)}</div>' if banner else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{banner_html}\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def _html_table(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]]) -> str:
    """Cells are plain strings (escaped here); non-finite ones are highlighted."""

    def cell(tag: str, text: str) -> str:
        cls = ' class="nonfinite"' if text in ("nan", "inf", "-inf") else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join("<tr>" + "".join(cell("th", c) for c in row) + "</tr>" for row in header)
    body = "".join("<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<thead>{head}</thead>' if head else ''}<tbody>{body}</tbody></table>"


def _text_table(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns: the first (names) left, the rest right; header rows above the last
    one are group labels (the regimes), left-aligned so each starts over its first column."""
    lines = [*header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]

    def render(line: Sequence[str], group: bool) -> str:
        cells = (c.ljust(w) if i == 0 or group else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        return "  ".join(cells).rstrip()

    out = [render(line, n < len(header) - 1) for n, line in enumerate(lines)]
    out.insert(len(header), "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return "\n".join(out)


# --------------------------------------------------------------------------- report


def _tokens_text(regime: Mapping[str, Any]) -> str:
    return f"{_fmt(regime.get('n_tokens'))} tokens"


def _header_section(run: Evaluated) -> str:
    d = run.dictionary
    rows = [
        ["architecture", _fmt(d.get("arch"))],
        ["d_in × d_sae", f"{_fmt(d.get('d_in'))} × {_fmt(d.get('d_sae'))}"],
        ["k", _fmt(d.get("k"))],
        ["hook point", run.hook],
        ["model", run.model],
        ["activation scale", _fmt(d.get("act_scale"))],
        ["training context length", _fmt(d.get("context_length"))],
        ["evaluation dataset", _fmt(run.evaluation.get("dataset") or "embedded default")],
    ]
    for name in REGIMES:
        r = run.regime(name)
        rows.append([
            f"{name} regime",
            f"contexts of up to {_fmt(r.get('context_length'))} tokens, {_fmt(r.get('n_sequences'))} sequences, "
            f"{_fmt(r.get('n_tokens'))} tokens (reconstruction), {_fmt(r.get('n_ce_tokens'))} tokens (CE)"
            if r else "not evaluated",
        ])
    return _section("Dictionary", _html_table([], rows))


def _figures_section(run: Evaluated) -> str:
    """Every scalar figure, both regimes, each with the tokens it was measured on."""
    fixed, documents = run.regime("fixed"), run.regime("documents")
    extra = [k for r in (fixed, documents) for k, v in r.items() if not isinstance(v, (list, dict))]
    names = list(dict.fromkeys([*RECONSTRUCTION, *DOWNSTREAM, *extra]))
    rows = []
    for name in names:
        if name in REGIME_META:
            continue
        count = "n_ce_tokens" if name in DOWNSTREAM else "n_tokens"
        row = [name]
        for r in (fixed, documents):
            row += [_fmt(r.get(name)), _fmt(r.get(count, r.get("n_tokens"))) if name in r else "—"]
        rows.append(row)
    header = [["figure", "fixed", "N tokens", "documents", "N tokens"]]
    return _section("Figures", _html_table(header, rows), _p("Definitions: shared/docs/METRICS.md.", "note"))


def _density_section(run: Evaluated) -> str:
    notes, panels = [], []
    for name in REGIMES:
        r = run.regime(name)
        density = _density(r)
        dead, dense = _dead_dense(r)
        n = f"{len(density):,}" if density is not None else _fmt(run.dictionary.get("d_sae"))
        notes.append(
            f"{name}: {_fmt(dead)} dead (density 0) and {_fmt(dense)} dense (density > {DENSE_THRESHOLD:g}) "
            f"of {n} features, over {_tokens_text(r)}."
        )
        panels.append(partial(_density_hist, density=density, title=f"{name}: {_tokens_text(r)}"))
    img = _figure(panels, "histogram of log10 feature density per regime")
    caption = _p("Alive features only; the red line marks the dense threshold.", "note")
    return _section("Feature density", *map(_p, notes), img, caption)


def _l0_section(run: Evaluated) -> str:
    regimes = {name: run.regime(name) for name in REGIMES}
    if not any(r.get("l0_histogram") for r in regimes.values()):
        return _section("L0 distribution", _p("eval.json holds no L0 histogram.", "note"))
    notes = [f"{name}: mean L0 {_fmt(r.get('l0'))} over {_tokens_text(r)}." for name, r in regimes.items()]
    return _section("L0 distribution", *map(_p, notes), _figure([partial(_l0_hist, regimes=regimes)], "L0 distribution"))


def _position_section(run: Evaluated) -> str:
    buckets = {name: run.regime(name).get("by_position") or [] for name in REGIMES}
    if not any(buckets.values()):
        return _section("Drift with position", _p("eval.json holds no figures by position.", "note"))

    def series(metric: str) -> dict[str, tuple[list[float], list[float]]]:
        return {
            name: ([(_num(b.get("start")) + _num(b.get("end"))) / 2 for b in bs], [_num(b.get(metric)) for b in bs])
            for name, bs in buckets.items()
            if bs
        }

    common = dict(xlabel="token position (bucket centre)", marker="o", colours=REGIME_COLOURS)
    img = _figure(
        [
            partial(_lines, series=series("fvu"), title="FVU by position", ylabel="FVU", **common),
            partial(_lines, series=series("ce_diff"), title="CE diff by position", ylabel="CE diff (nats)", **common),
        ],
        "FVU and CE diff against position",
    )
    rows = [
        [name, f"{_fmt(b.get('start'))}–{_fmt(b.get('end'))}", _fmt(b.get("n_tokens")), _fmt(b.get("fvu")), _fmt(b.get("ce_diff"))]
        for name, bs in buckets.items()
        for b in bs
    ]
    table = _html_table([["regime", "positions", "N tokens", "fvu", "ce_diff"]], rows)
    return _section("Drift with position", img, table)


def _training_section(folder: Path) -> str:
    title = "Training curves"
    path = folder / LOG_FILE
    if not path.is_file():
        return _section(title, _p(f"No {LOG_FILE} in {folder}: no training curves (not a training run folder?).", "note"))
    records, bad = _read_log(path)
    if not records:
        return _section(title, _p(f"{path} holds no readable records.", "note"))
    tokens = [_num(r.get("tokens")) for r in records]

    def curve(key: str) -> tuple[list[float], list[float]]:
        return tokens, [_num(r.get(key)) for r in records]

    loss_keys = [k for k in records[-1] if k not in LOG_NON_LOSS and isinstance(records[-1][k], (int, float))]
    resampled = [t for t, r in zip(tokens, records) if r.get("resampled")]
    common = dict(xlabel="training tokens", vlines=resampled)
    img = _figure(
        [
            partial(_lines, series={k: curve(k) for k in loss_keys}, title="loss terms", ylabel="loss", ylog=True, **common),
            partial(_lines, series={"fvu": curve("fvu")}, title="FVU (training batch)", ylabel="FVU", ylog=True, **common),
            partial(_lines, series={"l0": curve("l0")}, title="L0", ylabel="L0", ylog=True, **common),
            partial(_lines, series={"dead_frac": curve("dead_frac")}, title="dead fraction", ylabel="fraction", **common),
        ],
        "training curves",
        panel_size=(3.6, 2.9),
    )
    last = records[-1]
    notes = [f"{len(records):,} records; last at step {_fmt(last.get('step'))}, {_fmt(last.get('tokens'))} tokens."]
    if resampled:
        notes.append(f"Dotted lines: the {len(resampled)} step(s) where dead features were resampled.")
    if bad:
        notes.append(f"{bad} unreadable line(s) skipped (a run cut short can leave a partial last line).")
    return _section(title, img, *(_p(n, "note") for n in notes))


def _flat(config: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in config.items():
        if isinstance(value, dict):
            rows += _flat(value, f"{prefix}{key}.")
        else:
            rows.append([f"{prefix}{key}", _fmt(value)])
    return rows


def _config_section(folder: Path) -> str:
    title = "Training configuration"
    path = folder / TRAINING_FILE
    if not path.is_file():
        # Another library's folder: its own config file is what is known of the training.
        for name in PEER_CONFIG_FILES:
            peer = folder / name
            info = read_json(peer) if peer.is_file() else None
            if info is not None and info.get("format") != "saekit":
                return _section(title, _p(f"From {peer.name}, written by the library that trained it.", "note"),
                                _html_table([["option", "value"]], _flat(info)))
        return _section(title, _p(f"No {TRAINING_FILE} in {folder}: the training configuration is unknown.", "note"))
    info = read_json(path)
    rows = [[k, _fmt(v)] for k, v in info.get("config", {}).items()]
    rows += [[k, _fmt(v)] for k, v in info.items() if k != "config"]
    return _section(title, _html_table([["option", "value"]], rows))


def write_report(
    folder: str | os.PathLike[str],
    eval_path: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the self-contained HTML report of one dictionary and return its path.

    ``folder`` is a run folder, a dictionary folder in any format, or a Hub name; the
    evaluation is read from ``eval_path`` or ``folder/eval.json``, and a missing one is a
    ``FormatError`` that says to run ``saekit eval`` first. The training log and
    configuration are optional: their sections say when they are missing. Default
    output: ``folder/report.html`` (for a Hub name, ``report-NAME.html`` here).
    """
    run = load_evaluated(folder, eval_path)
    out = Path(out) if out is not None else default_output(folder, REPORT_FILE)
    d = run.dictionary
    title = f"saekit report: {run.name} ({d.get('arch')}, d_sae {_fmt(d.get('d_sae'))}, {run.hook})"
    sections = [
        _header_section(run),
        _figures_section(run),
        _density_section(run),
        _l0_section(run),
        _position_section(run),
        _training_section(run.folder),
        _config_section(run.folder),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, _page(title, sections))
    log.info("wrote %s", out)
    return out


# --------------------------------------------------------------------------- compare

COMPARE_FIGURES = ("l0", "fvu", "loss_recovered", "ce_diff", "kl", "dead")


def _compare_rows(entries: Sequence[Evaluated]) -> tuple[list[list[str]], list[list[str]]]:
    """The comparison table (two header rows: regime, then figure) shared by the text and the page."""
    ident = ["name", "arch", "d_sae", "k", "hook"]
    regime_row = [""] * len(ident)
    for name in REGIMES:
        regime_row += [name] + [""] * (len(COMPARE_FIGURES) - 1)
    header = [regime_row, ident + list(COMPARE_FIGURES) * len(REGIMES)]
    rows = []
    for e in entries:
        row = [e.name, _fmt(e.dictionary.get("arch")), _fmt(e.dictionary.get("d_sae")), _fmt(e.dictionary.get("k")), e.hook]
        for name in REGIMES:
            r = e.regime(name)
            row += [_fmt(_dead_dense(r)[0] if f == "dead" else r.get(f)) for f in COMPARE_FIGURES]
        rows.append(row)
    return header, rows


def _unique_names(entries: Sequence[Evaluated]) -> None:
    """Folder names label rows and points; two runs named alike get their full paths instead."""
    counts = defaultdict(int)
    for e in entries:
        counts[e.name] += 1
    for e in entries:
        if counts[e.name] > 1:
            e.name = str(e.folder)


def compare(folders: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None) -> tuple[str, Path]:
    """Put several evaluated dictionaries side by side.

    Returns a plain-text table (one row per dictionary, both regimes) for the CLI to
    print, and writes an HTML page with the same table and the sparsity–fidelity
    frontiers (L0 against FVU, L0 against loss recovered). Dictionaries from different
    hook points or models are allowed but flagged: their figures measure different
    activations and are not comparable. Default output: ``compare.html`` in the
    current directory.
    """
    if not folders:
        raise SaekitError("compare needs at least one evaluated dictionary folder")
    entries = [load_evaluated(f) for f in folders]
    _unique_names(entries)
    header, rows = _compare_rows(entries)
    text = _text_table(header, rows)
    sources = sorted({(e.hook, e.model) for e in entries})
    banner = None
    if len(sources) > 1:
        listed = "; ".join(f"{hook} of {model}" for hook, model in sources)
        banner = (
            f"These dictionaries read different hook points or models ({listed}): their figures "
            "measure different activations and are not comparable."
        )
        text += f"\nwarning: {banner}"
    frontier = [
        _figure([partial(_frontier, entries=entries, metric="fvu", ylabel="FVU")], "L0 against FVU"),
        _figure([partial(_frontier, entries=entries, metric="loss_recovered", ylabel="loss recovered")], "L0 against loss recovered"),
    ]
    tokens = "; ".join(
        f"{e.name}: " + ", ".join(f"{r} {_tokens_text(e.regime(r))}" for r in REGIMES if e.regime(r)) for e in entries
    )
    sections = [
        _section("Dictionaries", _html_table(header, rows), _p(f"Tokens behind each row — {tokens}.", "note")),
        _section(
            "Sparsity–fidelity frontier",
            *frontier,
            _p("One marker per architecture, one colour per regime; lower FVU and higher loss recovered are better.", "note"),
        ),
    ]
    out = Path(out) if out is not None else Path(COMPARE_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, _page(f"saekit compare: {len(entries)} dictionaries", sections, banner))
    log.info("wrote %s", out)
    return text, out
