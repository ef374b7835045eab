"""The figures a page shows: their names in eval.json, the order docs/metrics.md gives
them, a one-line meaning each, and how a stored value reads as text or plots as a number."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from ..evaluation import DENSE_THRESHOLD

# Where every figure is defined; named by its path in the repository, since a page is a
# standalone file that no relative link would lead back from.
METRICS_DOC = "docs/metrics.md"
REGIMES = ("fixed", "documents")

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


def num(value: Any) -> float:
    """A figure as a float for plotting; non-finite and missing become NaN (matplotlib skips NaN)."""
    if isinstance(value, bool):
        return math.nan
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def fmt(value: Any, missing: str = "—") -> str:
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


def feature_density(regime: Mapping[str, Any]) -> list[float] | None:
    values = regime.get("feature_density")
    return [num(v) for v in values] if isinstance(values, list) else None


def dead_dense(regime: Mapping[str, Any]) -> tuple[Any, Any]:
    """Dead (density 0) and dense (> 10%) counts; from the densities when present, else as stored."""
    density = feature_density(regime)
    if density is None:
        return regime.get("n_dead"), regime.get("n_dense")
    return sum(d == 0 for d in density), sum(d > DENSE_THRESHOLD for d in density)


def l0_distribution(regime: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """Bin edges and fractions of tokens of a regime's L0 histogram; None when it has none."""
    hist = regime.get("l0_histogram")
    if not isinstance(hist, dict):
        return None
    edges, counts = [num(e) for e in hist.get("edges", [])], [num(c) for c in hist.get("counts", [])]
    total = sum(c for c in counts if c == c)
    if not counts or not total or len(edges) not in (len(counts), len(counts) + 1):
        return None
    if len(edges) == len(counts):  # bin starts only: close the last bin
        edges.append(edges[-1] + (edges[-1] - edges[-2] if len(edges) > 1 else 1.0))
    return edges, [c / total for c in counts]


def tokens_text(regime: Mapping[str, Any]) -> str:
    n = regime.get("n_tokens")
    return f"{fmt(n)} tokens" if n is not None else "an unrecorded number of tokens"
