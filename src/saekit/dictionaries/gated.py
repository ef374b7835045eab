"""Gated dictionary (Rajamanoharan et al. 2024, "Improving Dictionary Learning with
Gated Sparse Autoencoders").

The gate decides *which* features fire, the magnitude path *how strongly*; they share
the encoder directions, the magnitude path rescaling them by ``exp(r_mag)``:

    π     = (x − b_dec) W_gate + b_gate           (W_gate is ``W_enc``, b_gate ``b_enc``)
    mag   = (x − b_dec) (W_gate ⊙ exp(r_mag)) + b_mag
    f̃     = 1[π > 0] ⊙ ReLU(mag)
    loss  = ‖x − x̂(f̃)‖² + λ Σ_i ReLU(π)_i ‖W_dec[i]‖ + ‖x − x̂_frozen(ReLU(π))‖²

The last term trains the gate to reconstruct on its own through a detached copy of
the decoder, which gives the gate a gradient the step function would deny it.

Training computes the encoder product once: since ``W_gate ⊙ exp(r_mag)`` only
rescales columns, ``mag = u ⊙ exp(r_mag) + b_mag`` with ``u = (x − b_dec) W_gate``,
the same product the gate adds ``b_gate`` to. (A transcoder reads ``x`` uncentred and
adds its skip path to both reconstructions; see ``base``.) Only the pairs with ``π > 0`` matter to
any term (f̃, the L1 and the auxiliary reconstruction all vanish elsewhere), so a
sparse batch runs on those pairs alone.
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
    weighted_l1,
)


@register
class GatedDictionary(Dictionary):
    arch = "gated"
    sparsity_penalty = "l1"
    cutoff = "bias"
    input_scaled = ("b_dec", "b_enc", "b_mag")
    feature_axes = {**Dictionary.feature_axes, "r_mag": 0, "b_mag": 0}

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def _magnitude(self, x: Tensor, features: Tensor | None) -> Tensor:
        if features is None:
            W, r, b = self.W_enc, self.r_mag, self.b_mag
        else:
            W, r, b = self.W_enc[:, features], self.r_mag[features], self.b_mag[features]
        return self.centre(x) @ (W * r.exp()) + b

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        assert x is not None, "the gated magnitude path needs the input"
        return (pre > 0).to(pre.dtype) * self._magnitude(x, features).relu()

    def objective(self, x: Tensor, target: Tensor, params: LossParams) -> LossOutput:
        u_batch = self.batch_pre_acts(x, with_b_enc=False)
        open_gate = sparse_mask(u_batch, -self.b_enc)  # π > 0, where few enough
        norms = self.W_dec.norm(dim=1)
        bias = self.output_bias(x)
        if open_gate is not None:
            pattern = SparsityPattern.from_mask(open_gate)
            i = pattern.features
            u = pre_acts_at(u_batch, pattern, x, self.W_enc, None, self.input_bias)
            gate_act = u + self.b_enc[i]  # π, positive on every pair of the pattern
            f = (u * self.r_mag[i].exp() + self.b_mag[i]).relu()
            x_hat = sparse_decode(f, pattern, self.W_dec) + bias
            l1 = (gate_act * norms[i]).sum() / x.shape[0]
            gate_hat = sparse_decode(gate_act, pattern, self.W_dec.detach()) + bias.detach()
            fired, n_active = activity(f, pattern)
        else:
            u = dense_pre_acts(x, self.W_enc, None, self.input_bias, u_batch)
            # The per-feature vectors in u's dtype: bf16 under autocast, where fp32 ones
            # made every (B, F) tensor after them fp32, twice the bytes each way.
            dt = u.dtype
            gate = u + self.b_enc.to(dt)
            f = torch.where(gate > 0, (u * self.r_mag.exp().to(dt) + self.b_mag.to(dt)).relu(), 0)
            x_hat = f @ self.W_dec + bias
            gate_act = gate.relu()
            l1 = weighted_l1(gate_act, norms)
            gate_hat = gate_act @ self.W_dec.detach() + bias.detach()
            fired, n_active = dense_activity(f)
        recon = mse(target, x_hat)
        aux = mse(target, gate_hat)
        loss = recon + params.sparsity_coeff * l1 + aux
        return LossOutput(loss, x_hat, {"mse": recon, "l1": l1, "aux": aux}, fired, n_active)

    @torch.no_grad()
    def reset_features(
        self, idx: Tensor, directions: Tensor, enc_norm: float, enc_directions: Tensor | None = None
    ) -> None:
        super().reset_features(idx, directions, enc_norm, enc_directions)
        self.r_mag[idx] = 0.0
        self.b_mag[idx] = 0.0
