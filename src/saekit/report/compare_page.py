"""``saekit compare``: several evaluated dictionaries side by side, as a text table for
the terminal and a page with the same table and the sparsity-fidelity frontiers."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Sequence

from ..errors import SaekitError
from ..io.files import atomic_write_text
from .figures import METRICS_DOC, REGIMES, dead_dense, fmt, tokens_text
from .inputs import Evaluated, check_page_path, load_evaluated
from .markup import html_section, html_table, note_paragraphs, page, paragraph, text_table
from .plots import frontier, image

log = logging.getLogger(__name__)

COMPARE_FILE = "compare.html"
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
        row = [e.name, fmt(e.dictionary.get("arch")), fmt(e.dictionary.get("d_sae")), fmt(e.dictionary.get("k")), e.hook]
        for name in REGIMES:
            r = e.regime(name)
            row += [fmt(dead_dense(r)[0] if f == "dead" else r.get(f)) for f in COMPARE_FIGURES]
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
    target = check_page_path(Path(out) if out is not None else Path(COMPARE_FILE))
    entries = [load_evaluated(f) for f in folders]
    _unique_names(entries)
    header, rows = _compare_rows(entries)
    text = text_table(header, rows)
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
    frontiers = [
        image([partial(frontier, entries=entries, metric=metric, ylabel=label)], f"L0 against {label}", panel_size=(8.0, 4.6))
        for metric, label in (("fvu", "FVU"), ("loss_recovered", "loss recovered"))
    ]
    tokens = "; ".join(
        f"{e.name}: " + ", ".join(f"{r} {tokens_text(e.regime(r))}" for r in REGIMES if e.regime(r)) for e in entries
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
        html_section("Dictionaries", f'<div class="scroll">{html_table(header, rows)}</div>', *note_paragraphs(table_notes)),
        html_section("Sparsity–fidelity frontier", *frontiers, paragraph(frontier_note, "note")),
    ]
    atomic_write_text(target, page(f"saekit compare: {len(entries)} dictionaries", sections, banner))
    log.info("wrote %s", target)
    return text, target
