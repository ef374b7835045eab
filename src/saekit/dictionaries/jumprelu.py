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


# The estimators below take ``pre`` and ``theta`` of the same shape, or ``theta``
# broadcast over leading token axes: (B, F) with (F,) on the dense path, and (nnz,)
# with the pairs' own thresholds (nnz,) on the sparse one.
def _window(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    return ((pre - theta).abs() < eps / 2).to(pre.dtype) / eps


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        grad_pre = grad * (pre > theta).to(pre.dtype)
        grad_theta = -(theta * _window(pre, theta, ctx.eps) * grad)
        return grad_pre, grad_theta.sum_to_size(theta.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, theta = ctx.saved_tensors
        grad_theta = -(_window(pre, theta, ctx.eps) * grad)
        # H's derivative in pre is zero almost everywhere: no gradient reaches the encoder.
        return None, grad_theta.sum_to_size(theta.shape), None


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
            theta = self.threshold[pattern.features]
            f = _JumpReLU.apply(pre, theta, eps)
            x_hat = sparse_decode(f, pattern, self.W_dec) + self.output_bias(x)
            l0 = _Step.apply(pre, theta, eps).sum() / x.shape[0]
            fired, n_active = activity(f, pattern)
        else:
            pre = dense_pre_acts(x, self.W_enc, self.b_enc, self.input_bias, pre_batch)
            f = _JumpReLU.apply(pre, self.threshold, eps)
            x_hat = f @ self.W_dec + self.output_bias(x)
            l0 = _Step.apply(pre, self.threshold, eps).sum(-1).mean()
            fired, n_active = dense_activity(f)
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
