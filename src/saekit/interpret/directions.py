"""What a feature's decoder direction says on its own, without running the model on text.

* `output_tokens`: the tokens a feature's direction most boosts and most suppresses when
  read straight through the model's final norm and unembedding (the "logit lens" of the
  decoder row). The norm contributes its elementwise gain only: the rescaling by the
  residual stream's own norm depends on the token, not on the feature.
* `nearest_features`: the features whose decoder rows point the most the same way
  (cosine), computed in blocks so that 100k+ features fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from torch import nn

from ..checks import is_integer
from ..errors import ConfigError, DimensionError, ModelLoadError

COSINE_BLOCK = 1 << 24
"""Cosines are computed (chosen rows × decoder rows) at most this many at a time (64 MB in float32)."""
LOGIT_BLOCK = 1 << 24
"""Logits are computed (chosen features × vocabulary) at most this many at a time."""

# Where transformers models keep the norm applied before the unembedding, under the base model.
_FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm", "norm_f")


@dataclass
class OutputTokens:
    """Per feature, the k tokens its decoder row raises the most and lowers the most."""

    features: Tensor  # (n,) dictionary indices, as asked
    top_ids: Tensor  # (n, k) descending logit
    top_logits: Tensor
    bottom_ids: Tensor  # (n, k) ascending logit (most negative first)
    bottom_logits: Tensor

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        shape = tuple(self.top_ids.shape)
        if len(shape) != 2 or shape[0] != n:
            raise ConfigError(f"top_ids must have shape ({n}, k), got {shape}")
        for name in ("top_logits", "bottom_ids", "bottom_logits"):
            if tuple(getattr(self, name).shape) != shape:
                raise ConfigError(f"{name} must have the shape of top_ids {shape}, got {tuple(getattr(self, name).shape)}")


def _features(dictionary: Any, features: Sequence[int]) -> Tensor:
    from .feature_spec import feature_indices

    return torch.tensor(feature_indices(features, dictionary.cfg.d_sae), dtype=torch.long)


def _check_k(k: Any, most: int, what: str) -> None:
    if not is_integer(k) or not 1 <= k <= most:
        raise ConfigError(f"k must be an integer from 1 to {most} ({what}), got {k!r}")


def final_norm(lm: Any) -> nn.Module:
    """The norm the model applies to the residual stream before its unembedding."""
    model = lm.model
    base = getattr(model, "base_model", model)
    for owner in (base, model):
        for name in _FINAL_NORM_NAMES:
            module = getattr(owner, name, None)
            if isinstance(module, nn.Module):
                return module
    raise ModelLoadError(
        f"cannot find the final norm of {lm.name} ({type(model).__name__}): looked for "
        f"{', '.join(_FINAL_NORM_NAMES)} on its base model"
    )


@torch.no_grad()
def final_norm_gain(lm: Any) -> Tensor:
    """(d_model,) float32: the elementwise gain of the final norm, read off the module itself.

    Probing the module (rather than reading ``.weight``) gets every convention right: a
    plain ``weight``, Gemma's ``1 + weight``, a LayerNorm's bias left out. For a probe v
    with mean 0 and root-mean-square r, ``norm(v) - norm(-v) = 2 v g / sqrt(r² + eps)``
    for LayerNorm and RMSNorm alike (the bias cancels); two probes cover an odd width.
    """
    norm = final_norm(lm)
    d = lm.d_model
    param = next(norm.parameters(), None)
    device = param.device if param is not None else lm.device
    dtype = param.dtype if param is not None else lm.dtype
    eps = 0.0
    for attr in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(norm, attr, None)
        if isinstance(value, (int, float)):
            eps = float(value)
            break
    half = d // 2
    if half == 0:
        raise DimensionError(f"{lm.name} has a hidden size of {d}; the final norm's gain cannot be read")
    pattern = torch.tensor([1.0, -1.0]).repeat(half)
    gain = torch.zeros(d, dtype=torch.float64)
    seen = torch.zeros(d, dtype=torch.bool)
    for start in sorted({0, d - 2 * half}):
        probe = torch.zeros(d, dtype=torch.float64)
        probe[start:start + 2 * half] = pattern.double()
        r = float(probe.pow(2).mean().sqrt())
        both = torch.stack([probe, -probe]).to(device=device, dtype=dtype)
        out = norm(both).double().cpu()
        where = probe != 0
        g = (out[0] - out[1]) * (r * r + eps) ** 0.5 / (2 * probe.clamp(-1, 1))
        gain[where & ~seen] = g[where & ~seen]
        seen |= where
    return gain.float()


@torch.no_grad()
def output_tokens(dictionary: Any, lm: Any, features: Sequence[int], k: int = 10) -> OutputTokens:
    """Each feature's decoder row through the final norm's gain and the unembedding: the k
    tokens it most boosts (descending logit) and the k it most suppresses (ascending).

    A transcoder's row lives in its target's space (``cfg.target``); it is read the same way
    when that space is the residual stream's width. Gemma-2's logit soft-capping is left
    out (it is monotonic, so it changes the numbers, not the order). Only rows of the
    unembedding that are tokens of the tokenizer count (models pad their vocabulary).
    """
    index = _features(dictionary, features)
    d_out, d_model = dictionary.cfg.d_out, lm.d_model
    if d_out != d_model:
        where = dictionary.cfg.output_hook
        raise DimensionError(
            f"the dictionary's decoder rows have width {d_out} ({where}), but {lm.name}'s residual stream has width "
            f"{d_model}: output tokens need a decoder that writes into a space of the residual stream's width "
            "(resid_*, attn_out, mlp_out), not e.g. an MLP's hidden layer"
        )
    unembed = lm.model.get_output_embeddings()
    if unembed is None:
        raise ModelLoadError(f"{lm.name} has no output embedding (unembedding) to read tokens through")
    W_U = unembed.weight
    vocab = min(W_U.shape[0], len(lm.tokenizer))
    _check_k(k, vocab, f"{lm.name} has {vocab} tokens")
    gain = final_norm_gain(lm).to(W_U.device)
    rows = dictionary.W_dec[index.to(dictionary.W_dec.device)].detach().float().to(W_U.device) * gain
    tops, bottoms = [], []
    chunk = max(1, LOGIT_BLOCK // vocab)
    for start in range(0, len(index), chunk):
        W_block = rows[start:start + chunk]
        logits = W_block @ W_U[:vocab].float().T
        tops.append(logits.topk(k, dim=1))
        bottoms.append(logits.topk(k, dim=1, largest=False))
    return OutputTokens(
        features=index,
        top_ids=torch.cat([t.indices for t in tops]).cpu(), top_logits=torch.cat([t.values for t in tops]).cpu(),
        bottom_ids=torch.cat([b.indices for b in bottoms]).cpu(),
        bottom_logits=torch.cat([b.values for b in bottoms]).cpu(),
    )


@torch.no_grad()
def nearest_features(dictionary: Any, features: Sequence[int], k: int = 10) -> tuple[Tensor, Tensor]:
    """(ids (n, k), cosines (n, k)): the features whose decoder rows have the largest cosine
    with each chosen feature's row, itself excluded, highest first.

    Blocks of chosen rows against blocks of decoder rows keep memory near `COSINE_BLOCK`
    entries whatever the dictionary's size. A row of zero norm has cosine 0 with everything.
    """
    index = _features(dictionary, features)
    F = dictionary.cfg.d_sae
    _check_k(k, F - 1, f"the dictionary has {F} features, one of which is the feature itself")
    W = dictionary.W_dec.detach()
    device = W.device
    norms = W.float().norm(dim=1).clamp_min(1e-12)
    chosen = index.to(device)
    n = len(chosen)
    q_block = min(n, 4096)
    w_block = max(k + 1, COSINE_BLOCK // q_block)
    out_ids, out_cos = [], []
    for q0 in range(0, n, q_block):
        q_idx = chosen[q0:q0 + q_block]
        Q = W[q_idx].float() / norms[q_idx, None]
        best_cos = torch.full((len(q_idx), k), float("-inf"), device=device)
        best_ids = torch.full((len(q_idx), k), -1, dtype=torch.long, device=device)
        for w0 in range(0, F, w_block):
            Wb = W[w0:w0 + w_block].float() / norms[w0:w0 + w_block, None]
            cos = Q @ Wb.T
            own = (q_idx >= w0) & (q_idx < w0 + Wb.shape[0])
            cos[own.nonzero().squeeze(1), (q_idx[own] - w0)] = float("-inf")  # not the feature itself
            ids = torch.arange(w0, w0 + Wb.shape[0], device=device).expand_as(cos)
            merged = torch.cat([best_cos, cos], dim=1)
            merged_ids = torch.cat([best_ids, ids], dim=1)
            top = merged.topk(k, dim=1)
            best_cos, best_ids = top.values, merged_ids.gather(1, top.indices)
        out_ids.append(best_ids)
        out_cos.append(best_cos)
    return torch.cat(out_ids).cpu(), torch.cat(out_cos).cpu()
