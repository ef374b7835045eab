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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Dictionary, DictionaryConfig, LossOutput, LossParams, mse, register


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
        return (x - self.b_dec) @ (W * r.exp()) + b

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        assert x is not None, "the gated magnitude path needs the input"
        return (pre > 0).to(pre.dtype) * self._magnitude(x, features).relu()

    def training_loss(self, x: Tensor, params: LossParams) -> LossOutput:
        gate = self.pre_acts(x)
        f = self.activate(gate, None, x)
        x_hat = self.decode(f)
        gate_act = gate.relu()
        recon = mse(x, x_hat)
        l1 = (gate_act * self.W_dec.norm(dim=1)).sum(-1).mean()
        aux = mse(x, gate_act @ self.W_dec.detach() + self.b_dec.detach())
        loss = recon + params.sparsity_coeff * l1 + aux
        return LossOutput(loss, x_hat, f, {"mse": recon, "l1": l1, "aux": aux})

    @torch.no_grad()
    def reset_features(self, idx: Tensor, directions: Tensor, enc_norm: float) -> None:
        super().reset_features(idx, directions, enc_norm)
        self.r_mag[idx] = 0.0
        self.b_mag[idx] = 0.0
