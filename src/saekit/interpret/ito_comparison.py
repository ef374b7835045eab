"""The encoder's codes against codes found by inference-time optimisation, at matched L0,
on held-out text: reconstruction, the model's loss with each spliced in, speed, and the
thresholding test.

``compare_codes(dictionary, lm)`` reads held-out text in fixed contexts of the
dictionary's training length (BOS as it was trained, exactly the tokens ``saekit.evaluate``
reads for its ``fixed`` regime), and for each method finds codes for every evaluated token:

* ``encoder``: the dictionary's own ``encode`` (a transcoder's reads its input point);
* ``mp``, ``omp``, ``gp``: matching pursuit, orthogonal matching pursuit and gradient
  pursuit (``interpret.ito``) at the matched L0: by default the encoder's mean L0 on
  these tokens, rounded;
* ``fista``: the non-negative L1-penalised codes. FISTA has no L0 knob: its λ is found
  by a short bisection on the first ``FISTA_SEARCH_TOKENS`` tokens so that their mean L0
  is within 5% of the matched L0, and the L0 it reaches on all tokens is reported.

The optimised codes only ever see the activations being reconstructed: for a transcoder
they reconstruct its *target* from the decoder alone (``f W_dec + b_dec``, no skip
path; the input plays no part), while the encoder's codes come from the input and its
reconstruction is the transcoder's output (skip path included).

Every figure is ``saekit.evaluate``'s, on the same tokens, by its own code: each method
is handed to ``evaluation.evaluate_many`` as a stand-in for the dictionary whose
``encode`` returns the codes found beforehand for that batch, so FVU, L0, and the
model's cross-entropy with the reconstruction spliced in at the hook point (the target
for a transcoder) on every evaluated position, against the clean and zero-ablated runs
(``loss_recovered = (ce_zero − ce_spliced) / (ce_zero − ce_clean)``, docs/metrics.md),
mean exactly what they mean there. The encoder's figures are ``saekit.evaluate``'s
``fixed`` regime. Time per 1,000 tokens is the time to find the codes (the encoder's
forward, or the solver), measured per model batch, without the model's passes.

The thresholding test: every code below ``T`` is set to 0, in the encoder's codes and in
the optimised codes with the lowest FVU ("best"), for ``T`` at multiples of the median
non-zero activation of the encoder's codes (the same ``T`` for both), and FVU and L0 are
measured on the same tokens (T = 0, the codes as they are, is always a row). With ``gap(T) = FVU_encoder(T) − FVU_best(T)``, the share of
the gap that small activations explain at ``T`` is ``1 − gap(T) / gap(0)``: 1 when removing
every activation below ``T`` from both closes the gap (the difference between the codes
lay in activations below ``T``), 0 when the gap is unchanged, negative when it grows.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..checks import is_integer
from ..dictionaries import Dictionary
from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback
from .ito import fista, gradient_pursuit, matching_pursuit, orthogonal_matching_pursuit

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("encoder", "mp", "omp", "gp", "fista")
METHOD_NAMES: dict[str, str] = {
    "encoder": "encoder", "mp": "matching pursuit", "omp": "orthogonal matching pursuit",
    "gp": "gradient pursuit", "fista": "FISTA (L1)",
}
OPTIMISED = tuple(m for m in METHODS if m != "encoder")
# Multiples of the encoder's median non-zero activation.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
# FISTA's λ is searched on this many tokens (each try is a full solve), to within this
# relative L0 error, in at most this many halvings of a log-scale bracket.
FISTA_SEARCH_TOKENS = 256
FISTA_SEARCH_TOLERANCE = 0.05
FISTA_SEARCH_STEPS = 14
# Tokens per solver call: bounds the (tokens × features) and (tokens × L0 × d) temporaries.
SOLVE_BLOCK = 1024
# How far the stand-in's inputs may be from the activations the codes were found for
# before the batches are taken to be out of step (relative to their norm).
ALIGNMENT_TOLERANCE = 1e-3


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The methods asked for, validated: known, not repeated, at least one."""
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}")
    if not methods:
        raise ConfigError(f"give at least one method, from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"a method is named twice in {', '.join(methods)}")
    return methods


def check_comparison(
    dictionary: Dictionary, methods: Sequence[str], tokens: int, l0: int | None, thresholds: Sequence[float],
) -> tuple[str, ...]:
    """Everything ``compare_codes`` can check before the model loads; the methods, validated."""
    methods = check_methods(methods)
    if not is_integer(tokens) or tokens <= 0:
        raise ConfigError(f"tokens must be a positive whole number, got {tokens!r}")
    F = dictionary.cfg.d_sae
    if l0 is not None and (not is_integer(l0) or not 0 < l0 <= F):
        raise ConfigError(f"l0 must be a whole number from 1 to the dictionary size {F}, got {l0!r}")
    if not thresholds or any(not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0) for t in thresholds):
        raise ConfigError(f"thresholds must be finite non-negative multiples of the median activation, got {list(thresholds)}")
    if not dictionary.cfg.hook:
        raise ConfigError("the dictionary does not record its hook point; set dictionary.cfg.hook (e.g. 'resid_post.9')")
    if dictionary.cfg.transcoder and not dictionary.cfg.target:
        raise ConfigError(
            "this transcoder does not record the hook point it reconstructs, so its codes cannot be spliced in; "
            "set dictionary.cfg.target (e.g. 'mlp_out.6') first"
        )
    return methods


@dataclass
class MethodResult:
    """One method's codes on the compared tokens: ``saekit.evaluate``'s figures for them."""

    method: str
    fvu: float
    l0: float
    ce_spliced: float
    ce_diff: float
    loss_recovered: float
    kl: float
    seconds: float  # finding the codes for every token
    n_tokens: int
    l1: float | None = None  # FISTA's penalty
    evaluation: Any = field(default=None, repr=False)  # the evaluation.RegimeResult behind the figures

    @property
    def name(self) -> str:
        return METHOD_NAMES[self.method]

    @property
    def ms_per_1k_tokens(self) -> float:
        return self.seconds / self.n_tokens * 1e6 if self.n_tokens else math.nan

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "method": self.method, "name": self.name, "fvu": self.fvu, "l0": self.l0, "ce_spliced": self.ce_spliced,
            "ce_diff": self.ce_diff, "loss_recovered": self.loss_recovered, "kl": self.kl, "seconds": self.seconds,
            "ms_per_1k_tokens": self.ms_per_1k_tokens,
        }
        if self.l1 is not None:
            d["l1"] = self.l1
        if self.evaluation is not None:
            rec = self.evaluation.reconstruction
            d.update(mse=rec.mse, cosine=rec.cosine, relative_reconstruction_bias=rec.relative_reconstruction_bias)
        return {k: _finite_or_text(v) for k, v in d.items()}


@dataclass(frozen=True)
class ThresholdRow:
    """FVU and L0 of the encoder's and the best optimised codes with every code below ``threshold`` set to 0."""

    multiple: float  # of the encoder's median non-zero activation
    threshold: float
    encoder_fvu: float
    encoder_l0: float
    best_fvu: float
    best_l0: float
    gap: float  # encoder_fvu − best_fvu
    gap_explained: float  # 1 − gap / gap at T = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite_or_text(v) for k, v in self.__dict__.items()}


GAP_DEFINITION = (
    "gap(T) = FVU_encoder(T) - FVU_best(T), both with every code below T set to 0; "
    "gap explained by activations below T = 1 - gap(T) / gap(0)"
)


@dataclass
class Thresholding:
    """The thresholding test: how much of the encoder-versus-optimised gap is in small activations."""

    best: str  # the optimised method compared with the encoder
    median: float  # the unit of the thresholds: the encoder's median non-zero activation
    rows: list[ThresholdRow]
    definition: str = GAP_DEFINITION

    def to_dict(self) -> dict[str, Any]:
        return {"best": self.best, "median": _finite_or_text(self.median), "definition": self.definition,
                "rows": [r.to_dict() for r in self.rows]}


@dataclass
class CodeComparison:
    """``compare_codes``'s answer: every method's figures on the same tokens, and the thresholding test."""

    dictionary: dict[str, Any]
    fingerprint: list[float]
    model: str
    hook: str  # where the codes are read (the dictionary's input point)
    spliced_at: str  # where the reconstructions replace the activations (a transcoder's target)
    dataset: str | None
    keep_bos: bool
    context_length: int
    n_tokens: int
    requested_tokens: int
    n_ce_tokens: int
    ce_clean: float
    ce_zero: float
    l0: int  # the matched L0 of the pursuits
    l0_source: str  # "encoder" (its mean L0, rounded) or "given"
    methods: list[MethodResult]
    thresholding: Thresholding | None
    fista_search_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def method(self, name: str) -> MethodResult:
        for m in self.methods:
            if m.method == name:
                return m
        raise KeyError(name)

    def table(self) -> str:
        """The methods side by side: L0, FVU, loss recovered, CE diff, time per 1,000 tokens."""
        bos = "kept" if self.keep_bos else "excluded"
        where = self.hook if self.spliced_at == self.hook else f"{self.hook} → {self.spliced_at}"
        rows = [
            f"{self.dictionary.get('arch')} dictionary (F = {self.dictionary.get('d_sae')}) on {where} of {self.model}: "
            f"{self.n_tokens:,} held-out tokens in contexts of {self.context_length} (BOS {bos}, as trained)",
            f"optimised codes at L0 {self.l0} ("
            + ("the encoder's mean L0, rounded" if self.l0_source == "encoder" else "as asked") + ")",
        ]
        fista_result = next((m for m in self.methods if m.method == "fista"), None)
        if fista_result is not None:
            rows.append(f"FISTA has no L0 knob: λ = {fista_result.l1:.4g} was bisected on {self.fista_search_tokens} "
                        f"tokens to give about L0 {self.l0}; it reaches {fista_result.l0:.1f} on all of them")
        rows.append(f"clean CE {self.ce_clean:.4f}, zero-ablation CE {self.ce_zero:.4f} over {self.n_ce_tokens:,} "
                    "predictions; loss recovered = (CE zero − CE spliced) / (CE zero − CE clean)")
        rows.append(f"{'method':<30}{'L0':>8}{'FVU':>9}{'loss rec.':>11}{'CE diff':>10}{'KL':>9}{'ms / 1k tok':>13}")
        for m in self.methods:
            rows.append(f"{m.name:<30}{m.l0:>8.2f}{m.fvu:>9.4f}{m.loss_recovered:>11.4f}{m.ce_diff:>10.4f}"
                        f"{m.kl:>9.4f}{m.ms_per_1k_tokens:>13.1f}")
        rows += [f"note: {n}" for n in self.notes]
        return "\n".join(rows)

    def thresholding_table(self) -> str:
        """The thresholding test as rows of T."""
        t = self.thresholding
        if t is None:
            return "thresholding: needs at least one optimised method"
        best = METHOD_NAMES[t.best]
        rows = [
            f"thresholding: codes below T set to 0, in the encoder's codes and in {best}'s (the optimised codes with the "
            f"lowest FVU); T in multiples of the encoder's median non-zero activation ({t.median:.4g})",
            f"{'× median':>9}{'T':>10}{'enc. FVU':>10}{'enc. L0':>9}{'best FVU':>10}{'best L0':>9}{'gap':>9}"
            f"{'explained':>11}",
        ]
        for r in t.rows:
            rows.append(f"{r.multiple:>9g}{r.threshold:>10.4g}{r.encoder_fvu:>10.4f}{r.encoder_l0:>9.2f}{r.best_fvu:>10.4f}"
                        f"{r.best_l0:>9.2f}{r.gap:>9.4f}{r.gap_explained:>11.1%}")
        rows.append(t.definition)
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dictionary": self.dictionary, "fingerprint": self.fingerprint, "model": self.model, "hook": self.hook,
            "spliced_at": self.spliced_at, "dataset": self.dataset, "keep_bos": self.keep_bos,
            "context_length": self.context_length, "n_tokens": self.n_tokens, "requested_tokens": self.requested_tokens,
            "n_ce_tokens": self.n_ce_tokens, "ce_clean": _finite_or_text(self.ce_clean),
            "ce_zero": _finite_or_text(self.ce_zero), "l0": self.l0, "l0_source": self.l0_source,
            "fista_search_tokens": self.fista_search_tokens,
            "methods": [m.to_dict() for m in self.methods],
            "thresholding": self.thresholding.to_dict() if self.thresholding is not None else None,
            "notes": self.notes,
        }


def _finite_or_text(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


class _FoundCodes:
    """Stands in for the dictionary in ``evaluate_many``: ``encode`` hands back, batch by
    batch, codes found beforehand for the same tokens, and ``reconstruct`` decodes them
    with the decoder alone (the optimised codes reconstruct the compared point directly,
    a transcoder's target included). Everything else is the dictionary's."""

    def __init__(self, dictionary: Dictionary, inputs: list[Tensor], codes: list[Tensor]):
        self.dictionary, self.inputs, self.codes = dictionary, inputs, codes
        self.cfg = dictionary.cfg
        self.W_dec, self.b_dec = dictionary.W_dec, dictionary.b_dec
        self.used = 0

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        # The evaluation reads the same batches in the same order; a mismatch is a bug.
        if features is not None or self.used >= len(self.codes):
            raise RuntimeError("the evaluation asked for codes beyond the batches they were found for")
        expected = self.inputs[self.used]
        rms = float(expected.norm()) / max(1, expected.numel()) ** 0.5
        if x.shape != expected.shape or (
            x.numel() and float((x - expected.to(x)).abs().max()) > ALIGNMENT_TOLERANCE * rms
        ):
            raise RuntimeError(
                f"batch {self.used}: the evaluation's activations differ from those the codes were found for"
            )
        codes = self.codes[self.used].to_dense().to(x.device)
        self.used += 1
        return codes

    def reconstruct(self, x: Tensor, f: Tensor | None = None) -> Tensor:
        return self.dictionary.decode(f if f is not None else self.encode(x))

    def fingerprint(self) -> list[float]:
        return self.dictionary.fingerprint()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_up(solve: Callable[[Tensor], Tensor], batches: list[Tensor]) -> None:
    """One untimed call on a few tokens, so that the timings leave out one-off costs (CUDA's
    kernel loading and its allocator's first requests)."""
    if batches and batches[0].shape[0]:
        solve(batches[0][:8])


def _solved(solve: Callable[[Tensor], Tensor], y: Tensor) -> Tensor:
    """``solve`` on blocks of at most ``SOLVE_BLOCK`` tokens (every solver treats each token on its own)."""
    if y.shape[0] <= SOLVE_BLOCK:
        return solve(y)
    return torch.cat([solve(block) for block in y.split(SOLVE_BLOCK)])


def _fista_l1_for_l0(
    dictionary: Dictionary, sample: Tensor, l0: int, iterations: int, progress: ProgressCallback | None,
) -> float:
    """λ whose FISTA codes on ``sample`` have mean L0 within 5% of ``l0`` (or the closest tried).

    L0 falls as λ rises; at λ ≥ max_i ⟨x − b_dec, W_dec[i]⟩ every code is 0, so the search
    halves a log-scale bracket below that.
    """
    r = sample - dictionary.b_dec.detach().float()
    hi = max(float((r @ dictionary.W_dec.detach().float().t()).max()), 1e-12)
    lo = hi * 1e-5
    phase = Phase(progress, "ito: FISTA λ search", FISTA_SEARCH_STEPS, unit="step")
    best: tuple[float, float] | None = None  # (|L0 − l0|, λ)
    for _ in range(FISTA_SEARCH_STEPS):
        lam = math.sqrt(lo * hi)
        got = float((fista(dictionary, sample, lam, iterations=iterations) > 0).sum(1).float().mean())
        phase.advance(1)
        if best is None or abs(got - l0) < best[0]:
            best = (abs(got - l0), lam)
        if abs(got - l0) <= FISTA_SEARCH_TOLERANCE * l0:
            break
        lo, hi = (lam, hi) if got > l0 else (lo, lam)
    phase.advance(FISTA_SEARCH_STEPS)
    assert best is not None
    return best[1]


@torch.no_grad()
def compare_codes(
    dictionary: Dictionary,
    model: Any = None,
    *,
    methods: Sequence[str] = METHODS,
    tokens: int = 2048,
    l0: int | None = None,
    dataset: str | None = None,
    text_field: str = "text",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    fista_iterations: int = 200,
    batch_tokens: int = 2048,
    allow_other_model: bool = False,
    progress: ProgressCallback | None = None,
) -> CodeComparison:
    """The encoder's codes against optimised ones at matched L0 on ``tokens`` held-out tokens.

    ``model`` is a ``LoadedModel`` or a name for ``load_model`` (default: the model the
    dictionary records). ``methods`` from ``METHODS``; ``l0``: the pursuits' L0 and
    FISTA's target (default: the encoder's mean L0 on these tokens, rounded);
    ``thresholds``: the thresholding test's T in multiples of the encoder's median
    non-zero activation (a T of 0 is the codes as they are). The text is read as
    ``saekit.evaluate`` reads its ``fixed`` regime with the same ``tokens`` and
    ``batch_tokens``, so the encoder's figures are that regime's. ``progress`` gets
    ``{"phase", "done", "total", "unit"}`` records. See the module's docstring for what
    each figure is.
    """
    from ..data import ContextStream, describe_source, validate_source
    from ..evaluation import _take_tokens, check_dictionary_fits, evaluate_many
    from ..hooks import read_activations
    from ..models import LoadedModel, load_model

    methods = check_comparison(dictionary, methods, tokens, l0, thresholds)
    if fista_iterations <= 0:
        raise ConfigError(f"fista_iterations must be positive, got {fista_iterations}")
    cfg = dictionary.cfg
    ctx = cfg.context_length or 128
    if ctx < 2 or batch_tokens < 2:
        raise ConfigError(f"the context length ({ctx}) and batch_tokens ({batch_tokens}) must be at least 2")
    validate_source(dataset, text_field)
    asked_name = model if isinstance(model, str) else None
    device = dictionary.W_dec.device
    if not isinstance(model, LoadedModel):
        model = load_model(model or cfg.model or None, device=device)
    lm = model
    if lm.device != device:
        raise ConfigError(f"the dictionary is on {device} and the model on {lm.device}; move one, e.g. "
                          f"dictionary.to('{lm.device}')")
    check_dictionary_fits(dictionary, lm, model_name=None if allow_other_model else (asked_name or lm.name))
    keep_bos = cfg.keep_bos
    target = cfg.output_hook

    # The tokens saekit.evaluate's fixed regime reads with these settings, and their activations.
    stream = ContextStream(dataset, lm.tokenizer, context_length=ctx, batch_size=max(1, batch_tokens // ctx),
                           split="heldout", text_field=text_field)
    batches, n = _take_tokens(stream, tokens, keep_bos, Phase(progress, "ito: reading text", tokens))
    if n == 0:
        raise DataError(f"the held-out split of {describe_source(dataset)} holds no tokens to compare on (every 20th "
                        "document is held out): give a dataset with more documents")
    if n < tokens:
        log.warning("the data holds only %d of the %d tokens asked for; comparing on those", n, tokens)
    xs, ys = [], []
    phase = Phase(progress, "ito: activations", n)
    for batch in batches:
        acts = read_activations(lm, list(dict.fromkeys([cfg.hook, target])), batch.input_ids.to(lm.device),
                                batch.attention_mask.to(lm.device))
        mask = batch.token_mask(keep_bos=keep_bos).to(lm.device)
        xs.append(acts[cfg.hook][mask].float())
        ys.append(acts[target][mask].float())
        phase.advance(int(mask.sum()))

    # The encoder's codes: timed, and the figures the pursuits are matched to.
    phase = Phase(progress, "ito: codes by the encoder", n)
    seconds: dict[str, float] = {"encoder": 0.0}
    l0_sum, nonzero = 0.0, []
    _warm_up(lambda x: dictionary.encode(x), xs)
    for x in xs:
        _synchronize(device)
        start = time.perf_counter()
        f = dictionary.encode(x)
        _synchronize(device)
        seconds["encoder"] += time.perf_counter() - start
        l0_sum += float((f > 0).sum())
        nonzero.append(f[f > 0].float())
        phase.advance(x.shape[0])
    encoder_l0 = l0_sum / max(n, 1)
    l0_source = "given" if l0 is not None else "encoder"
    target_l0 = l0 if l0 is not None else min(cfg.d_sae, max(1, round(encoder_l0)))

    notes: list[str] = []
    stand_ins: dict[str, Any] = {}
    codes: dict[str, list[Tensor]] = {}
    l1: float | None = None
    search_tokens = 0
    for method in methods:
        if method == "encoder":
            stand_ins[method] = dictionary  # its own figures, exactly saekit.evaluate's
            continue
        if method == "fista":
            sample = torch.cat(ys)[:FISTA_SEARCH_TOKENS]
            search_tokens = sample.shape[0]
            l1 = _fista_l1_for_l0(dictionary, sample, target_l0, fista_iterations, progress)
            solve: Callable[[Tensor], Tensor] = lambda y, lam=l1: fista(dictionary, y, lam, iterations=fista_iterations)
        else:
            solver = {"mp": matching_pursuit, "omp": orthogonal_matching_pursuit, "gp": gradient_pursuit}[method]
            solve = lambda y, s=solver: s(dictionary, y, target_l0)
        phase = Phase(progress, f"ito: codes by {METHOD_NAMES[method]}", n)
        _warm_up(solve, ys)
        found, seconds[method] = [], 0.0
        for y in ys:
            _synchronize(device)
            start = time.perf_counter()
            f = _solved(solve, y)
            _synchronize(device)
            seconds[method] += time.perf_counter() - start
            found.append(f.to_sparse())
            phase.advance(y.shape[0])
        codes[method] = found
        stand_ins[method] = _FoundCodes(dictionary, xs, found)

    order = list(stand_ins)
    evaluated = evaluate_many(
        [stand_ins[m] for m in order], lm, dataset=dataset, tokens=tokens, regimes="fixed", context_length=ctx,
        batch_tokens=batch_tokens, split="heldout", splice_bos=keep_bos, text_field=text_field,
        allow_other_model=True,  # checked above
        progress=progress,
    )
    for m in order:
        if isinstance(stand_ins[m], _FoundCodes) and stand_ins[m].used != len(xs):
            raise RuntimeError(f"the evaluation used {stand_ins[m].used} of the {len(xs)} batches of {m}'s codes")
    results = []
    for m, ev in zip(order, evaluated):
        r = ev.fixed
        results.append(MethodResult(
            method=m, fvu=r.fvu, l0=r.l0, ce_spliced=r.ce_spliced, ce_diff=r.ce_diff, loss_recovered=r.loss_recovered,
            kl=r.kl, seconds=seconds[m], n_tokens=n, l1=l1 if m == "fista" else None, evaluation=r,
        ))
        if r.n_tokens != n:
            raise RuntimeError(f"{m}: the evaluation measured {r.n_tokens} tokens, the codes were found for {n}")
    fista_result = next((r for r in results if r.method == "fista"), None)
    if fista_result is not None and abs(fista_result.l0 - target_l0) > 0.1 * target_l0:
        notes.append(f"FISTA's L0 on all tokens ({fista_result.l0:.1f}) is more than 10% from {target_l0}: "
                     f"λ was searched on {search_tokens} tokens")
    if l0_source == "given" and "encoder" in methods and abs(encoder_l0 - target_l0) > 0.1 * target_l0:
        notes.append(f"the pursuits run at L0 {target_l0}, the encoder's own mean L0 is {encoder_l0:.1f}: "
                     "not a matched comparison")

    thresholding = None
    optimised = [r for r in results if r.method != "encoder"]
    if optimised:
        best = min(optimised, key=lambda r: r.fvu if math.isfinite(r.fvu) else math.inf).method
        thresholding = _thresholding(dictionary, xs, ys, codes[best], best, torch.cat(nonzero), thresholds)
    first = evaluated[0].fixed
    return CodeComparison(
        dictionary=cfg.to_dict(), fingerprint=dictionary.fingerprint(), model=lm.name, hook=cfg.hook,
        spliced_at=target, dataset=describe_source(dataset), keep_bos=keep_bos, context_length=ctx, n_tokens=n,
        requested_tokens=tokens, n_ce_tokens=first.n_ce_tokens, ce_clean=first.ce_clean, ce_zero=first.ce_zero,
        l0=target_l0, l0_source=l0_source, methods=results, thresholding=thresholding,
        fista_search_tokens=search_tokens, notes=notes,
    )


def _thresholding(
    dictionary: Dictionary, xs: list[Tensor], ys: list[Tensor], best_codes: list[Tensor], best: str,
    encoder_nonzero: Tensor, multiples: Sequence[float],
) -> Thresholding:
    """FVU and L0 (``evaluation``'s definitions, same tokens) of both codes with the small ones zeroed.

    T = 0 (the codes as they are, the reference of the gap) is always among the rows.
    """
    from ..evaluation import _ReconstructionSums

    multiples = sorted({0.0, *(float(m) for m in multiples)})
    median = float(encoder_nonzero.median()) if encoder_nonzero.numel() else math.nan
    if not math.isfinite(median):  # an encoder that never fires: the best codes' scale instead
        values = torch.cat([c.values() for c in best_codes])
        values = values[values > 0]
        median = float(values.median()) if values.numel() else 1.0
    enc_sums = [_ReconstructionSums(dictionary) for _ in multiples]
    best_sums = [_ReconstructionSums(dictionary) for _ in multiples]
    for x, y, sparse in zip(xs, ys, best_codes):
        f_enc = dictionary.encode(x)
        f_best = sparse.to_dense().to(y.device)
        for j, m in enumerate(multiples):
            T = m * median
            fe = torch.where(f_enc < T, torch.zeros_like(f_enc), f_enc)
            fb = torch.where(f_best < T, torch.zeros_like(f_best), f_best)
            enc_sums[j].add(y, fe, dictionary.reconstruct(x, fe))
            best_sums[j].add(y, fb, dictionary.decode(fb))
    figures = [(e.result(), b.result()) for e, b in zip(enc_sums, best_sums)]
    gap0 = figures[0][0].fvu - figures[0][1].fvu
    rows = []
    for m, (e, b) in zip(multiples, figures):
        gap = e.fvu - b.fvu
        rows.append(ThresholdRow(
            multiple=m, threshold=m * median, encoder_fvu=e.fvu, encoder_l0=e.l0, best_fvu=b.fvu, best_l0=b.l0,
            gap=gap, gap_explained=1 - gap / gap0 if gap0 != 0 else math.nan,
        ))
    return Thresholding(best=best, median=median, rows=rows)
