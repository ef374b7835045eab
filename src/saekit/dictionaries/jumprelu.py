"""JumpReLU dictionary (Rajamanoharan et al. 2024, "Jumping Ahead: Improving
Reconstruction Fidelity with JumpReLU Sparse Autoencoders").

``f_i = pre_i · H(pre_i − θ_i)`` with a learned threshold θ_i per feature, and the
loss ``‖x − x̂‖² + λ Σ_i H(pre_i − θ_i)`` penalises L0 directly. H has no useful
derivative, so θ learns through straight-through estimators with a rectangle kernel
of bandwidth ε:

    ∂f_i/∂θ_i  ≈ −(θ_i/ε) · K((pre_i − θ_i)/ε)
    ∂H_i/∂θ_i  ≈ −(1/ε)   · K((pre_i − θ_i)/ε),    K(u) = 1[|u| < ½]

θ is parameterised directly, not as a log: stored as ``log θ`` it barely moves under
Adam. A note on λ: Adam divides out the gradient's scale, so raising λ
past the point where the L0 term dominates θ's gradient changes little; sweep λ on
a log scale and read off L0.

Only the pairs with ``pre_i > θ_i − ε/2`` matter to the loss or its gradient: below
that, f and H are 0 and the rectangle kernel is 0 too. A sparse batch runs on those
pairs alone, with the same two estimators applied to them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Dictionary, DictionaryConfig, LossOutput, LossParams, mse, register
from .sparse import (
    SparsityPattern,
    activity,
    dense_activity,
    dense_pre_acts,
    pre_acts_at,
    sparse_decode,
    sparse_mask,
)

# Thresholds start here (in units of the scaled activations, E‖x‖² = d), small
# enough that most features fire at first and the L0 penalty prunes from above.
INITIAL_THRESHOLD = 0.1
MIN_THRESHOLD = 1e-4


class _JumpReLU(torch.autograd.Function):
    """``f = pre · H(pre − θ)`` and ``H(pre − θ)`` summed to θ's shape (the L0 counts),
    with both straight-through estimators in one backward, which forms the rectangle
    window K once:

        ∂L/∂θ = −(1/ε) · Σ (θ · ∂L/∂f + ∂L/∂counts) · K,      ∂L/∂pre = ∂L/∂f · H

    (H has no gradient in pre: none reaches the encoder through the L0 term). ``pre``
    and ``θ`` have the same shape, or θ is broadcast over leading token axes: (B, F) with
    (F,) on the dense path, (nnz,) with the pairs' own thresholds on the sparse one. The
    window is two comparisons with θ ± ε/2, not ``|pre − θ| < ε/2``, whose difference
    and absolute value were (B, F) tensors, in fp32 against an fp32 θ even under bf16.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        above = pre > theta
        ctx.save_for_backward(pre, theta, above)
        ctx.eps = eps
        # where() and sums of the boolean masks: one pass each, where multiplying by a
        # mask cast to pre's dtype took two.
        return torch.where(above, pre, 0), _summed(above, theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_f: Tensor, grad_counts: Tensor):
        pre, theta, above = ctx.saved_tensors
        eps = ctx.eps
        window = (pre > theta - eps / 2) & (pre < theta + eps / 2)
        in_window = _summed(torch.where(window, grad_f, 0), theta).to(theta.dtype)
        n_window = _summed(window, theta).to(theta.dtype)
        grad_theta = -(theta * in_window + grad_counts.to(theta.dtype) * n_window) / eps
        return torch.where(above, grad_f, 0), grad_theta, None


def _summed(t: Tensor, theta: Tensor) -> Tensor:
    """``t`` summed over the token axes θ is broadcast over (none on the sparse path);
    a boolean ``t`` counted."""
    if t.shape == theta.shape:
        return t
    return t.sum(tuple(range(t.dim() - theta.dim())))


@register
class JumpReLUDictionary(Dictionary):
    arch = "jumprelu"
    sparsity_penalty = "l0"
    cutoff = "threshold"
    input_scaled = ("b_dec", "b_enc", "threshold")
    feature_axes = {**Dictionary.feature_axes, "threshold": 0}

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), INITIAL_THRESHOLD))

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        theta = self.threshold if features is None else self.threshold[features]
        return pre * (pre > theta).to(pre.dtype)

    def objective(self, x: Tensor, target: Tensor, params: LossParams) -> LossOutput:
        pre_batch = self.batch_pre_acts(x)
        eps = params.jumprelu_bandwidth
        # θ − ε (not ε/2): a margin, so rounding never drops a pair the window would
        # count; the extra pairs have f = 0, H = 0 and a zero kernel.
        relevant = sparse_mask(pre_batch, (self.threshold - eps).detach())
        if relevant is not None:
            pattern = SparsityPattern.from_mask(relevant)
            pre = pre_acts_at(pre_batch, pattern, x, self.W_enc, self.b_enc, self.input_bias)
            f, counts = _JumpReLU.apply(pre, self.threshold[pattern.features], eps)
            x_hat = sparse_decode(f, pattern, self.W_dec) + self.output_bias(x)
            fired, n_active = activity(f, pattern)
        else:
            pre = dense_pre_acts(x, self.W_enc, self.b_enc, self.input_bias, pre_batch)
            f, counts = _JumpReLU.apply(pre, self.threshold, eps)
            x_hat = f @ self.W_dec + self.output_bias(x)
            fired, n_active = dense_activity(f)
        l0 = counts.sum() / x.shape[0]
        recon = mse(target, x_hat)
        loss = recon + params.sparsity_coeff * l0
        return LossOutput(loss, x_hat, {"mse": recon, "l0_penalty": l0}, fired, n_active)

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        self.threshold.clamp_(min=MIN_THRESHOLD)

    @torch.no_grad()
    def reset_features(
        self, idx: Tensor, directions: Tensor, enc_norm: float, enc_directions: Tensor | None = None
    ) -> None:
        super().reset_features(idx, directions, enc_norm, enc_directions)
        self.threshold[idx] = INITIAL_THRESHOLD
