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
from .sparse import (
    SparsityPattern,
    activity,
    dense_activity,
    dense_pre_acts,
    pre_acts_at,
    sparse_decode,
    sparse_mask,
    weighted_l1,
)


@register
class ReLUDictionary(Dictionary):
    arch = "relu"
    sparsity_penalty = "l1"
    cutoff = "bias"

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        return pre.relu()

    def objective(self, x: Tensor, target: Tensor, params: LossParams) -> LossOutput:
        pre = self.batch_pre_acts(x)
        norms = self.W_dec.norm(dim=1)
        active = sparse_mask(pre, 0.0)
        if active is not None:
            pattern = SparsityPattern.from_mask(active)
            # Every entry of the pattern is positive, so the ReLU is the identity there.
            f = pre_acts_at(pre, pattern, x, self.W_enc, self.b_enc, self.input_bias)
            x_hat = sparse_decode(f, pattern, self.W_dec) + self.output_bias(x)
            l1 = (f * norms[pattern.features]).sum() / x.shape[0]
            fired, n_active = activity(f, pattern)
        else:
            f = dense_pre_acts(x, self.W_enc, self.b_enc, self.input_bias, pre).relu()
            x_hat = f @ self.W_dec + self.output_bias(x)
            l1 = weighted_l1(f, norms)
            fired, n_active = dense_activity(f)
        recon = mse(target, x_hat)
        loss = recon + params.sparsity_coeff * l1
        return LossOutput(loss, x_hat, {"mse": recon, "l1": l1}, fired, n_active)
