"""Dictionary features as classifiers, beside a logistic probe on the raw activations.

For texts of two classes, a dictionary's features are read at its hook point (a
transcoder's input) at every token of each text and pooled: by default averaged over the
text's own tokens (special tokens excluded), as SAEBench's sparse probing does; or taken
at one token (``last``, as the truth probes do, or an index). The features are encoded
token by token *before* pooling, so a mean-pooled feature is the feature's mean
activation over the text. The raw activations are pooled over exactly the same tokens.

On the training split only, features are ranked by the absolute difference of their
class means (``mean-diff``, SAEBench's choice: unnormalised, so a feature that fires
strongly on one class ranks high however variable it is), or by that difference divided
by the pooled within-class standard deviation (``standardised``, a t-statistic that
favours features which fire reliably). A logistic regression is then fitted on the top k
features for each k, and one on all d raw dimensions; each is scored on the held-out
split. A learning curve repeats every fit (feature selection included) on stratified
subsets of the training split of several sizes, over a few random draws, to show how many
examples each method needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..progress import Phase, ProgressCallback
from .activations import (Position, default_cache_dir, padded_batches, parse_position, statement_activations,
                          tokenize_statements)
from .datasets import TruthDataset
from .metrics import accuracy, auroc, train_test_split
from .probes import LogisticRegressionProbe
from .text_data import LabelledTexts

logger = logging.getLogger(__name__)

RANKINGS = ("mean-diff", "standardised")
DEFAULT_SIZES = (1, 2, 5, 10, 20, 50)
RAW = "raw"
NEEDED_WITHIN = 0.02
"""A method "needs" the fewest training examples at which its mean held-out accuracy is
within this of its accuracy when trained on the whole training split."""
_ENCODE_BLOCK = 4096  # tokens encoded at once: (4096, F) floats, 75 MB for F = 4,608
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class ClassifyConfig:
    """What to pool, how to rank, which k, which training sizes, how to split."""

    position: Position = "mean"
    sizes: tuple[int, ...] = DEFAULT_SIZES
    train_sizes: tuple[int, ...] | None = None  # None: 8, 16, 32, ... and the whole training split
    repeats: int = 3
    rank: str = "mean-diff"
    l2: float = 1e-2
    test_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "position", parse_position(self.position))
        if not self.sizes or any(k < 1 for k in self.sizes):
            raise ConfigError(f"the numbers of features (--sizes) must be whole numbers >= 1, not {list(self.sizes)}")
        object.__setattr__(self, "sizes", tuple(sorted(set(int(k) for k in self.sizes))))
        if self.train_sizes is not None:
            if not self.train_sizes or any(n < 2 for n in self.train_sizes):
                raise ConfigError("every training size (--train-sizes) must be at least 2, one text of each class; "
                                  f"got {list(self.train_sizes)}")
            object.__setattr__(self, "train_sizes", tuple(sorted(set(int(n) for n in self.train_sizes))))
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be at least 1, not {self.repeats}")
        if self.rank not in RANKINGS:
            raise ConfigError(f"no ranking {self.rank!r}; choose from {', '.join(RANKINGS)}")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ConfigError(f"the L2 penalty must be a finite number >= 0, not {self.l2}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"the held-out fraction must be between 0 and 1, not {self.test_fraction}")


# ----------------------------------------------------------------------------- checks


def default_train_sizes(n_train: int) -> tuple[int, ...]:
    """8, 16, 32, ... below the training split's size, then the whole split."""
    sizes, n = [], 8
    while n < n_train:
        sizes.append(n)
        n *= 2
    return tuple(sizes) + (n_train,)


def split(data: LabelledTexts, config: ClassifyConfig) -> tuple[list[int], list[int]]:
    """The training and held-out indices (stratified, deterministic for the seed)."""
    return train_test_split(list(data.labels), config.test_fraction, config.seed)


def check_classify(data: LabelledTexts, d_sae: int, config: ClassifyConfig) -> tuple[list[int], list[int]]:
    """Everything checkable before a model loads: the split, the sizes against the split and
    the dictionary, an index position against each text. Returns the split."""
    train, test = split(data, config)
    too_many = [k for k in config.sizes if k > d_sae]
    if too_many:
        raise ConfigError(f"--sizes asks for {too_many[0]} features but the dictionary has {d_sae}")
    if config.train_sizes is not None and config.train_sizes[-1] > len(train):
        raise ConfigError(f"--train-sizes asks for {config.train_sizes[-1]} training examples but the training split "
                          f"holds {len(train)} ({len(data)} texts, {config.test_fraction:g} held out); use sizes up to "
                          f"{len(train)}")
    check_position_fits(data, config.position)
    return train, test


def check_position_fits(data: LabelledTexts, position: Position) -> None:
    """Refuse an index that no tokenizer could reach in some text, before any model loads.

    A tokenizer gives a text at most one token per UTF-8 byte, plus one (a word-start
    marker): an index beyond that is outside the text whatever the model. Indices within
    it are checked exactly against the model's tokens before the pass.
    """
    if not isinstance(position, int):
        return
    for i, text in enumerate(data.texts):
        most = len(text.encode()) + 1
        if not -most <= position < most:
            raise ConfigError(f"position {position} is outside text {i} ({text[:60]!r}), which has at most {most} "
                              "tokens; use a smaller index, or 'mean' or 'last'")


# ----------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class PooledActivations:
    """Per text, the raw activations (N, d) and the dictionary's features (N, F), pooled
    over the same tokens."""

    raw: Tensor
    features: Tensor
    position: Position

    def __post_init__(self) -> None:
        if self.raw.ndim != 2 or self.features.ndim != 2 or self.raw.shape[0] != self.features.shape[0]:
            raise ConfigError(f"raw activations {tuple(self.raw.shape)} and features {tuple(self.features.shape)} "
                              "must be (texts, width) for the same texts")


def _weights_hash(dictionary: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(dictionary.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def encode_rows(dictionary: Any, acts: Tensor) -> Tensor:
    """``dictionary.encode`` of (N, d) activations, in blocks, as float32 on the CPU."""
    param = dictionary.W_enc
    out = []
    with torch.no_grad():
        for begin in range(0, acts.shape[0], _ENCODE_BLOCK):
            block = acts[begin:begin + _ENCODE_BLOCK].to(param.device, param.dtype)
            out.append(dictionary.encode(block).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, dictionary.cfg.d_sae)


def _mean_cache_path(folder: Path, lm: Any, dictionary: Any, data: LabelledTexts) -> Path:
    from .activations import file_slug

    key = json.dumps({"format": _CACHE_FORMAT, "model": lm.name, "dtype": str(lm.dtype), "hook": dictionary.cfg.hook,
                      "texts": data.content_hash, "dictionary": _weights_hash(dictionary)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return folder / file_slug(lm.name) / dictionary.cfg.hook / f"classify-{file_slug(data.name)}-mean-{digest}.safetensors"


def _read_mean_cache(path: Path, n: int, d: int, d_sae: int) -> PooledActivations | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
        raw, features = tensors["raw"], tensors["features"]
    except (SafetensorError, KeyError, OSError) as e:
        logger.warning("ignoring the unreadable cache file %s (%s); recomputing", path, e)
        return None
    if raw.shape != (n, d) or features.shape != (n, d_sae):
        logger.warning("ignoring the cache file %s: its shapes do not match; recomputing", path)
        return None
    return PooledActivations(raw, features, "mean")


def _mean_pooled_pass(lm: Any, dictionary: Any, data: LabelledTexts, batch_size: int,
                      progress: ProgressCallback | None) -> PooledActivations:
    """One forward pass per batch; each text's own tokens encoded, then both averaged.

    ``statement_activations`` averages the raw activations but cannot average features,
    which must be encoded token by token first (the mean of the codes is not the code of
    the mean); this pass does both from the same activations, over the same tokens.
    """
    from ..hooks import read_activations

    hook = dictionary.cfg.hook
    encoded = tokenize_statements(lm.tokenizer, data.texts, lm.max_length, "mean")
    raw_rows: list[Tensor] = []
    feature_rows: list[Tensor] = []
    phase = Phase(progress, f"activations of {data.name}", len(encoded), unit="texts")
    for batch, ids, mask in padded_batches(lm.tokenizer, encoded, batch_size):  # padded as statement_activations pads
        with torch.no_grad():
            acts = read_activations(lm, [hook], ids, mask)[hook].float().cpu()
        own = [acts[r, start:end] for r, (_, start, end) in enumerate(batch)]
        codes = encode_rows(dictionary, torch.cat(own))  # one encode per batch, then split back per text
        offset = 0
        for tokens in own:
            raw_rows.append(tokens.mean(0))
            feature_rows.append(codes[offset:offset + len(tokens)].mean(0))
            offset += len(tokens)
        phase.advance(len(batch))
    return PooledActivations(torch.stack(raw_rows), torch.stack(feature_rows), "mean")


def pooled_activations(lm: Any, dictionary: Any, data: LabelledTexts, position: Position = "mean", *,
                       cache_dir: str | Path | None = None, use_cache: bool = True, batch_size: int = 32,
                       progress: ProgressCallback | None = None) -> PooledActivations:
    """The raw activations at the dictionary's hook point and its features, pooled alike.

    At one token (``last`` or an index) the raw activations come from
    ``statement_activations`` (and its cache, shared with the truth probes) and the
    features are their codes. Averaged (``mean``), one pass encodes every token and
    averages both; the result is cached per model, hook point, texts and dictionary weights.
    """
    from ..io.files import atomic_save_tensors, make_folder

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    position = parse_position(position)
    if position != "mean":
        as_statements = TruthDataset(data.name, data.texts, data.labels, (1,) * len(data), source=data.source)
        raw = statement_activations(lm, as_statements, [dictionary.cfg.hook], position, cache_dir=cache_dir,
                                    use_cache=use_cache, batch_size=batch_size, progress=progress)[dictionary.cfg.hook]
        return PooledActivations(raw, encode_rows(dictionary, raw), position)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _mean_cache_path(folder, lm, dictionary, data)
    if use_cache:
        cached = _read_mean_cache(path, len(data), dictionary.cfg.d_in, dictionary.cfg.d_sae)
        if cached is not None:
            return cached
        make_folder(folder, "--cache-dir")
    pooled = _mean_pooled_pass(lm, dictionary, data, batch_size, progress)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors({"raw": pooled.raw, "features": pooled.features}, path, metadata={
            "model": lm.name, "hook": dictionary.cfg.hook, "texts": data.content_hash, "position": "mean"})
    return pooled


# ----------------------------------------------------------------------------- selection and fits


@dataclass(frozen=True)
class RankedFeature:
    """One feature's class means on the training split and its ranking score."""

    index: int
    mean_0: float
    mean_1: float
    score: float

    @property
    def mean_difference(self) -> float:
        """Class 1's mean minus class 0's."""
        return self.mean_1 - self.mean_0

    @property
    def sign(self) -> int:
        """+1 where the feature is higher on class 1, -1 where on class 0."""
        return 1 if self.mean_difference >= 0 else -1

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "mean_difference": self.mean_difference, "sign": self.sign,
                "mean_0": self.mean_0, "mean_1": self.mean_1,
                "score": self.score if math.isfinite(self.score) else None}  # None: constant within each class


def rank_features(features: Tensor, labels: Tensor, rank: str = "mean-diff") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features ordered best first, and per feature the class means and the score.

    ``mean-diff``: |μ₁ − μ₀|. ``standardised``: |μ₁ − μ₀| / s, with s² the pooled
    within-class variance; a feature constant within each class but different between
    them scores infinity, one constant everywhere 0. Ties keep index order.
    """
    if rank not in RANKINGS:
        raise ConfigError(f"no ranking {rank!r}; choose from {', '.join(RANKINGS)}")
    f = features.double()
    y = labels.to(torch.long)
    f0, f1 = f[y == 0], f[y == 1]
    mean_0, mean_1 = f0.mean(0), f1.mean(0)
    diff = (mean_1 - mean_0).abs()
    if rank == "mean-diff":
        score = diff
    else:
        n0, n1 = len(f0), len(f1)
        pooled = (((f0 - mean_0) ** 2).sum(0) + ((f1 - mean_1) ** 2).sum(0)) / max(n0 + n1 - 2, 1)
        score = torch.where(pooled > 0, diff / pooled.clamp_min(1e-300).sqrt(),
                            torch.where(diff > 0, torch.full_like(diff, math.inf), torch.zeros_like(diff)))
    order = torch.argsort(-score, stable=True)
    return order, mean_0, mean_1, score


@dataclass(frozen=True)
class HeldOutScore:
    """One method trained on ``n_train`` examples, scored on the held-out split."""

    method: str  # "raw", or "top k"
    k: int | None  # features used; None for the raw activations
    n_train: int
    accuracy: float
    auroc: float
    features: tuple[int, ...] = ()


def method_name(k: int | None) -> str:
    return RAW if k is None else f"top {k}"


def _fit_and_score(X_train: Tensor, y_train: Tensor, X_test: Tensor, y_test: Tensor, l2: float) -> tuple[float, float]:
    probe = LogisticRegressionProbe(l2).fit(X_train, y_train)
    scores = probe.scores(X_test)
    return accuracy(scores, y_test, probe.threshold), auroc(scores, y_test)


def fit_methods(pooled: PooledActivations, labels: Tensor, train: Sequence[int], test: Sequence[int],
                config: ClassifyConfig) -> tuple[list[HeldOutScore], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """The raw probe and the top-k probes, trained on ``train`` (features ranked on it alone)
    and scored on ``test``; with the ranking (``rank_features``'s order, class means, score)."""
    tr, te = torch.as_tensor(list(train)), torch.as_tensor(list(test))
    y_train, y_test = labels[tr], labels[te]
    raw_acc, raw_auroc = _fit_and_score(pooled.raw[tr], y_train, pooled.raw[te], y_test, config.l2)
    out = [HeldOutScore(RAW, None, len(tr), raw_acc, raw_auroc)]
    ranking = rank_features(pooled.features[tr], y_train, config.rank)
    order = ranking[0]
    for k in config.sizes:
        top = order[:k]
        acc, area = _fit_and_score(pooled.features[tr][:, top], y_train, pooled.features[te][:, top], y_test, config.l2)
        out.append(HeldOutScore(method_name(k), k, len(tr), acc, area, tuple(int(i) for i in top)))
    return out, ranking


def stratified_subset(train: Sequence[int], labels: Sequence[int], n: int, rng: random.Random) -> list[int]:
    """``n`` of the training indices, the classes in the split's proportions (at least one each)."""
    positives = [i for i in train if labels[i] == 1]
    negatives = [i for i in train if labels[i] == 0]
    if n >= len(train):
        return sorted(train)
    n_pos = round(n * len(positives) / len(train))
    n_pos = min(max(n_pos, 1, n - len(negatives)), n - 1, len(positives))
    return sorted(rng.sample(positives, n_pos) + rng.sample(negatives, n - n_pos))


@dataclass(frozen=True)
class CurvePoint:
    """A method's held-out figures after training on ``n_train`` examples, over the draws."""

    method: str
    n_train: int
    accuracies: tuple[float, ...]
    aurocs: tuple[float, ...]

    @property
    def accuracy(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def accuracy_std(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def auroc(self) -> float:
        return statistics.fmean(self.aurocs)

    @property
    def auroc_std(self) -> float:
        return statistics.pstdev(self.aurocs) if len(self.aurocs) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "n_train": self.n_train, "accuracy": self.accuracy,
                "accuracy_std": self.accuracy_std, "auroc": self.auroc, "auroc_std": self.auroc_std,
                "accuracies": list(self.accuracies), "aurocs": list(self.aurocs)}


def learning_curve(pooled: PooledActivations, labels: Tensor, train: Sequence[int], test: Sequence[int],
                   config: ClassifyConfig, full: Sequence[HeldOutScore] | None = None,
                   progress: ProgressCallback | None = None) -> list[CurvePoint]:
    """Every method at each training size: ``config.repeats`` stratified draws of that many
    training examples (one draw, the whole split, at its full size), features reselected
    on each draw; all scored on the same held-out split. ``full``: the scores already
    fitted on the whole split, reused for its size."""
    sizes = config.train_sizes or default_train_sizes(len(train))
    label_list = labels.tolist()
    methods = [None, *config.sizes]
    scores: dict[tuple[str, int], list[tuple[float, float]]] = {}
    draws = [(n, r) for n in sizes for r in range(1 if n >= len(train) else config.repeats)]
    phase = Phase(progress, "learning curve", len(draws), unit="draws")
    for n, r in draws:
        if n >= len(train) and full is not None:
            got = list(full)
        else:
            rng = random.Random(f"{config.seed}/{n}/{r}")  # each (size, draw) its own stream: adding one changes no other
            subset = stratified_subset(train, label_list, n, rng)
            got, _ = fit_methods(pooled, labels, subset, test, config)
        for s in got:
            scores.setdefault((s.method, n), []).append((s.accuracy, s.auroc))
        phase.advance(1)
    return [CurvePoint(method_name(k), n, tuple(a for a, _ in scores[(method_name(k), n)]),
                       tuple(u for _, u in scores[(method_name(k), n)]))
            for k in methods for n in sizes]


# ----------------------------------------------------------------------------- the whole experiment


@dataclass
class ClassifyResult:
    """The held-out table, the ranked features and the learning curve of one experiment."""

    data: str
    source: str
    classes: tuple[str, str]
    counts: tuple[int, int]
    n_train: int
    n_test: int
    model: str
    hook: str
    d: int
    d_sae: int
    config: ClassifyConfig
    scores: list[HeldOutScore]
    top_features: list[RankedFeature]
    curve: list[CurvePoint] = field(default_factory=list)

    def score(self, method: str) -> HeldOutScore:
        return next(s for s in self.scores if s.method == method)

    @property
    def chance(self) -> float:
        """The accuracy of always answering the larger class."""
        return max(self.counts) / sum(self.counts)

    def examples_needed(self, method: str) -> int | None:
        """The fewest training examples (of the curve's sizes) at which the method's mean
        held-out accuracy is within NEEDED_WITHIN of its accuracy on the whole split; None
        where that accuracy is itself within NEEDED_WITHIN of chance."""
        full = self.score(method).accuracy
        if full - NEEDED_WITHIN <= self.chance:
            return None  # near chance: no examples at all come "within" of it, so a count would mislead
        points = sorted((p for p in self.curve if p.method == method), key=lambda p: p.n_train)
        return next((p.n_train for p in points if p.accuracy >= full - NEEDED_WITHIN), None)

    def table(self, top: int = 10) -> str:
        c = self.config
        lines = [
            f"{self.data}: {self.counts[0] + self.counts[1]} texts ({self.counts[0]} {self.classes[0]!r} = 0, "
            f"{self.counts[1]} {self.classes[1]!r} = 1); {self.n_train} for training, {self.n_test} held out",
            f"{self.model} {self.hook}, position {c.position}; features ranked by "
            f"{'|mean difference|' if c.rank == 'mean-diff' else '|mean difference| / pooled std'} on the training "
            "split; logistic regression (L2 " + f"{c.l2:g})",
            "",
            f"{'method':<22} {'accuracy':>8} {'AUROC':>7} {'examples needed':>16}",
        ]
        for s in self.scores:
            label = f"raw activations ({self.d})" if s.k is None else f"top {s.k} feature{'s' if s.k != 1 else ''}"
            needed = self.examples_needed(s.method) if self.curve else None
            lines.append(f"{label:<22} {s.accuracy:>8.3f} {s.auroc:>7.3f} {needed if needed is not None else '-':>16}")
        if self.curve:
            lines.append(f"examples needed: the fewest training examples at which the mean held-out accuracy "
                         f"({c.repeats} draws) is within {NEEDED_WITHIN:g} of the accuracy with all {self.n_train} "
                         f"(-: that accuracy is within {NEEDED_WITHIN:g} of chance, {self.chance:.3f})")
        if top > 0 and self.top_features:
            lines += ["", f"top features (on the training split; + fires more on {self.classes[1]!r}, - on "
                      f"{self.classes[0]!r})",
                      f"{'rank':>4} {'feature':>8} {'sign':>4} {'mean diff':>10} {'mean ' + self.classes[0][:10]:>16} "
                      f"{'mean ' + self.classes[1][:10]:>16} {'score':>8}"]
            for r, f in enumerate(self.top_features[:top], start=1):
                lines.append(f"{r:>4} {f.index:>8} {'+' if f.sign > 0 else '-':>4} {f.mean_difference:>10.4g} "
                             f"{f.mean_0:>16.4g} {f.mean_1:>16.4g} {f.score:>8.4g}")
        return "\n".join(lines)

    def curve_table(self) -> str:
        """Mean held-out accuracy (± its spread over the draws) by training size and method."""
        if not self.curve:
            return ""
        methods = list(dict.fromkeys(p.method for p in self.curve))
        sizes = sorted({p.n_train for p in self.curve})
        at = {(p.method, p.n_train): p for p in self.curve}
        lines = ["learning curve: held-out accuracy (mean ± std over draws) by training examples",
                 f"{'examples':>8} " + " ".join(f"{m:>13}" for m in methods)]
        for n in sizes:
            cells = [f"{at[(m, n)].accuracy:.3f} ± {at[(m, n)].accuracy_std:.3f}" for m in methods]
            lines.append(f"{n:>8} " + " ".join(f"{c:>13}" for c in cells))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "saekit.classify/1",
            "data": self.data, "source": self.source, "classes": {"0": self.classes[0], "1": self.classes[1]},
            "counts": {"0": self.counts[0], "1": self.counts[1]}, "n_train": self.n_train, "n_test": self.n_test,
            "model": self.model, "hook": self.hook, "d": self.d, "d_sae": self.d_sae,
            "config": dataclasses.asdict(self.config),
            "held_out": [{**dataclasses.asdict(s), "features": list(s.features),
                          "examples_needed": self.examples_needed(s.method) if self.curve else None}
                         for s in self.scores],
            "top_features": [f.to_dict() for f in self.top_features],
            "learning_curve": [p.to_dict() for p in self.curve],
        }


def classify_activations(pooled: PooledActivations, data: LabelledTexts, config: ClassifyConfig, *,
                         model: str = "", hook: str = "", curve: bool = True,
                         progress: ProgressCallback | None = None) -> ClassifyResult:
    """The experiment on activations already pooled (``pooled_activations``)."""
    if pooled.raw.shape[0] != len(data):
        raise ConfigError(f"{pooled.raw.shape[0]} pooled activations for {len(data)} texts")
    train, test = check_classify(data, pooled.features.shape[1], config)
    labels = torch.tensor(data.labels)
    scores, (order, mean_0, mean_1, score) = fit_methods(pooled, labels, train, test, config)
    shown = order[:max(config.sizes)].tolist()
    top = [RankedFeature(i, float(mean_0[i]), float(mean_1[i]), float(score[i])) for i in shown]
    points = learning_curve(pooled, labels, train, test, config, full=scores, progress=progress) if curve else []
    return ClassifyResult(data.name, data.source, data.classes, data.counts, len(train), len(test), model, hook,
                          pooled.raw.shape[1], pooled.features.shape[1], config, scores, top, points)


def classify(lm: Any, dictionary: Any, data: LabelledTexts, config: ClassifyConfig | None = None, *,
             cache_dir: str | Path | None = None, use_cache: bool = True, batch_size: int = 32, curve: bool = True,
             progress: ProgressCallback | None = None) -> ClassifyResult:
    """Dictionary features as classifiers of ``data``, beside a logistic probe on the raw
    activations at the same hook point and tokens; see the module's docstring."""
    from ..evaluation import check_dictionary_fits

    config = config or ClassifyConfig()
    check_classify(data, dictionary.cfg.d_sae, config)
    check_dictionary_fits(dictionary, lm)
    pooled = pooled_activations(lm, dictionary, data, config.position, cache_dir=cache_dir, use_cache=use_cache,
                                batch_size=batch_size, progress=progress)
    return classify_activations(pooled, data, config, model=lm.name, hook=dictionary.cfg.hook, curve=curve,
                                progress=progress)


def write_curve_plot(path: str | Path, result: ClassifyResult) -> None:
    """Held-out accuracy and AUROC against training examples, one line per method (the
    raw probe dashed), each with its spread over the draws shaded."""
    from matplotlib.figure import Figure

    from ..report import write_png

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    methods = list(dict.fromkeys(p.method for p in result.curve))
    for k, method in enumerate(methods):
        points = sorted((p for p in result.curve if p.method == method), key=lambda p: p.n_train)
        xs = [p.n_train for p in points]
        label = f"raw activations ({result.d})" if method == RAW else f"{method} feature{'' if method == 'top 1' else 's'}"
        style = dict(color="black", ls="--") if method == RAW else dict(color=f"C{k - 1}", ls="-")
        for ax, mean, std in ((axes[0], "accuracy", "accuracy_std"), (axes[1], "auroc", "auroc_std")):
            ys = [getattr(p, mean) for p in points]
            spread = [getattr(p, std) for p in points]
            ax.plot(xs, ys, marker="o", ms=3, label=label, **style)
            ax.fill_between(xs, [y - s for y, s in zip(ys, spread)], [y + s for y, s in zip(ys, spread)],
                            color=style["color"], alpha=0.12, lw=0)
    sizes = sorted({p.n_train for p in result.curve})
    for ax, name in zip(axes, ("held-out accuracy", "held-out AUROC")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training examples")
        ax.set_ylabel(name)
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_ylim(0.4, 1.01)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{result.data}: {result.model} {result.hook}, position {result.config.position}, "
                 f"features ranked by {result.config.rank}", fontsize=9)
    fig.tight_layout()
    write_png(fig, Path(path), dpi=120)
