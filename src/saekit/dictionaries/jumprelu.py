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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Dictionary, DictionaryConfig, LossOutput, LossParams, mse, register

# Thresholds start here (in units of the scaled activations, E‖x‖² = d), small
# enough that most features fire at first and the L0 penalty prunes from above.
INITIAL_THRESHOLD = 0.1
MIN_THRESHOLD = 1e-4


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
        return grad_pre, grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


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
        return torch.zeros_like(pre), grad_theta.reshape(-1, theta.shape[-1]).sum(0), None


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

    def training_loss(self, x: Tensor, params: LossParams) -> LossOutput:
        pre = self.pre_acts(x)
        eps = params.jumprelu_bandwidth
        f = _JumpReLU.apply(pre, self.threshold, eps)
        x_hat = self.decode(f)
        recon = mse(x, x_hat)
        l0 = _Step.apply(pre, self.threshold, eps).sum(-1).mean()
        loss = recon + params.sparsity_coeff * l0
        return LossOutput(loss, x_hat, f, {"mse": recon, "l0_penalty": l0})

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        self.threshold.clamp_(min=MIN_THRESHOLD)

    @torch.no_grad()
    def reset_features(self, idx: Tensor, directions: Tensor, enc_norm: float) -> None:
        super().reset_features(idx, directions, enc_norm)
        self.threshold[idx] = INITIAL_THRESHOLD
