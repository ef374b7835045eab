"""HTML pages that show a dictionary's evaluation: ``saekit report`` and ``saekit compare``.

Numbers in a table are easy to misread without their context, so every page states
the hook point, the model, the context regime and the number of tokens behind each
figure, and puts the two regimes (``fixed``, ``documents``) side by side so drift on long
inputs cannot hide. Every figure is defined in docs/metrics.md in the saekit
repository; a page is read far from the repository, so it carries a one-line meaning
beside each figure as well.

Each page is one self-contained HTML file: the plots are PNGs embedded as ``data:``
URIs, the styling is inline, and nothing is fetched, so a page can be mailed or
archived and still opens offline years later.

What an evaluation lacks is said in words, never drawn as an empty plot or a "—": a
run trained from ``saekit cache`` activations has the fixed regime's reconstruction
figures only, and its report says so and how to measure the rest. Lines that would
coincide (the loss and its only non-zero term, two regimes' L0 histograms for TopK)
get styles that stay visible on top of each other, and a term that is 0, which a log
axis cannot show, is named in a note.

Figures that do not belong to the weights beside them are refused: eval.json carries
the fingerprint of the dictionary it measured, checked against the folder's weights.

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

from .checks import is_real
from .dictionaries import Dictionary, same_weights
from .errors import FormatError, OutputError, SaekitError
from .evaluation import BOS_OVERRIDDEN, DENSE_THRESHOLD
from .io.saekit_format import CONFIG_FILE, EVAL_FILE, LOG_FILE, REPORT_FILE, TRAINING_FILE, read_json
from .hub import default_output, parse_hub_spec, resolve
from .io.checkpoint import CHECKPOINT_FILE
from .io.files import atomic_write_text, check_writable_file
from .io.formats import detect_format, load_any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["write_report", "compare", "load_evaluated", "Evaluated", "REPORT_FILE", "COMPARE_FILE", "METRICS_DOC"]

log = logging.getLogger(__name__)

# Where every figure is defined; named by its path in the repository, since a page is a
# standalone file that no relative link would lead back from.
METRICS_DOC = "docs/metrics.md"
# The config files of SAELens / sparsify (cfg.json) and dictionary_learning (config.json).
PEER_CONFIG_FILES = ("cfg.json", "config.json")
COMPARE_FILE = "compare.html"
PAGE_SUFFIXES = (".html", ".htm")
REGIMES = ("fixed", "documents")
REGIME_COLOURS = {"fixed": "C0", "documents": "C1"}
# Fixed is drawn first as filled bars, documents on top as a dashed outline, so two
# identical histograms (TopK's exactly-k L0) both stay visible.
REGIME_HIST_STYLES: dict[str, dict[str, Any]] = {
    "fixed": {"fill": True, "alpha": 0.35},
    "documents": {"fill": False, "linestyle": "--", "linewidth": 2.0},
}
REGIME_MEAN_STYLES = {"fixed": ":", "documents": "--"}
# Figures measured on the activations (n_tokens) and on next-token predictions
# (n_ce_tokens: one fewer per sequence), in the order docs/metrics.md lists them.
RECONSTRUCTION = (
    "mse", "fvu", "variance_explained", "cosine", "l0", "l1", "l1_weighted",
    "frac_alive", "n_dead", "n_dense", "relative_reconstruction_bias",
)  # fmt: skip
DOWNSTREAM = ("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_diff", "loss_recovered", "kl")
# One line per figure for the page; docs/metrics.md has the full definitions.
MEANINGS = {
    "mse": "‖x − x̂‖² summed over dimensions, mean over tokens (raw activation units)",
    "fvu": "Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the mean over the same tokens",
    "variance_explained": "1 − fvu",
    "cosine": "mean over tokens of cos(x, x̂)",
    "l0": "active features per token, mean over tokens",
    "l1": "Σ|f| per token, mean over tokens (raw units)",
    "l1_weighted": "Σ|f_i|·‖W_dec[i]‖ per token, mean over tokens",
    "frac_alive": "fraction of features active on at least one of the N tokens",
    "n_dead": "features active on none of the N tokens",
    "n_dense": f"features active on more than {DENSE_THRESHOLD:.0%} of the N tokens",
    "relative_reconstruction_bias": "γ = Σ‖x̂‖² / Σ⟨x̂, x⟩; below 1 means shrinkage",
    "ce_clean": "next-token cross-entropy of the untouched model, nats",
    "ce_spliced": "the same with x̂ in place of x at the hook point",
    "ce_zero": "the same with 0 in place of x",
    "ce_mean": "the same with the regime's mean activation in place of x",
    "ce_diff": "ce_spliced − ce_clean",
    "loss_recovered": "(ce_zero − ce_spliced) / (ce_zero − ce_clean)",
    "kl": "KL(p_clean ‖ p_spliced), mean over predicted positions, nats",
}
# Keys of a regime that describe the measurement rather than being figures (an evaluation
# of stored activations also repeats the hook point inside its regime).
REGIME_META = ("context_length", "n_sequences", "n_tokens", "n_ce_tokens", "requested_tokens", "hook")
# A log record's fields besides the objective's terms, which are named loss_<term>. Older
# logs named the terms without the prefix, "mse" among them (the scaled reconstruction
# term then), so there every other numeric field is a term.
TERM_PREFIX = "loss_"
LOG_FIELDS = ("step", "tokens", "loss", "mse", "l0", "fvu", "dead_frac", "lr", "tokens_per_s", "resampled",
              "data_wait_frac", "read_gb_per_s")
OLD_LOG_FIELDS = tuple(k for k in LOG_FIELDS if k != "mse")
# Why a term can be 0 at every record, keyed by the term's name without the prefix.
ZERO_TERM_REASONS = {
    "auxk": "no feature was counted dead (none was, or the run was shorter than its dead window), "
            "so the auxiliary-k term had nothing to revive",
    "aux": "the gate's own reconstruction was perfect",
    "l1": "no feature was active",
    "l0": "no feature was active",
    "l0_penalty": "no feature was active",
}
TOTAL_COLOUR = "C0"
TERM_COLOURS = ("C1", "C2", "C3", "C4", "C5", "C6")
TERM_STYLES = ("-", "--", "-.", ":")
SOURCE_STYLES = ("-", "--", ":", "-.")
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
    spec: str = ""  # how the user named it (a path or a Hub name), for the fixes pages suggest

    def regime(self, name: str) -> dict[str, Any]:
        section = self.evaluation.get(name)
        return section if isinstance(section, dict) else {}

    def regimes(self) -> dict[str, dict[str, Any]]:
        """The regimes eval.json holds, in REGIMES order."""
        return {name: self.regime(name) for name in REGIMES if self.regime(name)}

    @property
    def has_downstream(self) -> bool:
        """Whether any regime holds cross-entropy figures (an evaluation that ran the model)."""
        return any(f in r for r in self.regimes().values() for f in DOWNSTREAM)

    @property
    def hook(self) -> str:
        """The hook point read, and for a transcoder the one reconstructed (``mlp_in.6 → mlp_out.6``)."""
        read = str(self.dictionary.get("hook") or self.evaluation.get("hook") or "not recorded")
        return f"{read} → {self.dictionary.get('target')}" if self.dictionary.get("transcoder") else read

    @property
    def model(self) -> str:
        return str(self.dictionary.get("model") or self.evaluation.get("model") or "not recorded")


def _require_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FormatError(f"{folder} is not a folder; pass the folder `saekit train --out` wrote")


def load_evaluated(folder: str | os.PathLike[str], eval_path: str | os.PathLike[str] | None = None) -> Evaluated:
    """Read a dictionary folder's evaluation (eval.json, or ``eval_path``) and its description.

    ``folder`` is a local folder in any format saekit reads, or a Hub name (fetched
    with the eval.json beside it). The description comes from saekit's config.json, or
    else from the copy inside eval.json, which `saekit eval` writes for every format.
    When the folder holds a dictionary, the evaluation must be of its weights (see
    ``_check_same_dictionary``): a FormatError otherwise.
    """
    spec, location = os.fspath(folder), parse_hub_spec(folder)
    folder = resolve(folder)
    _require_folder(folder)
    epath = Path(eval_path) if eval_path is not None else folder / EVAL_FILE
    if eval_path is None and not epath.is_file() and location is not None:
        # `saekit eval HUB-NAME` writes its figures here, not into the Hub cache.
        epath = default_output(spec, EVAL_FILE)
    if not epath.is_file():
        members = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / TRAINING_FILE).is_file())
        if members and eval_path is None:
            raise FormatError(
                f"{folder} holds the folders of {len(members)} dictionaries ({', '.join(members[:3])}"
                f"{', ...' if len(members) > 3 else ''}), not one: pass those, e.g. `saekit compare {spec}/*`"
            )
        if (folder / CHECKPOINT_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
            raise FormatError(
                f"{folder} holds an unfinished training run (a checkpoint, no dictionary yet): finish it with the "
                "same `saekit train` command and --resume"
            )
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
    weights = _dictionary_in(folder)
    if weights is not None:
        _check_same_dictionary(evaluation, weights, epath, folder, spec)
    cpath = folder / CONFIG_FILE
    header = read_json(cpath) if cpath.is_file() else {}
    # A dictionary_learning folder has a config.json too: only saekit's holds a "dictionary" section.
    dictionary = header.get("dictionary")
    if not isinstance(dictionary, dict):
        dictionary = evaluation.get("dictionary")
    if not isinstance(dictionary, dict):
        if weights is None:
            raise FormatError(f"{cpath} is missing and {epath} has no 'dictionary' section: which dictionary is this?")
        dictionary = weights.cfg.to_dict()
    name = str(location).rsplit("/", 1)[-1] if location is not None else folder.resolve().name
    return Evaluated(folder, name, dictionary, evaluation, spec)


def _dictionary_in(folder: Path) -> Dictionary | None:
    """The dictionary the folder holds, in any format; None when it holds only figures."""
    try:
        detect_format(folder)
    except FormatError:
        return None
    return load_any(folder)


# Fields of the dictionary's config compared when eval.json predates fingerprints.
IDENTITY_FIELDS = ("arch", "d_in", "d_sae", "k", "hook")


def _check_same_dictionary(evaluation: Mapping[str, Any], weights: Dictionary, epath: Path, folder: Path, spec: str) -> None:
    """Refuse figures measured on other weights than the folder's (a copied or stale eval.json).

    eval.json's fingerprint (``Dictionary.fingerprint``) is compared when it has one;
    an older file only by the config's identity fields, each where both sides record it
    (a Gemma Scope file, for one, records no hook point of its own).
    """
    fix = f"run `saekit eval {spec}` to write a fresh one"
    what = (f"{epath} describes another dictionary than the weights in {folder} "
            "(e.g. an eval.json copied or kept beside other weights)")
    recorded = evaluation.get("fingerprint")
    if recorded not in (None, []):  # [] or absent: written without one (older saekit, or a hand-built file)
        if not isinstance(recorded, list) or not all(is_real(v) for v in recorded):
            raise FormatError(f"{epath}: 'fingerprint' must be a list of numbers; the file is damaged, {fix}")
        if not same_weights([float(v) for v in recorded], weights.fingerprint()):
            raise FormatError(f"{what}: their fingerprints differ; {fix}")
        return
    described = evaluation.get("dictionary")
    if not isinstance(described, dict):
        return
    actual = weights.cfg.to_dict()
    for field in IDENTITY_FIELDS:
        a, b = described.get(field), actual.get(field)
        if a not in (None, "") and b not in (None, "") and a != b:
            raise FormatError(f"{what}: {field} is {a!r} in {epath.name} but {b!r} in the weights; {fix}")


def _check_page_path(path: Path) -> Path:
    """Where a page may go: a file in a writable folder, never an input it would replace."""
    check_writable_file(path, "--out")
    if path.exists() and path.suffix.lower() not in PAGE_SUFFIXES:
        raise OutputError(
            f"--out {path} exists and is not an HTML page; the page would replace it. Choose a .html path"
        )
    return path


def _read_log(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of log.jsonl, and how many lines were unreadable (a crash can cut the last one)."""
    records, bad = [], 0
    # errors="replace": a damaged line (binary garbage from a crash) is one bad record, not a traceback.
    for line in path.read_text(errors="replace").splitlines():
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
    if isinstance(value, bool):
        return math.nan
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _fmt(value: Any, missing: str = "—") -> str:
    """A figure as people read it: 4 significant digits, counts with separators, non-finite as is."""
    if value is None:
        return missing
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


def _l0_distribution(regime: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """Bin edges and fractions of tokens of a regime's L0 histogram; None when it has none."""
    hist = regime.get("l0_histogram")
    if not isinstance(hist, dict):
        return None
    edges, counts = [_num(e) for e in hist.get("edges", [])], [_num(c) for c in hist.get("counts", [])]
    total = sum(c for c in counts if c == c)
    if not counts or not total or len(edges) not in (len(counts), len(counts) + 1):
        return None
    if len(edges) == len(counts):  # bin starts only: close the last bin
        edges.append(edges[-1] + (edges[-1] - edges[-2] if len(edges) > 1 else 1.0))
    return edges, [c / total for c in counts]


def _tokens_text(regime: Mapping[str, Any]) -> str:
    n = regime.get("n_tokens")
    return f"{_fmt(n)} tokens" if n is not None else "an unrecorded number of tokens"


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


def _objective_panel(
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


def _dead_panel(ax: Axes, tokens: Sequence[float], dead: Sequence[float], vlines: Sequence[float]) -> None:
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


def _density_hist(ax: Axes, density: list[float], title: str) -> None:
    alive = [math.log10(d) for d in density if d > 0]
    if alive:
        ax.hist(alive, bins=40, color="C2")
    else:
        _say_empty(ax, "no alive features")
    ax.axvline(math.log10(DENSE_THRESHOLD), color="red", linestyle="--", linewidth=0.8)
    ax.set(title=title, xlabel="log10(feature density)", ylabel="features")


def _l0_hist(ax: Axes, regimes: Mapping[str, Mapping[str, Any]]) -> None:
    """L0 distributions as fractions of tokens, so regimes with different token counts overlay.

    Fixed is filled, documents a dashed outline on top, and the means get different dash
    patterns: TopK gives both regimes the very same histogram (exactly k per token), and
    two plain outlines would then show one regime only.
    """
    for name, regime in regimes.items():
        dist = _l0_distribution(regime)
        if dist is None:
            continue
        edges, fractions = dist
        colour = REGIME_COLOURS.get(name)
        style = REGIME_HIST_STYLES.get(name, {})
        drawn = "filled" if style.get("fill") else "dashed outline"
        ax.stairs(fractions, edges, color=colour, label=f"{name} ({drawn})", **style)
        if style.get("fill"):
            ax.stairs(fractions, edges, color=colour, linewidth=1.0)
        ax.axvline(_num(regime.get("l0")), color=colour, linestyle=REGIME_MEAN_STYLES.get(name, "--"), linewidth=1.2)
    ax.set(title="L0 per token (vertical lines: means)", xlabel="active features per token", ylabel="fraction of tokens")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)


def _measured_on(e: Evaluated) -> str:
    """The text and BOS policy an evaluation counted (which figures can be compared)."""
    dataset = Path(str(e.evaluation.get("dataset") or "embedded")).name
    return f"{dataset}{', BOS kept' if e.evaluation.get('keep_bos') else ''}"


def _frontier_series(entries: Sequence[Evaluated], metric: str) -> dict[tuple[str, str, str, str], list[tuple[float, float, str]]]:
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
            x, y = _num(e.regime(regime).get("l0")), _num(e.regime(regime).get(metric))
            if x == x and y == y:
                arch = str(e.dictionary.get("arch"))
                if len({_measured_on(o) for o in entries}) > 1:
                    arch = f"{arch}, {_measured_on(e)}"
                series[(regime, e.model, e.hook, arch)].append((x, y, e.name))
    for points in series.values():
        points.sort()
    return series


def _frontier(ax: Axes, entries: Sequence[Evaluated], metric: str, ylabel: str) -> None:
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
    series = _frontier_series(entries, metric)
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


# --------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.meaning { text-align: left; color: #555; font-size: 0.9em; }
th { background: #f3f3f3; }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll table { font-size: 0.8em; white-space: nowrap; }
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


def _notes(texts: Sequence[str]) -> list[str]:
    return [_p(t, "note") for t in texts]


def _html_table(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]], meaning_column: bool = False) -> str:
    """Cells are plain strings (escaped here); non-finite ones are highlighted; with
    ``meaning_column`` the last column is prose, left-aligned."""

    def cell(tag: str, text: str, last: bool) -> str:
        cls = ' class="nonfinite"' if text in ("nan", "inf", "-inf") else ""
        if last and meaning_column and tag == "td":
            cls = ' class="meaning"'
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    def tr(tag: str, row: Sequence[str]) -> str:
        return "<tr>" + "".join(cell(tag, c, i == len(row) - 1) for i, c in enumerate(row)) + "</tr>"

    head = "".join(tr("th", row) for row in header)
    body = "".join(tr("td", row) for row in rows)
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


def _absences(run: Evaluated) -> list[str]:
    """What this evaluation does not hold, and how to measure it."""
    notes = []
    if not run.has_downstream:
        notes.append(
            "eval.json holds reconstruction figures only: no cross-entropy figures (ce_*, loss_recovered, kl) "
            "and no figures by position, because they were measured on stored activations without running "
            "the model (as after `saekit train --activation-cache`)."
        )
    missing = [name for name in REGIMES if not run.regime(name)]
    for name in missing:
        notes.append(f"The {name} regime was not evaluated: eval.json has no '{name}' section.")
    if notes:
        notes.append(f"`saekit eval {run.spec or run.folder}` runs the model and measures every figure in both regimes.")
    return notes


def _regime_summary(regime: Mapping[str, Any]) -> str:
    parts = []
    if regime.get("context_length") is not None:
        parts.append(f"contexts of up to {_fmt(regime['context_length'])} tokens")
    if regime.get("n_sequences") is not None:
        parts.append(f"{_fmt(regime['n_sequences'])} sequences")
    parts.append(f"{_tokens_text(regime)} (reconstruction)")
    if regime.get("n_ce_tokens") is not None:
        parts.append(f"{_fmt(regime['n_ce_tokens'])} tokens (cross-entropy)")
    elif not any(f in regime for f in DOWNSTREAM):
        parts.append("no cross-entropy figures")
    return ", ".join(parts)


def _bos_policy(evaluation: Mapping[str, Any]) -> str:
    """Whether the evaluated tokens included the BOS position, as eval.json records it."""
    kept = evaluation.get("keep_bos")
    if not isinstance(kept, bool):
        return "not recorded in eval.json (saekit excludes it unless asked to keep it)"
    words = "kept (evaluated and spliced)" if kept else "excluded (neither evaluated nor spliced)"
    if evaluation.get("keep_bos_source") == BOS_OVERRIDDEN:
        return f"{words}; not as the dictionary was trained, so not comparable with its training figures"
    return f"{words}, as the dictionary was trained"


def _header_section(run: Evaluated) -> str:
    d = run.dictionary
    unknown = "not recorded"
    dataset = run.evaluation.get("dataset")
    if dataset is None:
        dataset = "the embedded Wikipedia summaries (default)" if run.has_downstream else "stored held-out activations"
    rows = [
        ["architecture", _fmt(d.get("arch"), unknown)],
        ["d_in × d_sae", f"{_fmt(d.get('d_in'), unknown)} × {_fmt(d.get('d_sae'), unknown)}"],
        ["hook point", run.hook],
        ["model", run.model],
        ["activation scale", _fmt(d.get("act_scale"), unknown)],
        ["training context length", _fmt(d.get("context_length"), unknown)],
        ["evaluation data", _fmt(dataset)],
        ["BOS position", _bos_policy(run.evaluation)],
    ]
    if d.get("k") is not None:
        rows.insert(2, ["k", _fmt(d.get("k"))])
    if d.get("transcoder"):
        # A transcoder: what it reconstructs, and the scale of that target.
        at = [r[0] for r in rows].index("hook point")
        rows[at] = ["input hook point", _fmt(d.get("hook"), unknown)]
        rows.insert(at + 1, ["target hook point (reconstructed)", _fmt(d.get("target"), unknown)])
        rows.insert(at + 2, ["skip path", "yes (learned, linear)" if d.get("skip") else "no"])
        rows[[r[0] for r in rows].index("activation scale")] = [
            "activation scale (input, target)", f"{_fmt(d.get('act_scale'), unknown)}, {_fmt(d.get('target_scale'), unknown)}"
        ]
    for name in REGIMES:
        r = run.regime(name)
        rows.append([f"{name} regime", _regime_summary(r) if r else "not evaluated"])
    return _section("Dictionary", _html_table([], rows), *_notes(_absences(run)))


def _figure_names(regimes: Sequence[Mapping[str, Any]]) -> list[str]:
    """The scalar figures any regime holds: the known ones in docs order, then any others."""
    held = {k for r in regimes for k, v in r.items() if not isinstance(v, (list, dict)) and k not in REGIME_META}
    extra = [k for r in regimes for k in r if k in held and k not in RECONSTRUCTION + DOWNSTREAM]
    return [n for n in dict.fromkeys([*RECONSTRUCTION, *DOWNSTREAM, *extra]) if n in held]


def _figures_section(run: Evaluated) -> str:
    """Every scalar figure of every evaluated regime, each with the tokens it was measured on."""
    regimes = run.regimes()
    rows = []
    for name in _figure_names(list(regimes.values())):
        count = "n_ce_tokens" if name in DOWNSTREAM else "n_tokens"
        row = [name]
        for r in regimes.values():
            if name in r:
                row += [_fmt(r[name]), _fmt(r.get(count, r.get("n_tokens")), "not recorded")]
            else:
                row += ["not measured", ""]
        rows.append([*row, MEANINGS.get(name, "")])
    header = [["figure", *(c for name in regimes for c in (name, "N tokens")), "meaning"]]
    notes = [f"Full definitions: {METRICS_DOC} in the saekit repository."]
    if len(regimes) < len(REGIMES) or not run.has_downstream:
        notes.append("Only what eval.json holds is listed; the Dictionary section says what is missing.")
    return _section("Figures", _html_table(header, rows, meaning_column=True), *_notes(notes))


def _density_section(run: Evaluated) -> str:
    notes, panels = [], []
    for name in REGIMES:
        r = run.regime(name)
        if not r:
            notes.append(f"{name}: not evaluated.")
            continue
        density = _density(r)
        dead, dense = _dead_dense(r)
        n = f"{len(density):,}" if density is not None else _fmt(run.dictionary.get("d_sae"), "the")
        counts = [f"{_fmt(dead)} dead (density 0)" if dead is not None else "",
                  f"{_fmt(dense)} dense (density > {DENSE_THRESHOLD:g})" if dense is not None else ""]
        counts = [c for c in counts if c]
        if counts:
            notes.append(f"{name}: {' and '.join(counts)} of {n} features, over {_tokens_text(r)}.")
        else:
            notes.append(f"{name}: eval.json holds no feature densities or dead/dense counts.")
        if density is not None:
            panels.append(partial(_density_hist, density=density, title=f"{name}: {_tokens_text(r)}"))
        elif counts:
            notes.append(f"{name}: eval.json holds the counts but not the per-feature densities, so no histogram.")
    parts = list(map(_p, notes))
    if panels:
        parts.append(_figure(panels, "histogram of log10 feature density per regime"))
        parts.append(_p("Alive features only; the red line marks the dense threshold.", "note"))
    return _section("Feature density", *parts)


def _l0_section(run: Evaluated) -> str:
    with_hist = {name: r for name, r in run.regimes().items() if _l0_distribution(r) is not None}
    notes = []
    for name in REGIMES:
        r = run.regime(name)
        if not r:
            notes.append(f"{name}: not evaluated.")
        elif name in with_hist:
            notes.append(f"{name}: mean L0 {_fmt(r.get('l0'))} over {_tokens_text(r)}.")
        else:
            notes.append(f"{name}: eval.json holds no L0 histogram (mean L0 {_fmt(r.get('l0'), 'not recorded')}).")
    parts = list(map(_p, notes))
    if with_hist:
        parts.append(_figure([partial(_l0_hist, regimes=with_hist)], "L0 distribution"))
        dists = [_l0_distribution(r) for r in with_hist.values()]
        if len(dists) > 1 and all(d == dists[0] for d in dists):
            same = "The regimes' histograms are identical: the filled bars (fixed) lie under the dashed outline (documents)."
            parts.append(_p(same, "note"))
    return _section("L0 distribution", *parts)


def _position_section(run: Evaluated) -> str:
    title = "Drift with position"
    buckets = {name: r.get("by_position") for name, r in run.regimes().items()}
    buckets = {name: [b for b in bs if isinstance(b, dict)] for name, bs in buckets.items() if isinstance(bs, list) and bs}
    notes = [f"{name}: not evaluated." if not run.regime(name) else f"{name}: eval.json holds no figures by position."
             for name in REGIMES if name not in buckets]  # fmt: skip
    if not buckets:
        return _section(title, *_notes(notes))

    def series(metric: str) -> dict[str, tuple[list[float], list[float]]]:
        return {
            name: ([(_num(b.get("start")) + _num(b.get("end"))) / 2 for b in bs], [_num(b.get(metric)) for b in bs])
            for name, bs in buckets.items()
        }

    common = dict(xlabel="token position (bucket centre)", marker="o", colours=REGIME_COLOURS)
    panels = [partial(_lines, series=series("fvu"), title="FVU by position", ylabel="FVU", **common)]
    has_ce = any("ce_diff" in b for bs in buckets.values() for b in bs)
    if has_ce:
        panels.append(partial(_lines, series=series("ce_diff"), title="CE diff by position", ylabel="CE diff (nats)", **common))
    else:
        notes.append("No CE diff by position: eval.json holds no cross-entropy figures.")
    rows = [
        [name, f"{_fmt(b.get('start'))}–{_fmt(b.get('end'))}", _fmt(b.get("n_tokens"), "not recorded"),
         _fmt(b.get("fvu"), "not measured"), *([_fmt(b.get("ce_diff"), "not measured")] if has_ce else [])]
        for name, bs in buckets.items()
        for b in bs
    ]  # fmt: skip
    header = [["regime", "positions", "N tokens", "fvu", *(["ce_diff"] if has_ce else [])]]
    img = _figure(panels, "FVU and CE diff against position" if has_ce else "FVU against position")
    return _section(title, img, _html_table(header, rows), *_notes(notes))


# ------------------------------------------------------------------ training curves


@dataclass
class _Curves:
    """What the training log holds, as series over training tokens.

    Logs since the terms were named ``loss_<term>`` give the objective in scaled units
    (activations divided by act_scale) and ``mse`` in raw units, a different quantity
    that is drawn apart. Older logs named the terms plainly (``mse`` was the scaled
    reconstruction term then); they are read as they were.
    """

    tokens: list[float]
    objective: dict[str, list[float]]  # "loss" first, then its terms; scaled units
    raw_mse: list[float] | None
    fvu: list[float] | None
    l0: list[float] | None
    dead_frac: list[float] | None
    resampled: list[float]
    named_terms: bool


def _curves(records: Sequence[Mapping[str, Any]]) -> _Curves:
    keys = list(dict.fromkeys(k for r in records for k, v in r.items() if is_real(v) or v is None))
    tokens = [_num(r.get("tokens")) for r in records]

    def curve(key: str) -> list[float] | None:
        return [_num(r.get(key)) for r in records] if key in keys else None

    named_terms = any(k.startswith(TERM_PREFIX) for k in keys)
    if named_terms:
        terms = [k for k in keys if k.startswith(TERM_PREFIX)]
    else:
        terms = [k for k in keys if k not in OLD_LOG_FIELDS]
    objective = {k: curve(k) for k in (["loss"] if "loss" in keys else []) + terms}
    return _Curves(
        tokens=tokens,
        objective={k: v for k, v in objective.items() if v is not None},
        raw_mse=curve("mse") if named_terms else None,
        fvu=curve("fvu"),
        l0=curve("l0"),
        dead_frac=curve("dead_frac"),
        resampled=[t for t, r in zip(tokens, records) if r.get("resampled")],
        named_terms=named_terms,
    )


def _objective_notes(objective: Mapping[str, Sequence[float]]) -> list[str]:
    """Terms a log axis cannot show (0) and terms that coincide with the total, in words."""
    notes = []
    total = objective.get("loss")
    for name, ys in objective.items():
        known = [y for y in ys if y == y]
        if not known:
            notes.append(f"{name} was not recorded as a finite number at any record.")
            continue
        zeros = sum(y == 0 for y in known)
        if zeros == len(known):
            reason = ZERO_TERM_REASONS.get(name.removeprefix(TERM_PREFIX))
            notes.append(f"{name} was 0 throughout{f': {reason}' if reason else ''} (not drawn: 0 has no place on a log axis).")
        elif zeros:
            notes.append(f"{name} was 0 at {zeros} of {len(known)} records (gaps in its line: 0 has no place on a log axis).")
        if name != "loss" and total is not None and zeros < len(known) and _same_series(ys, total):
            notes.append(f"loss equals {name} at every record (the other terms add nothing): "
                         f"the pale band is loss, the line inside it {name}.")
    return notes


def _same_series(a: Sequence[float], b: Sequence[float]) -> bool:
    pairs = [(x, y) for x, y in zip(a, b) if x == x or y == y]
    return bool(pairs) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=0.0) for x, y in pairs)


def _dead_window(folder: Path) -> int | None:
    """Tokens of silence after which a feature counts as dead, as training.json records it."""
    path = folder / TRAINING_FILE
    if not path.is_file():
        return None
    try:
        info = read_json(path)
    except FormatError:
        return None
    for section in ("resolved", "config"):
        value = (info.get(section) or {}).get("dead_after_tokens") if isinstance(info.get(section), dict) else None
        if is_real(value):
            return int(value)
    return None


def _dead_notes(tokens: Sequence[float], dead: Sequence[float], window: int | None) -> list[str]:
    known = [(t, v) for t, v in zip(tokens, dead) if v == v]
    rule = f" (a feature counts as dead after {window:,} silent tokens)" if window else ""
    if not known:
        return [f"The dead fraction is not yet known at any record: the run is shorter than the dead window{rule}."]
    notes = []
    if len(known) < len(dead) and dead[0] != dead[0]:
        notes.append(f"The dead fraction is not known before {known[0][0]:,.0f} tokens{rule}.")
    if all(v == 0 for _, v in known):
        notes.append("No feature was dead at any record where the dead fraction is known.")
    return notes


def _training_section(folder: Path) -> str:
    title = "Training curves"
    path = folder / LOG_FILE
    if not path.is_file():
        return _section(title, _p(f"No {LOG_FILE} in {folder}: no training curves (not a training run folder?).", "note"))
    records, bad = _read_log(path)
    if not records:
        return _section(title, _p(f"{path} holds no readable records.", "note"))
    c = _curves(records)
    vlines = c.resampled
    unit = "terms named loss_<term>" if c.named_terms else "terms as this older log names them"
    top: list[Draw] = [partial(_objective_panel, tokens=c.tokens, objective=c.objective, vlines=vlines,
                               title=f"objective and its {unit}")]  # fmt: skip
    if c.raw_mse is not None:
        top.append(partial(_lines, series={"mse": (c.tokens, c.raw_mse)}, title="reconstruction error (raw units)",
                           xlabel="training tokens", ylabel="mse: Σ over dims, mean over tokens", ylog=True, vlines=vlines))  # fmt: skip
    bottom: list[Draw] = []
    if c.fvu is not None:
        bottom.append(partial(_lines, series={"fvu": (c.tokens, c.fvu)}, title="FVU (training tokens)", xlabel="training tokens",
                              ylabel="FVU", ylog=True, vlines=vlines, empty="null at every record (too few tokens)"))  # fmt: skip
    if c.l0 is not None:
        bottom.append(partial(_lines, series={"l0": (c.tokens, c.l0)}, title="L0", xlabel="training tokens",
                              ylabel="active features per token", ylog=True, vlines=vlines))  # fmt: skip
    if c.dead_frac is not None:
        bottom.append(partial(_dead_panel, tokens=c.tokens, dead=c.dead_frac, vlines=vlines))
    images = [_figure(top, "training objective and reconstruction error", panel_size=(4.6, 3.1))]
    if bottom:
        images.append(_figure(bottom, "FVU, L0 and dead fraction during training", panel_size=(3.9, 2.9)))
    last = records[-1]
    notes = [f"{len(records):,} records; last at step {_fmt(last.get('step'), 'unrecorded')}, {_fmt(last.get('tokens'))} tokens."]
    if c.named_terms:
        notes.append("The objective and its terms are in scaled units (activations divided by the activation scale, "
                     "so that E‖x‖² = d); mse is in raw activation units, as in eval.json.")  # fmt: skip
    notes += _objective_notes(c.objective)
    if c.dead_frac is not None:
        notes += _dead_notes(c.tokens, c.dead_frac, _dead_window(folder))
    missing = [k for k, v in (("fvu", c.fvu), ("l0", c.l0), ("dead_frac", c.dead_frac)) if v is None]
    if missing:
        notes.append(f"This log records no {', '.join(missing)}.")
    if c.resampled:
        notes.append(f"Dotted lines: the {len(c.resampled)} step(s) where dead features were resampled.")
    if bad:
        notes.append(f"{bad} unreadable line(s) skipped (a run cut short can leave a partial last line).")
    return _section(title, *images, *_notes(notes))


# ------------------------------------------------------------------ configuration


def _flat(config: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in config.items():
        if isinstance(value, dict):
            rows += _flat(value, f"{prefix}{key}.")
        else:
            rows.append([f"{prefix}{key}", _fmt(value, "not set")])
    return rows


def _left_at_default(key: str, config: Mapping[str, Any], resolved: Mapping[str, Any] | None, run: Evaluated) -> str:
    """What an option left at its default None stood for in this run."""
    if resolved is not None and resolved.get(key) is not None:
        return f"{_fmt(resolved[key])} (default)"
    if resolved is None:
        # training.json from before values were resolved: the dictionary records some.
        if key in ("model", "hook") and run.dictionary.get(key):
            return f"{run.dictionary[key]} (default)"
        if key == "dataset":
            if config.get("activation_cache"):
                return "not used (activations read from the activation cache)"
            return "the embedded Wikipedia summaries (default)"
    return "not set (default)"


def _option_value(key: str, value: Any, config: Mapping[str, Any], resolved: Mapping[str, Any] | None, run: Evaluated) -> str:
    if value is None:
        return _left_at_default(key, config, resolved, run)
    used = (resolved or {}).get(key)
    if used is not None and used != value:
        # e.g. a relative path made absolute, or a budget rounded to whole batches
        return f"{_fmt(value)} (resolved: {_fmt(used)})"
    return _fmt(value)


def _config_section(run: Evaluated) -> str:
    title = "Training configuration"
    folder = run.folder
    path = folder / TRAINING_FILE
    if not path.is_file():
        # Another library's folder: its own config file is what is known of the training.
        for name in PEER_CONFIG_FILES:
            peer = folder / name
            try:
                info = read_json(peer) if peer.is_file() else None
            except FormatError as e:
                return _section(title, _p(f"{e}: the training configuration cannot be shown.", "note"))
            if info is not None and info.get("format") != "saekit":
                return _section(title, _p(f"From {peer.name}, written by the library that trained it.", "note"),
                                _html_table([["option", "value"]], _flat(info)))
        return _section(title, _p(f"No {TRAINING_FILE} in {folder}: the training configuration is unknown.", "note"))
    try:
        info = read_json(path)
    except FormatError as e:
        # The configuration is context for the figures, not needed to show them.
        return _section(title, _p(f"{e}: the training configuration cannot be shown.", "note"))
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    resolved = info.get("resolved") if isinstance(info.get("resolved"), dict) else None
    rows = [[k, _option_value(k, v, config, resolved, run)] for k, v in config.items()]
    rows += [[k, f"{_fmt(v, 'not recorded')} (resolved when training started)"] for k, v in (resolved or {}).items() if k not in config]
    rows += [[k, _fmt(v, "not recorded")] for k, v in info.items() if k not in ("config", "resolved")]
    notes = ["“(default)”: the option was left unset, and this is the value the run used."]
    if resolved is None:
        notes.append(f"This {TRAINING_FILE} predates recorded defaults: where the dictionary records a value it is shown.")
    return _section(title, _html_table([["option", "value"]], rows), *_notes(notes))


def write_report(
    folder: str | os.PathLike[str],
    eval_path: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the self-contained HTML report of one dictionary and return its path.

    ``folder`` is a run folder, a dictionary folder in any format, or a Hub name; the
    evaluation is read from ``eval_path`` or ``folder/eval.json``, and a missing one is a
    ``FormatError`` that says to run ``saekit eval`` first, as is one that describes other
    weights than the folder's. The training log and configuration are optional: their
    sections say when they are missing. Default output: ``folder/report.html`` (for a
    Hub name, ``report-NAME.html`` here); an output that cannot be written is an
    ``OutputError`` before anything is read.
    """
    if out is not None:
        target = _check_page_path(Path(out))
    else:
        if parse_hub_spec(folder) is None:
            _require_folder(resolve(folder))  # a missing folder is the problem, not its parent's permissions
        target = _check_page_path(default_output(folder, REPORT_FILE))
    run = load_evaluated(folder, eval_path)
    d = run.dictionary
    arch, d_sae = _fmt(d.get("arch"), "architecture not recorded"), _fmt(d.get("d_sae"), "not recorded")
    title = f"saekit report: {run.name} ({arch}, d_sae {d_sae}, {run.hook})"
    sections = [
        _header_section(run),
        _figures_section(run),
        _density_section(run),
        _l0_section(run),
        _position_section(run),
        _training_section(run.folder),
        _config_section(run),
    ]
    atomic_write_text(target, _page(title, sections))
    log.info("wrote %s", target)
    return target


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
    counts: dict[str, int] = defaultdict(int)
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
    activations and are not comparable, so the frontier never joins them. Default
    output: ``compare.html`` in the current directory; an output that cannot be written
    is an ``OutputError`` before anything is read.
    """
    if not folders:
        raise SaekitError("compare needs at least one evaluated dictionary folder")
    target = _check_page_path(Path(out) if out is not None else Path(COMPARE_FILE))
    entries = [load_evaluated(f) for f in folders]
    _unique_names(entries)
    header, rows = _compare_rows(entries)
    text = _text_table(header, rows)
    # Identity columns may hold "—" too (k of an architecture without one); only figures are "not measured".
    missing = any("—" in row[len(header[1]) - len(COMPARE_FIGURES) * len(REGIMES):] for row in rows)
    if missing:
        text += "\n— in a figure column: not measured (eval.json has no such figure for that regime)"
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
        _figure([partial(_frontier, entries=entries, metric=metric, ylabel=label)], f"L0 against {label}", panel_size=(8.0, 4.6))
        for metric, label in (("fvu", "FVU"), ("loss_recovered", "loss recovered"))
    ]
    tokens = "; ".join(
        f"{e.name}: " + ", ".join(f"{r} {_tokens_text(e.regime(r))}" for r in REGIMES if e.regime(r)) for e in entries
    )
    table_notes = [f"Tokens behind each row — {tokens}."]
    if missing:
        table_notes.append("— in a figure column: not measured (eval.json has no such figure for that regime; a run "
                           "evaluated from stored activations has reconstruction figures only).")  # fmt: skip
    table_notes.append(f"Definitions: {METRICS_DOC} in the saekit repository.")
    frontier_note = ("One marker per architecture, one colour per regime; lower FVU and higher loss recovered are better. "
                     "Lines join only dictionaries of one architecture that read the same hook point of the same model, "
                     "within one regime.")  # fmt: skip
    if len(sources) > 1:
        frontier_note += " Each model and hook point has its own dash pattern."
    sections = [
        _section("Dictionaries", f'<div class="scroll">{_html_table(header, rows)}</div>', *_notes(table_notes)),
        _section("Sparsity–fidelity frontier", *frontier, _p(frontier_note, "note")),
    ]
    atomic_write_text(target, _page(f"saekit compare: {len(entries)} dictionaries", sections, banner))
    log.info("wrote %s", target)
    return text, target


def write_png(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write a matplotlib ``Figure`` to ``path`` as a PNG, atomically. Built on
    ``matplotlib.figure.Figure``, never pyplot: the library leaves the user's backend and
    pyplot's open figures alone."""
    from .io.files import atomic_write_bytes

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
