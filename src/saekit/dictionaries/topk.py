"""TopK and BatchTopK dictionaries.

TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep the k
largest pre-activations of each token, ReLU after. Sparsity is set by k, so the loss
is the reconstruction error plus the auxiliary-k term that revives dead latents.

BatchTopK (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders"): in training keep
the ``k·B`` largest pre-activations over the whole batch of B tokens, so k holds on
average and busy tokens may use more features than quiet ones. At inference a single
learned threshold θ replaces the batch dependence: ``f = pre · 1[pre > θ]``. θ is set
when training ends (``calibrate``) on the last several thousand training inputs
(``training.CalibrationSample``) so that they keep k features per token on average.
One batch's minimum is a noisy estimate (one short batch at the end of a run once
halved the inference L0), and a running average from the first steps on, as some
implementations keep, stays biased towards the untrained model's values in short
runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Dictionary, DictionaryConfig, LossOutput, LossParams, mse, register


def topk_per_token(pre: Tensor, k: int) -> Tensor:
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


@register
class TopKDictionary(Dictionary):
    arch = "topk"
    uses_k = True
    revive_dead = "auxk"

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        if features is None:
            return topk_per_token(pre, self.cfg.k)
        # A subset's activations depend on all features through the k-th largest
        # value; compute that cut-off from the full pre-activations without a
        # gradient, then gate the subset (which stays differentiable).
        assert x is not None
        with torch.no_grad():
            kth = self.pre_acts(x).topk(self.cfg.k, dim=-1).values[..., -1:]
        return pre.relu() * (pre >= kth).to(pre.dtype)

    def training_loss(self, x: Tensor, params: LossParams) -> LossOutput:
        pre = self.pre_acts(x)
        f = self.batch_activate(pre)
        x_hat = self.decode(f)
        recon = mse(x, x_hat)
        aux = self.auxk_loss(x, x_hat, pre, params)
        loss = recon + params.auxk_coeff * aux
        return LossOutput(loss, x_hat, f, {"mse": recon, "auxk": aux})

    def batch_activate(self, pre: Tensor) -> Tensor:
        """The training-time activation on a batch ``(B, F)``."""
        return topk_per_token(pre, self.cfg.k)


@register
class BatchTopKDictionary(TopKDictionary):
    arch = "batchtopk"
    calibrated = True
    input_scaled = ("b_dec", "b_enc", "threshold")

    def __init__(self, cfg: DictionaryConfig):
        super().__init__(cfg)
        # A buffer, not a parameter: it is estimated, not learned by gradient; -1 marks
        # "not calibrated yet".
        self.register_buffer("threshold", torch.tensor(-1.0))

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        if float(self.threshold) < 0:
            raise RuntimeError(
                "this BatchTopK dictionary has no inference threshold yet; calibrate it on training "
                "inputs (dictionary.calibrate(x)) or load a trained one before calling encode()"
            )
        return pre.relu() * (pre > self.threshold).to(pre.dtype)

    def batch_activate(self, pre: Tensor) -> Tensor:
        flat = pre.relu().flatten()
        n_keep = min(self.cfg.k * pre.shape[0], flat.numel())
        vals, idx = flat.topk(n_keep, sorted=False)
        return torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """Set θ so that the sample ``x`` (any number of tokens) keeps k features per token
        on average: θ is the smallest of the sample's ``k·n`` largest activations."""
        kept = self.batch_activate(self.pre_acts(x.reshape(-1, x.shape[-1])))
        kept = kept[kept > 0]
        if kept.numel():
            self.threshold.copy_(kept.min())
