"""One dictionary's optimisation: weights, Adam, schedules, dead features, the activation scale.

``DictionaryTrainer.train_step`` is the whole update on one full batch: scale the
batch, read the schedules at the step's midpoint, ask the dictionary for its loss
(its ``forward``), step Adam, keep the decoder rows unit-norm, track dead features and
resample them where the architecture revives its dead that way. On a GPU the loss and
its backward are replayed from a CUDA graph where that pays (``graphed_step``), op by op
otherwise, with the same result to rounding. ``state_dict`` holds everything that
update depends on, so a resumed trainer continues bit-identically.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import RESAMPLE_STOP_FRACTION, TrainConfig
from ..dictionaries import Dictionary, DictionaryConfig, LossOutput, LossParams, build_dictionary
from ..errors import TrainingDivergedError
from .dead_features import DeadFeatureTracker, resample_dead
from .distributed import SINGLE, RankGroup, Ranks, gather_rows
from .graphed_step import GraphedObjective, graph_pays
from .schedules import lr_multiplier, sparsity_multiplier

log = logging.getLogger(__name__)


# Training inputs kept (the last ones, in whole batches) to set inference thresholds
# on at the end of a run: 8,192 tokens hold ~260k kept activations at k = 32.
CALIBRATION_TOKENS = 8192


class CalibrationSample:
    """The last ``CALIBRATION_TOKENS`` training inputs (whole batches), for thresholds
    that are set from data once training ends (BatchTopK's inference threshold).

    Calibrating the final weights on many recent full batches gives a steady
    threshold: one batch's minimum is noisy (one short batch at the end of a run once
    halved the inference L0), and an average of each step's cut-off over the run mixes
    in the cut-offs of weights that no longer exist (in short runs it gave L0 2.1 for
    k = 4). A ring of whole batches, checkpointed, so a resumed run calibrates on
    the same sample.
    """

    def __init__(self, batch_size: int, d: int, device: torch.device):
        self.rows = max(1, -(-CALIBRATION_TOKENS // batch_size)) * batch_size
        self.data = torch.zeros(self.rows, d, device=device)
        self.filled = 0  # rows holding data
        self.next = 0  # where the next batch goes

    def add(self, x: Tensor) -> None:
        n = x.shape[0]
        self.data[self.next : self.next + n] = x.detach()
        self.next = (self.next + n) % self.rows
        self.filled = min(self.rows, self.filled + n)

    def sample(self) -> Tensor:
        return self.data[: self.filled]

    def state(self) -> dict[str, Any]:
        return {"data": self.data[: self.filled].cpu(), "next": self.next}

    def load(self, state: dict[str, Any]) -> None:
        data = state["data"]
        self.filled, self.next = data.shape[0], int(state["next"])
        self.data[: self.filled] = data.to(self.data.device)


@dataclass
class StepResult:
    """One step as this process saw it: the loss output of its share of the global
    batch, what that share's ``x_hat`` reconstructs (scaled), the features resampled,
    and the share's weight in the global batch's mean (``n_share · world / B``; 1 for
    one process)."""

    out: LossOutput
    reconstructed: Tensor
    resampled: int
    weight: float = 1.0


class DictionaryTrainer:
    """One dictionary's optimisation: weights, Adam, schedules, dead features, scale.

    With ``ranks`` of a data-parallel run (``distributed``), every rank builds the same
    trainer, is handed the same whole global batch and steps on its own share of it; the
    gradients are averaged by DDP, and everything else a step decides (the dead-feature
    record, resampling, the calibration sample) is decided on the whole batch, so every
    rank holds the same state as a one-process trainer.
    """

    def __init__(
        self, cfg: TrainConfig, dict_cfg: DictionaryConfig, device: torch.device, source_hint: str = "",
        ranks: Ranks = SINGLE,
    ):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.sae = build_dictionary(dict_cfg).to(device)
        self.ranks = ranks
        self.group = RankGroup(ranks) if ranks.distributed else None
        # What the step calls: the dictionary itself, or DDP around it (its forward returns
        # the loss, so DDP needs nothing else). Buffers (BatchTopK's threshold) are set
        # identically on every rank, so DDP need not broadcast them.
        self.model: torch.nn.Module = self.sae
        if ranks.distributed:
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # torch ≥ 2.12 names the option forward_sync_buffers; earlier ones broadcast_buffers.
            known = inspect.signature(DistributedDataParallel.__init__).parameters
            no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers": False}
            self.model = DistributedDataParallel(
                self.sae, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
            )
        self.base_lr = cfg.learning_rate(dict_cfg.d_sae)
        # fused: one kernel for all parameters (an unfused step took ~10% of a sparse training step)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.base_lr, betas=(0.9, 0.999), fused=True)
        self.tracker = DeadFeatureTracker(dict_cfg.d_sae, cfg.dead_window(), device)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.total_tokens = cfg.trainable_tokens()
        self.calibration = CalibrationSample(cfg.batch_size, dict_cfg.d_in, device) if self.sae.calibrated else None
        self.transcoder = dict_cfg.transcoder
        # Inputs are divided by `scale`; a transcoder's targets by their own `target_scale`.
        self.scale = 1.0
        self.target_scale = 1.0
        self.step = 0
        self.tokens = 0
        self.resamples = cfg.resample and type(self.sae).revive_dead == "resample"
        # A CUDA graph of the loss and its backward, captured at the first step where it pays
        # (not under DDP, whose hooks run between the ops).
        self.graphs = cfg.cuda_graphs and not ranks.distributed and graph_pays(
            torch.device(device), dict_cfg.arch, dict_cfg.d_sae, cfg.autocast
        )
        self.graphed: GraphedObjective | None = None
        # What to say when an input batch holds NaN (where the activations come from).
        self.source_hint = source_hint

    @property
    def output_scale(self) -> float:
        """The constant the reconstruction target was divided by (``scale`` unless a transcoder)."""
        return self.target_scale if self.transcoder else self.scale

    def init_from_sample(self, sample: Tensor, target_sample: Tensor | None = None) -> None:
        """Estimate the activation scales and start ``b_dec`` at the targets' centre."""
        device = self.sae.W_dec.device
        self.scale = estimate_scale(sample)
        target = None
        if self.transcoder:
            assert target_sample is not None, "a transcoder starts from a sample of its targets too"
            self.target_scale = estimate_scale(target_sample)
            target = target_sample.to(device, torch.float32) / self.target_scale
        self.sae.init_from_data(sample.to(device, torch.float32) / self.scale, target=target)

    def _scaled(self, raw: Tensor, scale: float) -> Tensor:
        return raw.to(self.sae.W_dec.device, torch.float32) / scale

    def _refuse_input(self, hook: str) -> None:
        raise TrainingDivergedError(
            f"the activations at {hook} contain NaN or Inf (step {self.step}); {self.source_hint}"
        )

    def _refuse_loss(self, loss: Tensor) -> None:
        raise TrainingDivergedError(
            f"the loss became {float(loss)} at step {self.step} ({self.tokens} tokens) with lr "
            f"{self.opt.param_groups[0]['lr']:.2e}; lower --lr."
        )

    def train_step(self, x_raw: Tensor, target_raw: Tensor | None = None) -> StepResult:
        """One optimiser step on a full (global) batch of raw activations (and a
        transcoder's raw targets)."""
        cfg, sae, ranks = self.cfg, self.sae, self.ranks
        x_all = self._scaled(x_raw, self.scale)
        target_all = None
        if self.transcoder:
            assert target_raw is not None, "a transcoder steps on its inputs and their targets"
            target_all = self._scaled(target_raw, self.target_scale)
        B = x_all.shape[0]
        share = ranks.share(B)
        x = x_all[share] if ranks.distributed else x_all
        target = target_all[share] if ranks.distributed and target_all is not None else target_all
        # Schedules are read at the middle of the step's tokens: the first step then
        # learns (a warm-up read at 0 would make it a step of size zero) and so does the last.
        progress = (self.tokens + B / 2) / self.total_tokens
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * lr_multiplier(progress, cfg.lr_warmup, cfg.lr_decay)
        params = LossParams(
            sparsity_coeff=cfg.sparsity_coeff() * sparsity_multiplier(progress, cfg.sparsity_warmup),
            dead_mask=self.tracker.dead if type(sae).revive_dead == "auxk" else None,
            auxk_coeff=cfg.auxk_coeff,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
            group=self.group,
        )
        # A share's mean loss, weighted so that DDP's average over ranks is the global
        # batch's mean (shares differ by a token when B does not divide).
        weight = x.shape[0] * ranks.world / B
        if self.graphs and (self.graphed is None or self.graphed.fits(x, target)):
            out, fired = self._graphed_gradients(x, target, params)
        else:  # op by op (also a batch of another size than the graph's, e.g. a last short one)
            out, fired = self._eager_gradients(x_all, target_all, x, target, params, weight)
        self.opt.step()
        sae.after_step()
        self.tracker.update(fired, B)
        if self.calibration is not None:
            self.calibration.add(x_all)
        self.step += 1
        self.tokens += B

        resampled = 0
        window = self.tracker.window
        if self.resamples and self.tokens // window > (self.tokens - B) // window:
            if self.tokens < RESAMPLE_STOP_FRACTION * self.total_tokens:
                x_hat = out.x_hat.detach()
                if ranks.distributed:  # the whole batch's reconstructions, every rank alike
                    x_hat = gather_rows(x_hat, ranks, sizes=ranks.share_sizes(B))
                idx = resample_dead(sae, self.opt, x_all, x_hat, self.tracker.dead, self.gen, target=target_all)
                # Only the resampled features start a new window; a dead feature that
                # was not resampled stays dead (and is counted as such).
                self.tracker.tokens_since_fired[idx] = 0
                resampled = idx.numel()
        return StepResult(out, x if target is None else target, resampled, weight)

    def _graphed_gradients(self, x: Tensor, target: Tensor | None, params: LossParams) -> tuple[LossOutput, Tensor]:
        """``_eager_gradients`` replayed from the CUDA graph (captured on the first call):
        the same refusals, read from the flags the graph computes, before Adam steps."""
        if self.graphed is None:
            try:
                self.graphed = GraphedObjective(self.sae, x, target, params, self.cfg.autocast == "bf16")
            except RuntimeError as e:
                # A capture this torch or driver cannot make costs speed, not the run: the
                # same step runs op by op from here on.
                log.warning("could not capture the %s dictionary's step in a CUDA graph (%s); it runs op by op "
                            "(--no-cuda-graphs skips the attempt)", self.sae.cfg.arch, str(e).splitlines()[0])
                self.graphs = False
                return self._eager_gradients(x, target, x, target, params, 1.0)
        out, (x_ok, target_ok, loss_ok) = self.graphed(x, target, params.sparsity_coeff, params.dead_mask)
        if not x_ok:
            self._refuse_input(self.sae.cfg.hook)
        if not target_ok:
            self._refuse_input(self.sae.cfg.target)
        if not loss_ok:
            self._refuse_loss(out.loss)
        return out, out.fired

    def _eager_gradients(
        self, x_all: Tensor, target_all: Tensor | None, x: Tensor, target: Tensor | None, params: LossParams,
        weight: float,
    ) -> tuple[LossOutput, Tensor]:
        """The loss output and the gradients of a step run op by op (DDP's among them),
        with which features fired in the whole global batch."""
        if not torch.isfinite(x_all).all():
            self._refuse_input(self.sae.cfg.hook)
        if target_all is not None and not torch.isfinite(target_all).all():
            self._refuse_input(self.sae.cfg.target)
        # Under bf16 autocast the forward's products run in bf16; the backward follows the
        # forward's dtypes, and the weights and Adam stay fp32.
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast == "bf16"):
            out = self.model(x, target, params)
        fired = out.fired
        if self.group is not None:
            # Which features fired anywhere in the batch, and whether the loss is finite
            # on every rank: one collective, so all ranks raise together or none does.
            flags = self.group.sum(torch.cat([fired.float(), torch.isfinite(out.loss).float().reshape(1)]))
            fired, finite = flags[:-1] > 0, bool(flags[-1] == self.ranks.world)
        else:
            finite = bool(torch.isfinite(out.loss))
        if not finite:
            self._refuse_loss(out.loss)
        self.opt.zero_grad(set_to_none=True)
        (out.loss * weight if weight != 1.0 else out.loss).backward()
        self.sae.remove_parallel_decoder_grad()
        return out, fired

    def state_finite(self) -> bool:
        """Weights and Adam's moments all finite (checked before every checkpoint)."""
        tensors = list(self.sae.parameters()) + [
            t for st in self.opt.state.values() for t in st.values() if isinstance(t, Tensor)
        ]
        return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())

    def finished_dictionary(self) -> Dictionary:
        """A copy that acts on raw activations: calibrated, then with the scale folded in."""
        final = copy.deepcopy(self.sae).eval()
        if self.calibration is not None and self.calibration.filled:
            final.calibrate(self.calibration.sample())
        final.fold_activation_scale(self.scale, self.target_scale if self.transcoder else None)
        final.requires_grad_(False)
        return final

    def state_dict(self) -> dict[str, Any]:
        return {
            "dictionary": self.sae.state_dict(),
            "optimizer": self.opt.state_dict(),
            "tokens_since_fired": self.tracker.tokens_since_fired,
            "generator": self.gen.get_state(),
            "act_scale": self.scale,
            "target_scale": self.target_scale,
            "step": self.step,
            "tokens_done": self.tokens,
            "calibration": None if self.calibration is None else self.calibration.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["dictionary"])
        self.opt.load_state_dict(state["optimizer"])
        self.tracker.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.gen.set_state(state["generator"])
        self.scale, self.step, self.tokens = state["act_scale"], state["step"], state["tokens_done"]
        self.target_scale = state.get("target_scale", 1.0)  # absent from checkpoints written before transcoders
        if self.calibration is not None:
            self.calibration.load(state["calibration"])


@torch.no_grad()
def estimate_scale(sample: Tensor) -> float:
    """The constant that makes E‖x‖² = d on the sample (docs/metrics.md, "Training objectives").

    Dividing by one constant keeps a sparsity coefficient meaningful across layers and
    models: without it, larger activations silently weight the sparsity term more.
    """
    mean_sq = sample.float().pow(2).sum(-1).mean()
    if not torch.isfinite(mean_sq) or float(mean_sq) <= 0:
        raise TrainingDivergedError(
            "the activation sample used to estimate the scale is all zeros or non-finite; "
            "check the hook point and --dtype"
        )
    return math.sqrt(float(mean_sq) / sample.shape[-1])
