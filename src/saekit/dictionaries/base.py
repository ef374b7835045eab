"""The one small base class every dictionary architecture builds on.

Conventions (stated once, kept everywhere; docs/metrics.md states them for users):

* ``W_enc`` has shape ``d_in × F``; ``W_dec`` has shape ``F × d_out`` and its rows are
  the features' unit-norm directions. A sparse autoencoder has ``d_out = d_in``.
* A sparse autoencoder's pre-activations subtract the decoder bias first (the "tied
  pre-bias"): ``pre = (x − b_dec) W_enc + b_enc``. A transcoder reads one hook point
  and reconstructs another, so its ``b_dec`` lives in the other space and its
  pre-activations are ``x W_enc + b_enc``.
* ``x̂ = f W_dec + b_dec``, plus ``x W_skip`` for a skip transcoder (``W_skip`` is
  ``d_in × d_out``, learned, starting at zero).
* Every method works on any leading batch shape ``(..., d)``.

A subclass states only what differs: its activation (``activate``), its training
objective (``objective``, which ``forward`` calls, on the kernels of ``sparse.py``),
and a few class attributes the trainer reads instead of testing architecture names:
which sparsity penalty it takes (``sparsity_penalty``), how its dead features are
revived (``revive_dead``), which tensors are indexed by feature (``feature_axes``) and
which scale with the input (``input_scaled``).

``forward(x, target, params)`` is the training objective and returns a ``LossOutput``
(as sparsify's coders do: one call that DDP can wrap, and a transcoder is the same
call with another target); inference uses ``encode``, ``decode`` and ``reconstruct``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal, Protocol

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DimensionError
from .sparse import SparsityPattern, pre_acts_at, scratch, shapes_static, sparse_decode

ARCHITECTURES: dict[str, type["Dictionary"]] = {}
# ``Dictionary.reconstruct`` works through many tokens in blocks of about this many
# (token, feature) activations (64 MB in float32).
RECONSTRUCT_BLOCK = 1 << 24
# The layout of ``Dictionary.fingerprint()``: slices compared at their own scale.
FINGERPRINT_GROUPS = ((0, 8), (8, 11), (11, 12))
FINGERPRINT_LENGTH = 12


@dataclass
class DictionaryConfig:
    """What is needed to rebuild and use a dictionary (not how it was trained).

    ``act_scale`` records the constant the raw activations were divided by during
    training (``target_scale`` the one a transcoder's targets were divided by). Saved
    weights have both folded in, so ``encode`` takes raw activations and ``decode``
    returns raw activations; the numbers are kept for provenance and for anyone who
    wants the normalised space back.

    A transcoder (``transcoder=True``) reads ``hook`` and reconstructs ``target`` (of
    width ``d_out``, default ``d_in``); ``skip`` adds the learned linear skip path.
    """

    arch: str
    d_in: int
    d_sae: int
    k: int | None = None
    hook: str = ""
    model: str = ""
    act_scale: float = 1.0
    context_length: int | None = None
    keep_bos: bool = False
    transcoder: bool = False
    target: str = ""
    d_out: int | None = None  # None: d_in
    skip: bool = False
    target_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"unknown architecture {self.arch!r}; choose one of {sorted(ARCHITECTURES)}"
            )
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ConfigError(f"d_in and d_sae must be positive, got {self.d_in} and {self.d_sae}")
        needs_k = ARCHITECTURES[self.arch].uses_k
        if needs_k:
            if self.k is None or self.k <= 0:
                raise ConfigError(f"arch {self.arch!r} needs a positive k (e.g. --k 32), got {self.k}")
            if self.k >= self.d_sae:
                raise ConfigError(
                    f"k={self.k} must be smaller than the dictionary size {self.d_sae}; "
                    "lower --k or raise --expansion/--dict-size"
                )
        for name in ("act_scale", "target_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive finite number, got {value}")
        if self.d_out is None:
            self.d_out = self.d_in
        if self.d_out <= 0:
            raise ConfigError(f"d_out must be positive, got {self.d_out}")
        if not self.transcoder:
            given = [f"{name}={getattr(self, name)!r}" for name in ("target", "skip") if getattr(self, name)]
            if self.d_out != self.d_in:
                given.append(f"d_out={self.d_out} (d_in={self.d_in})")
            if self.target_scale != 1.0:
                given.append(f"target_scale={self.target_scale}")
            if given:
                raise ConfigError(
                    f"{', '.join(given)} describe a transcoder, but transcoder=False; pass transcoder=True "
                    "(a sparse autoencoder reconstructs its own input)"
                )
        elif self.target and self.target == self.hook:
            raise ConfigError(
                f"a transcoder from {self.hook} to itself is a sparse autoencoder; drop the target (--target)"
            )

    @property
    def output_hook(self) -> str:
        """The hook point the dictionary's output stands for: a transcoder's target, a
        sparse autoencoder's own hook point."""
        return self.target if self.transcoder else self.hook

    def describe(self) -> str:
        """What the dictionary is, in words: "topk dictionary on resid_post.9 of M", or for
        a transcoder "relu skip transcoder from mlp_in.6 to mlp_out.6 of M"."""
        return describe(self.to_dict())

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LossOutput:
    """A training step's loss, its named terms (for logging) and what the trainer reads.

    The dense (B, F) activations are not kept: the sparse kernels never form them, and
    forming them would cost as much as the whole sparse step. What the trainer needs
    from them is here, as device tensors (reading one would make a GPU wait):
    ``fired`` (bool, (F,)) marks the features positive on some token of the batch,
    for dead-feature tracking; ``n_active`` (a 0-d integer tensor) counts the
    positive activations, so the batch's L0 is ``n_active / B``.
    """

    loss: Tensor
    x_hat: Tensor
    terms: dict[str, Tensor]
    fired: Tensor
    n_active: Tensor


class TokenGroup(Protocol):
    """The processes that share one global batch in data-parallel training
    (``training.distributed.RankGroup``). ``forward`` gets this process's share of the
    tokens; the few quantities of a step that are not means over tokens are computed
    over the whole batch through it, so that N processes compute the step of one."""

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the group (no gradient)."""
        ...

    def gather(self, t: Tensor) -> Tensor:
        """Every process's ``t`` concatenated along dim 0 (no gradient)."""
        ...


@dataclass
class LossParams:
    """Per-step hyper-parameters the trainer hands to ``forward``.

    ``sparsity_coeff`` is λ after its warm-up (the L1 coefficient for ReLU/gated,
    the L0 coefficient for JumpReLU; unused by the TopK family), a number or a 0-d
    device tensor (a step replayed from a CUDA graph reads it from the device). ``dead_mask`` marks
    features silent for longer than the dead window, for the auxiliary-k loss.
    ``group``: the processes sharing the global batch (None: this process has all of it).
    """

    sparsity_coeff: float | Tensor = 0.0
    dead_mask: Tensor | None = None
    auxk_coeff: float = 1 / 32
    aux_k: int | None = None
    jumprelu_bandwidth: float = 0.05
    group: TokenGroup | None = None


def describe(cfg: dict) -> str:
    """``DictionaryConfig.describe`` for a config read back as a dict (an evaluation's
    record of its dictionary, which may predate the transcoder fields)."""
    where = f"of {cfg.get('model')}" if cfg.get("model") else ""
    if cfg.get("transcoder"):
        kind = "skip transcoder" if cfg.get("skip") else "transcoder"
        text = f"{cfg.get('arch')} {kind} from {cfg.get('hook')} to {cfg.get('target') or '?'}"
    else:
        text = f"{cfg.get('arch')} dictionary on {cfg.get('hook')}"
    return f"{text} {where}".rstrip()


def register(cls: type["Dictionary"]) -> type["Dictionary"]:
    ARCHITECTURES[cls.arch] = cls
    return cls


def mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Squared error summed over the d dimensions, averaged over tokens (docs/metrics.md, `mse`).

    One fused op each way (``mse_loss``), where the written-out form took four passes
    over the (B, d) batch forward and four back.
    """
    return nn.functional.mse_loss(x_hat, x, reduction="sum") / (x.numel() // x.shape[-1])


class Dictionary(nn.Module):
    """A sparse dictionary: ``encode``, ``decode`` and ``reconstruct`` on raw
    activations; ``forward`` is the training objective."""

    arch: ClassVar[str]
    uses_k: ClassVar[bool] = False
    # "l1" or "l0": the penalty the trainer's sparsity coefficient weights (None: sparsity
    # is structural, as in TopK).
    sparsity_penalty: ClassVar[Literal["l1", "l0"] | None] = None
    # How dead features come back: resampled onto badly reconstructed inputs, or trained
    # by the auxiliary-k loss.
    revive_dead: ClassVar[Literal["resample", "auxk"]] = "resample"
    # Tensors with one slice per feature, and the axis it is on (for resampling and for
    # resetting Adam's moments of exactly those slices).
    feature_axes: ClassVar[dict[str, int]] = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
    # Where a feature's firing cut-off lives, for the data-driven start in
    # `init_from_data`: "bias" (ReLU-like: fires when pre-activation + b_enc > 0),
    # "threshold" (fires when the pre-activation exceeds `threshold`), or None (TopK).
    cutoff: ClassVar[Literal["bias", "threshold"] | None] = None
    # Tensors in the units of the features: multiplying a sparse autoencoder's input by
    # s multiplies each of them by s, and then the features f scale by s too while the
    # unit-norm decoder rows stay unchanged (a transcoder's features are in its target's
    # units). This is all `fold_activation_scale` needs to know.
    input_scaled: ClassVar[tuple[str, ...]] = ("b_dec", "b_enc")
    # Whether inference needs statistics set from training inputs after training
    # (``calibrate``), as BatchTopK's threshold does.
    calibrated: ClassVar[bool] = False

    def __init__(self, cfg: DictionaryConfig):
        super().__init__()
        self.cfg = cfg
        d, F, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.empty(d, F))
        self.b_enc = nn.Parameter(torch.zeros(F))
        self.W_dec = nn.Parameter(torch.empty(F, d_out))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(d, d_out))
        self.reset_parameters()

    @property
    def input_bias(self) -> Tensor | None:
        """What the input is centred by before the encoder: ``b_dec`` for a sparse
        autoencoder (the tied pre-bias), nothing for a transcoder, whose ``b_dec`` is
        in the target's space."""
        return None if self.cfg.transcoder else self.b_dec

    def centre(self, x: Tensor) -> Tensor:
        return x if self.cfg.transcoder else x - self.b_dec

    def output_bias(self, x: Tensor) -> Tensor:
        """``b_dec``, plus the skip path ``x W_skip`` of a skip transcoder: what the
        reconstruction adds to ``f W_dec``."""
        return self.b_dec + x @ self.W_skip if self.cfg.skip else self.b_dec

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose, zero biases.

        Tying the initial encoder to the decoder's transpose makes each feature start
        as a matched filter for its own direction, which is what lets short runs
        leave the ground (from a tiny or zero start they need hundreds of steps first).
        A transcoder's encoder reads another space than its decoder writes, so its
        columns are drawn on their own (unit norm too); the skip path starts at zero.
        """
        with torch.no_grad():
            nn.init.normal_(self.W_dec)
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
            if self.cfg.transcoder:
                nn.init.normal_(self.W_enc)
                self.W_enc /= self.W_enc.norm(dim=0, keepdim=True)
            else:
                self.W_enc.copy_(self.W_dec.T)
            self.b_enc.zero_()
            self.b_dec.zero_()
            if self.cfg.skip:
                self.W_skip.zero_()

    @torch.no_grad()
    def init_from_data(self, x: Tensor, initial_l0: float = 64.0, target: Tensor | None = None) -> None:
        """Start from a sample of (scaled) activations instead of from nothing.

        ``b_dec`` becomes the geometric median of the sample's targets (``target``, a
        transcoder's; else ``x``), so the first reconstructions already beat zero (the
        median is robust to rare huge-norm tokens). Where the
        architecture has a firing cut-off (``cutoff``), each feature's cut-off starts at
        the quantile of its own pre-activations above which it fires on ``initial_l0 / F``
        of the sample. Under Adam a bias or threshold moves about one learning rate
        per step, so a cut-off started at zero needs thousands of steps to reach a
        sparse regime; started here, the sparsity coefficient only fine-tunes it.
        """
        x = x.reshape(-1, x.shape[-1]).float()
        y = x if target is None else target.reshape(-1, target.shape[-1]).float()
        self.b_dec.copy_(geometric_median(y).to(self.b_dec))
        if self.cutoff is None:
            return
        sample = self.centre(x[torch.linspace(0, x.shape[0] - 1, min(x.shape[0], 4096)).long()].to(self.W_enc.device))
        density = min(0.5, initial_l0 / self.cfg.d_sae)
        kth = max(1, int(round((1 - density) * sample.shape[0])))
        # Feature by feature, in blocks: the whole (4096, F) pre-activations and kthvalue's
        # working copies took 1.2 GB at F = 18,432, the high-water mark of a whole run.
        q = torch.cat([(sample @ W).kthvalue(kth, dim=0).values for W in self.W_enc.split(1024, dim=1)])
        if self.cutoff == "bias":
            self.b_enc.copy_(-q)
        else:
            self.threshold.copy_(q.clamp_min(0) + 1e-3)
            self.b_enc.zero_()

    # ------------------------------------------------------------- inference
    def _check_width(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            where = f" ({self.cfg.hook} of {self.cfg.model})" if self.cfg.hook else ""
            raise DimensionError(
                f"this dictionary takes activations of width {self.cfg.d_in}{where}, but got width "
                f"{x.shape[-1]}; it was trained on another hook point or model"
            )

    def pre_acts(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        self._check_width(x)
        W, b = (self.W_enc, self.b_enc) if features is None else (self.W_enc[:, features], self.b_enc[features])
        return self.centre(x) @ W + b

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        """Map pre-activations to feature activations (inference behaviour)."""
        raise NotImplementedError

    def encode(self, x: Tensor, features: Tensor | None = None) -> Tensor:
        """Feature activations ``f`` for ``x`` of shape ``(..., d)``.

        With ``features`` (a 1-D index tensor) only those features are computed, and
        the result has shape ``(..., len(features))``; it is differentiable with
        respect to ``x`` and the weights, for attribution and circuit work.
        """
        return self.activate(self.pre_acts(x, features), features, x)

    def decode(self, f: Tensor, features: Tensor | None = None) -> Tensor:
        """``f W_dec + b_dec``; with ``features``, f holds only those features. For a skip
        transcoder this leaves out the skip path, which needs the input: ``reconstruct``
        adds it."""
        W = self.W_dec if features is None else self.W_dec[features]
        return f @ W + self.b_dec

    def reconstruct(self, x: Tensor, f: Tensor | None = None) -> Tensor:
        """The output for ``x`` of shape ``(..., d_in)`` (inference): ``x̂ = decode(encode(x))``,
        plus ``x W_skip`` for a skip transcoder; ``f``: ``encode(x)`` when already computed.

        Without ``f``, many tokens are reconstructed in blocks of rows, so that the
        (rows, F) activations of a block stay near ``RECONSTRUCT_BLOCK`` entries: every
        architecture's inference treats each token on its own, so the result is the same,
        and 4,096 tokens of an 18,432-feature dictionary no longer take 600 MB at once.
        """
        if f is not None:
            out = self.decode(f)
            return out + x @ self.W_skip if self.cfg.skip else out
        self._check_width(x)
        rows = max(1, RECONSTRUCT_BLOCK // self.cfg.d_sae)
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= rows:
            return self._reconstruct_rows(x)
        out = torch.cat([self._reconstruct_rows(block) for block in flat.split(rows)])
        return out.reshape(*x.shape[:-1], self.cfg.d_out)

    def _reconstruct_rows(self, x: Tensor) -> Tensor:
        out = self.decode(self.encode(x))
        return out + x @ self.W_skip if self.cfg.skip else out

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """``x̂`` from sparse codes: ``values`` and their feature ``indices``, both of shape
        ``(..., m)`` (as ``encode_sparse`` returns them); padding entries have value 0.
        Differentiable in ``values`` and the decoder."""
        m = values.shape[-1]
        weights = values.reshape(-1, m).to(self.W_dec.dtype)
        summed = nn.functional.embedding_bag(indices.reshape(-1, m), self.W_dec, mode="sum", per_sample_weights=weights)
        return summed.reshape(*values.shape[:-1], self.cfg.d_out) + self.b_dec

    # -------------------------------------------------------------- training
    def forward(self, x: Tensor, target: Tensor | None = None, params: LossParams | None = None) -> LossOutput:
        """The training objective on a batch of (scaled) activations ``x`` of shape ``(..., d)``.

        The reconstruction is compared with ``target`` (``x`` itself for a sparse
        autoencoder; a transcoder's target is another activation of the same tokens,
        which it must be given). ``params`` carries the step's hyper-parameters (default
        ``LossParams()``). ``x_hat`` comes back flattened to ``(B, d_out)`` for the B tokens.
        """
        self._check_width(x)
        d, d_out = self.cfg.d_in, self.cfg.d_out
        if target is None:
            if self.cfg.transcoder:
                raise DimensionError("a transcoder's objective needs its target: call forward(x, target)")
            target = x
        elif target.shape[-1] != d_out or target.numel() // d_out != x.numel() // d:
            raise DimensionError(
                f"the target has shape {tuple(target.shape)} but the input has {tuple(x.shape)}; "
                f"give one target vector of width {d_out} per input token"
            )
        return self.objective(x.reshape(-1, d), target.reshape(-1, d_out), params or LossParams())

    def objective(self, x: Tensor, target: Tensor, params: LossParams) -> LossOutput:
        """Loss on ``x`` of shape ``(B, d)`` against ``target`` of shape ``(B, d)``."""
        raise NotImplementedError

    @torch.no_grad()
    def batch_pre_acts(self, x: Tensor, with_b_enc: bool = True) -> Tensor:
        """``(x − b_dec) W_enc (+ b_enc)`` of shape (B, F) without gradient, for choosing
        the active pairs. Held in ``sparse.scratch`` (reused by the next call): copy
        what must outlive the loss computation."""
        centred = self.centre(x)
        if torch.is_autocast_enabled(x.device.type):
            return torch.addmm(self.b_enc, centred, self.W_enc) if with_b_enc else centred @ self.W_enc
        out = scratch((x.shape[0], self.cfg.d_sae), centred.dtype, x.device)
        if with_b_enc:
            return torch.addmm(self.b_enc, centred, self.W_enc, out=out)
        return torch.mm(centred, self.W_enc, out=out)

    def auxk_loss(
        self, x: Tensor, x_hat: Tensor, pre: Tensor, params: LossParams, target: Tensor | None = None,
        dense_pre: Tensor | None = None,
    ) -> Tensor:
        """Auxiliary-k loss (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", §A.2).

        The top ``aux_k`` dead latents try to reconstruct the residual ``e = x − x̂``;
        the squared error is divided by ``mean ‖e‖²``, the error of predicting zero, as
        in the paper, so its size does not depend on how good the main reconstruction
        already is (the normalisation dictionary_learning lacked until its fix). Not by
        the residual's variance around its mean: that is zero for a one-token batch and
        tiny for a few tokens, and one such step once gave an aux-k term of 3e9 that
        froze Adam for thousands of steps.

        ``pre`` is the batch's (B, F) pre-activations (only read: the gradient reaches
        the encoder through ``pre_acts_at``); the residual is ``target − x̂``, with
        ``target`` defaulting to ``x``. Decoding is sparse, as in the main loss.

        Under ``sparse.static_shapes`` (a step captured in a CUDA graph) the dead latents
        are not listed, whose number is data: the living ones are masked out of one
        ``topk`` of fixed size, and the step's dense pre-activations with their gradient
        (``dense_pre``) are decoded densely; the loss is 0 when none is dead.
        """
        dead = params.dead_mask
        zero = x_hat.new_zeros(())
        if dead is None:
            return zero
        reference = x if target is None else target
        if shapes_static():
            assert dense_pre is not None, "a static-shape step decodes aux-k from its dense pre-activations"
            aux_k = min(params.aux_k or self.cfg.d_in // 2, self.cfg.d_sae)
            with torch.no_grad():
                chosen = pre.detach().masked_fill(~dead, float("-inf")).topk(aux_k, dim=-1, sorted=False).indices
            values = dense_pre.gather(1, chosen).relu() * dead[chosen]  # the chosen living ones give 0
            e_hat = torch.zeros_like(dense_pre).scatter_(1, chosen, values) @ self.W_dec
            return self._auxk_error(e_hat, reference, x_hat, params) * dead.any()
        dead_features = dead.nonzero().squeeze(1)
        n_dead = dead_features.numel()
        if n_dead == 0:
            return zero
        aux_k = min(params.aux_k or self.cfg.d_in // 2, n_dead)
        pre = pre.detach()
        with torch.no_grad():
            if aux_k == n_dead:  # every dead feature takes part: nothing to rank
                chosen = dead_features.expand(pre.shape[0], n_dead)
            elif n_dead == self.cfg.d_sae:
                chosen = pre.topk(aux_k, dim=-1, sorted=False).indices
            else:
                chosen = dead_features[pre.index_select(1, dead_features).topk(aux_k, dim=-1, sorted=False).indices]
        pattern = SparsityPattern.from_indices(chosen, self.cfg.d_sae)
        values = pre_acts_at(pre, pattern, x, self.W_enc, self.b_enc, self.input_bias).relu()
        e_hat = sparse_decode(values, pattern, self.W_dec)
        return self._auxk_error(e_hat, reference, x_hat, params)

    @staticmethod
    def _auxk_error(e_hat: Tensor, reference: Tensor, x_hat: Tensor, params: LossParams) -> Tensor:
        """Aux-k's squared error of ``e_hat`` against the residual ``e = reference − x̂``,
        over ``mean ‖e‖²``."""
        residual = (reference - x_hat).detach()
        sq = residual.pow(2).sum()
        if params.group is not None:  # the mean over the whole global batch
            sq, n = params.group.sum(torch.stack([sq, sq.new_tensor(float(residual.shape[0]))])).unbind()
            denom = (sq / n).clamp_min(1e-8)
        else:
            denom = (sq / residual.shape[0]).clamp_min(1e-8)
        return (e_hat - residual).pow(2).sum(-1).mean() / denom

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """Set inference-only statistics from a sample of training inputs (``calibrated``
        architectures; the others have none)."""

    @torch.no_grad()
    def after_step(self) -> None:
        """Project the decoder back to unit-norm rows after an optimiser step."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the gradient component along each decoder row.

        Rows are renormalised after every step; the parallel component would only
        change their length, which the renormalisation undoes, so removing it keeps
        Adam's moment estimates about the directions that matter.
        """
        g = self.W_dec.grad
        if g is not None:
            # One pass for the row dots and one in-place update: ``(g * W).sum(1)`` and
            # ``g -= dots * W`` made two (F, d) temporaries, 24 ms of a 720 ms TopK step
            # at F = 18432 on 2 threads against 9 ms.
            g.addcmul_(self.W_dec, torch.einsum("fd,fd->f", g, self.W_dec).unsqueeze(1), value=-1)

    @torch.no_grad()
    def reset_features(
        self, idx: Tensor, directions: Tensor, enc_norm: float, enc_directions: Tensor | None = None
    ) -> None:
        """Re-initialise features ``idx`` to write along ``directions`` and read along
        ``enc_directions`` (default: the same, as for a sparse autoencoder) (resampling)."""

        def unit(v: Tensor) -> Tensor:
            return v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)

        self.W_dec[idx] = unit(directions)
        self.W_enc[:, idx] = unit(directions if enc_directions is None else enc_directions).T * enc_norm
        self.b_enc[idx] = 0.0

    # ---------------------------------------------------------------- scale
    @torch.no_grad()
    def fold_activation_scale(self, scale: float, target_scale: float | None = None) -> None:
        """Make weights trained on ``x / scale`` (and, for a transcoder, targets
        ``y / target_scale``) act on raw ``x`` and give raw outputs.

        With ``t = target_scale`` (default ``scale``): every tensor in ``input_scaled``
        (the biases and cut-offs, in the units of the features) is multiplied by ``t``,
        ``W_enc`` and ``W_skip`` by ``t / scale``. The feature activations then come out
        ``t`` times larger (raw output units) and the decoder rows stay unit-norm
        directions. For a sparse autoencoder ``t = scale`` and ``W_enc`` is unchanged.
        ``cfg.act_scale`` and ``cfg.target_scale`` record the constants.
        """
        t = float(scale if target_scale is None else target_scale)
        for name in self.input_scaled:
            getattr(self, name).mul_(t)
        if t != scale:
            self.W_enc.mul_(t / scale)
        if self.cfg.skip:
            self.W_skip.mul_(t / scale)
        self.cfg.act_scale = float(scale)
        if self.cfg.transcoder:
            self.cfg.target_scale = t

    @torch.no_grad()
    def fingerprint(self) -> list[float]:
        """A dozen numbers that tell these weights apart from any other dictionary's.

        Fixed ±1 projections of ``W_dec`` and ``b_dec`` (the same vectors for every
        dictionary of this shape): unchanged by saving, loading or converting between
        formats (which move weights by < 1e-5), different for any two dictionaries
        trained separately. Written into eval.json, so a report can check that the
        figures belong to the weights beside them (see ``same_weights``).
        """
        gen = torch.Generator().manual_seed(20240611)
        rows = torch.randint(0, 2, (4, self.cfg.d_sae), generator=gen).double() * 2 - 1
        d = self.cfg.d_out  # the decoder's width (d_in for a sparse autoencoder)
        cols = torch.randint(0, 2, (d, 2), generator=gen).double() * 2 - 1
        W = self.W_dec.detach().double().cpu()
        b = self.b_dec.detach().double().cpu()
        dec = (rows @ W @ cols).flatten() / math.sqrt(self.cfg.d_sae * d)
        bias = (b @ cols) / math.sqrt(d)
        return [float(v) for v in torch.cat([dec, bias, b.norm().reshape(1), W.abs().mean().reshape(1)])]

    def extra_repr(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k is not None else ""
        to = f", target={c.target!r}, d_out={c.d_out}, skip={c.skip}" if c.transcoder else ""
        return f"arch={c.arch}, d_in={c.d_in}, d_sae={c.d_sae}{k}, hook={c.hook!r}{to}, model={c.model!r}"


def same_weights(a: list[float], b: list[float], tol: float = 1e-3) -> bool:
    """Whether two ``Dictionary.fingerprint()`` lists describe the same weights.

    Each group (decoder projections, bias projections and norm, decoder mean) is
    compared at its own scale: a residual stream's large ``b_dec`` must not make the
    decoder's small projections look alike when they are not.
    """
    if len(a) != len(b) or len(a) != FINGERPRINT_LENGTH:
        return False
    for lo, hi in FINGERPRINT_GROUPS:
        scale = max(1e-6, *(abs(v) for v in a[lo:hi] + b[lo:hi]))
        if any(abs(x - y) > tol * scale for x, y in zip(a[lo:hi], b[lo:hi])):
            return False
    return True


def build_dictionary(cfg: DictionaryConfig) -> Dictionary:
    return ARCHITECTURES[cfg.arch](cfg)


@torch.no_grad()
def geometric_median(x: Tensor, iters: int = 50, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm for the point minimising the summed Euclidean distance."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * m.norm().clamp_min(1.0):
            return new
        m = new
    return m
