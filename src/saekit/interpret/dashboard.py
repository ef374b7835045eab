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
  one file of ``FEATURE_CHUNK`` features and ``vocab.js``, the text of every token shown,
  which the windows refer to by a short code: see ``CODE_LAST``). The chunks are JavaScript
  files that register their data (``saekitData.add(name, {...})``) and are loaded by
  inserting ``<script>`` tags, because a page opened from a ``file://`` URL may not fetch()
  local JSON;
* ``dashboard.json``: what the folder holds (and the mark that it is a dashboard);
* ``examples.safetensors`` / ``examples.json``: the examples themselves, so that
  ``saekit explain DICT --examples DIR`` reuses them without another corpus pass.

The site is built in ``DIR/.partial`` and moved into place with ``index.html`` last, so
an interrupted run never leaves a folder that looks like a complete dashboard.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, OutputError
from ..io.files import LOCK_FILE, check_output_folder, make_folder
from ..progress import Phase, ProgressCallback

log = logging.getLogger(__name__)

SCHEMA = "saekit.dashboard/2"  # 2: windows as token codes, one vocabulary for the site
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
        # any version: an older dashboard is rewritten without --overwrite too
        return str(json.loads((folder / MANIFEST).read_text()).get("schema")).startswith("saekit.dashboard/")
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
    return check_output_folder(out, overwrite=overwrite, own_files=COMPANIONS, holds_result=is_dashboard,
                               result="saekit dashboard", written="the dashboard's files", flag=flag)


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
_BYTE_ALPHABET = frozenset(_BYTE_OF_CHAR)
# str.translate tables (a token is decoded in a few microseconds: a site shows tens of
# thousands): byte-level characters to the Latin-1 character of their byte, and characters
# that would vanish or break a line in a context display to what shows instead.
_LATIN1_OF_CHAR = {ord(c): b for c, b in _BYTE_OF_CHAR.items()}
_VISIBLE = {"\n": "↵", "\r": "⏎", "\t": "⇥"}
_SHOWN_AS = {**{i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F]}, **{ord(c): v for c, v in _VISIBLE.items()}}
_SENTENCEPIECE_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


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
    elif byte_level and _BYTE_ALPHABET.issuperset(piece):
        # A token may hold part of a multi-byte character: its bytes show as \xNN.
        text = piece.translate(_LATIN1_OF_CHAR).encode("latin-1").decode("utf-8", errors="backslashreplace")
    else:
        text = piece.replace("▁", " ")
    return text.translate(_SHOWN_AS)


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


# ----------------------------------------------------------------------------- token codes

# A window's tokens travel as one string, not as a JSON list of ids: each token is its rank
# in the site's vocabulary (data/vocab.js, the most used first), in a variable-length code.
# A code's last character is one of CODE_LAST, any before it are of CODE_MORE: ranks 0-63
# take one character, the next 27·64 two, the next 27²·64 three, and so on. Token use is
# steep (a few dozen tokens make up half of any text), so a window of 33 tokens takes about
# 60 characters where a list of ids took 150 or more: the site is less than half the size
# and the JSON encoder handles one string where it handled 33 numbers. Neither alphabet
# holds `"`, `\` or `<`, so a code needs no escaping in JSON or in a script.
CODE_LAST = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-"
CODE_MORE = "!#$%&'()*+,./:;=>?@[]^`{|}~"


def _code_table(count: int) -> np.ndarray:
    """The code of every rank below ``count``: ASCII bytes (count, width), left-aligned and zero-padded."""
    last = np.frombuffer(CODE_LAST.encode("ascii"), np.uint8)
    more = np.frombuffer(CODE_MORE.encode("ascii"), np.uint8)
    width, capacity, covered = 1, len(last), len(last)
    while covered < count:
        width, capacity = width + 1, capacity * len(more)
        covered += capacity
    codes = np.zeros((count, width), np.uint8)
    start, length, capacity = 0, 1, len(last)
    while start < count:
        stop = min(count, start + capacity)
        offset = np.arange(stop - start)
        codes[start:stop, length - 1] = last[offset % len(last)]
        rest = offset // len(last)
        for position in range(length - 2, -1, -1):
            codes[start:stop, position] = more[rest % len(more)]
            rest //= len(more)
        start, length, capacity = stop, length + 1, capacity * len(more)
    return codes


def encode_ranks(ranks: np.ndarray, codes: np.ndarray) -> list[str]:
    """Each row of ``ranks`` (rows, W) as one code string, built for all rows at once: the rows'
    codes laid out zero-padded with a space after each row, the zeros dropped, split at the spaces."""
    ranks = np.asarray(ranks)
    rows, W = ranks.shape
    if rows == 0:
        return []
    width = codes.shape[1]
    laid_out = np.empty((rows, W * width + 1), np.uint8)
    laid_out[:, :-1] = np.take(codes, ranks.ravel(), axis=0).reshape(rows, W * width)
    laid_out[:, -1] = ord(" ")  # in neither alphabet
    return laid_out.tobytes().translate(None, b"\0").decode("ascii").split(" ")[:-1]


def decode_ranks(code: str) -> list[int]:
    """The ranks a code string holds (what the pages do in JavaScript; for reading the data in Python)."""
    ranks, rest, continued = [], 0, 0
    for c in code:
        k = CODE_MORE.find(c)
        if k >= 0:
            rest, continued = rest * len(CODE_MORE) + k, continued + 1
            continue
        offset = sum(len(CODE_LAST) * len(CODE_MORE) ** m for m in range(continued))
        ranks.append(offset + rest * len(CODE_LAST) + CODE_LAST.index(c))
        rest, continued = 0, 0
    return ranks


# ----------------------------------------------------------------------------- the data


def _round(values: Any, digits: int = 4) -> np.ndarray:
    """``values`` to ``digits`` significant digits (the site shows three), so the data files stay small;
    NaN where a value is not finite."""
    values = np.asarray(values, dtype=np.float64)
    out = np.where(np.isfinite(values), 0.0, np.nan)
    nonzero = np.isfinite(values) & (values != 0)
    x = values[nonzero]
    exponent = digits - 1 - np.floor(np.log10(np.abs(x)))
    # Scaled by an exact power of ten either way (never by 0.1 or 0.01, which floats hold
    # inexactly), so that no value reads 12300.000000000002 in the data.
    scale = 10.0 ** np.abs(exponent)
    out[nonzero] = np.where(exponent >= 0, np.round(x * scale) / scale, np.round(x / scale) * scale)
    return out


def _number(value: float) -> float | None:
    """A figure for JSON: None where it is not a number (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _score(record: Mapping[str, Any] | None, kind: str, figure: str) -> float | None:
    scores = (record or {}).get("scores") or {}
    value = (scores.get(kind) or {}).get(figure)
    return None if value is None else _number(value)


@dataclass(frozen=True)
class _Vocabulary:
    """The token ids the site shows, most used first (-1, outside the text, among them), the
    rank of each id (``rank_of[id + 1]``) and the codes of the ranks."""

    ids: np.ndarray
    rank_of: np.ndarray
    codes: np.ndarray

    @classmethod
    def of(cls, windows: Sequence[np.ndarray], other_ids: Sequence[np.ndarray]) -> "_Vocabulary":
        """From windows of token ids (any shape, -1 outside the text), counted, and other ids
        shown (output tokens), which need a place but no short code."""
        windows = [np.asarray(w, dtype=np.int64).ravel() for w in windows]
        other_ids = [np.asarray(i, dtype=np.int64).ravel() for i in other_ids]
        if any(int(a.min()) < -1 for a in windows + other_ids if a.size):
            raise ConfigError("token ids must be -1 (outside the text) or non-negative")
        size = max([int(a.max()) + 2 for a in windows + other_ids if a.size] + [1])
        counts = np.zeros(size, np.int64)
        for w in windows:
            counts += np.bincount(w + 1, minlength=size)
        shown = counts > 0
        for ids in other_ids:
            shown[ids + 1] = True
        used = np.flatnonzero(shown)
        order = used[np.argsort(-counts[used], kind="stable")]  # ties: the lower id first
        rank_of = np.full(size, -1, np.int64)
        rank_of[order] = np.arange(len(order))
        return cls(ids=order - 1, rank_of=rank_of, codes=_code_table(len(order)))

    def encode(self, tokens: np.ndarray) -> list[str]:
        return encode_ranks(self.rank_of[tokens + 1], self.codes)


# A window's non-zero activations travel as one string too, in the same code: three numbers
# each, its position in the window, its three significant digits less 100 (plus 900 when it
# is negative) and its power of ten, zigzagged (0, -1, 1, -2, ... as 0, 1, 2, 3, ...); 1.23
# at position 4 is (4, 23, 3): 123·10⁻². About five characters an activation where JSON
# took ten, and no floats for the JSON encoder to format, which was most of its time.
DIGITS_NEGATIVE = 900


def _activation_numbers(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero finite values as (their three significant digits coded as above, their power of ten zigzagged)."""
    magnitude = np.abs(values.astype(np.float64))
    power = np.floor(np.log10(magnitude)).astype(np.int64) - 2
    # Scaled by an exact power of ten either way (floats hold 0.1, 0.01, ... inexactly).
    scaled = np.where(power >= 0, magnitude / 10.0 ** np.maximum(power, 0), magnitude * 10.0 ** np.maximum(-power, 0))
    digits = np.round(scaled).astype(np.int64)
    carried = digits >= 1000  # 999.5 and up: 100 of the next power
    digits[carried] //= 10
    power[carried] += 1
    digits = digits - 100 + np.where(values < 0, DIGITS_NEGATIVE, 0)
    return digits, np.where(power >= 0, 2 * power, -2 * power - 1)


def _activation_codes(acts: np.ndarray) -> list[str]:
    """Each row of ``acts`` (rows, W): its non-zero activations as one code string (see above)."""
    rows, cols = np.nonzero(np.isfinite(acts) & (acts != 0))
    if rows.size < np.count_nonzero(acts):
        log.warning("the examples hold activations that are not finite numbers; the pages leave them out")
    digits, powers = _activation_numbers(acts[rows, cols])
    per_row = np.bincount(rows, minlength=acts.shape[0])
    most = int(per_row.max()) if per_row.size else 0
    largest = max(2 * DIGITS_NEGATIVE, acts.shape[1], int(powers.max()) + 1 if powers.size else 0)
    table = _code_table(largest)
    codes = np.vstack([table, np.zeros((1, table.shape[1]), np.uint8)])  # and number `largest`: no characters
    # One row of numbers per window, padded with that empty code.
    numbers = np.full((acts.shape[0], 3 * most), largest, np.int64)
    slot = 3 * (np.arange(rows.size) - (np.cumsum(per_row) - per_row)[rows])
    numbers[rows, slot], numbers[rows, slot + 1], numbers[rows, slot + 2] = cols, digits, powers
    return encode_ranks(numbers, codes)


def _site_examples(values: Any, tokens: Any, acts: Any, vocab: _Vocabulary) -> list[list[list[Any]]]:
    """Each feature's examples in a block of rows, as the site reads them: ``[tokens, activations, value]``.

    ``tokens`` is the whole window, -1 outside the text included, as a code string (see
    CODE_LAST), whose token ``window[0]`` is the one selected; ``activations`` the window's
    non-zero activations to three significant digits, as the pages show them, as another
    (see DIGITS_NEGATIVE); ``value`` the selected token's activation. The examples are those
    ``FeatureExamples.top_examples`` / ``sample_examples`` give (empty slots skipped), built
    for the whole block at once: a per-window loop in Python cost more than the rest of the site.
    """
    values = values.double().cpu().numpy()
    keep = ~np.isnan(values)
    token_codes = vocab.encode(tokens.cpu().numpy()[keep])
    act_codes = _activation_codes(acts.cpu().numpy()[keep])
    shown_values = _round(values[keep]).tolist()
    flat = [list(example) for example in zip(token_codes, act_codes, shown_values)]
    ends = np.cumsum(keep.sum(1)).tolist()
    return [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]


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


@dataclass(frozen=True)
class _Views:
    """Output tokens and nearest features as lists per feature ([[id, value], ...]), or None."""

    boosts: list[list[list[Any]]] | None
    suppresses: list[list[list[Any]]] | None
    nearest: list[list[list[Any]]] | None
    token_ids: list[np.ndarray]  # the output tokens' ids, which the vocabulary must hold


def _pairs(ids: Any, values: Any) -> list[list[list[Any]]]:
    ids, values = ids.cpu().numpy().tolist(), _round(values.float().cpu().numpy()).tolist()
    return [[[i, v] for i, v in zip(row_ids, row_values)] for row_ids, row_values in zip(ids, values)]


def _check_views(examples: Any, output_tokens: Any, nearest: Any) -> _Views:
    features = examples.features.tolist()
    boosts = suppresses = near = None
    token_ids = []
    if output_tokens is not None:
        if output_tokens.features.tolist() != features:
            raise ConfigError("the output tokens are for other features than the examples; compute them with "
                              "output_tokens(dictionary, lm, examples.features)")
        boosts = _pairs(output_tokens.top_ids, output_tokens.top_logits)
        suppresses = _pairs(output_tokens.bottom_ids, output_tokens.bottom_logits)
        token_ids = [output_tokens.top_ids.cpu().numpy(), output_tokens.bottom_ids.cpu().numpy()]
    if nearest is not None:
        ids, cosines = nearest
        if ids.shape[0] != len(features) or cosines.shape != ids.shape:
            raise ConfigError(f"nearest features: {tuple(ids.shape)} ids and {tuple(cosines.shape)} cosines for "
                              f"{len(features)} features; compute them with nearest_features(dictionary, examples.features)")
        near = _pairs(ids, cosines)
    return _Views(boosts, suppresses, near, token_ids)


def _top_token_ids(centres: list[int]) -> list[int]:
    """The tokens most often at the centre of the top examples, given highest first (ties: the higher example first)."""
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
    progress: ProgressCallback | None = None,
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
    with _cyclic_gc_paused():
        return _write_dashboard(out, examples, tokenizer, output_tokens, nearest, explanations, d_sae, save_examples,
                                quantile_groups, index_chunk, feature_chunk, progress)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused: the pages are millions of small lists, and
    each of the collections their making sets off walks every object of the process (a
    loaded model's included), which took longer than making them. They hold no cycles:
    reference counting frees them all the same."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _write_dashboard(out: str | os.PathLike, examples: Any, tokenizer: Any, output_tokens: Any,
                     nearest: tuple[Any, Any] | None, explanations: Mapping[int, Mapping[str, Any]] | None,
                     d_sae: int | None, save_examples: bool, quantile_groups: int, index_chunk: int,
                     feature_chunk: int, progress: ProgressCallback | None) -> Path:
    views = _check_views(examples, output_tokens, nearest)
    explanations = {int(k): v for k, v in (explanations or {}).items()}
    out = make_folder(out)
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "data").mkdir(parents=True)
        (staging / "assets").mkdir()
        features = examples.features.tolist()
        n = len(features)
        phase = Phase(progress, "write pages", n, unit="feature")

        # One vocabulary for the whole site, decoded once: the tokens of every window kept
        # (counted, for the codes) and the output tokens.
        top_keep = ~np.isnan(examples.top_values.cpu().numpy())
        sample_keep = ~np.isnan(examples.sample_values.cpu().numpy())
        top_tokens = examples.top_tokens.cpu().numpy()
        vocab = _Vocabulary.of([top_tokens[top_keep], examples.sample_tokens.cpu().numpy()[sample_keep]], views.token_ids)
        ids = vocab.ids.tolist()
        texts = readable_tokens(tokenizer, (i for i in ids if i >= 0))
        vocab_texts = [texts[i] if i >= 0 else None for i in ids]
        _write(staging / "data" / "vocab.js", _data_script("vocab", {"ids": ids, "texts": vocab_texts}))

        densities = _round(examples.density.double().cpu().numpy()).tolist()
        maxima = _round(examples.max_activation.double().cpu().numpy()).tolist()
        means = _round(examples.mean_activation.double().cpu().numpy()).tolist()
        counts = examples.count.cpu().numpy().tolist()
        histogram = examples.histogram.cpu().numpy()
        edges = _round(examples.bin_edges.double().cpu().numpy(), 6)
        before = examples.window[0]
        centres = np.where(top_keep, top_tokens[:, :, before], -2).tolist()

        index_rows: list[list[Any]] = []
        feature_ranges: list[list[int]] = []
        for start in range(0, n, feature_chunk):
            block = slice(start, min(start + feature_chunk, n))
            tops = _site_examples(examples.top_values[block], examples.top_tokens[block], examples.top_acts[block], vocab)
            samples = _site_examples(examples.sample_values[block], examples.sample_tokens[block],
                                     examples.sample_acts[block], vocab)
            pages = []
            for row, top, sample in zip(range(block.start, block.stop), tops, samples):
                feature = features[row]
                record = explanations.get(feature)
                page: dict[str, Any] = {
                    "f": feature, "count": counts[row], "density": _number(densities[row]),
                    "max": _number(maxima[row]), "mean": _number(means[row]),
                    "hist": _histogram(histogram[row]),
                    "top": top,
                    "quantiles": _quantile_groups(sample, quantile_groups),
                    "explanation": _explanation(record),
                }
                if views.boosts is not None:
                    page["boosts"] = views.boosts[row]
                    page["suppresses"] = views.suppresses[row]
                if views.nearest is not None:
                    page["nearest"] = views.nearest[row]
                pages.append(page)
                top_ids = _top_token_ids([t for t in centres[row] if t != -2])
                index_rows.append([feature, page["density"], page["max"], page["mean"], [texts[t] for t in top_ids],
                                   page["explanation"]["text"] if page["explanation"] else None,
                                   _score(record, "detection", "balanced_accuracy"),
                                   _score(record, "fuzzing", "balanced_accuracy")])
            chunk = _chunk_name("features", len(feature_ranges))
            _write(staging / "data" / f"{chunk}.js", _data_script(chunk, {"features": pages}))
            feature_ranges.append([features[block.start], features[block.stop - 1]])
            phase.advance(block.stop - block.start)

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
            "has_output_tokens": views.boosts is not None, "has_nearest": views.nearest is not None,
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
    return [int(nonzero[0]), counts[nonzero[0]:nonzero[-1] + 1].tolist()]


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
