"""Probes: from activations and labels to a direction and a decision score.

Every probe here is linear when it scores: ``score(x) = x · weight + bias``, positive for
"true" (``predict`` compares it with ``threshold``, 0 unless calibrated), and each has a
``direction``, the unit vector it finds truth along (what an intervention would add).
They differ in how they fit:

- ``logistic``: L2-regularised logistic regression, by Newton's method on standardised
  features (exact and deterministic; the penalty is on the standardised weights, so it
  means the same at any activation scale).
- ``mass_mean``: the difference of the class means θ = μ₁ − μ₀ (Marks & Tegmark 2023),
  thresholded half-way between them.
- ``lda``: mass-mean with the within-class covariance, Σ⁻¹θ: Fisher's linear discriminant,
  with the pooled covariance shrunk towards a multiple of the identity (needed when the
  width approaches the number of statements).
- ``ccs``: Contrast-Consistent Search (Burns et al. 2022) on pairs of a statement and its
  negation: no labels but to orient the sign; several random starts, the lowest loss kept.
- ``ttpd``: the two-direction probe of "Truth is Universal" (Bürger et al. 2024): on
  affirmative and negated statements, each set centred on its own mean, least squares of
  the activations on (y, y·polarity) gives a general truth direction t_G and a
  polarity-sensitive t_P; a logistic regression finds the polarity direction; the
  classifier is a logistic regression on the projections onto t_G and that direction.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError, DataError, FormatError


def _check_xy(X: Tensor, y: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if X.ndim != 2:
        raise ConfigError(f"{name}: activations must be (statements, width), got shape {tuple(X.shape)}")
    if y.shape != (X.shape[0],):
        raise ConfigError(f"{name}: {X.shape[0]} activations but labels of shape {tuple(y.shape)}")
    y = y.to(torch.long)
    if not bool(((y == 0) | (y == 1)).all()):
        raise DataError(f"{name}: labels must be 0 or 1")
    if int(y.sum()) in (0, len(y)):
        raise DataError(f"{name}: the training statements are all of one label; a probe needs both")
    return X.detach().double().cpu(), y.cpu()


def fit_logistic(X: Tensor, y: Tensor, l2: float, max_iter: int = 100) -> tuple[Tensor, float]:
    """Weights and bias minimising mean log-loss + l2/2 ‖w_std‖², by damped Newton steps.

    Features are standardised first (and the result folded back), so ``l2`` does not depend
    on the activations' scale; the bias is not penalised. Deterministic: no random start.
    """
    X = X.double()
    yf = y.double()
    mean, std = X.mean(0), X.std(0).clamp_min(1e-8)
    A = torch.cat([(X - mean) / std, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    n, k = A.shape
    penalty = torch.full((k,), float(l2), dtype=X.dtype)
    penalty[-1] = 0.0
    w = torch.zeros(k, dtype=X.dtype)

    def loss_of(w: Tensor) -> float:
        z = A @ w
        return float((torch.nn.functional.softplus(z) - yf * z).mean() + 0.5 * (penalty * w * w).sum())

    loss = loss_of(w)
    for _ in range(max_iter):
        z = A @ w
        p = torch.sigmoid(z)
        grad = A.T @ (p - yf) / n + penalty * w
        if float(grad.abs().max()) < 1e-9:
            break
        hessian = (A * (p * (1 - p)).unsqueeze(1)).T @ A / n + torch.diag(penalty)
        hessian += 1e-10 * torch.eye(k, dtype=X.dtype)  # unpenalised, separable data: keep it invertible
        step = torch.linalg.solve(hessian, grad)
        t = 1.0
        while t > 1e-8:  # backtracking: Newton's full step can overshoot far from the optimum
            new = w - t * step
            new_loss = loss_of(new)
            if new_loss <= loss - 1e-4 * t * float(grad @ step):
                break
            t /= 2
        if t <= 1e-8:
            break
        converged = loss - new_loss < 1e-12
        w, loss = new, new_loss
        if converged:
            break
    weight = w[:-1] / std
    return weight, float(w[-1] - weight @ mean)


class Probe(ABC):
    """One interface for every probe: ``fit`` (activations, labels, and what the method
    needs), then ``scores`` (positive: true), ``predict`` (0/1) and ``direction``."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[str] = ""  # "partners" (CCS) or "polarities" (ttpd): what fit() requires beyond labels

    def __init__(self) -> None:
        self.weight: Tensor | None = None
        self.bias: float = 0.0
        self._direction: Tensor | None = None
        self.threshold: float = 0.0

    @abstractmethod
    def fit(self, X: Tensor, y: Tensor, *, polarities: Tensor | None = None,
            partners: Tensor | None = None) -> "Probe":
        """Fit on activations ``X`` (N, d) and labels ``y`` (N,) of 0/1; returns self."""

    def params(self) -> dict[str, Any]:
        """The settings that define this probe (saved with it)."""
        return {}

    def extra_tensors(self) -> dict[str, Tensor]:
        return {}

    def _set(self, weight: Tensor, bias: float, direction: Tensor) -> None:
        if not torch.isfinite(weight).all() or not math.isfinite(bias):
            raise DataError(f"the {self.name} probe did not converge (its weights are not finite); check the "
                            "activations for NaN or Inf, or use more statements")
        self.weight = weight.float()
        self.bias = float(bias)
        norm = direction.norm()
        self._direction = (direction / norm if norm > 0 else direction).float()

    def _fitted(self) -> Tensor:
        if self.weight is None:
            raise ConfigError(f"the {self.name} probe has not been fitted; call fit() first")
        return self.weight

    @property
    def direction(self) -> Tensor:
        """The unit vector this probe finds truth along, oriented so that true scores higher."""
        self._fitted()
        assert self._direction is not None
        return self._direction

    def scores(self, X: Tensor) -> Tensor:
        """Decision scores (N,): above ``threshold`` is predicted true."""
        weight = self._fitted()
        if X.ndim != 2 or X.shape[1] != weight.shape[0]:
            raise ConfigError(f"the {self.name} probe was fitted on width {weight.shape[0]}; got activations of "
                              f"shape {tuple(X.shape)} (another hook point or model?)")
        return X.float().cpu() @ weight + self.bias

    def predict(self, X: Tensor) -> Tensor:
        return (self.scores(X) > self.threshold).long()

    def save(self, path: str | Path, info: dict[str, Any] | None = None) -> None:
        """The probe as a safetensors file (atomic); ``info`` (hook, model, position, ...) is
        kept in its metadata for ``load_probe``."""
        from ..io.files import atomic_save_tensors

        weight = self._fitted()
        tensors = {"weight": weight, "bias": torch.tensor([self.bias]), "direction": self.direction,
                   **self.extra_tensors()}
        meta = {"probe": self.name, "params": self.params(), "threshold": self.threshold, "info": info or {}}
        atomic_save_tensors(tensors, path, metadata={"saekit_probe": json.dumps(meta)})


class LogisticRegressionProbe(Probe):
    name = "logistic"
    description = "L2-regularised logistic regression (Newton's method)"

    def __init__(self, l2: float = 1e-2):
        super().__init__()
        if not l2 >= 0:
            raise ConfigError(f"the logistic probe's L2 penalty must be >= 0, not {l2}")
        self.l2 = float(l2)

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2}

    def fit(self, X: Tensor, y: Tensor, *, polarities: Tensor | None = None,
            partners: Tensor | None = None) -> "LogisticRegressionProbe":
        X, y = _check_xy(X, y, self.name)
        weight, bias = fit_logistic(X, y, self.l2)
        self._set(weight, bias, weight)
        return self


class MassMeanProbe(Probe):
    name = "mass_mean"
    description = "difference of the class means, threshold half-way"

    def fit(self, X: Tensor, y: Tensor, *, polarities: Tensor | None = None,
            partners: Tensor | None = None) -> "MassMeanProbe":
        X, y = _check_xy(X, y, self.name)
        mu1, mu0 = X[y == 1].mean(0), X[y == 0].mean(0)
        theta = mu1 - mu0
        self._set(theta, float(-theta @ (mu1 + mu0) / 2), theta)
        return self


class LDAProbe(Probe):
    name = "lda"
    description = "mass-mean with the within-class covariance (Fisher's discriminant)"

    def __init__(self, shrinkage: float = 0.01):
        super().__init__()
        if not 0 <= shrinkage <= 1:
            raise ConfigError(f"the lda probe's shrinkage must be between 0 and 1, not {shrinkage}")
        self.shrinkage = float(shrinkage)

    def params(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage}

    def fit(self, X: Tensor, y: Tensor, *, polarities: Tensor | None = None,
            partners: Tensor | None = None) -> "LDAProbe":
        X, y = _check_xy(X, y, self.name)
        X1, X0 = X[y == 1], X[y == 0]
        mu1, mu0 = X1.mean(0), X0.mean(0)
        centred = torch.cat([X1 - mu1, X0 - mu0])
        cov = centred.T @ centred / (len(X) - 2)
        d = cov.shape[0]
        cov = (1 - self.shrinkage) * cov + self.shrinkage * torch.trace(cov) / d * torch.eye(d, dtype=cov.dtype)
        try:
            weight = torch.linalg.solve(cov, mu1 - mu0)
        except RuntimeError:
            raise DataError("the within-class covariance is singular (more dimensions than statements, or constant "
                            "dimensions); raise the lda probe's shrinkage above 0") from None
        bias = float(-weight @ (mu1 + mu0) / 2 + math.log(len(X1) / len(X0)))
        self._set(weight, bias, weight)
        return self


class CCSProbe(Probe):
    name = "ccs"
    description = "Contrast-Consistent Search on statement/negation pairs (unsupervised but for the sign)"
    needs = "partners"

    def __init__(self, restarts: int = 10, epochs: int = 500, lr: float = 1e-2, weight_decay: float = 0.01,
                 seed: int = 0):
        super().__init__()
        if restarts < 1 or epochs < 1:
            raise ConfigError("the ccs probe needs at least one restart and one epoch")
        self.restarts, self.epochs, self.lr, self.weight_decay, self.seed = restarts, epochs, lr, weight_decay, seed
        self.loss: float | None = None
        self._pair_means: tuple[Tensor, Tensor] | None = None

    def extra_tensors(self) -> dict[str, Tensor]:
        if self._pair_means is None:
            return {}
        return {"mean_affirmative": self._pair_means[0], "mean_negated": self._pair_means[1]}

    def params(self) -> dict[str, Any]:
        return {"restarts": self.restarts, "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "seed": self.seed}

    @staticmethod
    def ccs_loss(p_pos: Tensor, p_neg: Tensor) -> Tensor:
        """Consistency (p⁺ = 1 − p⁻) plus confidence (one of the two near 0)."""
        return ((p_pos - (1 - p_neg)) ** 2).mean() + (torch.minimum(p_pos, p_neg) ** 2).mean()

    def fit(self, X: Tensor, y: Tensor, *, polarities: Tensor | None = None,
            partners: Tensor | None = None) -> "CCSProbe":
        X, y = _check_xy(X, y, self.name)
        if partners is None or partners.shape != X.shape:
            raise ConfigError("the ccs probe needs the activations of each statement's negation (partners, the same "
                              "shape as the activations); pair the dataset with its negated one (e.g. cities with "
                              "neg_cities)")
        Xn = partners.detach().double().cpu()
        # Each side centred on its own mean (Burns et al.): what is left is what differs
        # within the pairs, not the word "not".
        mu_pos, mu_neg = X.mean(0), Xn.mean(0)
        # One scale for every dimension (not a per-dimension standardisation, which would
        # rotate the direction found away from the activations' own geometry).
        std = torch.cat([X - mu_pos, Xn - mu_neg]).pow(2).sum(1).mean().sqrt().clamp_min(1e-8) / math.sqrt(X.shape[1])
        Zp, Zn = ((X - mu_pos) / std).float(), ((Xn - mu_neg) / std).float()
        d = X.shape[1]
        best: tuple[float, Tensor, Tensor] | None = None
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.restarts):
            w = (torch.randn(d, generator=generator) / math.sqrt(d)).requires_grad_(True)
            b = torch.zeros(1, requires_grad=True)
            opt = torch.optim.AdamW([w, b], lr=self.lr, weight_decay=self.weight_decay)
            with torch.enable_grad():
                for _ in range(self.epochs):
                    opt.zero_grad()
                    loss = self.ccs_loss(torch.sigmoid(Zp @ w + b), torch.sigmoid(Zn @ w + b))
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                final = float(self.ccs_loss(torch.sigmoid(Zp @ w + b), torch.sigmoid(Zn @ w + b)))
            if best is None or final < best[0]:
                best = (final, w.detach().clone(), b.detach().clone())
        assert best is not None
        self.loss, w, b = best[0], best[1].double(), float(best[2])
        # CCS cannot tell true from false, only the two apart: the labels choose the sign.
        p = 0.5 * (torch.sigmoid(Zp.double() @ w + b) + 1 - torch.sigmoid(Zn.double() @ w + b))
        if float(((p > 0.5).long() == y).double().mean()) < 0.5:
            w, b = -w, -b
        # A lone statement is centred on the mean of both sides.
        weight = w / std
        self._set(weight, b - float(weight @ ((mu_pos + mu_neg) / 2)), weight)
        self._pair_means = (mu_pos.float(), mu_neg.float())
        return self

    def paired_scores(self, X: Tensor, partners: Tensor) -> Tensor:
        """CCS's own prediction for pairs, as a score: logit of ½(p(x⁺) + 1 − p(x⁻)), each
        side centred on its training mean."""
        weight = self._fitted()
        if self._pair_means is None:
            raise ConfigError("this ccs probe has no pair means (fit it first)")
        mu_pos, mu_neg = self._pair_means
        centre = (mu_pos + mu_neg) / 2
        shift = self.bias + float(weight @ centre)
        p = 0.5 * (torch.sigmoid((X.float() - mu_pos) @ weight + shift)
                   + 1 - torch.sigmoid((partners.float() - mu_neg) @ weight + shift))
        return torch.logit(p.clamp(1e-7, 1 - 1e-7))


class TwoDirectionProbe(Probe):
    name = "ttpd"
    description = "general truth direction t_G and polarity direction (Truth is Universal)"
    needs = "polarities"

    def __init__(self, l2: float = 1e-2):
        super().__init__()
        self.l2 = float(l2)
        self.t_g: Tensor | None = None
        self.t_p: Tensor | None = None
        self.polarity_direction: Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2}

    def extra_tensors(self) -> dict[str, Tensor]:
        out = {"t_g": self.t_g} if self.t_g is not None else {}
        if self.t_p is not None and self.polarity_direction is not None:
            out.update(t_p=self.t_p, polarity_direction=self.polarity_direction)
        return out

    def fit(self, X: Tensor, y: Tensor, *, polarities: Tensor | None = None,
            partners: Tensor | None = None) -> "TwoDirectionProbe":
        X, y = _check_xy(X, y, self.name)
        if polarities is None:
            polarities = torch.ones(len(X))
        pol = polarities.to(torch.long).cpu()
        if pol.shape != y.shape or not bool(((pol == 1) | (pol == -1)).all()):
            raise ConfigError("the ttpd probe needs a polarity of 1 (affirmative) or -1 (negated) per statement")
        both = bool((pol == 1).any() and (pol == -1).any())
        # Each polarity centred on its own mean, as the paper centres each dataset: the
        # offset between affirmative and negated statements is not truth.
        Xc = X.clone()
        for value in (1, -1):
            rows = pol == value
            if rows.any():
                Xc[rows] -= X[rows].mean(0)
        signed = (2 * y - 1).double()
        design = torch.stack([signed, signed * pol.double()], 1) if both else signed[:, None]
        solution = torch.linalg.lstsq(design, Xc).solution  # (1 or 2, d): rows t_G and t_P
        self.t_g = solution[0].float()
        self.t_p = solution[1].float() if both else None
        if both:
            pol_weight, _ = fit_logistic(X, (pol == 1).long(), self.l2)
            self.polarity_direction = pol_weight.float()
            basis = torch.stack([solution[0], pol_weight], 1)  # (d, 2)
        else:
            self.polarity_direction = None
            basis = solution[0][:, None]
        coef, bias = fit_logistic(X @ basis, y, 1e-6)
        self._set(basis @ coef, bias, solution[0])
        return self


PROBES: dict[str, type[Probe]] = {cls.name: cls for cls in
                                  (LogisticRegressionProbe, MassMeanProbe, LDAProbe, CCSProbe, TwoDirectionProbe)}


def make_probe(name: str, **params: Any) -> Probe:
    if name not in PROBES:
        raise ConfigError(f"no probe {name!r}; choose from {', '.join(PROBES)}")
    try:
        return PROBES[name](**params)
    except TypeError as e:
        raise ConfigError(f"the {name} probe does not take these settings: {e}") from None


def load_probe(path: str | Path) -> tuple[Probe, dict[str, Any]]:
    """A probe saved with ``Probe.save``, ready to score, and the info saved with it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as fh:
            meta = json.loads((fh.metadata() or {})["saekit_probe"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except FileNotFoundError:
        raise FormatError(f"{path}: no such probe file") from None
    except (SafetensorError, KeyError, ValueError, OSError) as e:
        raise FormatError(f"{path} is not a probe saved by saekit probe train --save ({e})") from None
    probe = make_probe(meta["probe"], **meta.get("params", {}))
    probe._set(tensors["weight"], float(tensors["bias"][0]), tensors["direction"])
    probe.threshold = float(meta.get("threshold", 0.0))
    for key in ("t_g", "t_p", "polarity_direction"):
        if key in tensors:
            setattr(probe, key, tensors[key])
    if isinstance(probe, CCSProbe) and "mean_affirmative" in tensors:
        probe._pair_means = (tensors["mean_affirmative"], tensors["mean_negated"])
    return probe, meta.get("info", {})
