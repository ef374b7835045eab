"""Figures that say how good a dictionary is, exactly as docs/metrics.md defines them.

Every sum is accumulated in float64 over all evaluated tokens (never averaged per
batch and then averaged again), so the figures do not depend on how the tokens were
split into batches or padded.

Two layers:

* ``evaluate_reconstruction`` needs only activations: mse, fvu, cosine, L0, L1,
  density, γ.
* ``evaluate`` runs the model: it reads the activations on held-out text in both
  context regimes (``fixed`` contexts as in training, whole ``documents``), and
  splices the reconstruction, zero and the mean activation into the forward pass for
  the downstream figures (ce_*, loss_recovered, kl), and FVU and CE diff by position.
  The four passes share the work up to the hook point (``hooks.skip_to_block``).

Both take an optional ``progress`` callback, called as the work advances (at least once
per model batch) with ``{"phase": str, "done": int, "total": int, "unit": "tok"}``, so
that a caller can draw a bar per phase; the library itself prints nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import Tensor

from .dictionaries import Dictionary
from .dictionaries.base import describe
from .errors import ConfigError, DataError, DimensionError, HookPointError
from .progress import Phase, ProgressCallback

log = logging.getLogger(__name__)

DENSE_THRESHOLD = 0.1  # a feature firing on more than 10% of tokens counts as dense
# Width of the position buckets (docs/metrics.md: 0-127, 128-255, ...), the same for every
# dictionary so that drift is visible whatever context length it was trained on.
POSITION_BUCKET = 128
# Activations up to the hook kept between the mean pass and the main pass (beyond it,
# the prefix is recomputed instead).
PREFIX_CACHE_BYTES = 1 << 30
Regime = Literal["fixed", "documents"]
REGIMES: tuple[Regime, ...] = ("fixed", "documents")
REGIME_LABELS: dict[str, str] = {"fixed": "fixed contexts", "documents": "whole documents"}
# eval.json's "keep_bos_source": whether the BOS policy was the dictionary's own (as it
# was trained) or one the caller chose against it, which makes the figures not
# comparable with the training run's.
BOS_AS_TRAINED, BOS_OVERRIDDEN = "dictionary", "override"


def _finite_or_text(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


@dataclass
class ReconstructionMetrics:
    """Reconstruction and sparsity figures over ``n_tokens`` activations (docs/metrics.md)."""

    n_tokens: int
    mse: float
    fvu: float
    variance_explained: float
    cosine: float
    l0: float
    l1: float
    l1_weighted: float
    frac_alive: float
    n_dead: int
    n_dense: int
    relative_reconstruction_bias: float
    hook: str = ""
    feature_density: list[float] = field(default_factory=list, repr=False)
    l0_histogram: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def to_dict(self, with_distributions: bool = False) -> dict:
        d = asdict(self)
        if not with_distributions:
            d.pop("feature_density")
            d.pop("l0_histogram")
        return {k: _finite_or_text(v) for k, v in d.items()}


class _ReconstructionSums:
    """Float64 running sums behind ``ReconstructionMetrics``, optionally by position bucket."""

    def __init__(self, dictionary: Dictionary, bucket: int | None = None):
        self.F = dictionary.cfg.d_sae
        self.hook = dictionary.cfg.hook
        self.dec_norms = dictionary.W_dec.detach().norm(dim=1).double()
        self.bucket = bucket
        self.n = 0
        self.sum_x: Tensor | None = None
        self.sum_sq_x = self.err = self.cos = self.l0 = self.l1 = self.l1w = self.xhat_sq = self.xhat_dot_x = 0.0
        self.fires = torch.zeros(self.F, dtype=torch.float64, device=self.dec_norms.device)
        self.l0_counts = torch.zeros(1, dtype=torch.long)
        self.buckets: dict[int, list] = {}  # bucket -> [n, sum_x, sum_sq_x, err]

    def add(self, x: Tensor, f: Tensor, x_hat: Tensor, positions: Tensor | None = None) -> None:
        xd, xh, fd = x.double(), x_hat.double(), f.double()
        self.n += x.shape[0]
        self.sum_x = xd.sum(0) if self.sum_x is None else self.sum_x + xd.sum(0)
        self.sum_sq_x += float(xd.pow(2).sum())
        tok_err = (xd - xh).pow(2).sum(-1)
        self.err += float(tok_err.sum())
        self.cos += float(torch.nn.functional.cosine_similarity(xd, xh, dim=-1, eps=1e-12).sum())
        active = fd > 0
        self.l0 += float(active.sum())
        self.l1 += float(fd.abs().sum())
        self.l1w += float((fd.abs() * self.dec_norms).sum())
        self.xhat_sq += float(xh.pow(2).sum())
        self.xhat_dot_x += float((xh * xd).sum())
        self.fires += active.sum(0)
        counts = torch.bincount(active.sum(-1).cpu())
        if counts.numel() > self.l0_counts.numel():
            counts[: self.l0_counts.numel()] += self.l0_counts
            self.l0_counts = counts
        else:
            self.l0_counts[: counts.numel()] += counts
        if positions is not None and self.bucket:
            ids = (positions // self.bucket).cpu()
            for b in ids.unique().tolist():
                sel = (ids == b).to(xd.device)
                entry = self.buckets.setdefault(b, [0, 0.0, 0.0, 0.0])
                entry[0] += int(sel.sum())
                entry[1] = entry[1] + xd[sel].sum(0)
                entry[2] += float(xd[sel].pow(2).sum())
                entry[3] += float(tok_err[sel].sum())

    @staticmethod
    def _fvu(n: int, sum_x: Tensor, sum_sq: float, err: float) -> float:
        total_var = sum_sq - float(sum_x.pow(2).sum()) / n  # Σ‖x − x̄‖², x̄ over the same tokens
        return err / total_var if total_var > 0 else math.nan

    def bucket_fvu(self) -> dict[int, tuple[int, float]]:
        return {b: (e[0], self._fvu(e[0], e[1], e[2], e[3])) for b, e in sorted(self.buckets.items())}

    def result(self) -> ReconstructionMetrics:
        n = self.n
        if n == 0:
            raise DataError("no activations to evaluate: the evaluation data yielded no tokens")
        fvu = self._fvu(n, self.sum_x, self.sum_sq_x, self.err)
        density = (self.fires / n).cpu()
        return ReconstructionMetrics(
            n_tokens=n,
            mse=self.err / n,
            fvu=fvu,
            variance_explained=1.0 - fvu,
            cosine=self.cos / n,
            l0=self.l0 / n,
            l1=self.l1 / n,
            l1_weighted=self.l1w / n,
            frac_alive=float((density > 0).double().mean()),
            n_dead=int((density == 0).sum()),
            n_dense=int((density > DENSE_THRESHOLD).sum()),
            relative_reconstruction_bias=self.xhat_sq / self.xhat_dot_x if self.xhat_dot_x != 0 else math.nan,
            hook=self.hook,
            feature_density=density.tolist(),
            l0_histogram={"edges": list(range(self.l0_counts.numel() + 1)), "counts": self.l0_counts.tolist()},
        )


@torch.no_grad()
def evaluate_reconstruction(
    dictionary: Dictionary,
    activations: Tensor | Iterable[Tensor],
    batch_size: int = 4096,
    progress: ProgressCallback | None = None,
    targets: Tensor | Iterable[Tensor] | None = None,
) -> ReconstructionMetrics:
    """Reconstruction figures for raw activations ``(N, d)`` (or an iterable of such).

    A transcoder's figures are about its ``targets`` (the same layout, one per input
    token): FVU is the variance of the targets it leaves unexplained. ``progress`` gets
    a record per batch (``total`` is None for an iterable, whose length is not known in
    advance).
    """
    if dictionary.cfg.transcoder and targets is None:
        raise ConfigError(
            f"a transcoder is judged on its targets ({dictionary.cfg.target or 'the hook point it reconstructs'}): "
            "pass targets= alongside the input activations"
        )
    total = None

    def batches(acts: Tensor | Iterable[Tensor]) -> Iterable[Tensor]:
        if isinstance(acts, Tensor):
            return acts.reshape(-1, acts.shape[-1]).split(batch_size)
        return acts

    if isinstance(activations, Tensor):
        total = activations.numel() // activations.shape[-1]
    phase = Phase(progress, "evaluating: held-out activations", total)
    sums = _ReconstructionSums(dictionary)
    device = dictionary.W_dec.device
    target_batches = iter(batches(targets)) if targets is not None else None
    for x in batches(activations):
        x = x.to(device, torch.float32)
        f = dictionary.encode(x)
        y = x if target_batches is None else next(target_batches).to(device, torch.float32)
        if y.shape[0] != x.shape[0]:
            raise DimensionError(f"{y.shape[0]} targets for {x.shape[0]} inputs: give one target per input token")
        sums.add(y, f, dictionary.reconstruct(x, f))
        phase.advance(x.shape[0])
    return sums.result()


# ---------------------------------------------------------------- with the model


@dataclass
class RegimeResult:
    """Every docs/metrics.md figure for one context regime, with the counts behind them."""

    regime: Regime
    context_length: int
    n_sequences: int
    requested_tokens: int
    reconstruction: ReconstructionMetrics
    n_ce_tokens: int
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    ce_mean: float
    kl: float
    by_position: list[dict[str, Any]]

    @property
    def ce_diff(self) -> float:
        return self.ce_spliced - self.ce_clean

    @property
    def loss_recovered(self) -> float:
        denom = self.ce_zero - self.ce_clean
        return (self.ce_zero - self.ce_spliced) / denom if denom != 0 else math.nan

    @property
    def n_tokens(self) -> int:
        return self.reconstruction.n_tokens

    def __getattr__(self, name: str) -> Any:  # fvu, l0, ... straight from the reconstruction
        if name != "reconstruction" and "reconstruction" in self.__dict__:
            rec = self.__dict__["reconstruction"]
            if hasattr(rec, name):
                return getattr(rec, name)
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "context_length": self.context_length,
            "n_sequences": self.n_sequences,
            "requested_tokens": self.requested_tokens,
            "n_ce_tokens": self.n_ce_tokens,
        }
        d.update(self.reconstruction.to_dict(with_distributions=True))
        d.pop("hook", None)
        for name in ("ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_diff", "loss_recovered", "kl"):
            d[name] = getattr(self, name)
        d["by_position"] = self.by_position
        return {k: _finite_or_text(v) for k, v in d.items()}


@dataclass
class EvalResult:
    """``saekit.evaluate``'s answer: both regimes for one dictionary at its hook point."""

    dictionary: dict[str, Any]
    model: str
    hook: str
    dataset: str | None
    fixed: RegimeResult | None
    documents: RegimeResult | None
    # ``Dictionary.fingerprint()`` of the weights evaluated, so that eval.json can be
    # checked against the weights beside it (``dictionaries.same_weights``).
    fingerprint: list[float] = field(default_factory=list)
    keep_bos: bool = False  # whether the BOS position was evaluated and spliced
    keep_bos_source: str = BOS_AS_TRAINED  # BOS_AS_TRAINED or BOS_OVERRIDDEN

    def regimes(self) -> dict[str, RegimeResult]:
        return {r: getattr(self, r) for r in REGIMES if getattr(self, r) is not None}

    TABLE_FIGURES = (
        "fvu", "variance_explained", "mse", "cosine", "l0", "l1", "l1_weighted", "frac_alive", "n_dead", "n_dense",
        "relative_reconstruction_bias", "ce_clean", "ce_spliced", "ce_zero", "ce_mean", "ce_diff", "loss_recovered", "kl",
    )

    def table(self) -> str:
        """The figures of both regimes side by side, with the counts behind them."""
        regimes = self.regimes()
        head = f"{'figure':<30}" + "".join(f"{name:>14}" for name in regimes)
        rows = [describe({**self.dictionary, "hook": self.hook, "model": self.model}), head]
        rows.append(f"{'context length':<30}" + "".join(f"{r.context_length:>14}" for r in regimes.values()))
        rows.append(f"{'tokens (reconstruction)':<30}" + "".join(f"{r.n_tokens:>14,}" for r in regimes.values()))
        rows.append(f"{'tokens (cross-entropy)':<30}" + "".join(f"{r.n_ce_tokens:>14,}" for r in regimes.values()))
        if self.dataset is not None:
            rows.append(f"{'text (held-out split)':<30}{self.dataset}")
        rows.append(f"{'BOS position':<30}{self.bos_policy()}")
        for name in self.TABLE_FIGURES:
            cells = []
            for r in regimes.values():
                v = getattr(r, name)
                cells.append(f"{v:>14,}" if isinstance(v, int) else f"{v:>14.4g}")
            rows.append(f"{name:<30}" + "".join(cells))
        for r in regimes.values():
            if r.n_tokens < r.requested_tokens:
                rows.append(f"note: {r.regime}: the data held {r.n_tokens:,} of the {r.requested_tokens:,} tokens asked for")
        return "\n".join(rows)

    def bos_policy(self) -> str:
        """The BOS policy in words, e.g. "excluded (as the dictionary records for its training)"."""
        kept = "kept" if self.keep_bos else "excluded"
        if self.keep_bos_source == BOS_OVERRIDDEN:
            return f"{kept} (overridden: the dictionary records it {'excluded' if self.keep_bos else 'kept'} in training)"
        return f"{kept} (as the dictionary records for its training)"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dictionary": self.dictionary, "fingerprint": self.fingerprint, "model": self.model, "hook": self.hook,
            "dataset": self.dataset, "keep_bos": self.keep_bos, "keep_bos_source": self.keep_bos_source,
        }
        for name, res in self.regimes().items():
            out[name] = res.to_dict()
        return out


class _CEAccumulator:
    """Summed next-token cross-entropies of the four passes and the KL, overall and by bucket."""

    def __init__(self, bucket: int):
        self.bucket = bucket
        self.n = 0
        self.sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "mean": 0.0, "kl": 0.0}
        self.by_bucket: dict[int, list[float]] = {}  # bucket -> [n, Σ spliced − clean]

    def add(self, ce: dict[str, Tensor], kl: Tensor, positions: Tensor) -> None:
        self.n += ce["clean"].numel()
        for k, v in ce.items():
            self.sums[k] += float(v.double().sum())
        self.sums["kl"] += float(kl.double().sum())
        diff = (ce["spliced"] - ce["clean"]).double().cpu()
        ids = (positions // self.bucket).cpu()
        for b in ids.unique().tolist():
            sel = ids == b
            entry = self.by_bucket.setdefault(b, [0, 0.0])
            entry[0] += int(sel.sum())
            entry[1] += float(diff[sel].sum())

    def mean(self, key: str) -> float:
        return self.sums[key] / self.n if self.n else math.nan


def _positions(mask: Tensor) -> Tensor:
    """Each token's position in its sequence (0 = first real token; right padding)."""
    return torch.arange(mask.shape[1], device=mask.device).expand_as(mask)


CE_CHUNK = 256  # prediction positions per chunk: bounds the (positions × vocabulary) temporaries


def _next_token_ce(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """CE = logsumexp(z) − z_target for logits ``z`` (n, V), and the log-sum-exp.

    One read-only pass over the vocabulary; a full log-softmax would write an (n × V)
    tensor per pass.
    """
    lse = torch.logsumexp(z, dim=-1)
    return lse - z.gather(-1, targets[:, None]).squeeze(-1), lse


def _kl(z_clean: Tensor, lse_clean: Tensor, z_other: Tensor, lse_other: Tensor) -> Tensor:
    """KL(p_clean ‖ p_other) per position from logits: Σ p_c (z_c − z_o) − lse_c + lse_o.

    Tokens the clean model gives probability 0 (logit −inf) contribute 0, as in the
    definition, rather than 0·(−inf − −inf) = nan.
    """
    p_clean = (z_clean - lse_clean[..., None]).exp()
    diff = torch.where(p_clean > 0, z_clean - z_other, torch.zeros_like(z_clean))
    return (p_clean * diff).sum(-1) - lse_clean + lse_other


@torch.no_grad()
def _evaluate_regime(
    dictionaries: list[Dictionary],
    lm: Any,
    batches: list[Any],
    regime: Regime,
    context_length: int,
    requested: int,
    bucket: int,
    splice_bos: bool,
    n_evaluated: int,
    progress: ProgressCallback | None = None,
) -> list[RegimeResult]:
    """One regime's figures for dictionaries that read and replace the same points.

    What does not depend on the dictionary runs once for all of them: the passes to the
    hook points, the mean activation, and the clean, zero-ablated and mean-ablated runs
    of the model; each dictionary adds its reconstruction and its spliced run.
    """
    from .hooks import HookPoint, edit_activations, read_activations, skip_to_block

    first = dictionaries[0].cfg
    hook = first.hook
    # What is compared and replaced: the input itself for a sparse autoencoder, the
    # target point for a transcoder (read in the same pass; it comes after the input).
    target = first.output_hook
    assert all((d.cfg.hook, d.cfg.output_hook) == (hook, target) for d in dictionaries)
    layer = HookPoint.parse(hook).layer
    dev = lm.device

    def masks(batch: Any) -> tuple[Tensor, Tensor]:
        attn = batch.attention_mask.to(dev).bool()
        splice = batch.token_mask(keep_bos=splice_bos).to(dev)
        return attn, splice

    pre_name = f"resid_pre.{layer}"

    def prefix(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """resid_pre of the input's block (the passes below start there), the input and the target."""
        acts = read_activations(
            lm, list(dict.fromkeys([pre_name, hook, target])), batch.input_ids.to(dev), batch.attention_mask.to(dev)
        )
        return acts[pre_name], acts[hook], acts[target]

    # Pass 1 (prefix only): the mean activation over the evaluated tokens, for ce_mean.
    # The prefix outputs are kept for pass 2 while they fit in PREFIX_CACHE_BYTES, so
    # that for most evaluations the prefix runs once.
    label = f"evaluating {REGIME_LABELS[regime]}"
    phase = Phase(progress, f"{label}: mean activation", n_evaluated)
    total, count, room = None, 0, PREFIX_CACHE_BYTES
    kept: list[tuple[Tensor, Tensor, Tensor] | None] = []
    for batch in batches:
        resid_pre, x, y = prefix(batch)
        _, evaluated = masks(batch)
        s = y[evaluated].double().sum(0)
        total, count = (s if total is None else total + s), count + int(evaluated.sum())
        size = (resid_pre.numel() + x.numel() + (y.numel() if y is not x else 0)) * x.element_size()
        kept.append((resid_pre, x, y) if size <= room else None)
        room -= size if size <= room else 0
        phase.advance(int(evaluated.sum()))
    mean_act = (total / max(count, 1)).float()

    many = len(dictionaries) > 1
    phase = Phase(progress, f"{label}: clean, spliced, zero and mean passes" + (
        f" ({len(dictionaries)} dictionaries)" if many else ""), n_evaluated)

    recs = [_ReconstructionSums(d, bucket) for d in dictionaries]
    ces = [_CEAccumulator(bucket) for _ in dictionaries]
    n_seq = 0
    for batch, cached in zip(batches, kept):
        ids, attn_long = batch.input_ids.to(dev), batch.attention_mask.to(dev)
        attn, evaluated = masks(batch)
        resid_pre, x, y = cached if cached is not None else prefix(batch)
        xe, ye = x[evaluated].float(), y[evaluated].float()
        positions = _positions(attn)
        spliced_edits = []
        for d, rec in zip(dictionaries, recs):
            f = d.encode(xe)
            y_hat = d.reconstruct(xe, f)
            rec.add(ye, f, y_hat, positions[evaluated])
            full_hat = y.clone()
            full_hat[evaluated] = y_hat.to(y.dtype)
            spliced_edits.append(lambda a, h=full_hat: torch.where(evaluated[..., None], h, a))
        pred_mask = attn[:, :-1] & attn[:, 1:]
        targets = ids[:, 1:][pred_mask]

        def run(edit: Callable[[Tensor], Tensor] | None) -> Tensor:
            with skip_to_block(lm, layer, resid_pre), edit_activations(lm, {target: edit} if edit else {}):
                logits = lm.model(input_ids=ids, attention_mask=attn_long, use_cache=False).logits
            return logits[:, :-1][pred_mask]  # (n, V): padding positions dropped before any maths

        def cross_entropy(z: Tensor, clean: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
            """Per-position CE of logits ``z``, and the KL from ``clean`` when given, in chunks."""
            parts, kls = [], []
            for i in range(0, z.shape[0], CE_CHUNK):
                zc = z[i : i + CE_CHUNK].float()
                ce_c, lse = _next_token_ce(zc, targets[i : i + CE_CHUNK])
                parts.append(ce_c)
                if clean is not None:
                    zk = clean[i : i + CE_CHUNK].float()
                    kls.append(_kl(zk, torch.logsumexp(zk, dim=-1), zc, lse))
            return torch.cat(parts), (torch.cat(kls) if clean is not None else None)

        # The clean logits are kept while the spliced runs need them (for the KL), then
        # dropped: at most two (positions × vocabulary) tensors live at once, however many
        # dictionaries there are.
        clean = run(None)
        shared = {"clean": cross_entropy(clean)[0]}
        spliced = []
        for edit in spliced_edits:
            z = run(edit)
            spliced.append(cross_entropy(z, clean))
            del z
        del clean
        shared["zero"] = cross_entropy(run(lambda a: torch.where(evaluated[..., None], torch.zeros_like(a), a)))[0]
        shared["mean"] = cross_entropy(
            run(lambda a: torch.where(evaluated[..., None], mean_act.to(a.dtype).expand_as(a), a))
        )[0]
        for acc, (ce_spliced, kl) in zip(ces, spliced):
            acc.add({**shared, "spliced": ce_spliced}, kl, positions[:, :-1][pred_mask])
        n_seq += ids.shape[0]
        phase.advance(int(evaluated.sum()))

    results = []
    for rec, ce in zip(recs, ces):
        metrics = rec.result()
        rec_buckets = rec.bucket_fvu()
        by_position = []
        for b in sorted(set(rec_buckets) | set(ce.by_bucket)):
            n_rec, fvu = rec_buckets.get(b, (0, math.nan))
            n_ce, diff = ce.by_bucket.get(b, (0, 0.0))
            by_position.append({
                "start": b * bucket, "end": (b + 1) * bucket - 1, "n_tokens": n_rec, "fvu": _finite_or_text(fvu),
                "n_ce_tokens": n_ce, "ce_diff": _finite_or_text(diff / n_ce if n_ce else math.nan),
            })
        results.append(RegimeResult(
            regime=regime,
            context_length=context_length,
            n_sequences=n_seq,
            requested_tokens=requested,
            reconstruction=metrics,
            n_ce_tokens=ce.n,
            ce_clean=ce.mean("clean"),
            ce_spliced=ce.mean("spliced"),
            ce_zero=ce.mean("zero"),
            ce_mean=ce.mean("mean"),
            kl=ce.mean("kl"),
            by_position=by_position,
        ))
    return results


def _take_tokens(batches: Iterator[Any], tokens: int, keep_bos: bool, phase: Phase | None = None) -> tuple[list[Any], int]:
    """Whole sequences until they hold ``tokens`` evaluated tokens (or the data runs out).

    The last batch is cut after the sequence that reaches the budget, so the overshoot
    is less than one sequence.
    """
    from .data import TokenBatch

    taken, n = [], 0
    for batch in batches:
        per_row = batch.token_mask(keep_bos).sum(1).cumsum(0)
        if n + int(per_row[-1]) >= tokens:
            rows = int((per_row < tokens - n).sum()) + 1
            batch = TokenBatch(batch.input_ids[:rows], batch.attention_mask[:rows], batch.bos_mask[:rows])
            taken.append(batch)
            n += int(per_row[rows - 1])
            if phase is not None:
                phase.advance(int(per_row[rows - 1]))
            break
        taken.append(batch)
        n += int(per_row[-1])
        if phase is not None:
            phase.advance(int(per_row[-1]))
    return taken, n


def same_model(a: str, b: str) -> bool:
    """Whether two model names mean the same model (local paths compared resolved)."""
    import os
    from pathlib import Path

    def norm(name: str) -> str:
        return str(Path(name).resolve()) if os.path.exists(name) else name.rstrip("/")

    return norm(a) == norm(b)


def check_hook(dictionary: Dictionary, hook: str | None) -> None:
    """Refuse a dictionary trained on another hook point than the one asked for."""
    if hook is not None and hook != dictionary.cfg.hook:
        raise HookPointError(
            f"the dictionary was trained on {dictionary.cfg.hook}, not {hook}; drop --hook or pass a dictionary for {hook}"
        )


def check_model(dictionary: Dictionary, model_name: str | None) -> None:
    """Refuse a dictionary trained on another model than ``model_name`` (None: no check)."""
    recorded = dictionary.cfg.model
    if model_name is not None and recorded and not same_model(model_name, recorded):
        raise DimensionError(
            f"the dictionary was trained on {recorded}, not {model_name}; pass --model {recorded} "
            "(or --allow-other-model to evaluate it on this model anyway)"
        )


def check_dictionary_fits(dictionary: Dictionary, lm: Any, hook: str | None = None, model_name: str | None = None) -> None:
    """Refuse a dictionary for another hook point, model width or model, naming each."""
    from .hooks import hook_width, resolve_hook_point

    cfg = dictionary.cfg
    check_hook(dictionary, hook)
    if cfg.transcoder and not cfg.target:
        raise ConfigError(
            "this transcoder does not record the hook point it reconstructs, so it cannot be spliced into the model; "
            "set dictionary.cfg.target (e.g. 'mlp_out.6') first"
        )
    points = [(cfg.hook, cfg.d_in, "takes activations")]
    if cfg.transcoder:
        points.append((cfg.target, cfg.d_out, "writes activations"))
    for point, expected, does in points:
        resolve_hook_point(lm, point)
        width = hook_width(lm, point)
        if width != expected:
            raise DimensionError(
                f"the dictionary {does} of width {expected} but {point} of {lm.name} has width {width}; "
                f"it was trained on another model ({cfg.model or 'unrecorded'})"
            )
    check_model(dictionary, model_name)


@torch.no_grad()
def evaluate(
    dictionary: Dictionary,
    model: Any = None,
    *,
    dataset: str | None = None,
    tokens: int = 32_768,
    regimes: Regime | Iterable[Regime] = REGIMES,
    context_length: int | None = None,
    max_length: int = 1024,
    batch_tokens: int = 2048,
    split: Literal["train", "heldout"] = "heldout",
    splice_bos: bool | None = None,
    text_field: str = "text",
    allow_other_model: bool = False,
    bucket_tokens: int = POSITION_BUCKET,
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Every docs/metrics.md figure for ``dictionary`` on held-out text, in both regimes.

    ``model`` is a ``LoadedModel`` or a name for ``load_model`` (default: the model the
    dictionary records). ``tokens`` evaluated tokens per regime (padding and BOS never
    count); a dataset with fewer evaluates what there is and says so in the log and in
    ``requested_tokens``. ``fixed`` cuts contexts of ``context_length`` (default: the
    dictionary's training length, else 128); ``documents`` feeds whole documents up to
    ``max_length`` tokens (capped by the model's own maximum), padded per batch, as many
    per batch as fit in ``batch_tokens`` padded tokens (which bounds the logits' memory).
    Position buckets are ``bucket_tokens`` wide (default 128).

    The BOS position is evaluated (and spliced) as the dictionary was trained
    (``dictionary.cfg.keep_bos``) unless ``splice_bos`` says otherwise; the result
    records which (``keep_bos``, ``keep_bos_source``). ``progress`` gets a record per
    model batch of each phase (reading the text, the mean-activation pass, the four
    spliced passes), per regime.
    """
    return evaluate_many(
        [dictionary], model, dataset=dataset, tokens=tokens, regimes=regimes, context_length=context_length,
        max_length=max_length, batch_tokens=batch_tokens, split=split, splice_bos=splice_bos, text_field=text_field,
        allow_other_model=allow_other_model, bucket_tokens=bucket_tokens, progress=progress,
    )[0]


@torch.no_grad()
def evaluate_many(
    dictionaries: Sequence[Dictionary],
    model: Any = None,
    *,
    dataset: str | None = None,
    tokens: int = 32_768,
    regimes: Regime | Iterable[Regime] = REGIMES,
    context_length: int | None = None,
    max_length: int = 1024,
    batch_tokens: int = 2048,
    split: Literal["train", "heldout"] = "heldout",
    splice_bos: bool | None = None,
    text_field: str = "text",
    allow_other_model: bool = False,
    bucket_tokens: int = POSITION_BUCKET,
    progress: ProgressCallback | None = None,
) -> list[EvalResult]:
    """``evaluate`` for several dictionaries of one model (a sweep), in the order given,
    each with the figures it would get alone.

    Dictionaries that read and replace the same hook points on the same text share
    every model run that does not depend on the dictionary (the mean activation, the
    clean, zero- and mean-ablated runs): a sweep of M dictionaries at one hook point
    costs M + 3 runs of the model per batch instead of 4·M. ``model`` defaults to the
    model the first dictionary records; the rest are checked against it.
    """
    from .data import ContextStream, describe_source, document_batches, validate_source
    from .models import LoadedModel, load_model

    dictionaries = list(dictionaries)
    if not dictionaries:
        raise ConfigError("evaluate_many needs at least one dictionary")
    regimes = (regimes,) if isinstance(regimes, str) else tuple(regimes)
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown or not regimes:
        raise ConfigError(f"unknown regime(s) {unknown or regimes}; choose from {', '.join(REGIMES)}")
    if tokens <= 0:
        raise ConfigError(f"tokens must be positive, got {tokens}")
    if splice_bos is not None and not isinstance(splice_bos, bool):
        raise ConfigError(f"splice_bos must be True, False or None (as the dictionary was trained), got {splice_bos!r}")
    if bucket_tokens <= 0:
        raise ConfigError(f"bucket_tokens must be positive, got {bucket_tokens}")

    def settings(d: Dictionary) -> tuple[bool, int]:
        """(keep_bos, context length): what decides the evaluated tokens."""
        return (d.cfg.keep_bos if splice_bos is None else splice_bos), (context_length or d.cfg.context_length or 128)

    for d in dictionaries:
        ctx = settings(d)[1]
        if ctx < 2 or max_length < 2 or batch_tokens < 2:
            raise ConfigError(
                f"context_length ({ctx}), max_length ({max_length}) and batch_tokens ({batch_tokens}) must be at least 2"
            )
    validate_source(dataset, text_field)
    asked_name = model if isinstance(model, str) else None
    first = dictionaries[0]
    device = first.W_dec.device
    if not isinstance(model, LoadedModel):
        model = load_model(model or first.cfg.model or None, device=device)
    lm = model
    for d in dictionaries:
        if lm.device != d.W_dec.device:
            raise ConfigError(
                f"the dictionary is on {d.W_dec.device} and the model on {lm.device}; "
                f"move one, e.g. dictionary.to('{lm.device}')"
            )
        check_dictionary_fits(d, lm, model_name=None if allow_other_model else (asked_name or lm.name))
    max_len = min(max_length, lm.max_length)

    # Groups that see the same tokens (BOS policy, context length), and within them the
    # dictionaries that read and replace the same points.
    results: list[dict[str, RegimeResult]] = [{} for _ in dictionaries]
    groups: dict[tuple[bool, int], list[int]] = {}
    for i, d in enumerate(dictionaries):
        groups.setdefault(settings(d), []).append(i)
    for (keep_bos, ctx), members in groups.items():
        for regime in regimes:
            if regime == "fixed":
                stream: Iterator[Any] = ContextStream(
                    dataset, lm.tokenizer, context_length=ctx, batch_size=max(1, batch_tokens // ctx),
                    split=split, text_field=text_field,
                )
                length = ctx
            else:
                stream = document_batches(
                    dataset, lm.tokenizer, max_length=max_len, batch_size=batch_tokens,
                    split=split, text_field=text_field, max_batch_tokens=batch_tokens,
                )
                length = max_len
            reading = Phase(progress, f"evaluating {REGIME_LABELS[regime]}: reading text", tokens)
            batches, n = _take_tokens(stream, tokens, keep_bos, reading)
            if n < tokens:
                log.warning("%s regime: the data holds only %d of the %d tokens asked for; evaluating those",
                            regime, n, tokens)
            points: dict[tuple[str, str], list[int]] = {}
            for i in members:
                c = dictionaries[i].cfg
                points.setdefault((c.hook, c.output_hook), []).append(i)
            for same_points in points.values():
                found = _evaluate_regime(
                    [dictionaries[i] for i in same_points], lm, batches, regime, length, tokens, bucket_tokens,
                    keep_bos, n, progress,
                )
                for i, result in zip(same_points, found):
                    results[i][regime] = result
    out = []
    for d, found in zip(dictionaries, results):
        keep_bos = settings(d)[0]
        out.append(EvalResult(
            dictionary=d.cfg.to_dict(),
            model=lm.name,
            hook=d.cfg.hook,
            dataset=describe_source(dataset),  # resolved: a relative path means nothing elsewhere
            fixed=found.get("fixed"),
            documents=found.get("documents"),
            fingerprint=d.fingerprint(),
            keep_bos=keep_bos,
            keep_bos_source=BOS_AS_TRAINED if keep_bos == d.cfg.keep_bos else BOS_OVERRIDDEN,
        ))
    return out
