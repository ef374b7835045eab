"""``saekit report``: the page of one dictionary, its figures in both regimes with the
tokens behind each, feature density, L0, drift with position, training curves and the
training configuration."""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import FormatError
from ..evaluation import BOS_OVERRIDDEN, DENSE_THRESHOLD
from ..hub import default_output, parse_hub_spec, resolve
from ..io.files import atomic_write_text
from ..io.saekit_format import REPORT_FILE, TRAINING_FILE, read_json, trained_text
from .figures import (
    DOWNSTREAM, MEANINGS, METRICS_DOC, RECONSTRUCTION, REGIME_META, REGIMES, dead_dense, feature_density, fmt,
    l0_distribution, num, tokens_text,
)
from .inputs import Evaluated, check_page_path, load_evaluated, require_folder
from .markup import html_section, html_table, note_paragraphs, page, paragraph
from .plots import REGIME_COLOURS, density_hist, image, l0_hist, line_panel
from .training_curves import training_section

log = logging.getLogger(__name__)

# The config files of SAELens / sparsify (cfg.json) and dictionary_learning (config.json).
PEER_CONFIG_FILES = ("cfg.json", "config.json")


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
        text = trained_text(run.folder)
        given = f" --dataset {text}" if text else ""
        on = " on the held-out split of the text it was trained on" if text else ""
        notes.append(f"`saekit eval {run.spec or run.folder}{given}` runs the model and measures every figure in both "
                     f"regimes{on}.")
    return notes


def _regime_summary(regime: Mapping[str, Any]) -> str:
    parts = []
    if regime.get("context_length") is not None:
        parts.append(f"contexts of up to {fmt(regime['context_length'])} tokens")
    if regime.get("n_sequences") is not None:
        parts.append(f"{fmt(regime['n_sequences'])} sequences")
    parts.append(f"{tokens_text(regime)} (reconstruction)")
    if regime.get("n_ce_tokens") is not None:
        parts.append(f"{fmt(regime['n_ce_tokens'])} tokens (cross-entropy)")
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
        ["architecture", fmt(d.get("arch"), unknown)],
        ["d_in × d_sae", f"{fmt(d.get('d_in'), unknown)} × {fmt(d.get('d_sae'), unknown)}"],
        ["hook point", run.hook],
        ["model", run.model],
        ["activation scale", fmt(d.get("act_scale"), unknown)],
        ["training context length", fmt(d.get("context_length"), unknown)],
        ["evaluation data", fmt(dataset)],
        ["BOS position", _bos_policy(run.evaluation)],
    ]
    if d.get("k") is not None:
        rows.insert(2, ["k", fmt(d.get("k"))])
    if d.get("transcoder"):
        # A transcoder: what it reconstructs, and the scale of that target.
        at = [r[0] for r in rows].index("hook point")
        rows[at] = ["input hook point", fmt(d.get("hook"), unknown)]
        rows.insert(at + 1, ["target hook point (reconstructed)", fmt(d.get("target"), unknown)])
        rows.insert(at + 2, ["skip path", "yes (learned, linear)" if d.get("skip") else "no"])
        rows[[r[0] for r in rows].index("activation scale")] = [
            "activation scale (input, target)", f"{fmt(d.get('act_scale'), unknown)}, {fmt(d.get('target_scale'), unknown)}"
        ]
    for name in REGIMES:
        r = run.regime(name)
        rows.append([f"{name} regime", _regime_summary(r) if r else "not evaluated"])
    return html_section("Dictionary", html_table([], rows), *note_paragraphs(_absences(run)))


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
                row += [fmt(r[name]), fmt(r.get(count, r.get("n_tokens")), "not recorded")]
            else:
                row += ["not measured", ""]
        rows.append([*row, MEANINGS.get(name, "")])
    header = [["figure", *(c for name in regimes for c in (name, "N tokens")), "meaning"]]
    notes = [f"Full definitions: {METRICS_DOC} in the saekit repository."]
    if len(regimes) < len(REGIMES) or not run.has_downstream:
        notes.append("Only what eval.json holds is listed; the Dictionary section says what is missing.")
    return html_section("Figures", html_table(header, rows, meaning_column=True), *note_paragraphs(notes))


def _density_section(run: Evaluated) -> str:
    notes, panels = [], []
    for name in REGIMES:
        r = run.regime(name)
        if not r:
            notes.append(f"{name}: not evaluated.")
            continue
        density = feature_density(r)
        dead, dense = dead_dense(r)
        n = f"{len(density):,}" if density is not None else fmt(run.dictionary.get("d_sae"), "the")
        counts = [f"{fmt(dead)} dead (density 0)" if dead is not None else "",
                  f"{fmt(dense)} dense (density > {DENSE_THRESHOLD:g})" if dense is not None else ""]
        counts = [c for c in counts if c]
        if counts:
            notes.append(f"{name}: {' and '.join(counts)} of {n} features, over {tokens_text(r)}.")
        else:
            notes.append(f"{name}: eval.json holds no feature densities or dead/dense counts.")
        if density is not None:
            panels.append(partial(density_hist, density=density, title=f"{name}: {tokens_text(r)}"))
        elif counts:
            notes.append(f"{name}: eval.json holds the counts but not the per-feature densities, so no histogram.")
    parts = list(map(paragraph, notes))
    if panels:
        parts.append(image(panels, "histogram of log10 feature density per regime"))
        parts.append(paragraph("Alive features only; the red line marks the dense threshold.", "note"))
    return html_section("Feature density", *parts)


def _l0_section(run: Evaluated) -> str:
    with_hist = {name: r for name, r in run.regimes().items() if l0_distribution(r) is not None}
    notes = []
    for name in REGIMES:
        r = run.regime(name)
        if not r:
            notes.append(f"{name}: not evaluated.")
        elif name in with_hist:
            notes.append(f"{name}: mean L0 {fmt(r.get('l0'))} over {tokens_text(r)}.")
        else:
            notes.append(f"{name}: eval.json holds no L0 histogram (mean L0 {fmt(r.get('l0'), 'not recorded')}).")
    parts = list(map(paragraph, notes))
    if with_hist:
        parts.append(image([partial(l0_hist, regimes=with_hist)], "L0 distribution"))
        dists = [l0_distribution(r) for r in with_hist.values()]
        if len(dists) > 1 and all(d == dists[0] for d in dists):
            same = "The regimes' histograms are identical: the filled bars (fixed) lie under the dashed outline (documents)."
            parts.append(paragraph(same, "note"))
    return html_section("L0 distribution", *parts)


def _position_section(run: Evaluated) -> str:
    title = "Drift with position"
    buckets = {name: r.get("by_position") for name, r in run.regimes().items()}
    buckets = {name: [b for b in bs if isinstance(b, dict)] for name, bs in buckets.items() if isinstance(bs, list) and bs}
    notes = [f"{name}: not evaluated." if not run.regime(name) else f"{name}: eval.json holds no figures by position."
             for name in REGIMES if name not in buckets]  # fmt: skip
    if not buckets:
        return html_section(title, *note_paragraphs(notes))

    def series(metric: str) -> dict[str, tuple[list[float], list[float]]]:
        return {
            name: ([(num(b.get("start")) + num(b.get("end"))) / 2 for b in bs], [num(b.get(metric)) for b in bs])
            for name, bs in buckets.items()
        }

    common = dict(xlabel="token position (bucket centre)", marker="o", colours=REGIME_COLOURS)
    panels = [partial(line_panel, series=series("fvu"), title="FVU by position", ylabel="FVU", **common)]
    has_ce = any("ce_diff" in b for bs in buckets.values() for b in bs)
    if has_ce:
        panels.append(partial(line_panel, series=series("ce_diff"), title="CE diff by position", ylabel="CE diff (nats)", **common))
    else:
        notes.append("No CE diff by position: eval.json holds no cross-entropy figures.")
    rows = [
        [name, f"{fmt(b.get('start'))}–{fmt(b.get('end'))}", fmt(b.get("n_tokens"), "not recorded"),
         fmt(b.get("fvu"), "not measured"), *([fmt(b.get("ce_diff"), "not measured")] if has_ce else [])]
        for name, bs in buckets.items()
        for b in bs
    ]  # fmt: skip
    header = [["regime", "positions", "N tokens", "fvu", *(["ce_diff"] if has_ce else [])]]
    img = image(panels, "FVU and CE diff against position" if has_ce else "FVU against position")
    return html_section(title, img, html_table(header, rows), *note_paragraphs(notes))



def _flat(config: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in config.items():
        if isinstance(value, dict):
            rows += _flat(value, f"{prefix}{key}.")
        else:
            rows.append([f"{prefix}{key}", fmt(value, "not set")])
    return rows


def _left_at_default(key: str, config: Mapping[str, Any], resolved: Mapping[str, Any] | None, run: Evaluated) -> str:
    """What an option left at its default None stood for in this run."""
    if resolved is not None and resolved.get(key) is not None:
        return f"{fmt(resolved[key])} (default)"
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
        return f"{fmt(value)} (resolved: {fmt(used)})"
    return fmt(value)


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
                return html_section(title, paragraph(f"{e}: the training configuration cannot be shown.", "note"))
            if info is not None and info.get("format") != "saekit":
                return html_section(title, paragraph(f"From {peer.name}, written by the library that trained it.", "note"),
                                html_table([["option", "value"]], _flat(info)))
        return html_section(title, paragraph(f"No {TRAINING_FILE} in {folder}: the training configuration is unknown.", "note"))
    try:
        info = read_json(path)
    except FormatError as e:
        # The configuration is context for the figures, not needed to show them.
        return html_section(title, paragraph(f"{e}: the training configuration cannot be shown.", "note"))
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    resolved = info.get("resolved") if isinstance(info.get("resolved"), dict) else None
    rows = [[k, _option_value(k, v, config, resolved, run)] for k, v in config.items()]
    rows += [[k, f"{fmt(v, 'not recorded')} (resolved when training started)"] for k, v in (resolved or {}).items() if k not in config]
    rows += [[k, fmt(v, "not recorded")] for k, v in info.items() if k not in ("config", "resolved")]
    notes = ["“(default)”: the option was left unset, and this is the value the run used."]
    if resolved is None:
        notes.append(f"This {TRAINING_FILE} predates recorded defaults: where the dictionary records a value it is shown.")
    return html_section(title, html_table([["option", "value"]], rows), *note_paragraphs(notes))


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
        target = check_page_path(Path(out))
    else:
        if parse_hub_spec(folder) is None:
            require_folder(resolve(folder))  # a missing folder is the problem, not its parent's permissions
        target = check_page_path(default_output(folder, REPORT_FILE))
    run = load_evaluated(folder, eval_path)
    d = run.dictionary
    arch, d_sae = fmt(d.get("arch"), "architecture not recorded"), fmt(d.get("d_sae"), "not recorded")
    title = f"saekit report: {run.name} ({arch}, d_sae {d_sae}, {run.hook})"
    sections = [
        _header_section(run),
        _figures_section(run),
        _density_section(run),
        _l0_section(run),
        _position_section(run),
        training_section(run.folder),
        _config_section(run),
    ]
    atomic_write_text(target, page(title, sections))
    log.info("wrote %s", target)
    return target
