"""The report's training section: the run's log.jsonl as curves over training tokens
(the objective and its terms, raw MSE, FVU, L0, the dead fraction), with notes for what
a plot cannot show (terms that are 0 on a log axis, a term equal to the total, a dead
fraction not yet known)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..checks import is_real
from ..io.saekit_format import LOG_FILE, training_setting
from .figures import fmt, num
from .inputs import read_log
from .markup import html_section, note_paragraphs, paragraph
from .plots import Draw, dead_panel, image, line_panel, objective_panel

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


@dataclass
class Curves:
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


def read_curves(records: Sequence[Mapping[str, Any]]) -> Curves:
    keys = list(dict.fromkeys(k for r in records for k, v in r.items() if is_real(v) or v is None))
    tokens = [num(r.get("tokens")) for r in records]

    def curve(key: str) -> list[float] | None:
        return [num(r.get(key)) for r in records] if key in keys else None

    named_terms = any(k.startswith(TERM_PREFIX) for k in keys)
    if named_terms:
        terms = [k for k in keys if k.startswith(TERM_PREFIX)]
    else:
        terms = [k for k in keys if k not in OLD_LOG_FIELDS]
    objective = {k: curve(k) for k in (["loss"] if "loss" in keys else []) + terms}
    return Curves(
        tokens=tokens,
        objective={k: v for k, v in objective.items() if v is not None},
        raw_mse=curve("mse") if named_terms else None,
        fvu=curve("fvu"),
        l0=curve("l0"),
        dead_frac=curve("dead_frac"),
        resampled=[t for t, r in zip(tokens, records) if r.get("resampled")],
        named_terms=named_terms,
    )


def objective_notes(objective: Mapping[str, Sequence[float]]) -> list[str]:
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
    value = training_setting(folder, "dead_after_tokens")
    return int(value) if is_real(value) else None


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


def training_section(folder: Path) -> str:
    title = "Training curves"
    path = folder / LOG_FILE
    if not path.is_file():
        return html_section(title, paragraph(f"No {LOG_FILE} in {folder}: no training curves (not a training run folder?).", "note"))
    records, bad = read_log(path)
    if not records:
        return html_section(title, paragraph(f"{path} holds no readable records.", "note"))
    c = read_curves(records)
    vlines = c.resampled
    unit = "terms named loss_<term>" if c.named_terms else "terms as this older log names them"
    top: list[Draw] = [partial(objective_panel, tokens=c.tokens, objective=c.objective, vlines=vlines,
                               title=f"objective and its {unit}")]  # fmt: skip
    if c.raw_mse is not None:
        top.append(partial(line_panel, series={"mse": (c.tokens, c.raw_mse)}, title="reconstruction error (raw units)",
                           xlabel="training tokens", ylabel="mse: Σ over dims, mean over tokens", ylog=True, vlines=vlines))  # fmt: skip
    bottom: list[Draw] = []
    if c.fvu is not None:
        bottom.append(partial(line_panel, series={"fvu": (c.tokens, c.fvu)}, title="FVU (training tokens)", xlabel="training tokens",
                              ylabel="FVU", ylog=True, vlines=vlines, empty="null at every record (too few tokens)"))  # fmt: skip
    if c.l0 is not None:
        bottom.append(partial(line_panel, series={"l0": (c.tokens, c.l0)}, title="L0", xlabel="training tokens",
                              ylabel="active features per token", ylog=True, vlines=vlines))  # fmt: skip
    if c.dead_frac is not None:
        bottom.append(partial(dead_panel, tokens=c.tokens, dead=c.dead_frac, vlines=vlines))
    images = [image(top, "training objective and reconstruction error", panel_size=(4.6, 3.1))]
    if bottom:
        images.append(image(bottom, "FVU, L0 and dead fraction during training", panel_size=(3.9, 2.9)))
    last = records[-1]
    notes = [f"{len(records):,} records; last at step {fmt(last.get('step'), 'unrecorded')}, {fmt(last.get('tokens'))} tokens."]
    if c.named_terms:
        notes.append("The objective and its terms are in scaled units (activations divided by the activation scale, "
                     "so that E‖x‖² = d); mse is in raw activation units, as in eval.json.")  # fmt: skip
    notes += objective_notes(c.objective)
    if c.dead_frac is not None:
        notes += _dead_notes(c.tokens, c.dead_frac, _dead_window(folder))
    missing = [k for k, v in (("fvu", c.fvu), ("l0", c.l0), ("dead_frac", c.dead_frac)) if v is None]
    if missing:
        notes.append(f"This log records no {', '.join(missing)}.")
    if c.resampled:
        notes.append(f"Dotted lines: the {len(c.resampled)} step(s) where dead features were resampled.")
    if bad:
        notes.append(f"{bad} unreadable line(s) skipped (a run cut short can leave a partial last line).")
    return html_section(title, *images, *note_paragraphs(notes))
