"""What each feature of a dictionary does on real text, kept from one streaming pass.

``collect_examples(dictionary, lm)`` runs the model over packed contexts of a corpus (the
training split, as the trainer reads it), stopped after the dictionary's hook point,
encodes every token, and keeps per chosen feature:

* statistics over every token: how often it fires, the sum and maximum of its
  activations, and a histogram on log-spaced bins shared by all features;
* its ``top`` largest activations with their windows of text (ties: first seen first);
* a uniform random sample of ``samples`` of its activating tokens, with their windows;
* its activations on ``random_contexts`` windows drawn uniformly from the stream, the
  same for every feature (the contrast an explanation scorer needs).

Nothing is read twice and nothing grows with the corpus: each batch of contexts is
merged into tables of fixed size (features × examples kept), and a window's tokens and
activations are gathered from the batch only for the entries that make it into a table.

Both selections are "the K largest scores per feature": the activation for the top
examples, and for the sample a pseudo-random key per (token, feature), drawn from a
counter-based hash of the token's position in the stream. Keeping the K largest of
i.i.d. uniform keys is a uniform sample without replacement (reservoir sampling), and
because a key depends only on the position, the result does not depend on the batch
size. The random contexts are the K largest keys per position, likewise.

A transcoder's examples are about its input: it reads ``cfg.hook``.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..checks import is_integer
from ..errors import ConfigError, DataError, FormatError

logger = logging.getLogger(__name__)

SCHEMA = "saekit.examples/1"
TENSORS_FILE = "examples.safetensors"
METADATA_FILE = "examples.json"

HISTOGRAM_DECADES = (-4, 4)
"""The histogram spans 1e-4 to 1e4 times the dictionary's activation scale (``cfg.act_scale``,
``cfg.target_scale`` for a transcoder, whose features are in its target's units): features of a
normalised input are O(1), so four decades either side of that hold every activation but
rounding noise; values outside are clipped into the end bins."""
BINS_PER_DECADE = 20
"""Bins 12% wide: finer than a histogram on a feature page can show, and 160 bins per feature
stay small beside the examples kept (features × (top + samples) × W)."""

ENCODE_BLOCK = 1 << 24
"""Contexts are encoded a few at a time, so that the dense (tokens, features) activations of
one block stay near this many entries (64 MB in float32) on a CPU, whatever the batch size."""
ENCODE_BLOCK_ACCELERATOR = 1 << 27
"""The same on a GPU (512 MB): fewer, larger blocks, since each merge costs a few dozen kernel
launches and synchronisations whatever its size."""

_FLOAT16_MAX = 65504.0


# --------------------------------------------------------------------------- the result


class FeatureNotCollected(ConfigError, KeyError):
    """A feature index that the examples were not collected for."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Example:
    """One window of text around a selected token, with one feature's activations on it."""

    tokens: list[int]  # the window's token ids, the -1 padding removed
    acts: list[float]  # the feature's activation on each of them
    centre: int  # index in `tokens` of the example's token (the one selected)
    value: float  # the activation there


@dataclass
class FeatureExamples:
    """What one streaming pass over a corpus kept for each chosen feature of a dictionary."""

    dictionary: str
    hook: str
    model: str
    features: Tensor
    tokens_seen: int
    window: tuple[int, int]
    count: Tensor
    activation_sum: Tensor
    max_activation: Tensor
    bin_edges: Tensor
    histogram: Tensor
    top_values: Tensor
    top_tokens: Tensor
    top_acts: Tensor
    sample_values: Tensor
    sample_tokens: Tensor
    sample_acts: Tensor
    random_tokens: Tensor
    random_acts: Tensor

    def __post_init__(self) -> None:
        self.window = (int(self.window[0]), int(self.window[1]))
        if min(self.window) < 0:
            raise FormatError(f"window must be two non-negative numbers (before, after), got {self.window}")
        if not isinstance(self.tokens_seen, int) or self.tokens_seen < 0:
            raise FormatError(f"tokens_seen must be a non-negative integer, got {self.tokens_seen!r}")
        W = self.window[0] + 1 + self.window[1]
        if self.features.ndim != 1:
            raise FormatError(f"features must be one-dimensional, got shape {tuple(self.features.shape)}")
        n = self.features.shape[0]
        if n > 1 and not bool((self.features[1:] > self.features[:-1]).all()):
            raise FormatError("features must be ascending and unique")
        B = self.bin_edges.shape[0] - 1
        k_top, k_sample, P = self.top_values.shape[-1], self.sample_values.shape[-1], self.random_tokens.shape[0]
        expected = {
            "count": (n,), "activation_sum": (n,), "max_activation": (n,), "histogram": (n, B),
            "top_values": (n, k_top), "top_tokens": (n, k_top, W), "top_acts": (n, k_top, W),
            "sample_values": (n, k_sample), "sample_tokens": (n, k_sample, W), "sample_acts": (n, k_sample, W),
            "random_tokens": (P, W), "random_acts": (n, P, W),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise FormatError(
                    f"{name} has shape {got}, expected {shape} for {n} features, window {self.window} "
                    f"(W={W}), {k_top} top and {k_sample} sampled examples and {P} random contexts"
                )
        if B < 1:
            raise FormatError("bin_edges needs at least two edges")

    # ------------------------------------------------------------------ figures
    @property
    def density(self) -> Tensor:
        """(n,) the fraction of tokens seen on which each feature is positive."""
        return self.count.double() / max(self.tokens_seen, 1)

    @property
    def mean_activation(self) -> Tensor:
        """(n,) the mean of each feature's positive activations (NaN where it never fired)."""
        return torch.where(self.count > 0, self.activation_sum / self.count.clamp_min(1), float("nan"))

    def row(self, feature: int) -> int:
        """The row of dictionary index ``feature`` in every per-feature tensor."""
        try:
            index = operator.index(feature)
        except TypeError:
            raise FeatureNotCollected(f"feature must be an integer, got {feature!r}") from None
        i = int(torch.searchsorted(self.features, torch.tensor(index, dtype=self.features.dtype)))
        if i >= len(self.features) or int(self.features[i]) != index:
            shown = _ranges(self.features.tolist())
            raise FeatureNotCollected(
                f"feature {index} was not collected (these examples hold features {shown}); "
                "collect it again with it among the features"
            )
        return i

    def top_examples(self, feature: int) -> list[Example]:
        """The feature's top-activating windows, highest first."""
        i = self.row(feature)
        return _examples(self.top_values[i], self.top_tokens[i], self.top_acts[i], self.window[0])

    def sample_examples(self, feature: int) -> list[Example]:
        """A uniform sample of the windows where the feature fires, highest first."""
        i = self.row(feature)
        return _examples(self.sample_values[i], self.sample_tokens[i], self.sample_acts[i], self.window[0])

    def quantile_groups(self, feature: int, groups: int = 4) -> list[list[Example]]:
        """The sample split by value into ``groups`` groups of (nearly) equal size, highest first.

        Always ``groups`` lists; some are empty when the feature fired fewer times than that.
        """
        if not isinstance(groups, int) or groups < 1:
            raise ConfigError(f"groups must be a positive integer, got {groups!r}")
        sample = self.sample_examples(feature)
        size, extra = divmod(len(sample), groups)
        out, start = [], 0
        for g in range(groups):
            end = start + size + (1 if g < extra else 0)
            out.append(sample[start:end])
            start = end
        return out

    def random_examples(self, feature: int) -> list[Example]:
        """The random contexts (the same for every feature) with this feature's activations;
        the centre is the randomly drawn token."""
        i = self.row(feature)
        before = self.window[0]
        values = self.random_acts[i, :, before].float()
        return _examples(values, self.random_tokens, self.random_acts[i].float(), before, keep_all=True)

    # ------------------------------------------------------------------ files
    _TENSORS = (
        "features", "count", "activation_sum", "max_activation", "bin_edges", "histogram",
        "top_values", "top_tokens", "top_acts", "sample_values", "sample_tokens", "sample_acts",
        "random_tokens", "random_acts",
    )

    def save(self, folder: str | Path) -> None:
        """Write ``folder/examples.safetensors`` and ``folder/examples.json``, each atomically.

        Both carry the same random id, so that a folder whose two files come from different
        runs (one write interrupted) is refused on loading instead of read wrongly.
        """
        from ..io.files import atomic_save_tensors, atomic_write_text, make_folder

        folder = make_folder(folder)
        run_id = uuid.uuid4().hex
        tensors = {name: getattr(self, name) for name in self._TENSORS}
        # Windows are most of the file: token ids fit in int32, and the activations colouring a
        # window need no more than float16's 0.05% (the selected values stay float32), unless
        # one is beyond float16's range.
        for name in ("top_tokens", "sample_tokens", "random_tokens"):
            tensors[name] = tensors[name].to(torch.int32)
        for name in ("top_acts", "sample_acts", "random_acts"):
            acts = tensors[name]
            if acts.numel() == 0 or float(acts.abs().max()) < _FLOAT16_MAX:
                tensors[name] = acts.half()
        atomic_save_tensors(tensors, folder / TENSORS_FILE, metadata={"schema": SCHEMA, "id": run_id})
        meta = {
            "schema": SCHEMA, "id": run_id, "dictionary": self.dictionary, "hook": self.hook, "model": self.model,
            "tokens_seen": self.tokens_seen, "window": list(self.window), "features": len(self.features),
        }
        atomic_write_text(folder / METADATA_FILE, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> FeatureExamples:
        """Read what `save` wrote; `FormatError` naming the file for anything missing or corrupt."""
        from safetensors import SafetensorError, safe_open

        folder = Path(folder)
        meta_path, tensors_path = folder / METADATA_FILE, folder / TENSORS_FILE
        fix = "collect them again (saekit dashboard ... --out FOLDER writes them)"
        for path in (meta_path, tensors_path):
            if not path.is_file():
                raise FormatError(f"{path} does not exist: {folder} holds no saved feature examples; {fix}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{meta_path} is not valid JSON ({e}); {fix}") from None
        if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
            got = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
            raise FormatError(f"{meta_path} is not a feature-examples file of schema {SCHEMA!r} (found {got!r}); {fix}")
        try:
            with safe_open(str(tensors_path), framework="pt") as f:
                file_meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in cls._TENSORS}
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise FormatError(f"{tensors_path} cannot be read ({type(e).__name__}: {e}); {fix}") from None
        for name in ("top_tokens", "sample_tokens", "random_tokens"):
            tensors[name] = tensors[name].long()
        for name in ("top_acts", "sample_acts", "random_acts"):
            tensors[name] = tensors[name].float()
        if file_meta.get("id") != meta.get("id"):
            raise FormatError(
                f"{tensors_path} and {meta_path} come from different runs (an interrupted write?); {fix}"
            )
        try:
            window = meta["window"]
            return cls(
                dictionary=str(meta["dictionary"]), hook=str(meta["hook"]), model=str(meta["model"]),
                tokens_seen=int(meta["tokens_seen"]), window=(int(window[0]), int(window[1])), **tensors,
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise FormatError(f"{meta_path} lacks or mangles a field ({type(e).__name__}: {e}); {fix}") from None


def _examples(values: Tensor, tokens: Tensor, acts: Tensor, before: int, keep_all: bool = False) -> list[Example]:
    out = []
    for value, toks, act in zip(values.tolist(), tokens.tolist(), acts.tolist()):
        if not keep_all and math.isnan(value):
            continue  # an empty slot: the feature fired fewer times than slots
        kept = [(t, a) for t, a in zip(toks, act) if t >= 0]
        centre = sum(1 for t in toks[:before] if t >= 0)
        out.append(Example([t for t, _ in kept], [a for _, a in kept], centre, float(value)))
    return out


def _ranges(indices: list[int], limit: int = 6) -> str:
    """``0-9, 12, 40-41``: a short description of ascending indices."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    return ", ".join(text) + (", ..." if len(runs) > limit else "") if text else "none"


# --------------------------------------------------------------------------- keys


_C1 = 0xBF58476D1CE4E5B9 - (1 << 64)  # splitmix64's constants, as signed 64-bit integers
_C2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_FEATURE_STEP = 0xD6E8FEB86659FD93 - (1 << 64)


def _lshr(x: Tensor, s: int) -> Tensor:
    return (x >> s) & ((1 << (64 - s)) - 1)  # a logical shift: torch's >> on int64 is arithmetic


def _keys(position: Tensor, feature: Tensor | int, salt: int) -> Tensor:
    """A pseudo-random key in [0, 2³¹) per (stream position, feature): splitmix64 of a number
    that differs for every position of one feature, so it is a pure function of both."""
    x = position * _GOLDEN + feature * _FEATURE_STEP + salt
    x = (x ^ _lshr(x, 30)) * _C1
    x = (x ^ _lshr(x, 27)) * _C2
    return _lshr(x ^ _lshr(x, 31), 33)


def _value_scores(v: Tensor) -> Tensor:
    """Positive float32 values as int64 scores in [0, 2³¹) of the same order (their bit patterns)."""
    return v.contiguous().view(torch.int32).long()


# --------------------------------------------------------------------------- tables


_SCORE_SPAN = 1 << 32


class _Table:
    """Per row, the K entries with the largest scores seen so far, in descending order.

    Scores are integers in [0, 2³¹) (-1 marks an empty slot). Ties go to the entry seen
    first: a candidate must beat the K-th score strictly, and among equal scores a merge
    keeps old entries, then new ones in stream order. Each entry carries its activation,
    stream position and a payload (its window). Entries only move when their rank changes.
    """

    def __init__(self, rows: int, k: int, payload: dict[str, tuple[tuple[int, ...], torch.dtype, float]],
                 device: torch.device):
        self.k = k
        self.score = torch.full((rows, k), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((rows, k), dtype=torch.float32, device=device)
        self.pos = torch.full((rows, k), -1, dtype=torch.long, device=device)
        self.payload = {
            name: torch.full((rows, k, *shape), fill, dtype=dtype, device=device)
            for name, (shape, dtype, fill) in payload.items()
        }

    def merge(self, row: Tensor, score: Tensor, value: Tensor, pos: Tensor,
              gather: Callable[[Tensor], dict[str, Tensor]]) -> None:
        """Merge candidates (in stream order); ``gather(i)`` gives the payload of candidates ``i``."""
        if self.k == 0 or row.numel() == 0:
            return
        k = self.k
        cand = (score > self.score[:, -1][row]).nonzero().squeeze(1)
        if cand.numel() == 0:
            return
        row, score = row[cand], score[cand]
        touched, local = torch.unique(row, return_inverse=True)
        t, device = len(touched), row.device
        old = self.score[touched].reshape(-1)
        valid = old >= 0
        old_local = torch.arange(t, device=device).repeat_interleave(k)[valid]
        old_slot = torch.arange(k, device=device).repeat(t)[valid]
        n_old = len(old_local)
        all_local = torch.cat([old_local, local])
        all_score = torch.cat([old[valid], score])
        # One stable sort by (row ascending, score descending); equal keys keep the order above.
        order = torch.sort(all_local * _SCORE_SPAN + (_SCORE_SPAN // 2 - 1 - all_score), stable=True).indices
        counts = torch.bincount(all_local, minlength=t)
        rank = torch.arange(len(order), device=device) - (torch.cumsum(counts, 0) - counts)[all_local[order]]
        keep = rank < k
        order, rank = order[keep], rank[keep]

        is_old = order < n_old
        src, dst = order[is_old], rank[is_old]
        moved = old_slot[src] != dst
        src, dst = src[moved], dst[moved]
        rows, slots = touched[old_local[src]], old_slot[src]
        tables = [self.score, self.value, self.pos, *self.payload.values()]
        for table in tables:
            table[rows, dst] = table[rows, slots]  # the right side is read before any write

        fresh = order[~is_old] - n_old
        rows, dst = row[fresh], rank[~is_old]
        self.score[rows, dst] = score[fresh]
        self.value[rows, dst] = value[cand[fresh]]
        self.pos[rows, dst] = pos[cand[fresh]]
        for name, values in gather(cand[fresh]).items():
            self.payload[name][rows, dst] = values


class _Collector:
    """The running state of one collection: statistics and three tables, fed block by block."""

    def __init__(self, index: Tensor, context_length: int, window: tuple[int, int], top: int, samples: int,
                 random_contexts: int, has_bos: bool, edges: Tensor, seed: int, device: torch.device):
        before, after = window
        W = before + 1 + after
        n = len(index)
        self.index, self.n, self.T, self.has_bos, self.seed = index, n, context_length, has_bos, seed
        self.edges = edges
        self.inner_edges = edges[1:-1].contiguous()
        self.bins = len(edges) - 1
        self.offsets = torch.arange(-before, after + 1, device=device)
        self.count = torch.zeros(n, dtype=torch.long, device=device)
        self.total = torch.zeros(n, dtype=torch.float64, device=device)
        self.peak = torch.zeros(n, dtype=torch.float32, device=device)
        self.histogram = torch.zeros(n * self.bins, dtype=torch.long, device=device)
        window_payload = {"tokens": ((W,), torch.int32, -1), "acts": ((W,), torch.float32, 0.0)}
        self.tops = _Table(n, top, window_payload, device)
        self.sample = _Table(n, samples, window_payload, device)
        self.randoms = _Table(1, random_contexts, {"tokens": ((W,), torch.int32, -1), "acts": ((W, n), torch.float32, 0.0)},
                              device)

    def add(self, f: Tensor, r: Tensor, j: Tensor, v: Tensor, ids: Tensor, base: int) -> None:
        """Fold in one block: dense activations ``f`` (contexts, T, n), zero at BOS; its positive
        entries (row of ``f`` flattened, feature column, value) in stream order; its token ids
        (contexts, T); ``base``, the stream position of its first token."""
        T = self.T
        self.count += torch.bincount(j, minlength=self.n)
        self.total.index_add_(0, j, v.double())
        self.peak.scatter_reduce_(0, j, v, reduce="amax")
        bins = torch.bucketize(v, self.inner_edges, right=True)
        self.histogram.index_add_(0, j * self.bins + bins, torch.ones_like(bins))
        pos = base + r

        def window_of(rr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """Contexts, positions (clamped into the context) and validity of each window token."""
            ctx, t = rr // T, rr % T
            where = t[:, None] + self.offsets[None, :]
            valid = (where >= 0) & (where < T)
            if self.has_bos:
                valid &= where != 0
            return ctx[:, None].expand_as(where), where.clamp(0, T - 1), valid

        def feature_windows(i: Tensor) -> dict[str, Tensor]:
            ctx, where, valid = window_of(r[i])
            return {"tokens": torch.where(valid, ids[ctx, where], -1),
                    "acts": torch.where(valid, f[ctx, where, j[i][:, None]], 0.0)}

        self.tops.merge(j, _value_scores(v), v, pos, feature_windows)
        if self.sample.k:  # keyed by dictionary index: a feature's sample is the same whatever else is chosen
            self.sample.merge(j, _keys(pos, self.index[j], self.seed), v, pos, feature_windows)
        if self.randoms.k:
            rows = torch.arange(f.shape[0] * T, device=f.device)
            if self.has_bos:
                rows = rows[rows % T != 0]

            def context_windows(i: Tensor) -> dict[str, Tensor]:
                ctx, where, valid = window_of(rows[i])
                return {"tokens": torch.where(valid, ids[ctx, where], -1),
                        "acts": torch.where(valid[..., None], f[ctx, where], 0.0)}

            rpos = base + rows
            self.randoms.merge(torch.zeros_like(rows), _keys(rpos, -1, self.seed + 1),
                               torch.zeros(len(rows), device=f.device), rpos, context_windows)


def _encode_block(dictionary: Any, x: Tensor, index: Tensor, column: Tensor | None, n: int,
                  sparse: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense activations (rows, n) of the chosen features and their positive entries (row,
    column, value), row-major. A dictionary with ``encode_sparse`` (TopK) gives the entries
    directly, so no pass over the dense matrix is needed to find them."""
    rows = x.shape[0]
    if sparse:
        values, indices = dictionary.encode_sparse(x)
        r, slot = (values > 0).nonzero().unbind(1)
        j, v = indices[r, slot], values[r, slot].float()
        if column is not None:  # a subset of the features: map dictionary indices to columns
            j = column[j]
            keep = j >= 0
            r, j, v = r[keep], j[keep], v[keep]
        f = torch.zeros(rows, n, dtype=torch.float32, device=x.device)
        f[r, j] = v
        return f, r, j, v
    f = dictionary.encode(x)
    f = (f if column is None else f[:, index]).float()
    r, j = (f > 0).nonzero().unbind(1)
    return f, r, j, f[r, j]


def _feature_indices(features: Sequence[int] | None, d_sae: int) -> list[int]:
    """Every feature for None; else the given ones, checked, each once, ascending."""
    from .feature_spec import feature_indices

    if features is None:
        return list(range(d_sae))
    chosen = feature_indices(features, d_sae)
    seen: set[int] = set()
    dupes = sorted({i for i in chosen if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if dupes:
        raise ConfigError(f"feature {dupes[0]} is given more than once; list each feature once")
    return sorted(chosen)


def _check_count(name: str, value: Any, minimum: int) -> None:
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_fits(dictionary: Any, lm: Any, allow_other_model: bool) -> None:
    """The checks of ``saekit eval``, for the point a dictionary reads (a transcoder's input)."""
    from ..evaluation import check_model
    from ..errors import DimensionError
    from ..hooks import hook_width, resolve_hook_point

    cfg = dictionary.cfg
    if not cfg.hook:
        raise ConfigError("the dictionary does not record the hook point it reads; set dictionary.cfg.hook (e.g. 'resid_post.9')")
    resolve_hook_point(lm, cfg.hook)
    width = hook_width(lm, cfg.hook)
    if width != cfg.d_in:
        raise DimensionError(
            f"the dictionary takes activations of width {cfg.d_in} but {cfg.hook} of {lm.name} has width {width}; "
            f"it was trained on another model ({cfg.model or 'unrecorded'})"
        )
    check_model(dictionary, None if allow_other_model else lm.name)


def histogram_edges(scale: float, device: torch.device | str = "cpu") -> Tensor:
    """The shared log-spaced bin edges: `BINS_PER_DECADE` per decade over `HISTOGRAM_DECADES`, times ``scale``."""
    lo, hi = HISTOGRAM_DECADES
    exponents = torch.linspace(lo, hi, (hi - lo) * BINS_PER_DECADE + 1, dtype=torch.float64)
    return (scale * 10.0**exponents).float().to(device)


@torch.no_grad()
def collect_examples(
    dictionary: Any,
    lm: Any,
    *,
    features: Sequence[int] | None = None,
    tokens: int = 200_000,
    dataset: str | None = None,
    text_field: str = "text",
    context_length: int = 128,
    top: int = 20,
    samples: int = 40,
    window: tuple[int, int] = (24, 8),
    random_contexts: int = 32,
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    allow_other_model: bool = False,
    name: str | None = None,
) -> FeatureExamples:
    """One streaming pass over ``tokens`` tokens of ``dataset`` (the embedded corpus by default).

    The train split is packed into contexts of ``context_length`` tokens as the trainer
    packs it (shuffled with ``seed``), ``batch_size`` contexts per forward pass; BOS
    positions are never selected and count as outside the text in windows. ``window`` is
    (tokens before, tokens after) the selected one. Everything runs on the dictionary's
    device. ``name`` is how the result names the dictionary (default: its recorded
    model and hook). Every argument is checked before the model runs.
    """
    from ..data import ContextStream, validate_source
    from ..hooks import read_activations

    cfg = dictionary.cfg
    chosen = _feature_indices(features, cfg.d_sae)
    _check_count("tokens", tokens, 1)
    _check_count("top", top, 1)
    _check_count("samples", samples, 0)
    _check_count("random_contexts", random_contexts, 0)
    _check_count("batch_size", batch_size, 1)
    _check_count("seed", seed, 0)
    _check_count("context_length", context_length, 2)
    try:
        before, after = (operator.index(w) for w in window)
    except (TypeError, ValueError):
        raise ConfigError(f"window must be two integers (tokens before, tokens after), got {window!r}") from None
    if before < 0 or after < 0:
        raise ConfigError(f"window must be two non-negative integers (tokens before, tokens after), got {window!r}")
    if context_length > lm.max_length:
        raise ConfigError(f"context_length {context_length} is longer than {lm.name} takes ({lm.max_length} tokens)")
    _check_fits(dictionary, lm, allow_other_model)
    validate_source(dataset, text_field)

    device = dictionary.W_dec.device
    dtype = dictionary.W_dec.dtype
    n, T = len(chosen), context_length
    index = torch.tensor(chosen, dtype=torch.long, device=device)
    column = None
    if n < cfg.d_sae:  # dictionary index -> column of the chosen features (-1: not chosen)
        column = torch.full((cfg.d_sae,), -1, dtype=torch.long, device=device)
        column[index] = torch.arange(n, device=device)
    sparse = callable(getattr(dictionary, "encode_sparse", None))
    stream = ContextStream(dataset, lm.tokenizer, context_length=T, batch_size=batch_size, seed=seed,
                           text_field=text_field)
    has_bos = stream.bos_id is not None
    per_context = T - int(has_bos)
    contexts_wanted = -(-tokens // per_context)
    scale = cfg.target_scale if cfg.transcoder else cfg.act_scale
    state = _Collector(index, T, (before, after), top, samples, random_contexts, has_bos,
                       histogram_edges(scale, device), seed, device)
    budget = ENCODE_BLOCK if device.type == "cpu" else ENCODE_BLOCK_ACCELERATOR
    block = max(1, budget // (T * cfg.d_sae))  # contexts per encoded block

    contexts_done = 0
    for batch in stream:
        rows = min(batch.input_ids.shape[0], contexts_wanted - contexts_done)
        ids = batch.input_ids[:rows]
        acts = read_activations(lm, [cfg.hook], ids, batch.attention_mask[:rows])[cfg.hook]
        ids = ids.to(device=device, dtype=torch.int32)
        for c0 in range(0, rows, block):
            x = acts[c0:c0 + block].to(device=device, dtype=dtype)
            c = x.shape[0]
            f, r, j, v = _encode_block(dictionary, x.reshape(c * T, -1), index, column, n, sparse)
            if has_bos:  # BOS is outside the text: never selected, not counted
                keep = r % T != 0
                r, j, v = r[keep], j[keep], v[keep]
                f.view(c, T, n)[:, 0] = 0
            state.add(f.view(c, T, n), r, j, v, ids[c0:c0 + c], (contexts_done + c0) * T)
        contexts_done += rows
        if progress is not None:
            progress({"phase": "collect", "done": min(contexts_done * per_context, tokens), "total": tokens,
                      "unit": "tok"})
        if contexts_done >= contexts_wanted:
            break
    if contexts_done == 0:
        raise DataError(f"the corpus {dataset or 'embedded'} gave no contexts of {T} tokens")
    tokens_seen = contexts_done * per_context
    if contexts_done < contexts_wanted:
        logger.warning("the corpus ran out after %d tokens of the %d asked for", tokens_seen, tokens)
    return _result(dictionary, lm, name, index, tokens_seen, (before, after), state)


def _result(dictionary: Any, lm: Any, name: str | None, index: Tensor, tokens_seen: int, window: tuple[int, int],
            state: _Collector) -> FeatureExamples:
    cfg = dictionary.cfg

    def table(t: _Table, by_value: bool) -> tuple[Tensor, Tensor, Tensor]:
        values = torch.where(t.pos >= 0, t.value, float("nan"))
        toks, acts = t.payload["tokens"], t.payload["acts"]
        if by_value:  # the sample: chosen by key, shown by value (empty slots last)
            order = torch.sort(torch.where(t.pos >= 0, t.value, float("-inf")), dim=1, descending=True,
                               stable=True).indices
            values = values.gather(1, order)
            toks = toks.gather(1, order[..., None].expand_as(toks))
            acts = acts.gather(1, order[..., None].expand_as(acts))
        return values, toks.long(), acts

    top_values, top_tokens, top_acts = table(state.tops, False)
    sample_values, sample_tokens, sample_acts = table(state.sample, True)
    randoms = state.randoms  # shown in stream order
    filled = randoms.pos[0] >= 0
    order = torch.argsort(torch.where(filled, randoms.pos[0], torch.iinfo(torch.long).max))[: int(filled.sum())]
    tensors = _to_cpu(dict(
        features=index, count=state.count, activation_sum=state.total, max_activation=state.peak,
        bin_edges=state.edges, histogram=state.histogram.reshape(state.n, -1),
        top_values=top_values, top_tokens=top_tokens, top_acts=top_acts,
        sample_values=sample_values, sample_tokens=sample_tokens, sample_acts=sample_acts,
        random_tokens=randoms.payload["tokens"][0, order].long(),
        random_acts=randoms.payload["acts"][0, order].permute(2, 0, 1).contiguous(),
    ))
    return FeatureExamples(dictionary=name or f"{cfg.model or 'unrecorded model'}/{cfg.hook}", hook=cfg.hook,
                           model=lm.name, tokens_seen=tokens_seen, window=window, **tensors)


def _to_cpu(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Copy a GPU's results to the CPU through pinned memory, all at once: the tables are
    hundreds of MB for thousands of features, and a plain copy into pageable memory took a
    fifth of the model's time for 200k tokens on an H200."""
    if all(t.device.type == "cpu" for t in tensors.values()):
        return tensors
    out = {name: t.to("cpu", non_blocking=True) for name, t in tensors.items()}
    for t in tensors.values():
        if t.device.type == "cuda":
            torch.cuda.synchronize(t.device)
            break
    return out
