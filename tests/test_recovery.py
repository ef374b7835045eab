"""Every architecture recovers a known sparse dictionary from synthetic data.

Activations are drawn as x = Σ_i c_i g_i with g_i the rows of a random "true"
dictionary (unit norm), each token using a few features with positive magnitudes.
A trained dictionary has recovered feature i when one of its decoder rows has
cosine > 0.9 with g_i; the test asks for most of them.
"""

import pytest
import torch

from saekit import TrainConfig, train
from saekit.activations import ArrayActivations

D, N_TRUE, TOKENS = 32, 48, 120_000


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(N_TRUE, D, generator=g)
    true /= true.norm(dim=1, keepdim=True)
    # Each feature fires independently with probability 4/N_TRUE: about 4 per token.
    on = torch.rand(n, N_TRUE, generator=g) < 4 / N_TRUE
    mags = torch.rand(n, N_TRUE, generator=g) * 1.5 + 0.5
    x = (on * mags) @ true + 0.01 * torch.randn(n, D, generator=g)
    return x, true


def recovered(decoder: torch.Tensor, true: torch.Tensor, threshold: float = 0.9) -> float:
    dec = decoder / decoder.norm(dim=1, keepdim=True)
    return float(((true @ dec.T).max(dim=1).values > threshold).float().mean())


ARCH_SETTINGS = {
    "topk": dict(k=4),
    "batchtopk": dict(k=4),
    "relu": dict(l1_coeff=0.3),
    "gated": dict(l1_coeff=0.3),
    "jumprelu": dict(l0_coeff=0.1),
}


@pytest.mark.parametrize("arch", sorted(ARCH_SETTINGS))
def test_recovers_true_features(arch, tmp_path):
    x, true = synthetic(TOKENS + 4096)
    source = ArrayActivations([x[:TOKENS].numpy()], heldout=x[TOKENS:].numpy())
    cfg = TrainConfig(
        arch=arch, dict_size=2 * N_TRUE, tokens=TOKENS, batch_size=256, buffer_tokens=8192,
        out=str(tmp_path / arch), eval_tokens=4096, lr=3e-3, seed=0, **ARCH_SETTINGS[arch],
    )
    result = train(cfg, source=source)
    frac = recovered(result.dictionary.W_dec.detach(), true)
    assert frac >= 0.8, f"{arch}: only {frac:.0%} of true features recovered (FVU {result.heldout.fvu:.3f}, L0 {result.heldout.l0:.1f})"
    assert result.heldout.fvu < 0.2
