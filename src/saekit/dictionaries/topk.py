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

from .base import Dictionary, DictionaryConfig, LossOutput, LossParams, TokenGroup, mse, register
from .sparse import (
    SparsityPattern,
    activity,
    dense_pre_acts,
    pre_acts_at,
    shapes_static,
    sparse_cutover,
    sparse_decode,
)


def largest_entries(flat: Tensor, n: int) -> Tensor:
    """Positions of the ``n`` largest entries of the 1-D ``flat``, in no order.

    ``topk`` over a whole batch (k·B of B·F entries) took 280 ms at B = 4096, F = 4608
    on 2 CPU threads, as long as the encoder's product, and 900 ms on a busy machine
    where this function took 150 ms. Here a strided sample gives a cut-off that about
    1.5·n entries exceed, one comparison pass keeps those as candidates, and ``topk``
    runs on them alone. The result is exact: when the sample misjudges and fewer than n
    entries pass, it falls back to the full ``topk``.
    """
    total = flat.numel()
    if 4 * n > total or shapes_static():  # (the candidates' count is data)
        return flat.topk(n, sorted=False).indices
    # A prime stride that does not divide B·F does not divide the row length F either,
    # so the sample visits every feature column; a stride dividing F would see only
    # every stride-th feature of every token.
    stride = next(p for p in (17, 19, 23, 29, 31, 37, 41, 43) if total % p)
    sample = flat[::stride]
    in_sample = min(sample.numel(), int(1.5 * n * sample.numel() / total) + 16)
    cut = sample.topk(in_sample, sorted=False).values.min()
    candidates = (flat >= cut).nonzero().squeeze(1)
    if candidates.numel() < n:
        return flat.topk(n, sorted=False).indices
    return candidates[flat[candidates].topk(n, sorted=False).indices]


def scattered(values: Tensor, flat_index: Tensor, like: Tensor) -> Tensor:
    """A (B, F) tensor shaped like ``like``, zero but for ``values`` at the flat positions
    ``flat_index``, differentiable in ``values``: the dense path's activations written
    once, where the ReLU of the whole batch times a selection mask took two passes over
    it each way."""
    # In place on a fresh base tensor (not on a view of one, whose backward copies it).
    return like.new_zeros(like.numel()).index_put_((flat_index,), values).view_as(like)


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

    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The non-zero activations of ``x`` (shape ``(..., d)``) without the dense
        ``(..., F)``: ``(values, indices)``, both of shape ``(..., k)``, indices in no
        particular order; a selected pre-activation ≤ 0 gives value 0. ``decode_sparse``
        takes them back to ``x̂``."""
        vals, idx = self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)
        return vals.relu(), idx

    def _reconstruct_rows(self, x: Tensor) -> Tensor:
        """Through the sparse codes: no (rows, F) activations beside the pre-activations."""
        out = self.decode_sparse(*self.encode_sparse(x))
        return out + x @ self.W_skip if self.cfg.skip else out

    @torch.no_grad()
    def select(self, pre: Tensor, group: TokenGroup | None = None) -> SparsityPattern:
        """The training-time active pairs of a batch's pre-activations ``(B, F)``."""
        # Plain topk per row, unlike BatchTopK's ``largest_entries``: at B = 4096,
        # F = 4608, k = 32 it took 60 ms of CPU time on one thread (a twelfth of the
        # sparse step, the encoder's product 290 ms), while a per-row sampled cut-off,
        # one comparison pass, compaction of the candidates and topk on them took
        # 150 ms: the compaction (nonzero alone 28 ms) costs more than the per-row
        # selection it saves. On a GPU topk is a single radix-select kernel.
        idx = pre.topk(self.cfg.k, dim=-1, sorted=False).indices
        return SparsityPattern.from_indices(idx, self.cfg.d_sae)

    def objective(self, x: Tensor, target: Tensor, params: LossParams) -> LossOutput:
        pre = self.batch_pre_acts(x)
        pattern = self.select(pre, params.group)
        # The ReLU after the selection: a selected pre-activation ≤ 0 contributes 0.
        dense = None
        if pattern.nnz < sparse_cutover(pre.device, pre.shape[1]) * pre.numel():
            values = pre_acts_at(pre, pattern, x, self.W_enc, self.b_enc, self.input_bias).relu()
            x_hat = sparse_decode(values, pattern, self.W_dec) + self.output_bias(x)
            fired, n_active = activity(values, pattern)
        else:  # the dense products (a GPU at moderate widths): the same loss and gradients
            dense = dense_pre_acts(x, self.W_enc, self.b_enc, self.input_bias, pre)
            flat = pattern.flat_index()
            values = dense.reshape(-1).index_select(0, flat).relu()
            x_hat = scattered(values, flat, dense) @ self.W_dec + self.output_bias(x)
            fired, n_active = activity(values, pattern)
        recon = mse(target, x_hat)
        aux = self.auxk_loss(x, x_hat, pre, params, target, dense_pre=dense)
        loss = recon + params.auxk_coeff * aux
        return LossOutput(loss, x_hat, {"mse": recon, "auxk": aux}, fired, n_active)

    def batch_activate(self, pre: Tensor) -> Tensor:
        """The training-time activation on a batch ``(B, F)``, dense (no gradient
        through the selection; the values are ReLU'd pre-activations)."""
        pattern = self.select(pre)
        values = pre.reshape(-1)[pattern.flat_index()].relu()
        return torch.zeros_like(pre).reshape(-1).index_put((pattern.flat_index(),), values).view_as(pre)


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

    def _require_threshold(self) -> None:
        if float(self.threshold) < 0:
            raise RuntimeError(
                "this BatchTopK dictionary has no inference threshold yet; calibrate it on training "
                "inputs (dictionary.calibrate(x)) or load a trained one before calling encode()"
            )

    def activate(self, pre: Tensor, features: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        self._require_threshold()
        return pre.relu() * (pre > self.threshold).to(pre.dtype)

    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """As for TopK, but the number of active features varies by token at inference:
        both tensors have shape ``(..., m)`` with m the largest count in ``x`` (at least
        1), and tokens with fewer carry padding entries of value 0."""
        self._require_threshold()
        f = self.activate(self.pre_acts(x))
        m = max(1, int((f > 0).sum(-1).max())) if f.numel() else 1
        return f.topk(m, dim=-1, sorted=False)

    @torch.no_grad()
    def select(self, pre: Tensor, group: TokenGroup | None = None) -> SparsityPattern:
        """The ``k·B`` largest pre-activations of the whole batch (their ReLU is the
        activation: where fewer than ``k·B`` are positive, the selected ones ≤ 0 give 0
        and pass no gradient, whichever of them are selected).

        With a ``group``, ``pre`` is this process's share and B is the global batch: each
        process offers its own ``k·B`` largest values, the cut-off is the ``k·B``-th
        largest of all offers, and each keeps its entries at or above it (exactly the
        one-process selection, but for entries tied with the cut-off)."""
        B, F = pre.shape
        flat = pre.reshape(-1)
        if group is None:
            return SparsityPattern.from_flat(largest_entries(flat, min(self.cfg.k * B, B * F)), B, F)
        total_tokens, total_entries = (int(v) for v in group.sum(torch.tensor([B, B * F], device=pre.device)))
        n = min(self.cfg.k * total_tokens, total_entries)
        offered = flat[largest_entries(flat, min(n, flat.numel()))] if flat.numel() else flat
        everyone = group.gather(offered)
        cut = everyone.topk(n, sorted=False).values.min()
        return SparsityPattern.from_flat((flat >= cut).nonzero().squeeze(1), B, F)

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """Set θ so that the sample ``x`` (any number of tokens) keeps k features per token
        on average: θ is the smallest of the sample's ``k·n`` largest activations."""
        pre = self.pre_acts(x.reshape(-1, x.shape[-1]))
        kept = pre.reshape(-1)[self.select(pre).flat_index()]
        kept = kept[kept > 0]
        if kept.numel():
            self.threshold.copy_(kept.min())
