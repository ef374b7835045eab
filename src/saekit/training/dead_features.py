"""Dead features: counting the tokens since each feature last fired, and resampling the dead ones."""

from __future__ import annotations


import torch
from torch import Tensor

from ..dictionaries import Dictionary


class DeadFeatureTracker:
    """Counts, per feature, the tokens since it last fired.

    Nothing is known about deadness until ``window`` tokens have been seen: before
    that every feature is "not yet dead", and ``dead_fraction`` says None rather
    than a misleading 0%.
    """

    def __init__(self, d_sae: int, window: int, device: torch.device):
        self.window = window
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def update(self, fired: Tensor, n_tokens: int) -> None:
        """``fired``: (F,) bool, the features that fired on some token of a batch of ``n_tokens``."""
        self.tokens_since_fired += n_tokens
        # masked_fill_, not ``[fired] = 0``: indexing by a mask lists it, a host read on a GPU
        self.tokens_since_fired.masked_fill_(fired, 0)

    @property
    def dead(self) -> Tensor:
        return self.tokens_since_fired >= self.window

    def dead_fraction(self, tokens_seen: int) -> float | None:
        return float(self.dead.float().mean()) if tokens_seen >= self.window else None



@torch.no_grad()
def resample_dead(
    sae: Dictionary, opt: torch.optim.Adam, x: Tensor, x_hat: Tensor, dead: Tensor, gen: torch.Generator,
    target: Tensor | None = None,
) -> Tensor:
    """Point dead features at badly reconstructed inputs (Bricken et al. 2023); return their indices.

    Inputs are drawn with probability proportional to their squared error (against
    ``target``, a transcoder's; else ``x``). A resampled feature writes along the drawn
    token's target (minus ``b_dec``) and, for a transcoder, reads along its input; the
    new encoder rows get 0.2 × the mean alive encoder norm, and Adam's moments for
    the touched slices (``sae.feature_axes``) are zeroed so old statistics do not push
    them back. The generator stays on the CPU so checkpoints do not depend on the device.
    """
    idx = dead.nonzero().squeeze(1)
    none = idx[:0]
    if idx.numel() == 0:
        return none
    y = x if target is None else target
    err = (y - x_hat).pow(2).sum(-1).double().cpu()
    if float(err.sum()) <= 0:
        return none
    picks = torch.multinomial(err / err.sum(), idx.numel(), replacement=True, generator=gen).to(x.device)
    alive = ~dead
    enc_norm = 0.2 * (sae.W_enc[:, alive].norm(dim=0).mean().item() if bool(alive.any()) else 1.0)
    sae.reset_features(idx, y[picks] - sae.b_dec, enc_norm, None if target is None else x[picks])
    for name, axis in sae.feature_axes.items():
        state = opt.state.get(getattr(sae, name))
        for key in ("exp_avg", "exp_avg_sq"):
            if state and key in state:
                state[key].index_fill_(axis, idx, 0.0)
    return idx
