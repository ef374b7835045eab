"""Inference-time optimisation: each solver against what its mathematics guarantees.

Exact recovery of sparse non-negative codes (an orthonormal decoder for every pursuit;
an incoherent overcomplete one for OMP and gradient pursuit), matching pursuit's
residual never growing, and FISTA's and ISTA's codes meeting the non-negative Lasso's
optimality conditions (and each other).
"""

import pytest
import torch

from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import ConfigError, DimensionError
from saekit.interpret import fista, gradient_pursuit, matching_pursuit, orthogonal_matching_pursuit

PURSUITS = [matching_pursuit, orthogonal_matching_pursuit, gradient_pursuit]


def decoder(W: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    d = build_dictionary(DictionaryConfig(arch="relu", d_in=W.shape[1], d_sae=W.shape[0]))
    with torch.no_grad():
        d.W_dec.copy_(W)
        d.b_dec.copy_(torch.randn(W.shape[1]))
    return d.requires_grad_(False)


def sparse_codes(N: int, F: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.zeros(N, F)
    for n in range(N):
        idx = torch.randperm(F, generator=g)[:k]
        f[n, idx] = 0.5 + torch.rand(k, generator=g) * 2
    return f


@pytest.mark.parametrize("solve", PURSUITS, ids=lambda s: s.__name__)
def test_pursuits_recover_codes_on_an_orthonormal_decoder(solve):
    Q, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(0)))
    d = decoder(Q)
    f = sparse_codes(50, 24, 4)
    x = d.decode(f).detach()
    got = solve(d, x, 4)
    torch.testing.assert_close(got, f, atol=1e-4, rtol=1e-4)


def test_on_an_incoherent_overcomplete_decoder_omp_recovers_and_gradient_pursuit_beats_matching_pursuit():
    W = torch.randn(96, 64, generator=torch.Generator().manual_seed(2))
    d = decoder(W / W.norm(dim=1, keepdim=True))
    f = sparse_codes(40, 96, 3)
    x = d.decode(f).detach()

    def error(codes):
        return float(((d.decode(codes) - x).norm(dim=1) / (x - d.b_dec).norm(dim=1)).median())

    torch.testing.assert_close(orthogonal_matching_pursuit(d, x, 3), f, atol=1e-3, rtol=1e-3)
    gp, mp = gradient_pursuit(d, x, 3), matching_pursuit(d, x, 3)
    assert ((gp > 0).sum(1) <= 3).all()
    assert error(gp) < 0.1 and error(gp) < error(mp)


def test_matching_pursuit_never_increases_the_residual():
    d = decoder(torch.nn.functional.normalize(torch.randn(80, 16, generator=torch.Generator().manual_seed(3)), dim=1))
    x = torch.randn(30, 16) * 2
    errors = [float((d.decode(matching_pursuit(d, x, k)) - x).pow(2).sum(1).max()) for k in range(1, 9)]
    assert all(b <= a + 1e-5 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]


def test_fista_meets_the_optimality_conditions_of_the_nonnegative_lasso():
    W = torch.nn.functional.normalize(torch.randn(60, 20, generator=torch.Generator().manual_seed(4)), dim=1)
    d = decoder(W)
    x = d.decode(sparse_codes(25, 60, 5)).detach() + 0.05 * torch.randn(25, 20)
    lam = 0.3
    f = fista(d, x, lam, iterations=3000, tol=1e-9)
    corr = (x - d.decode(f)) @ W.t()  # −∂/∂f of the squared error's half
    active = f > 1e-6
    # f_i > 0: corr_i = λ; f_i = 0: corr_i ≤ λ
    torch.testing.assert_close(corr[active], torch.full_like(corr[active], lam), atol=2e-3, rtol=0)
    assert float(corr[~active].max()) <= lam + 2e-3
    assert (f >= 0).all() and active.any()
    plain = fista(d, x, lam, iterations=20000, accelerated=False, tol=1e-10)
    torch.testing.assert_close(plain, f, atol=5e-3, rtol=0)


def test_bad_requests_are_refused():
    d = decoder(torch.eye(8))
    with pytest.raises(ConfigError, match="l0 must be"):
        matching_pursuit(d, torch.randn(3, 8), 0)
    with pytest.raises(ConfigError, match="l0 must be"):
        orthogonal_matching_pursuit(d, torch.randn(3, 8), 9)
    with pytest.raises(DimensionError, match="width 8"):
        gradient_pursuit(d, torch.randn(3, 7), 2)
    with pytest.raises(ConfigError, match="l1 must be"):
        fista(d, torch.randn(3, 8), -1.0)
