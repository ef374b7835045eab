"""SHIFT: removing a spurious signal from a linear classifier by ablating dictionary features.

Spurious Human-interpretable Feature Trimming (Marks et al. 2024, "Sparse Feature
Circuits", arXiv:2403.19647, §4). A classifier is trained on data where the concept it
should use (the *intended* one: a profession, a topic) always comes with another (the
*spurious* one: gender, a style cue), so it may read either. SHIFT finds which dictionary
features it reads, judges which of them carry the spurious concept, ablates those
(error terms kept), and measures the classifier again on data where the two concepts
are decorrelated; then it retrains the classifier on the edited activations, still on
the ambiguous data ("SHIFT + retrain"). The steps, as here:

1. The classifier is a linear probe (``saekit.probes``: logistic regression by default)
   on the activation at one hook point, pooled over each text's tokens (the mean over
   the tokens after BOS, as Marks et al.; or the last token), trained on the ambiguous
   set with the intended labels.
2. Each feature's effect on the probe: its node effect (``attribution``: attribution
   patching or integrated gradients through the spliced model) with the metric the
   probe's logit signed by each text's label (``+score`` for label 1, ``−score`` for 0,
   as in Marks et al.'s code, so that effects of both classes add up instead of
   cancelling), patched to the ablation value at every position, summed over positions
   and averaged over the ambiguous training texts. The ``top_k`` features by |effect|
   are the candidates; error terms are never candidates (they are kept).
3. The judge. In the paper a person reads each candidate's examples and says which are
   about the spurious concept; here, either the user gives the features (``features``,
   after reading their dashboards, say) or an automatic judge decides from a small
   labelled *judge* set where the concepts are decorrelated: a feature's association
   with a concept is ``2·|AUROC − 0.5|`` (0: none, 1: it separates the concept's values
   perfectly) of its pooled activation against the concept's labels, and a candidate is
   judged spurious when its association with the spurious concept is at least
   ``min_association`` and above its association with the intended one. (The judge set
   is for judging features only.)
4. The ablation: the judged features set, at every position, to zero or to their mean
   over the training texts' tokens (``ablation``), every other node as computed. The
   probe is measured again (SHIFT) and a probe of the same kind is trained on the
   edited ambiguous activations (SHIFT + retrain). Beside them, the skyline: the paper's
   "oracle", a probe trained where the concepts are decorrelated, on the unedited
   activations (here by two-fold cross-validation on the balanced set, which is the
   task's only decorrelated set large enough).

Accuracies (``ShiftAccuracy``): on an ambiguous test set (where both concepts agree,
so one figure), and on a balanced test set against the intended labels, against the
spurious labels, and the worst of the four (intended, spurious) groups against the
intended labels. A probe that reads only the spurious concept scores about 1 on the
spurious labels and 0.5 on the intended ones; SHIFT succeeds when the spurious figure
falls to about 0.5 and the intended one rises.

The probe reads the activation as the spliced model writes it (``decode(f) + err`` at a
spliced point, with the ablations upstream), read by a forward hook that runs after
every edit at that point (``hooks.watch_activation``). Every dictionary must write at or before the
probe's hook point (a feature downstream cannot change what the probe reads).

On stored activations (one vector per text, say at one token), ``shift`` takes a sparse
autoencoder in place of a model: the probe reads ``decode(f) + err`` at the dictionary's
own hook point, and each feature's effect is exact (the decoder is affine, so ablating a
feature moves the probe's input by ``(v − f_i) W_dec[i]``).

``spurious_task`` builds a small synthetic task of this kind: sentences whose topic
(sports or cooking) is the intended concept and whose subject's gender (male or female)
the spurious one, deterministic by seed.

To ablate features and re-measure any other metric on a prompt file, see
``scoring.ablated_metric(..., ablate_kept=True)`` (mean ablation, error terms kept).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import Tensor

from ..checks import is_integer, is_real
from ..dictionaries import Dictionary
from ..errors import ConfigError, DataError, HookPointError
from ..progress import Phase, ProgressCallback
from ..hooks import WatchedActivation, WatchStop, watch_activation
from .ablation import MeanAblation
from .attribution import DEFAULT_STEPS, Node, attribution_patching, check_count, integrated_gradients
from .data import CircuitBatch, CircuitData, CircuitExample, _prefix_ids
from .graph import Nodes, SplicedModel
from .spurious_data import LabelledSet, SpuriousTask

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "last"]
AblationKind = Literal["zero", "mean"]
POOLINGS: tuple[str, ...] = ("mean", "last")
ABLATIONS: tuple[str, ...] = ("zero", "mean")
SHIFT_METHODS: tuple[str, ...] = ("atp", "ig")
DEFAULT_TOP_K = 30
DEFAULT_MIN_ASSOCIATION = 0.5


# ---------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class ShiftAccuracy:
    """A probe's accuracies: ``ambiguous`` on the ambiguous test set; on the balanced test
    set, ``intended`` and ``spurious`` against each concept's labels, and ``worst_group``
    the lowest intended accuracy over the four (intended, spurious) groups."""

    ambiguous: float
    intended: float
    spurious: float
    worst_group: float

    def __post_init__(self) -> None:
        for name in ("ambiguous", "intended", "spurious", "worst_group"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise DataError(f"an accuracy is between 0 and 1; {name} is {v}")

    def to_json(self) -> dict[str, float]:
        return {"ambiguous": self.ambiguous, "intended": self.intended, "spurious": self.spurious,
                "worst_group": self.worst_group}


@dataclass(frozen=True)
class FeatureJudgement:
    """A candidate feature: its effect on the signed probe logit (summed over positions,
    mean over the training texts), its associations with each concept on the judge set
    (``2·|AUROC − 0.5|``; NaN without a judge set), and whether it was ablated."""

    node: Node
    effect: float
    spurious_association: float
    intended_association: float
    ablated: bool

    def to_json(self) -> dict[str, Any]:
        return {"hook": self.node.point, "feature": self.node.feature, "effect": _finite(self.effect),
                "spurious_association": _finite(self.spurious_association),
                "intended_association": _finite(self.intended_association), "ablated": self.ablated}


def _finite(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


@dataclass
class ShiftResult:
    """What SHIFT did and measured: accuracies ``before`` (the probe as trained),
    ``after`` (the same probe, the features ablated: SHIFT) and ``retrained`` (a new probe
    on the edited ambiguous activations: SHIFT + retrain) and ``oracle`` (the skyline: a
    probe trained on decorrelated texts, see ``_oracle``; None when the balanced set is
    too small to split); the ``candidates`` with their judgements, the features
    ``ablated`` (summed over positions: ablated at every one). ``probe`` and
    ``retrained_probe`` are the fitted probes."""

    probe_point: str
    pooling: str
    probe_kind: str
    method: str
    ablation: str
    judge: str  # "auto" or "given"
    intended_name: str
    spurious_name: str
    sizes: dict[str, int]
    before: ShiftAccuracy
    after: ShiftAccuracy
    retrained: ShiftAccuracy
    oracle: ShiftAccuracy | None
    candidates: list[FeatureJudgement]
    ablated: list[Node]
    probe: Any = field(repr=False, default=None)
    retrained_probe: Any = field(repr=False, default=None)

    def __post_init__(self) -> None:
        if self.judge not in ("auto", "given"):
            raise ConfigError(f"judge is 'auto' or 'given', got {self.judge!r}")
        if self.ablation not in ABLATIONS:
            raise ConfigError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}")
        marked = [c.node for c in self.candidates if c.ablated]
        if self.judge == "auto" and marked != list(self.ablated):
            raise DataError("the features ablated must be the candidates judged spurious")

    def to_json(self) -> dict[str, Any]:
        return {
            "probe_point": self.probe_point, "pooling": self.pooling, "probe": self.probe_kind,
            "method": self.method, "ablation": self.ablation, "judge": self.judge,
            "intended": self.intended_name, "spurious": self.spurious_name, "sizes": self.sizes,
            "accuracy": {"before": self.before.to_json(), "shift": self.after.to_json(),
                         "shift_retrain": self.retrained.to_json(),
                         "oracle": None if self.oracle is None else self.oracle.to_json()},
            "n_ablated": len(self.ablated),
            "ablated": [{"hook": n.point, "feature": n.feature} for n in self.ablated],
            "candidates": [c.to_json() for c in self.candidates],
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        from ..io.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    def table(self) -> str:
        """The accuracies as a small text table (the caller prints it)."""
        rows = [("", "ambiguous", "intended", "spurious", "worst group")]
        shown = [("before", self.before), ("SHIFT", self.after), ("SHIFT + retrain", self.retrained)]
        if self.oracle is not None:
            shown.append(("oracle (balanced)", self.oracle))
        for label, a in shown:
            rows.append((label, *(f"{v:.3f}" for v in (a.ambiguous, a.intended, a.spurious, a.worst_group))))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                         for r in rows)


# ---------------------------------------------------------------------------
# Reading the probe's input through the spliced model


def _pool(acts: Tensor, bos: bool, pooling: str) -> Tensor:
    """``(B, T, d)`` → ``(B, d)``: the mean over the tokens after BOS, or the last token."""
    if pooling == "last":
        return acts[:, -1]
    return acts[:, 1:].mean(1) if bos and acts.shape[1] > 1 else acts.mean(1)


class ProbeLogit:
    """A ``Metric`` for node effects on a linear probe: ``sign · (pool(x) · w + b)`` per text,
    ``x`` the activation at the probe's hook point in the same pass and ``sign`` +1 for
    label 1, −1 for label 0 (``labels`` indexed by the batch's example indices). Use it
    inside ``watch()``: it reads the activation of the pass whose logits it is given."""

    name = "signed probe logit"

    def __init__(self, lm: Any, point: str, weight: Tensor, bias: float, labels: Sequence[int], pooling: str):
        self.lm, self.point, self.pooling = lm, point, pooling
        self.weight = weight.detach().float().to(lm.device)
        self.bias = float(bias)
        self.signs = torch.tensor([1.0 if y else -1.0 for y in labels], device=lm.device)
        self._watched: WatchedActivation | None = None

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        with watch_activation(self.lm, self.point) as watched:
            self._watched = watched
            try:
                yield
            finally:
                self._watched = None

    def __call__(self, logits: Tensor, batch: CircuitBatch) -> Tensor:
        if self._watched is None:
            raise ConfigError("the probe metric reads the probe's hook point; use it inside `with metric.watch():`")
        acts = self._watched.take(batch.size)
        score = _pool(acts.float(), batch.bos, self.pooling) @ self.weight + self.bias
        return self.signs[torch.tensor(batch.examples, device=self.signs.device)] * score


# ---------------------------------------------------------------------------
# Two readers: through a model, or on stored activations


def _text_data(s: LabelledSet, tokenizer: Any, max_length: int) -> CircuitData:
    """The texts as ``CircuitData`` for the circuit passes. They have no answer: the probe
    metric reads none, and the answer id -1 makes any metric that does fail loudly."""
    examples = []
    for i, text in enumerate(s.texts or ()):
        where = f"{s.name}, text {i + 1}"
        ids = _prefix_ids(tokenizer, text, where)
        if len(ids) > max_length:
            raise DataError(f"{where} is {len(ids)} tokens, more than the model's {max_length}: {text[:60]!r}")
        examples.append(CircuitExample(line=i + 1, clean_prefix=text, clean_answer="", clean_ids=ids,
                                       clean_answer_id=-1))
    return CircuitData(examples, source=s.name, bos=tokenizer.bos_token_id is not None)


class _ModelReader:
    """Probe inputs, feature activity and effects through the spliced model."""

    def __init__(self, model: SplicedModel, point: str, pooling: str, batch_size: int,
                 progress: ProgressCallback | None):
        self.model, self.point, self.pooling, self.batch_size, self.progress = model, point, pooling, batch_size, progress
        self.values: MeanAblation | None = None
        self._data: dict[int, CircuitData] = {}

    def data(self, s: LabelledSet) -> CircuitData:
        if id(s) not in self._data:  # by identity: two sets may share a name
            self._data[id(s)] = _text_data(s, self.model.lm.tokenizer, self.model.lm.max_length)
        return self._data[id(s)]

    def _batches(self, s: LabelledSet, what: str) -> Iterator[CircuitBatch]:
        phase = Phase(self.progress, f"shift: {what} ({s.name})", len(s), unit="texts")
        for batch in self.data(s).batches(self.batch_size):
            yield batch.to(self.model.lm.device)
            phase.advance(batch.size)

    def set_values(self, train: LabelledSet, kind: str) -> None:
        """What an ablated feature becomes: zero, or its mean over the training texts'
        tokens (BOS apart), as a pooled ``MeanAblation``."""
        model = self.model
        if kind == "zero":
            dev = model.lm.device
            self.values = MeanAblation(
                {p: Nodes(torch.zeros(2, model.dictionary(p).cfg.d_sae, device=dev),
                          torch.zeros(2, model.dictionary(p).cfg.d_out, device=dev)) for p in model.points},
                pooled=True, name="zero ablation", prompts="none")
            return
        from ..data import TokenBatch

        def token_batches() -> Iterator[TokenBatch]:
            for b in self._batches(train, "feature means"):
                bos = torch.zeros_like(b.clean_ids, dtype=torch.bool)
                bos[:, 0] = b.bos
                yield TokenBatch(b.clean_ids, torch.ones_like(b.clean_ids), bos)

        self.values = MeanAblation.from_batches(model, token_batches())

    def _ablating(self, ablated: Sequence[Node], batch: CircuitBatch) -> dict[str, Callable[[Nodes], Nodes]]:
        assert self.values is not None
        means = self.values.nodes_for(self.model, batch)
        by_point: dict[str, list[int]] = {}
        for n in ablated:
            by_point.setdefault(n.point, []).append(int(n.feature))
        out = {}
        for p, features in by_point.items():
            index = torch.tensor(sorted(set(features)), device=self.model.lm.device)
            value = means[p].features[..., index]

            def ablate(computed: Nodes, index: Tensor = index, value: Tensor = value) -> Nodes:
                f = computed.features.clone()
                f[..., index] = value.to(f.dtype)
                return Nodes(f, computed.error)

            out[p] = ablate
        return out

    def _run_to_probe(self, batch: CircuitBatch, settings: dict[str, Any] | None, watched: WatchedActivation) -> Tensor:
        """One pass up to the probe's point (every spliced point is at or before it)."""
        try:
            self.model.run(batch.clean_ids, bos=batch.bos, set_nodes=settings)
        except WatchStop:
            pass
        return watched.take(batch.size)

    def inputs(self, s: LabelledSet, ablated: Sequence[Node]) -> Tensor:
        out: Tensor | None = None
        what = "probe inputs" + (f", {len(ablated)} features ablated" if ablated else "")
        with torch.no_grad(), watch_activation(self.model.lm, self.point, stop=True) as watched:
            for batch in self._batches(s, what):
                settings = self._ablating(ablated, batch) if ablated else None
                pooled = _pool(self._run_to_probe(batch, settings, watched).float(), batch.bos, self.pooling).cpu()
                if out is None:
                    out = torch.empty(len(s), pooled.shape[1])
                out[batch.examples] = pooled
        assert out is not None  # a LabelledSet is never empty
        return out

    def activity(self, s: LabelledSet, candidates: Sequence[Node]) -> Tensor:
        """``(N, K)``: each candidate feature's activation pooled over each text as the probe pools."""
        out = torch.zeros(len(s), len(candidates))
        computed: dict[str, Nodes] = {}

        def keep(point: str) -> Callable[[Nodes], Nodes]:
            def record(nodes: Nodes) -> Nodes:
                computed[point] = nodes
                return nodes

            return record

        points = sorted({n.point for n in candidates})
        with torch.no_grad(), watch_activation(self.model.lm, self.point, stop=True) as watched:
            for batch in self._batches(s, "feature activity"):
                self._run_to_probe(batch, {p: keep(p) for p in points}, watched)
                for k, n in enumerate(candidates):
                    out[batch.examples, k] = _pool(computed[n.point].features[..., n.feature, None].float(),
                                                   batch.bos, self.pooling)[:, 0].cpu()
        return out

    def effects(self, s: LabelledSet, probe: Any, method: str, steps: int) -> dict[str, Tensor]:
        metric = ProbeLogit(self.model.lm, self.point, probe.weight, probe.bias, s.intended, self.pooling)
        data = self.data(s)
        with metric.watch():
            if method == "atp":
                effects = attribution_patching(self.model, data, metric, source=self.values,
                                               batch_size=self.batch_size, progress=self.progress)
            else:
                effects = integrated_gradients(self.model, data, metric, steps=steps, source=self.values,
                                               batch_size=self.batch_size, progress=self.progress)
        return {p: effects.feature_effects(p, summed=True) for p in self.model.points}


class _ActivationReader:
    """The same on stored activations (one row per example) at a sparse autoencoder's own
    hook point: ``x = decode(f) + err`` with ``f = encode(x)``."""

    def __init__(self, dictionary: Dictionary):
        self.d = dictionary
        self.point = dictionary.cfg.hook
        self.values: Tensor | None = None

    def _codes(self, s: LabelledSet) -> tuple[Tensor, Tensor]:
        assert s.activations is not None
        x = s.activations.float().to(self.d.W_dec.device)
        with torch.no_grad():
            f = self.d.encode(x)
            return f, x - self.d.decode(f)

    def set_values(self, train: LabelledSet, kind: str) -> None:
        f, _ = self._codes(train)
        self.values = torch.zeros(f.shape[1], device=f.device) if kind == "zero" else f.mean(0)

    def inputs(self, s: LabelledSet, ablated: Sequence[Node]) -> Tensor:
        f, err = self._codes(s)
        if ablated:
            assert self.values is not None  # set_values comes first
            index = torch.tensor(sorted({int(n.feature) for n in ablated}), dtype=torch.long, device=f.device)
            f[:, index] = self.values[index]
        with torch.no_grad():
            return (self.d.decode(f) + err).cpu()

    def activity(self, s: LabelledSet, candidates: Sequence[Node]) -> Tensor:
        f, _ = self._codes(s)
        return f[:, [int(n.feature) for n in candidates]].cpu()

    def effects(self, s: LabelledSet, probe: Any, method: str, steps: int) -> dict[str, Tensor]:
        """Exact: ablating feature i moves the input by ``(v_i − f_i) W_dec[i]``, so the signed
        logit by ``sign · (v_i − f_i) · (W_dec[i] · w)``; the mean over the examples."""
        assert self.values is not None
        f, _ = self._codes(s)
        signs = torch.tensor([1.0 if y else -1.0 for y in s.intended], device=f.device)
        with torch.no_grad():
            along = self.d.W_dec.float() @ probe.weight.float().to(f.device)  # (F,)
            moved = (signs[:, None] * (self.values[None, :] - f)).mean(0)
        return {self.point: (moved * along).cpu()}


# ---------------------------------------------------------------------------
# SHIFT


def _checked_probe(probe: Any) -> Any:
    from ..probes import Probe, make_probe

    p = make_probe(probe) if isinstance(probe, str) else probe
    if not isinstance(p, Probe):
        raise ConfigError(f"probe must be a probe name (logistic, mass_mean, lda) or a saekit.probes.Probe, got {probe!r}")
    if p.needs:
        raise ConfigError(f"the {p.name} probe needs {p.needs} besides labels; SHIFT trains on labels alone "
                          "(use logistic, mass_mean or lda)")
    return p


def _checked_features(features: Sequence[Node], points: Sequence[str], widths: dict[str, int]) -> list[Node]:
    if isinstance(features, (str, Node)) or not isinstance(features, Sequence):
        raise ConfigError(f"give the features to ablate as a list of saekit.circuits.Node(point, feature), "
                          f"got {features!r}")
    out = []
    for n in features:
        if not isinstance(n, Node):
            raise ConfigError(f"features to ablate are saekit.circuits.Node(point, feature), got {n!r}")
        if n.point not in points:
            raise HookPointError(f"{n.label()}: no dictionary writes {n.point}; the points are {', '.join(points)}")
        if n.feature is None:
            raise ConfigError(f"{n.label()}: SHIFT ablates features and keeps the error terms; give a feature index")
        if not is_integer(n.feature) or not 0 <= n.feature < widths[n.point]:
            raise ConfigError(f"{n.label()}: feature {n.feature!r} is not a feature of the dictionary "
                              f"(0 to {widths[n.point] - 1})")
        if n.position is not None:
            raise ConfigError(f"{n.label()}: SHIFT ablates a feature at every position; give no position")
        out.append(n)
    return list(dict.fromkeys(out))


def _association(values: Tensor, labels: Sequence[int]) -> float:
    """``2·|AUROC − 0.5|``: 0 when the values say nothing about the labels, 1 when they
    separate them perfectly (either way round)."""
    from ..probes import auroc

    return 2 * abs(auroc(values, torch.tensor(labels)) - 0.5)


def _says_one(probe: Any, X: Tensor) -> Tensor:
    """The probe's verdicts: score above its threshold means label 1 (as ``probes.accuracy``)."""
    return probe.scores(X).cpu() > probe.threshold


def _accuracy(ambiguous_says: Tensor, balanced_says: Tensor, task: SpuriousTask) -> ShiftAccuracy:
    """The four accuracies from a probe's verdicts on the two test sets."""
    amb = torch.tensor(task.ambiguous_test.intended, dtype=torch.bool)
    intended = torch.tensor(task.balanced_test.intended, dtype=torch.bool)
    spurious = torch.tensor(task.balanced_test.spurious, dtype=torch.bool)
    right = balanced_says == intended
    groups = [float(right[(intended == i) & (spurious == s)].float().mean()) for i in (0, 1) for s in (0, 1)]
    return ShiftAccuracy(ambiguous=float((ambiguous_says == amb).float().mean()), intended=float(right.float().mean()),
                         spurious=float((balanced_says == spurious).float().mean()), worst_group=min(groups))


def _probe_accuracy(probe: Any, X_amb: Tensor, X_bal: Tensor, task: SpuriousTask) -> ShiftAccuracy:
    """``probe``'s four accuracies on the test sets' probe inputs."""
    return _accuracy(_says_one(probe, X_amb), _says_one(probe, X_bal), task)


def _oracle(probe: Any, X_amb: Tensor, X_bal: Tensor, task: SpuriousTask) -> ShiftAccuracy | None:
    """The skyline (Marks et al.'s "oracle"): a probe trained where the concepts are
    decorrelated, on the unedited activations. The task has no decorrelated training set,
    so the balanced set's figures are by two-fold cross-validation, each (intended,
    spurious) group split in half, and the ambiguous one by a probe trained on the whole
    balanced set. None when a fold would train on one label only."""
    bal = task.balanced_test
    intended = torch.tensor(bal.intended)
    spurious = torch.tensor(bal.spurious)
    first = torch.zeros(len(bal), dtype=torch.bool)
    for i in (0, 1):
        for s in (0, 1):
            first[((intended == i) & (spurious == s)).nonzero().squeeze(1)[::2]] = True
    says = torch.zeros(len(bal), dtype=torch.bool)
    for held in (first, ~first):
        if len(set(intended[~held].tolist())) < 2:
            return None
        says[held] = _says_one(_fresh_copy(probe).fit(X_bal[~held], intended[~held]), X_bal[held])
    return _accuracy(_says_one(_fresh_copy(probe).fit(X_bal, intended), X_amb), says, task)


def shift(
    model: SplicedModel | Dictionary, task: SpuriousTask, *, probe_point: str | None = None,
    pooling: Pooling = "mean", probe: Union[str, Any] = "logistic", features: Sequence[Node] | None = None,
    method: str = "atp", steps: int = DEFAULT_STEPS, top_k: int = DEFAULT_TOP_K,
    min_association: float = DEFAULT_MIN_ASSOCIATION, ablation: AblationKind = "zero", batch_size: int = 16,
    progress: ProgressCallback | None = None,
) -> ShiftResult:
    """SHIFT on ``task`` (see the module doc): probe, effects, judge, ablate, re-measure,
    retrain.

    ``model``: a ``SplicedModel`` (the task's sets are texts) or a sparse autoencoder
    (the sets are activations at its hook point). ``probe_point``: where the probe reads
    (default: the last point a dictionary writes; a dictionary's own hook point on stored
    activations). ``pooling``: ``"mean"`` over each text's tokens after BOS, or
    ``"last"``. ``probe``: ``"logistic"`` (default), ``"mass_mean"``, ``"lda"`` or an
    unfitted ``saekit.probes.Probe``. ``features``: the features to ablate (the user as
    judge); None: the ``top_k`` features by |effect| (``method`` ``"atp"`` or ``"ig"``
    with ``steps``) judged on ``task.judge`` with ``min_association``. ``ablation``:
    ``"zero"`` or ``"mean"`` (over the training texts' tokens).
    Everything is checked before the first pass.
    """
    # -- checks, before any pass
    if not isinstance(task, SpuriousTask):
        raise ConfigError(f"shift needs a SpuriousTask (spurious_task() builds one), got {type(task).__name__}")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if ablation not in ABLATIONS:
        raise ConfigError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
    if method not in SHIFT_METHODS:
        raise ConfigError(f"method must be one of {', '.join(SHIFT_METHODS)}, got {method!r}")
    check_count("steps", steps)
    if not is_integer(top_k) or top_k < 1:
        raise ConfigError(f"top_k must be a positive whole number, got {top_k!r}")
    if not is_real(min_association) \
            or not 0.0 <= min_association <= 1.0:
        raise ConfigError(f"min_association is a share between 0 and 1, got {min_association!r}")
    check_count("batch_size", batch_size)
    fresh = _fresh_copy(_checked_probe(probe))  # the caller's probe object is left as it was
    reader: _ModelReader | _ActivationReader
    if isinstance(model, SplicedModel):
        if task.train.texts is None:
            raise ConfigError("with a model, the task's sets must be texts; for stored activations give the sparse "
                              "autoencoder in place of the model")
        point = probe_point or model.points[-1]
        _check_probe_point(model, point)
        reader = _ModelReader(model, point, pooling, batch_size, progress)
        for s in task.sets().values():
            reader.data(s)  # tokenised and checked against the model's context now
        points = model.points
        widths = {p: model.dictionary(p).cfg.d_sae for p in points}
    elif isinstance(model, Dictionary):
        d = model
        if d.cfg.transcoder:
            raise ConfigError("on stored activations SHIFT needs a sparse autoencoder (the probe reads its own hook "
                              "point); for a transcoder, splice it into the model (SplicedModel)")
        if task.train.activations is None:
            raise ConfigError("with a dictionary, the task's sets must be activations at its hook point; for texts give "
                              "a SplicedModel")
        if probe_point is not None and probe_point != d.cfg.hook:
            raise ConfigError(f"on stored activations the probe reads the dictionary's hook point {d.cfg.hook}, not "
                              f"{probe_point}")
        width = task.train.activations.shape[1]
        if width != d.cfg.d_in:
            raise DataError(f"the activations have width {width}; this dictionary reads width {d.cfg.d_in}")
        point = d.cfg.hook
        reader = _ActivationReader(d)
        points, widths = [point], {point: d.cfg.d_sae}
    else:
        raise ConfigError(f"shift needs a SplicedModel or a sparse autoencoder, got {type(model).__name__}")
    given = None if features is None else _checked_features(features, points, widths)
    if given is None and task.judge is None:
        raise DataError("the automatic judge needs the task's judge set (a few texts where the two concepts are "
                        "decorrelated); give one, or give the features to ablate (features=[Node(point, i), ...])")

    # -- the probe as trained on the ambiguous set
    train = task.train
    X_train = reader.inputs(train, ())
    labels = torch.tensor(train.intended)
    fitted = fresh.fit(X_train, labels)
    X_amb = reader.inputs(task.ambiguous_test, ())
    X_bal = reader.inputs(task.balanced_test, ())
    before = _probe_accuracy(fitted, X_amb, X_bal, task)
    oracle = _oracle(fitted, X_amb, X_bal, task)
    logger.info("SHIFT: probe at %s, before: %s", point, before)

    # -- effects, candidates, judgements
    reader.set_values(train, ablation)
    effects = reader.effects(train, fitted, method, steps)
    if given is not None:
        candidates = list(given)
    else:
        ranked = [(abs(float(v)), p, i) for p in points for i, v in enumerate(effects[p].tolist()) if v != 0]
        ranked.sort(key=lambda r: -r[0])
        candidates = [Node(p, i) for _, p, i in ranked[:top_k]]
    if task.judge is not None and candidates:
        activity = reader.activity(task.judge, candidates)
        spurious = [_association(activity[:, k], task.judge.spurious) for k in range(len(candidates))]
        intended = [_association(activity[:, k], task.judge.intended) for k in range(len(candidates))]
    else:
        spurious = intended = [math.nan] * len(candidates)
    if given is not None:
        ablated = list(given)
    else:
        ablated = [n for n, s, i in zip(candidates, spurious, intended) if s >= min_association and s > i]
    chosen = set(ablated)
    judgements = [FeatureJudgement(n, float(effects[n.point][n.feature]), s, i, n in chosen)
                  for n, s, i in zip(candidates, spurious, intended)]
    logger.info("SHIFT: %d candidates, %d ablated", len(candidates), len(ablated))

    # -- SHIFT, and SHIFT + retrain
    if ablated:
        X_train, X_amb, X_bal = (reader.inputs(s, ablated) for s in (train, task.ambiguous_test, task.balanced_test))
    after = _probe_accuracy(fitted, X_amb, X_bal, task)
    retrained = _fresh_copy(fitted).fit(X_train, labels)
    again = _probe_accuracy(retrained, X_amb, X_bal, task)
    return ShiftResult(
        probe_point=point, pooling=pooling if isinstance(model, SplicedModel) else "none (one row per example)",
        probe_kind=fitted.name, method=method if isinstance(model, SplicedModel) else "exact",
        ablation=ablation, judge="given" if given is not None else "auto", intended_name=task.intended_name,
        spurious_name=task.spurious_name, sizes={k: len(s) for k, s in task.sets().items()},
        before=before, after=after, retrained=again, oracle=oracle, candidates=judgements, ablated=ablated, probe=fitted,
        retrained_probe=retrained,
    )


def _fresh_copy(probe: Any) -> Any:
    """An unfitted probe of the same kind and settings."""
    from ..probes import make_probe

    return make_probe(probe.name, **probe.params())


def _check_probe_point(model: SplicedModel, point: str) -> None:
    from ..hooks import HookPoint, resolve_hook_point

    resolve_hook_point(model.lm, point)  # an unknown or malformed name says which exist
    late = [p for p in model.points if HookPoint.parse(p) > HookPoint.parse(point)]
    if late:
        raise ConfigError(f"the probe reads {point} but a dictionary writes {late[0]}, after it, where no feature can "
                          f"change what the probe reads; leave that dictionary out or read the probe at {late[-1]}")
