"""Feature dashboards: a static site, readable offline, from the examples one corpus pass kept.

``write_dashboard(out, examples, tokenizer, ...)`` turns a ``FeatureExamples`` (and, when
given, each feature's output tokens, nearest features and explanation) into a folder:

* ``index.html``: every feature with density, maximum, top tokens, explanation and scores;
  searchable, sortable, paged;
* ``feature.html#123``: one feature's top contexts, samples from several activation
  quantiles, activation histogram, output tokens, nearest features;
* ``assets/``: the pages' JavaScript and CSS (no external assets: it works offline);
* ``data/``: the data, split into chunk files so a dictionary of 100k+ features opens as
  fast as a small one (the index reads ``INDEX_CHUNK`` features per file, a feature page
  one file of ``FEATURE_CHUNK`` features). The chunks are JavaScript files that register
  their data (``saekitData.add(name, {...})``) and are loaded by inserting ``<script>``
  tags, because a page opened from a ``file://`` URL may not fetch() local JSON;
* ``dashboard.json``: what the folder holds (and the mark that it is a dashboard);
* ``examples.safetensors`` / ``examples.json``: the examples themselves, so that
  ``saekit explain DICT --examples DIR`` reuses them without another corpus pass.

The site is built in ``DIR/.partial`` and moved into place with ``index.html`` last, so
an interrupted run never leaves a folder that looks like a complete dashboard.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, OutputError
from ..io.files import LOCK_FILE, TEMP_GLOB, check_writable_folder, make_folder

log = logging.getLogger(__name__)

SCHEMA = "saekit.dashboard/1"
MANIFEST = "dashboard.json"
STAGING = ".partial"
INDEX_CHUNK = 1000  # features per index chunk: ~100 kB, one page of the index needs one chunk
FEATURE_CHUNK = 200  # features per feature-page chunk: a few MB with 60 examples each
TOP_TOKENS = 5  # top tokens listed per feature on the index
# What the site is made of, in the order it is moved into place (index.html last: its
# presence, with the manifest, is what makes the folder a complete dashboard).
SITE_ENTRIES = ("assets", "data", "feature.html", MANIFEST, "index.html")
ASSETS = ("saekit.css", "saekit.js", "index.js", "feature.js")
PAGES = ("index.html", "feature.html")
# Files that may sit in a dashboard folder besides the site (the examples, explanations
# written by `saekit explain`, the folder lock): a folder holding only these is not "someone
# else's folder".
COMPANIONS = ("examples.safetensors", "examples.json", "explanations.json", LOCK_FILE)


# ----------------------------------------------------------------------------- the folder


def is_dashboard(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a dashboard saekit wrote (complete, or left half-built by an interrupted run)."""
    folder = Path(folder)
    if (folder / STAGING).is_dir():
        return True
    try:
        return json.loads((folder / MANIFEST).read_text()).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def is_complete_dashboard(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a finished dashboard (what ``saekit serve`` requires)."""
    folder = Path(folder)
    return (folder / "index.html").is_file() and (folder / "feature.html").is_file() and is_dashboard(folder)


def check_dashboard_folder(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """Check, before any slow work, that a dashboard may be written into ``out``; changes nothing.

    ``out`` must be (or become) a writable folder. A folder holding a dashboard is rewritten;
    a non-empty folder holding something else is refused unless ``overwrite``, and even then
    only the dashboard's own files are replaced: the folder's other files stay.
    """
    out = check_writable_folder(out, flag)
    if not out.is_dir() or overwrite or is_dashboard(out):
        return out
    others = sorted(p.name for p in out.iterdir() if p.name not in COMPANIONS and not p.match(TEMP_GLOB))
    if others:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise OutputError(f"{flag} {out} is not empty and holds no saekit dashboard ({shown}); choose a new or empty "
                          "folder, or pass --overwrite to write the dashboard's files into it (other files are kept)")
    return out


# ----------------------------------------------------------------------------- tokens


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as the printable character byte-level BPE stores it as."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = visible[:]
    extra = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(visible, chars)}


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}
_SENTENCEPIECE_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
# Characters that would vanish or break a line in a context display, and what shows instead.
_VISIBLE = {"\n": "↵", "\r": "⏎", "\t": "⇥"}


def _is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer stores tokens in GPT-2's byte alphabet (Ġ for a space, Ċ for a newline)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts = f"{backend.pre_tokenizer!r} {backend.decoder!r}"
        if "ByteLevel" in parts:
            return True
        if "Metaspace" in parts or "Sequence" in parts and "Replace" in parts:
            return False
    vocab = getattr(tokenizer, "get_vocab", lambda: {})()
    return any(piece.startswith("Ġ") for piece in list(vocab)[:5000])


def readable_token(piece: str | None, byte_level: bool) -> str:
    """A token as a reader should see it: Ġ and ▁ as spaces, bytes decoded, newline as ↵, controls escaped."""
    if piece is None:
        return "<unknown>"
    match = _SENTENCEPIECE_BYTE.match(piece)
    if match:
        text = bytes([int(match.group(1), 16)]).decode("utf-8", errors="backslashreplace")
    elif byte_level and all(c in _BYTE_OF_CHAR for c in piece):
        # A token may hold part of a multi-byte character: its bytes show as \xNN.
        text = bytes(_BYTE_OF_CHAR[c] for c in piece).decode("utf-8", errors="backslashreplace")
    else:
        text = piece.replace("▁", " ")
    out = []
    for c in text:
        if c in _VISIBLE:
            out.append(_VISIBLE[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


def readable_tokens(tokenizer: Any, ids: Iterable[int]) -> dict[int, str]:
    """``{id: readable text}`` for every id (an id the tokenizer does not know, as the model's
    vocabulary may be larger than the tokenizer's, reads ``<id N>``)."""
    ids = sorted({int(i) for i in ids})
    byte_level = _is_byte_level(tokenizer)
    size = len(tokenizer)
    known = [i for i in ids if 0 <= i < size]
    pieces = tokenizer.convert_ids_to_tokens(known) if known else []
    texts = {i: f"<id {i}>" for i in ids}
    texts.update({i: readable_token(p, byte_level) if p is not None else f"<id {i}>" for i, p in zip(known, pieces)})
    return texts


# ----------------------------------------------------------------------------- the data


def _round(values: np.ndarray, digits: int = 4) -> np.ndarray:
    """``values`` to ``digits`` significant digits (the site shows three), so the data files stay small."""
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(values)
    finite = np.isfinite(values) & (values != 0)
    mag = np.floor(np.log10(np.abs(values[finite])))
    scale = 10.0 ** (digits - 1 - mag)
    out[finite] = np.round(values[finite] * scale) / scale
    out[~np.isfinite(values)] = np.nan
    return out


def _number(value: float) -> float | None:
    """A figure for JSON: None where it is not a number (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _score(record: Mapping[str, Any] | None, kind: str, figure: str) -> float | None:
    scores = (record or {}).get("scores") or {}
    value = (scores.get(kind) or {}).get(figure)
    return None if value is None else _number(value)


def _site_examples(values: Any, tokens: Any, acts: Any, before: int) -> list[list[list[Any]]]:
    """Each feature's examples in a block of rows, as the site reads them:
    ``[token ids, positions of the non-zero activations, those activations, centre, value]``.

    The same examples ``FeatureExamples.top_examples`` / ``sample_examples`` give (empty slots
    skipped, the -1 padding outside the text removed), read from the tensors a block at a time
    because building an ``Example`` object per window costs more than the rest of the site.
    Activations are listed only where non-zero: most of a window is zero for a sparse feature.
    """
    values = values.double().cpu().numpy()
    shown_values = _round(values)
    tokens = tokens.cpu().numpy()
    acts = _round(acts.double().cpu().numpy())
    out = []
    for r in range(values.shape[0]):
        kept = []
        for j in np.flatnonzero(~np.isnan(values[r])):
            inside = tokens[r, j] >= 0
            window_acts = acts[r, j][inside]
            nonzero = np.flatnonzero(window_acts)
            kept.append([tokens[r, j][inside].tolist(), nonzero.tolist(), window_acts[nonzero].tolist(),
                         int(inside[:before].sum()), float(shown_values[r, j])])
        out.append(kept)
    return out


def _quantile_groups(sample: list[Any], groups: int) -> list[list[Any]]:
    """The sample (highest first) split into ``groups`` groups of nearly equal size, as
    ``FeatureExamples.quantile_groups`` splits it; empty groups left out."""
    size, extra = divmod(len(sample), groups)
    out, start = [], 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        if end > start:
            out.append(sample[start:end])
        start = end
    return out


def _check_views(examples: Any, output_tokens: Any, nearest: Any) -> tuple[Any, Any, Any]:
    features = examples.features.tolist()
    top = bottom = near = None
    if output_tokens is not None:
        if output_tokens.features.tolist() != features:
            raise ConfigError("the output tokens are for other features than the examples; compute them with "
                              "output_tokens(dictionary, lm, examples.features)")
        top = np.stack([output_tokens.top_ids.cpu().numpy().astype(np.float64),
                        _round(output_tokens.top_logits.float().cpu().numpy())], -1)
        bottom = np.stack([output_tokens.bottom_ids.cpu().numpy().astype(np.float64),
                           _round(output_tokens.bottom_logits.float().cpu().numpy())], -1)
    if nearest is not None:
        ids, cosines = nearest
        if ids.shape[0] != len(features) or cosines.shape != ids.shape:
            raise ConfigError(f"nearest features: {tuple(ids.shape)} ids and {tuple(cosines.shape)} cosines for "
                              f"{len(features)} features; compute them with nearest_features(dictionary, examples.features)")
        near = np.stack([ids.cpu().numpy().astype(np.float64), _round(cosines.float().cpu().numpy())], -1)
    return top, bottom, near


def _top_token_ids(top_examples: Sequence[list[Any]]) -> list[int]:
    """The tokens most often at the centre of the top examples (ties: the higher example first)."""
    centres = [example[0][example[3]] for example in top_examples]
    counts = Counter(centres)
    first: dict[int, int] = {}
    for rank, token in enumerate(centres):
        first.setdefault(token, rank)
    return sorted(counts, key=lambda t: (-counts[t], first[t]))[:TOP_TOKENS]


def _chunk_name(kind: str, number: int) -> str:
    return f"{kind}-{number:05d}"


def _data_script(name: str, data: Any) -> str:
    # "</" inside a JSON string could end an inline script; these files are loaded by src,
    # but escaping it costs nothing and keeps them safe to inline.
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    return f'saekitData.add("{name}",{body});\n'


def _asset(name: str) -> str:
    return (resources.files("saekit.interpret") / "dashboard_site" / name).read_text(encoding="utf-8")


def write_dashboard(
    out: str | os.PathLike,
    examples: Any,
    tokenizer: Any,
    *,
    output_tokens: Any = None,
    nearest: tuple[Any, Any] | None = None,
    explanations: Mapping[int, Mapping[str, Any]] | None = None,
    d_sae: int | None = None,
    save_examples: bool = True,
    quantile_groups: int = 4,
    index_chunk: int = INDEX_CHUNK,
    feature_chunk: int = FEATURE_CHUNK,
    progress: Callable[[dict], None] | None = None,
) -> Path:
    """Write the dashboard site for ``examples`` (a ``FeatureExamples``) into ``out``; returns its ``index.html``.

    ``tokenizer`` decodes the token ids (the model's: ``lm.tokenizer``). ``output_tokens``
    (``directions.output_tokens``) and ``nearest`` (``directions.nearest_features``: ids and
    cosines) must be for ``examples.features`` in that order; ``explanations`` is what
    ``read_explanations`` returns. Any of them may be None: the pages then leave that part out.
    ``d_sae``: the dictionary's width, shown on the index. ``save_examples``: also save the
    examples into ``out`` for ``saekit explain --examples``.
    """
    if index_chunk < 1 or feature_chunk < 1:
        raise ConfigError(f"chunk sizes must be at least 1 (got {index_chunk}, {feature_chunk})")
    if not isinstance(quantile_groups, int) or quantile_groups < 1:
        raise ConfigError(f"quantile_groups must be a positive integer, got {quantile_groups!r}")
    top_views, bottom_views, near_views = _check_views(examples, output_tokens, nearest)
    explanations = {int(k): v for k, v in (explanations or {}).items()}
    out = make_folder(out)
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "data").mkdir(parents=True)
        (staging / "assets").mkdir()
        features = [int(f) for f in examples.features.tolist()]
        n = len(features)
        report = progress or (lambda record: None)
        report({"phase": "write pages", "done": 0, "total": n, "unit": "feature"})

        densities = _round(examples.density.double().cpu().numpy())
        maxima = _round(examples.max_activation.double().cpu().numpy())
        means = _round(examples.mean_activation.double().cpu().numpy())
        counts = examples.count.cpu().numpy()
        histogram = examples.histogram.cpu().numpy()
        edges = _round(examples.bin_edges.double().cpu().numpy(), 6)

        index_rows: list[list[Any]] = []
        feature_ranges: list[list[int]] = []
        for start in range(0, n, feature_chunk):
            rows = range(start, min(start + feature_chunk, n))
            block = slice(rows[0], rows[-1] + 1)
            before = examples.window[0]
            tops = _site_examples(examples.top_values[block], examples.top_tokens[block], examples.top_acts[block], before)
            samples = _site_examples(examples.sample_values[block], examples.sample_tokens[block],
                                     examples.sample_acts[block], before)
            ids_used = {int(t) for t in np.unique(examples.top_tokens[block].cpu().numpy())}
            ids_used.update(int(t) for t in np.unique(examples.sample_tokens[block].cpu().numpy()))
            pages = []
            for row, top, sample in zip(rows, tops, samples):
                feature = features[row]
                record = explanations.get(feature)
                page: dict[str, Any] = {
                    "f": feature, "count": int(counts[row]), "density": _number(densities[row]),
                    "max": _number(maxima[row]), "mean": _number(means[row]),
                    "hist": _histogram(histogram[row]),
                    "top": top,
                    "quantiles": _quantile_groups(sample, quantile_groups),
                    "explanation": _explanation(record),
                }
                if top_views is not None:
                    page["boosts"] = [[int(i), float(v)] for i, v in top_views[row]]
                    page["suppresses"] = [[int(i), float(v)] for i, v in bottom_views[row]]
                    ids_used.update(int(i) for i, _ in top_views[row])
                    ids_used.update(int(i) for i, _ in bottom_views[row])
                if near_views is not None:
                    page["nearest"] = [[int(i), float(c)] for i, c in near_views[row]]
                pages.append(page)
                top_ids = _top_token_ids(top)
                index_rows.append([feature, page["density"], page["max"], page["mean"], top_ids,
                                   page["explanation"]["text"] if page["explanation"] else None,
                                   _score(record, "detection", "balanced_accuracy"),
                                   _score(record, "fuzzing", "balanced_accuracy")])
            ids_used.update(t for row in index_rows[start:] for t in row[4])
            vocab = readable_tokens(tokenizer, (i for i in ids_used if i >= 0))
            chunk = _chunk_name("features", len(feature_ranges))
            _write(staging / "data" / f"{chunk}.js", _data_script(chunk, {
                "vocab": {str(i): text for i, text in vocab.items()}, "features": pages}))
            for row in index_rows[start:]:
                row[4] = [vocab[t] for t in row[4]]
            feature_ranges.append([features[rows[0]], features[rows[-1]]])
            report({"phase": "write pages", "done": rows[-1] + 1, "total": n, "unit": "feature"})

        index_chunks = 0
        for start in range(0, n, index_chunk):
            chunk = _chunk_name("index", index_chunks)
            _write(staging / "data" / f"{chunk}.js", _data_script(chunk, {"rows": index_rows[start:start + index_chunk]}))
            index_chunks += 1
        meta = {
            "schema": SCHEMA, "dictionary": str(examples.dictionary), "hook": examples.hook, "model": examples.model,
            "d_sae": d_sae, "n_features": n, "tokens_seen": int(examples.tokens_seen), "window": list(examples.window),
            "index_chunk": index_chunk, "index_chunks": index_chunks, "feature_chunks": feature_ranges,
            "bin_edges": [float(e) for e in edges], "explained": sum(1 for f in features if f in explanations),
            "scored": sum(1 for f in features if _score(explanations.get(f), "detection", "balanced_accuracy") is not None
                          or _score(explanations.get(f), "fuzzing", "balanced_accuracy") is not None),
            "has_output_tokens": top_views is not None, "has_nearest": near_views is not None,
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        _write(staging / "data" / "meta.js", _data_script("meta", meta))
        for name in ASSETS:
            _write(staging / "assets" / name, _asset(name))
        manifest = {key: meta[key] for key in ("schema", "dictionary", "hook", "model", "d_sae", "n_features",
                                                "tokens_seen", "explained", "written")}
        _write(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        for name in PAGES:
            _write(staging / name, _asset(name))
        if save_examples:
            examples.save(out)
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote a dashboard of %d features into %s", n, out)
    return out / "index.html"


def _histogram(counts: np.ndarray) -> list[Any]:
    """``[first bin, counts...]``: the counts from the first to the last non-empty bin."""
    nonzero = np.flatnonzero(counts)
    if nonzero.size == 0:
        return [0, []]
    return [int(nonzero[0]), [int(c) for c in counts[nonzero[0]:nonzero[-1] + 1]]]


def _explanation(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not record or not record.get("explanation"):
        return None
    scores = {}
    for kind in ("detection", "fuzzing"):
        figures = (record.get("scores") or {}).get(kind)
        if figures:
            scores[kind] = {name: _number(figures[name]) if figures.get(name) is not None else None
                            for name in ("balanced_accuracy", "auroc", "n")}
    return {"text": str(record["explanation"]), "explainer": record.get("explainer"),
            "scorer": record.get("scorer"), "scores": scores}


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}; the dashboard was not finished") from None


def _install(staging: Path, out: Path) -> None:
    """Move the finished site from ``staging`` into ``out``; the old site's index goes first and the new one comes last."""
    try:
        for name in reversed(SITE_ENTRIES):  # the old index.html first: the old site stops looking complete
            _remove(out / name)
        for name in SITE_ENTRIES:
            os.replace(staging / name, out / name)
        staging.rmdir()
    except OSError as e:
        raise OutputError(f"cannot move the dashboard into {out}: {e.strerror or e}") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def file_url(index: str | os.PathLike) -> str:
    """The ``file://`` URL a browser opens the dashboard at."""
    return Path(index).resolve().as_uri()


__all__ = ["check_dashboard_folder", "file_url", "is_complete_dashboard", "is_dashboard", "readable_token",
           "readable_tokens", "write_dashboard"]
