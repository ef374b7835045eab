"""ReLU dictionary with a tied pre-bias and an L1 penalty.

Bricken et al. 2023, "Towards Monosemanticity"; the decoder-norm-weighted L1 follows
Anthropic's April 2024 update. ``f = ReLU((x − b_dec) W_enc + b_enc)``, loss
``‖x − x̂‖² + λ Σ_i f_i ‖W_dec[i]‖``. Decoder rows are kept at unit norm, so the
weighting is 1 in practice; it is written out so the loss stays right if a
subclass frees the norms.
"""

from __future__ import annotations

from torch import Tensor

from .base import Dictionary, LossOutput, LossParams, mse, register


@register
class ReLUDictionary(Dictionary):
    arch = "relu"
    sparsity_penalty = "l1"
    cutoff = "bias"

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        return pre.relu()

    def training_loss(self, x: Tensor, params: LossParams) -> LossOutput:
        f = self.encode(x)
        x_hat = self.decode(f)
        recon = mse(x, x_hat)
        l1 = (f * self.W_dec.norm(dim=1)).sum(-1).mean()
        loss = recon + params.sparsity_coeff * l1
        return LossOutput(loss, x_hat, f, {"mse": recon, "l1": l1})
