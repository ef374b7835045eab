"""Inference-time optimisation: codes for a dictionary's decoder found by optimisation.

A trained encoder is one amortised guess at the codes; given only the decoder, better
codes at the same L0 can often be found per token, and the gap says how much of a
dictionary's error is the encoder's (Smith 2024, "Replacing SAE Encoders with
Inference-Time Optimisation"). Every function here takes raw activations ``x`` of
shape ``(N, d)`` (a transcoder's *targets*, for which the input plays no part) and
returns non-negative codes ``f`` of shape ``(N, F)``, drop-in for ``Dictionary.encode``:
``dictionary.decode(f)`` reconstructs. The codes are non-negative like every
architecture's activations, so they mean the same thing as the encoder's.

* ``matching_pursuit``: pick the atom most aligned with the residual, take its
  projection, repeat ``l0`` times (an atom may be picked again; L0 ≤ ``l0``).
* ``orthogonal_matching_pursuit``: pick atoms as matching pursuit does, but after each
  pick refit every chosen coefficient by least squares on the chosen atoms, clipped at
  zero (Pati et al. 1993).
* ``gradient_pursuit``: the same picks, with one exact line-search gradient step on the
  chosen coefficients instead of the least-squares solve (Blumensath & Davies 2008):
  OMP's quality at matching pursuit's cost.
* ``fista``: the non-negative L1-penalised codes, ``min_f ½‖x − b_dec − f W_dec‖² +
  λ Σ f``, ``f ≥ 0``, by FISTA (Beck & Teboulle 2009); ``accelerated=False`` is ISTA.

All are batched over tokens and run on the decoder's device. ``ito_comparison.compare_codes``
(``saekit ito``) measures them against the dictionary's own encoder at matched L0 on
held-out text, with the model's loss when each one's reconstruction is spliced in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import is_integer
from ..dictionaries import Dictionary
from ..errors import ConfigError, DimensionError


def _residual(dictionary: Dictionary, x: Tensor) -> tuple[Tensor, Tensor]:
    """``x − b_dec`` in float32 on the decoder's device, and the (F, d) decoder."""
    W = dictionary.W_dec.detach().float()
    if x.shape[-1] != W.shape[1]:
        raise DimensionError(
            f"the decoder writes width {W.shape[1]} but the activations have width {x.shape[-1]}"
        )
    return x.reshape(-1, x.shape[-1]).to(W.device, torch.float32) - dictionary.b_dec.detach().float(), W


def _check_l0(l0: int, F: int) -> None:
    if not is_integer(l0) or not 0 < l0 <= F:
        raise ConfigError(f"l0 must be a whole number from 1 to the dictionary size {F}, got {l0!r}")


@torch.no_grad()
def matching_pursuit(dictionary: Dictionary, x: Tensor, l0: int) -> Tensor:
    """Non-negative matching pursuit: ``l0`` greedy steps (fewer active features when
    an atom is picked twice, or when no atom correlates positively with the residual)."""
    r, W = _residual(dictionary, x)
    _check_l0(l0, W.shape[0])
    f = torch.zeros(r.shape[0], W.shape[0], device=r.device)
    rows = torch.arange(r.shape[0], device=r.device)
    norms = _norms_sq(W).sqrt()  # 1 for a trained decoder; not assumed for a loaded one
    for _ in range(l0):
        best, i = (r @ W.t() / norms).max(dim=1)  # the atom most aligned with the residual
        step = best.clamp_min(0) / norms[i]  # its projection's coefficient
        f[rows, i] += step
        r -= step[:, None] * W[i]
    return f


def _norms_sq(W: Tensor) -> Tensor:
    return W.pow(2).sum(1).clamp_min(1e-12)


def _pursuit(dictionary: Dictionary, x: Tensor, l0: int, refit: str) -> Tensor:
    """The greedy picks of OMP and gradient pursuit, with their coefficient updates."""
    r0, W = _residual(dictionary, x)
    _check_l0(l0, W.shape[0])
    N, F = r0.shape[0], W.shape[0]
    chosen = torch.zeros(N, 0, dtype=torch.long, device=r0.device)
    coef = torch.zeros(N, 0, device=r0.device)
    r = r0.clone()
    taken = torch.zeros(N, F, dtype=torch.bool, device=r0.device)
    for _ in range(l0):
        c = (r @ W.t()).masked_fill(taken, float("-inf"))
        i = c.argmax(dim=1)
        taken[torch.arange(N, device=r0.device), i] = True
        chosen = torch.cat([chosen, i[:, None]], 1)
        coef = torch.cat([coef, torch.zeros(N, 1, device=r0.device)], 1)
        atoms = W[chosen]  # (N, t, d)
        if refit == "lstsq":
            gram = atoms @ atoms.transpose(1, 2)  # (N, t, t)
            rhs = (atoms @ r0[:, :, None]).squeeze(2)
            # A tiny ridge keeps the solve defined when two chosen atoms are parallel.
            eye = torch.eye(gram.shape[1], device=r0.device)
            coef = torch.linalg.solve(gram + 1e-6 * eye, rhs).clamp_min(0)
        else:
            g = (atoms @ r[:, :, None]).squeeze(2)  # the gradient on the chosen coefficients
            gW = (g[:, None, :] @ atoms).squeeze(1)  # its image, (N, d)
            alpha = g.pow(2).sum(1) / gW.pow(2).sum(1).clamp_min(1e-12)
            coef = (coef + alpha[:, None] * g).clamp_min(0)
        r = r0 - (coef[:, None, :] @ atoms).squeeze(1)
    f = torch.zeros(N, F, device=r0.device)
    return f.scatter_add_(1, chosen, coef)


@torch.no_grad()
def orthogonal_matching_pursuit(dictionary: Dictionary, x: Tensor, l0: int) -> Tensor:
    """Orthogonal matching pursuit: ``l0`` distinct atoms, every chosen coefficient refit
    by least squares after each pick (clipped at zero, so L0 ≤ ``l0``)."""
    return _pursuit(dictionary, x, l0, "lstsq")


@torch.no_grad()
def gradient_pursuit(dictionary: Dictionary, x: Tensor, l0: int) -> Tensor:
    """Gradient pursuit: OMP's picks, one exact line-search gradient step per pick."""
    return _pursuit(dictionary, x, l0, "gradient")


@torch.no_grad()
def fista(
    dictionary: Dictionary, x: Tensor, l1: float, iterations: int = 200, accelerated: bool = True,
    tol: float = 1e-6,
) -> Tensor:
    """Non-negative codes minimising ``½‖x − b_dec − f W_dec‖² + l1·Σf`` (per token).

    Steps of ``1/L`` with ``L`` the largest eigenvalue of ``W_dec W_decᵀ`` (the gradient's
    Lipschitz constant); stops after ``iterations`` or once no code moves by more than
    ``tol`` times its scale. ``accelerated=False`` runs plain ISTA.
    """
    if not (math.isfinite(l1) and l1 >= 0):
        raise ConfigError(f"l1 must be a finite non-negative number, got {l1}")
    if iterations <= 0:
        raise ConfigError(f"iterations must be positive, got {iterations}")
    r, W = _residual(dictionary, x)
    L = float(torch.linalg.matrix_norm(W, ord=2)) ** 2
    f = torch.zeros(r.shape[0], W.shape[0], device=r.device)
    y, t = f, 1.0
    for _ in range(iterations):
        grad = (y @ W - r) @ W.t()
        f_next = (y - grad / L - l1 / L).clamp_min(0)
        if accelerated:
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = f_next + ((t - 1) / t_next) * (f_next - f)
            t = t_next
        else:
            y = f_next
        moved = float((f_next - f).abs().max()) if f_next.numel() else 0.0
        f = f_next
        if moved <= tol * max(1.0, float(f.abs().max())):
            break
    return f
