"""The plots: each panel draws on one matplotlib ``Axes``, and ``image`` lays panels side
by side into an ``<img>`` with an embedded PNG; ``write_png`` and the plots of other verbs
(steering sweeps, ``saekit ito``) write PNG files.

matplotlib is imported inside the functions that use it, so ``import saekit`` stays fast,
and only through ``matplotlib.figure.Figure``, never pyplot: the library leaves the user's
backend and pyplot's open figures alone.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
import warnings
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..evaluation import DENSE_THRESHOLD
from .figures import REGIMES, l0_distribution, num
from .inputs import Evaluated

if TYPE_CHECKING:
    from matplotlib.axes import Axes

REGIME_COLOURS = {"fixed": "C0", "documents": "C1"}
# Fixed is drawn first as filled bars, documents on top as a dashed outline, so two
# identical histograms (TopK's exactly-k L0) both stay visible.
REGIME_HIST_STYLES: dict[str, dict[str, Any]] = {
    "fixed": {"fill": True, "alpha": 0.35},
    "documents": {"fill": False, "linestyle": "--", "linewidth": 2.0},
}
REGIME_MEAN_STYLES = {"fixed": ":", "documents": "--"}
TOTAL_COLOUR = "C0"
TERM_COLOURS = ("C1", "C2", "C3", "C4", "C5", "C6")
TERM_STYLES = ("-", "--", "-.", ":")
SOURCE_STYLES = ("-", "--", ":", "-.")
MARKERS = "os^vDPX*<>"

Draw = Callable[["Axes"], None]


def image(panels: Sequence[Draw], alt: str, panel_size: tuple[float, float] = (4.2, 3.1)) -> str:
    """Draw panels side by side and return them as an ``<img>`` holding an embedded PNG
    (the pages' one way to a figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * len(panels), panel_size[1]), layout="constrained")
    for ax, draw in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        with warnings.catch_warnings():
            # All-NaN stretches of a series are expected (values not yet known); notes say so.
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


def _positive_only(ys: Sequence[float]) -> list[float]:
    """Values a log axis can show; 0 and below become gaps (notes name them) instead of
    being clipped to a made-up tiny value."""
    return [y if y > 0 else math.nan for y in ys]


def _say_empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)


def line_panel(
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
    empty: str = "no values recorded",
) -> None:
    """Several labelled y-against-x series on one axes (position buckets, training curves)."""
    values = [y for _, ys in series.values() for y in ys if y == y]
    log_axis = ylog and any(y > 0 for y in values)
    for label, (xs, ys) in series.items():
        ax.plot(xs, _positive_only(ys) if log_axis else ys, marker=marker, label=label, color=(colours or {}).get(label))
    for x in vlines:
        ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
    if log_axis:
        _log_scale_if_positive(ax, "y", values)
    if not values:
        _say_empty(ax, empty)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)


def objective_panel(
    ax: Axes, tokens: Sequence[float], objective: Mapping[str, Sequence[float]], *, title: str, vlines: Sequence[float]
) -> None:
    """The training objective and its terms, so that none hides another.

    The total is a wide pale band under thin term lines of their own colour and dash
    pattern: where a term equals the total (the other terms being 0) the band still
    shows around it. Values of 0 cannot sit on the log axis; the notes name them.
    """
    values = [y for ys in objective.values() for y in ys if y == y]
    log_axis = any(y > 0 for y in values)
    styles = zip(itertools.cycle(TERM_COLOURS), itertools.cycle(TERM_STYLES))
    for name, ys in objective.items():
        shown = _positive_only(ys) if log_axis else list(ys)
        if not any(y == y for y in shown):
            continue  # a term that is 0 throughout: named in a note, not drawn
        if name == "loss":
            ax.plot(tokens, shown, color=TOTAL_COLOUR, linewidth=6, alpha=0.3, solid_capstyle="butt", label="loss (total)", zorder=1)
        else:
            colour, style = next(styles)
            ax.plot(tokens, shown, color=colour, linestyle=style, linewidth=1.3, label=name, zorder=2)
    for x in vlines:
        ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
    if log_axis:
        _log_scale_if_positive(ax, "y", values)
    if not values:
        _say_empty(ax, "no loss recorded")
    ax.set(title=title, xlabel="training tokens", ylabel="loss (scaled units)")
    if ax.get_lines():
        ax.legend(fontsize=8)


def dead_panel(ax: Axes, tokens: Sequence[float], dead: Sequence[float], vlines: Sequence[float]) -> None:
    """The dead fraction on an axis from 0, the only bottom a fraction has.

    matplotlib centres a constant series on itself (−0.04 to 0.04 for all zeros); a line
    at 0 is drawn over the bottom spine so it is not hidden by it.
    """
    known = [v for v in dead if v == v]
    ax.plot(tokens, dead, color="C3", clip_on=False, zorder=3)
    if tokens:
        # The whole run, like the other panels, also when the first records are not yet known.
        ax.set_xlim(min(tokens), max(tokens))
    for x in vlines:
        ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
    top = max(known, default=0.0)
    ax.set_ylim(0.0, 1.0 if top <= 0 or top * 1.15 > 1 else top * 1.15)
    if not known:
        _say_empty(ax, "not yet known at any record")
    elif top <= 0:
        where = "throughout" if len(known) == len(dead) else "wherever known"
        ax.text(0.5, 0.08, f"0 {where}: no feature was dead", ha="center", transform=ax.transAxes, fontsize=8)
    ax.set(title="dead fraction", xlabel="training tokens", ylabel="fraction of features")


def density_hist(ax: Axes, density: list[float], title: str) -> None:
    alive = [math.log10(d) for d in density if d > 0]
    if alive:
        ax.hist(alive, bins=40, color="C2")
    else:
        _say_empty(ax, "no alive features")
    ax.axvline(math.log10(DENSE_THRESHOLD), color="red", linestyle="--", linewidth=0.8)
    ax.set(title=title, xlabel="log10(feature density)", ylabel="features")


def l0_hist(ax: Axes, regimes: Mapping[str, Mapping[str, Any]]) -> None:
    """L0 distributions as fractions of tokens, so regimes with different token counts overlay.

    Fixed is filled, documents a dashed outline on top, and the means get different dash
    patterns: TopK gives both regimes the very same histogram (exactly k per token), and
    two plain outlines would then show one regime only.
    """
    for name, regime in regimes.items():
        dist = l0_distribution(regime)
        if dist is None:
            continue
        edges, fractions = dist
        colour = REGIME_COLOURS.get(name)
        style = REGIME_HIST_STYLES.get(name, {})
        drawn = "filled" if style.get("fill") else "dashed outline"
        ax.stairs(fractions, edges, color=colour, label=f"{name} ({drawn})", **style)
        if style.get("fill"):
            ax.stairs(fractions, edges, color=colour, linewidth=1.0)
        ax.axvline(num(regime.get("l0")), color=colour, linestyle=REGIME_MEAN_STYLES.get(name, "--"), linewidth=1.2)
    ax.set(title="L0 per token (vertical lines: means)", xlabel="active features per token", ylabel="fraction of tokens")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)


def _measured_on(e: Evaluated) -> str:
    """The text and BOS policy an evaluation counted (which figures can be compared)."""
    dataset = Path(str(e.evaluation.get("dataset") or "embedded")).name
    return f"{dataset}{', BOS kept' if e.evaluation.get('keep_bos') else ''}"


def frontier_series(entries: Sequence[Evaluated], metric: str) -> dict[tuple[str, str, str, str], list[tuple[float, float, str]]]:
    """Points that may be joined: one series per regime, model, hook point and architecture,
    among evaluations on the same text with the same BOS policy.

    Figures of different models or hook points measure different activations, and
    figures on other text or with BOS counted measure other tokens, so a line between
    them would draw a trade-off that does not exist. Evaluations that differ only in
    text or BOS policy get their own series (the key's architecture part names them).
    """
    series: dict[tuple[str, str, str, str], list[tuple[float, float, str]]] = defaultdict(list)
    for regime in REGIMES:
        for e in entries:
            x, y = num(e.regime(regime).get("l0")), num(e.regime(regime).get(metric))
            if x == x and y == y:
                arch = str(e.dictionary.get("arch"))
                if len({_measured_on(o) for o in entries}) > 1:
                    arch = f"{arch}, {_measured_on(e)}"
                series[(regime, e.model, e.hook, arch)].append((x, y, e.name))
    for points in series.values():
        points.sort()
    return series


def frontier(ax: Axes, entries: Sequence[Evaluated], metric: str, ylabel: str) -> None:
    """Sparsity against fidelity: one marker per architecture, one colour per regime, one
    dash pattern per model and hook point.

    Points of one architecture, regime, model and hook point are joined in order of L0,
    which traces that architecture's frontier the way papers draw it.
    """
    from matplotlib.lines import Line2D

    archs = sorted({str(e.dictionary.get("arch")) for e in entries})
    markers = dict(zip(archs, itertools.cycle(MARKERS)))
    sources = sorted({(e.model, e.hook) for e in entries})
    dashes = dict(zip(sources, itertools.cycle(SOURCE_STYLES)))
    xs_all: list[float] = []
    series = frontier_series(entries, metric)
    for (regime, model, hook, arch), points in series.items():
        xs, ys, _ = zip(*points)
        xs_all.extend(xs)
        ax.plot(xs, ys, marker=markers[arch], color=REGIME_COLOURS[regime], linestyle=dashes[(model, hook)], linewidth=0.8)
        for x, y, name in points:
            ax.annotate(name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    _log_scale_if_positive(ax, "x", xs_all)
    if not series:
        _say_empty(ax, f"no dictionary has both l0 and {metric}")
    handles = [Line2D([], [], marker=markers[a], color="black", linestyle="none", label=a) for a in archs]
    handles += [Line2D([], [], color=REGIME_COLOURS[r], label=r) for r in REGIMES]
    if len(sources) > 1:
        handles += [Line2D([], [], color="black", linestyle=dashes[s], label=f"{s[1]} of {s[0]}") for s in sources]
    # Outside the axes: inside, it would cover points and their names.
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set(title=f"L0 against {ylabel}", xlabel="L0 (active features per token)", ylabel=ylabel)




def write_png(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write a matplotlib ``Figure`` to ``path`` as a PNG, atomically. Built on
    ``matplotlib.figure.Figure``, never pyplot: the library leaves the user's backend and
    pyplot's open figures alone."""
    from ..io.files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_sweep_plot(path: Path, sweep: Any) -> Path:
    """A PNG of a steering sweep (``interpret.ScaleSweep``): each watched token's
    next-token log-probability against the steering scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    for j, token in enumerate(sweep.tokens):
        ax.plot(sweep.scales, [row[j] for row in sweep.logprobs], marker="o", label=repr(token))
    ax.set_xlabel(f"scale α (α · W_dec[{sweep.feature}] added at every position)")
    ax.set_ylabel("log-probability of the next token")
    ax.set_title(f"after {sweep.prompt[-60:]!r}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return write_png(fig, path)


def write_thresholding_plot(path: Path, comparison: Any) -> Path:
    """A PNG of ``saekit ito`` (``interpret.ito_comparison.CodeComparison``): FVU against the
    threshold T for the encoder's codes and the best optimised ones, and every method's
    FVU against its L0, with the thresholded codes as curves in the same plane."""
    from matplotlib.figure import Figure

    t = comparison.thresholding
    fig = Figure(figsize=(10.0 if t is not None else 5.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 2 if t is not None else 1, squeeze=False)[0]
    if t is not None:
        best = next(m.name for m in comparison.methods if m.method == t.best)
        ax = axes[0]
        multiples = [r.multiple for r in t.rows]
        ax.plot(multiples, [r.encoder_fvu for r in t.rows], marker="o", label="encoder")
        ax.plot(multiples, [r.best_fvu for r in t.rows], marker="s", label=best)
        ax.set_xlabel(f"T, in multiples of the encoder's median activation ({t.median:.3g})")
        ax.set_ylabel("FVU with codes below T set to 0")
        ax.set_title("thresholding test", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    for m in comparison.methods:
        ax.scatter([m.l0], [m.fvu], label=m.name, zorder=3)
    if t is not None:
        ax.plot([r.encoder_l0 for r in t.rows], [r.encoder_fvu for r in t.rows], color="grey", alpha=0.6, lw=1,
                label="encoder, thresholded")
        ax.plot([r.best_l0 for r in t.rows], [r.best_fvu for r in t.rows], color="grey", alpha=0.6, lw=1, ls="--",
                label=f"{best}, thresholded")
    ax.set_xlabel("L0 (active features per token)")
    ax.set_ylabel("FVU")
    ax.set_title(f"at matched L0 {comparison.l0}, {comparison.n_tokens:,} held-out tokens", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return write_png(fig, path)
