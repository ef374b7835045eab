"""Figures that say how good a dictionary is, exactly as shared/docs/METRICS.md defines them.

Every sum is accumulated in float64 over all evaluated tokens (never averaged per
batch and then averaged again), so the figures do not depend on how the tokens were
split into batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import Tensor

from .dictionaries import Dictionary

DENSE_THRESHOLD = 0.1  # a feature firing on more than 10% of tokens counts as dense


@dataclass
class ReconstructionMetrics:
    """Reconstruction and sparsity figures over ``n_tokens`` activations (METRICS.md)."""

    n_tokens: int
    mse: float
    fvu: float
    variance_explained: float
    cosine: float
    l0: float
    l1: float
    l1_weighted: float
    frac_alive: float
    n_dead: int
    n_dense: int
    relative_reconstruction_bias: float
    hook: str = ""
    feature_density: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, with_density: bool = False) -> dict:
        d = asdict(self)
        if not with_density:
            d.pop("feature_density")
        return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in d.items()}


@torch.no_grad()
def evaluate_reconstruction(
    dictionary: Dictionary, activations: Tensor | Iterable[Tensor], batch_size: int = 4096
) -> ReconstructionMetrics:
    """Reconstruction figures for raw activations ``(N, d)`` (or an iterable of such)."""
    if isinstance(activations, Tensor):
        activations = activations.reshape(-1, activations.shape[-1]).split(batch_size)
    device = dictionary.W_dec.device
    F = dictionary.cfg.d_sae
    dec_norms = dictionary.W_dec.norm(dim=1).double()
    n = 0
    sum_x = None
    sum_sq_x = err = cos = l0 = l1 = l1w = xhat_sq = xhat_dot_x = 0.0
    fires = torch.zeros(F, dtype=torch.float64, device=device)
    for x in activations:
        x = x.to(device, torch.float32)
        f = dictionary.encode(x)
        x_hat = dictionary.decode(f)
        xd, xh, fd = x.double(), x_hat.double(), f.double()
        n += x.shape[0]
        sum_x = xd.sum(0) if sum_x is None else sum_x + xd.sum(0)
        sum_sq_x += float(xd.pow(2).sum())
        err += float((xd - xh).pow(2).sum())
        cos += float(torch.nn.functional.cosine_similarity(xd, xh, dim=-1, eps=1e-12).sum())
        active = fd > 0
        l0 += float(active.sum())
        l1 += float(fd.abs().sum())
        l1w += float((fd.abs() * dec_norms).sum())
        xhat_sq += float(xh.pow(2).sum())
        xhat_dot_x += float((xh * xd).sum())
        fires += active.sum(0)
    if n == 0:
        raise ValueError("no activations to evaluate")
    total_var = sum_sq_x - float(sum_x.pow(2).sum()) / n  # Σ‖x − x̄‖²
    fvu = err / total_var if total_var > 0 else math.nan
    density = (fires / n).cpu()
    return ReconstructionMetrics(
        n_tokens=n,
        mse=err / n,
        fvu=fvu,
        variance_explained=1.0 - fvu,
        cosine=cos / n,
        l0=l0 / n,
        l1=l1 / n,
        l1_weighted=l1w / n,
        frac_alive=float((density > 0).double().mean()),
        n_dead=int((density == 0).sum()),
        n_dense=int((density > DENSE_THRESHOLD).sum()),
        relative_reconstruction_bias=xhat_sq / xhat_dot_x if xhat_dot_x != 0 else math.nan,
        hook=dictionary.cfg.hook,
        feature_density=density.tolist(),
    )
