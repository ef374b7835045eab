"""One training loop for every dictionary architecture.

The loop is deliberately plain (nanoGPT-style): fetch a full batch of activations,
scale it, ask the dictionary for its loss, step Adam, keep the decoder rows unit-norm,
track dead features, log, checkpoint. Everything an architecture does differently
lives in its ``training_loss`` and its class attributes; everything about the run
lives in ``TrainConfig``; the run folder's rules live in ``run_folder``.

``DictionaryTrainer`` holds one dictionary's optimisation state and steps it on a
batch; ``train`` wires a source of activations, the shuffling buffer, logging and
checkpoints around it. (Several trainers can share one buffer of activations, which
is how training many dictionaries from one forward pass will plug in.)

Exact resume: the learning-rate and sparsity schedules are pure functions of the
tokens done, the activation buffer is a pure function of its recorded state (see
``activations.ActivationBuffer``), and the checkpoint holds the weights, Adam's
moments, the RNG state, the dead-feature counters, the buffer's carried rows and the
calibration sample. An
interrupted run resumed from its last checkpoint therefore ends with the weights of
an uninterrupted one.

Units: the dictionary trains on activations divided by ``act_scale`` (so that
E‖x‖² = d). The objective (``loss`` and its ``loss_*`` terms in the log) is in those
scaled units; every figure named after a docs/metrics.md figure (``mse``, ``fvu``, ``l0``)
is in raw activation units, as in eval.json.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from .activations import ActivationBuffer, ActivationSource, ModelActivations, open_activation_source
from .checkpoint import save_checkpoint
from .config import RESAMPLE_STOP_FRACTION, TrainConfig
from .dictionaries import ARCHITECTURES, Dictionary, DictionaryConfig, LossOutput, LossParams, build_dictionary
from .errors import CheckpointError, ConfigError, DataError, OutputError, RunInterrupted, TrainingDivergedError
from .evaluation import BOS_AS_TRAINED, EvalResult, ReconstructionMetrics, evaluate, evaluate_reconstruction
from .formats import EVAL_FILE, LOG_FILE, save_dictionary
from .models import resolve_device
from .outputs import FolderLock, atomic_write_text, make_folder, remove_if_empty
from .run_folder import (
    EXECUTION_ONLY,
    RunLog,
    check_resolved,
    check_run_folder,
    checkpoint_stamp,
    clear_run_files,
    given_settings,
    read_run_info,
    write_run_info,
)

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]

# Training inputs kept (the last ones, in whole batches) to set inference thresholds
# on at the end of a run: 8,192 tokens hold ~260k kept activations at k = 32.
CALIBRATION_TOKENS = 8192


@dataclass
class TrainResult:
    dictionary: Dictionary
    out: Path
    tokens: int
    steps: int
    heldout: ReconstructionMetrics | None  # fixed-context reconstruction figures on held-out text
    evaluation: EvalResult | None = None  # every figure, both regimes (when trained from a model)


def lr_multiplier(progress: float, warmup: float, decay: float) -> float:
    """Linear warm-up from 0, flat, then linear decay to 0 over the last ``decay``."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if decay > 0 and progress > 1.0 - decay:
        return max(0.0, (1.0 - progress) / decay)
    return 1.0


class DeadFeatureTracker:
    """Counts, per feature, the tokens since it last fired.

    Nothing is known about deadness until ``window`` tokens have been seen: before
    that every feature is "not yet dead", and ``dead_fraction`` says None rather
    than a misleading 0%.
    """

    def __init__(self, d_sae: int, window: int, device: torch.device):
        self.window = window
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def update(self, f: Tensor) -> None:
        fired = (f > 0).any(0)
        self.tokens_since_fired += f.shape[0]
        self.tokens_since_fired[fired] = 0

    @property
    def dead(self) -> Tensor:
        return self.tokens_since_fired >= self.window

    def dead_fraction(self, tokens_seen: int) -> float | None:
        return float(self.dead.float().mean()) if tokens_seen >= self.window else None


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


@torch.no_grad()
def resample_dead(
    sae: Dictionary, opt: torch.optim.Adam, x: Tensor, x_hat: Tensor, dead: Tensor, gen: torch.Generator
) -> Tensor:
    """Point dead features at badly reconstructed inputs (Bricken et al. 2023); return their indices.

    Inputs are drawn with probability proportional to their squared error; the
    new encoder rows get 0.2 × the mean alive encoder norm, and Adam's moments for
    the touched slices (``sae.feature_axes``) are zeroed so old statistics do not push
    them back. The generator stays on the CPU so checkpoints do not depend on the device.
    """
    idx = dead.nonzero().squeeze(1)
    none = idx[:0]
    if idx.numel() == 0:
        return none
    err = (x - x_hat).pow(2).sum(-1).double().cpu()
    if float(err.sum()) <= 0:
        return none
    picks = torch.multinomial(err / err.sum(), idx.numel(), replacement=True, generator=gen).to(x.device)
    alive = ~dead
    enc_norm = 0.2 * (sae.W_enc[:, alive].norm(dim=0).mean().item() if bool(alive.any()) else 1.0)
    sae.reset_features(idx, x[picks] - sae.b_dec, enc_norm)
    for name, axis in sae.feature_axes.items():
        state = opt.state.get(getattr(sae, name))
        for key in ("exp_avg", "exp_avg_sq"):
            if state and key in state:
                state[key].index_fill_(axis, idx, 0.0)
    return idx


class DictionaryTrainer:
    """One dictionary's optimisation: weights, Adam, schedules, dead features, scale."""

    def __init__(self, cfg: TrainConfig, dict_cfg: DictionaryConfig, device: torch.device, source_hint: str = ""):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.sae = build_dictionary(dict_cfg).to(device)
        self.base_lr = cfg.learning_rate(dict_cfg.d_sae)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.base_lr, betas=(0.9, 0.999))
        self.tracker = DeadFeatureTracker(dict_cfg.d_sae, cfg.dead_window(), device)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.total_tokens = cfg.trainable_tokens()
        self.calibration = CalibrationSample(cfg.batch_size, dict_cfg.d_in, device) if self.sae.calibrated else None
        self.scale = 1.0
        self.step = 0
        self.tokens = 0
        self.resamples = cfg.resample and type(self.sae).revive_dead == "resample"
        # What to say when an input batch holds NaN (where the activations come from).
        self.source_hint = source_hint

    def init_from_sample(self, sample: Tensor) -> None:
        """Estimate the activation scale and start ``b_dec`` at the data's centre."""
        self.scale = estimate_scale(sample)
        self.sae.init_from_data(sample.to(self.sae.W_dec.device, torch.float32) / self.scale)

    def train_step(self, x_raw: Tensor) -> tuple[LossOutput, Tensor, int]:
        """One optimiser step on a full batch of raw activations; returns the loss, the
        scaled batch and the number of features resampled."""
        cfg, sae = self.cfg, self.sae
        x = x_raw.to(sae.W_dec.device, torch.float32)
        if not torch.isfinite(x).all():
            raise TrainingDivergedError(
                f"the activations at {sae.cfg.hook} contain NaN or Inf (step {self.step}); {self.source_hint}"
            )
        x = x / self.scale
        # Schedules are read at the middle of the step's tokens: the first step then
        # learns (a warm-up read at 0 would make it a step of size zero) and so does the last.
        progress = (self.tokens + x.shape[0] / 2) / self.total_tokens
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * lr_multiplier(progress, cfg.lr_warmup, cfg.lr_decay)
        warm = min(1.0, progress / cfg.sparsity_warmup) if cfg.sparsity_warmup else 1.0
        params = LossParams(
            sparsity_coeff=cfg.sparsity_coeff() * warm,
            dead_mask=self.tracker.dead if type(sae).revive_dead == "auxk" else None,
            auxk_coeff=cfg.auxk_coeff,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
        )
        out = sae.training_loss(x, params)
        if not torch.isfinite(out.loss):
            raise TrainingDivergedError(
                f"the loss became {float(out.loss)} at step {self.step} ({self.tokens} tokens) with lr "
                f"{self.opt.param_groups[0]['lr']:.2e}; lower --lr."
            )
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        self.opt.step()
        sae.after_step()
        f = out.f.detach()
        self.tracker.update(f)
        if self.calibration is not None:
            self.calibration.add(x)
        self.step += 1
        self.tokens += x.shape[0]

        resampled = 0
        window = self.tracker.window
        if self.resamples and self.tokens // window > (self.tokens - x.shape[0]) // window:
            if self.tokens < RESAMPLE_STOP_FRACTION * self.total_tokens:
                idx = resample_dead(sae, self.opt, x, out.x_hat.detach(), self.tracker.dead, self.gen)
                # Only the resampled features start a new window; a dead feature that
                # was not resampled stays dead (and is counted as such).
                self.tracker.tokens_since_fired[idx] = 0
                resampled = idx.numel()
        return out, x, resampled

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
        final.fold_activation_scale(self.scale)
        final.requires_grad_(False)
        return final

    def state_dict(self) -> dict[str, Any]:
        return {
            "dictionary": self.sae.state_dict(),
            "optimizer": self.opt.state_dict(),
            "tokens_since_fired": self.tracker.tokens_since_fired,
            "generator": self.gen.get_state(),
            "act_scale": self.scale,
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


def norm_cap(sample: Tensor, ratio: float | None) -> float | None:
    """The norm above which tokens are dropped (``--max-norm-ratio`` × the median norm)."""
    return None if ratio is None else float(ratio * sample.float().norm(dim=-1).median())


class LogInterval:
    """Figures over every token trained since the last log record, not over one batch.

    A figure of one batch means nothing for small batches (a one-token batch has no
    variance, so its FVU was 2.5e13); summed over the interval, FVU is measured around
    the interval's mean as docs/metrics.md defines it, and is None only while fewer than
    two tokens have been seen.
    """

    def __init__(self) -> None:
        self.reset(time.perf_counter())

    def reset(self, now: float) -> None:
        self.start, self.steps, self.n, self.resampled = now, 0, 0, 0
        # Running sums stay on the dictionary's device as float64 tensors, read only in
        # record(): a float() per step would make a GPU wait for every step.
        self.sums: dict[str, Tensor] = {}

    def _add(self, name: str, value: Tensor) -> None:
        value = value.detach().double()
        self.sums[name] = self.sums[name] + value if name in self.sums else value

    @torch.no_grad()
    def add(self, x: Tensor, out: LossOutput, resampled: int) -> None:
        """``x`` and the loss are in scaled units."""
        self.resampled += resampled
        self.steps += 1
        self.n += x.shape[0]
        self._add("err", (x - out.x_hat).pow(2).sum())
        self._add("sum_sq", x.pow(2).sum())
        self._add("sum_x", x.sum(0))
        self._add("l0", (out.f > 0).sum())
        self._add("loss", out.loss)
        for name, value in out.terms.items():
            self._add(f"loss_{name}", value)

    def state(self) -> dict[str, Any]:
        """The sums so far (checkpointed, so the first record after a resume covers the
        same steps, with the same figures, as in an uninterrupted run)."""
        return {"steps": self.steps, "n": self.n, "resampled": self.resampled,
                "sums": {name: t.cpu() for name, t in self.sums.items()}}

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        self.steps, self.n, self.resampled = int(state["steps"]), int(state["n"]), int(state["resampled"])
        self.sums = {name: t.to(device) for name, t in state["sums"].items()}

    def record(self, trainer: DictionaryTrainer, now: float) -> dict[str, Any]:
        assert self.steps > 0
        sums = {name: t.cpu() for name, t in self.sums.items()}
        err, sum_sq = float(sums.pop("err")), float(sums.pop("sum_sq"))
        variance = sum_sq - float(sums.pop("sum_x").pow(2).sum()) / self.n
        fvu = err / variance if self.n >= 2 and variance > 1e-12 * max(sum_sq, 1e-30) else None
        l0 = float(sums.pop("l0")) / self.n
        return {
            "step": trainer.step,
            "tokens": trainer.tokens,
            **{name: float(total) / self.steps for name, total in sums.items()},  # loss and loss_*
            "mse": err / self.n * trainer.scale**2,  # raw units, as in eval.json
            "fvu": fvu,
            "l0": l0,
            "dead_frac": trainer.tracker.dead_fraction(trainer.tokens),
            "lr": trainer.opt.param_groups[0]["lr"],
            "tokens_per_s": self.n / max(now - self.start, 1e-9),  # this interval's rate
            **({"resampled": self.resampled} if self.resampled else {}),
        }


# ---------------------------------------------------------------------------- the run


def default_out(cfg: TrainConfig, model_name: str, hook: str) -> Path:
    stem = Path(model_name).name.removesuffix(".gguf").replace("/", "_")
    return Path("runs") / f"{stem}-{hook}-{cfg.arch}"


def resolved_settings(cfg: TrainConfig, source: ActivationSource, d_sae: int) -> dict[str, Any]:
    """The run's settings with every default filled in and local paths made absolute."""
    return {
        "model": source.model_name,
        **({"activation_cache": str(Path(cfg.activation_cache).expanduser().resolve())} if cfg.activation_cache else {}),
        "hook": source.hook,
        "dataset": source.dataset_name,
        "context_length": source.context_length,
        "keep_bos": source.keep_bos,
        "d_in": source.d,
        "d_sae": d_sae,
        "lr": cfg.learning_rate(d_sae),
        "sparsity_coeff": cfg.sparsity_coeff(),
        "dead_after_tokens": cfg.dead_window(),
        "checkpoint_every": cfg.checkpoint_interval(),
        "tokens": cfg.trainable_tokens(),
    }


def _check_k_fits(cfg: TrainConfig) -> None:
    """``--k`` against the dictionary size, before the model loads (its width read cheaply)."""
    if not ARCHITECTURES[cfg.arch].uses_k or cfg.dict_size is not None or cfg.activation_cache:
        return
    from .models import peek_d_model

    d = peek_d_model(cfg.model)
    if d is not None and cfg.k >= cfg.dictionary_size(d):
        raise ConfigError(
            f"--k {cfg.k} must be smaller than the dictionary size {cfg.dictionary_size(d)} "
            f"(--expansion {cfg.dictionary_size(d) // d} × the model's width {d}); lower --k or raise --expansion"
        )


def _source_hint(cfg: TrainConfig, source: ActivationSource) -> str:
    if not isinstance(source, ModelActivations):
        return "the activations handed to train() are not finite; check where they came from."
    if cfg.dtype == "float16":
        return "the model overflows in float16: use --dtype bfloat16 or float32."
    return f"the model itself produced them in --dtype {cfg.dtype}; check its weights with another tool."


def train(cfg: TrainConfig, *, source: ActivationSource | None = None, progress: ProgressCallback | None = None) -> TrainResult:
    """Train a dictionary as ``cfg`` says; return it with its held-out figures.

    ``source`` overrides where activations come from (e.g. ``ArrayActivations`` over a
    tensor you already have); by default the config decides. ``progress`` is called
    with every log record (the CLI draws its progress bar from them), before slow
    phases without counts with ``{"status": "what is happening"}``, and during slow
    phases with counts with ``{"phase", "done", "total", "unit"}``. Every check
    (output folder, checkpoint, model, hook point, data, held-out set) runs before the
    output folder is touched and before the first training step. The folder is locked
    for the whole run: a second run into it is refused.
    """

    def status(message: str) -> None:
        if progress:
            progress({"status": message})

    device = resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else None
    source_from_cfg = source is None
    if out is not None:  # before the slow model load
        stamp, state = checkpoint_stamp(out), check_run_folder(cfg, out, source_from_cfg)
    if source is None:
        _check_k_fits(cfg)
        status("loading the model" if not cfg.activation_cache else "opening the activation cache")
        source = open_activation_source(cfg, device, cfg.activation_cache)
    if out is None:
        out = default_out(cfg, source.model_name, source.hook)
        stamp, state = checkpoint_stamp(out), check_run_folder(cfg, out, source_from_cfg)
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    d_sae = cfg.dictionary_size(source.d)
    dict_cfg = DictionaryConfig(
        arch=cfg.arch,
        d_in=source.d,
        d_sae=d_sae,
        k=cfg.k,  # None for architectures without k (TrainConfig refuses one)
        hook=source.hook,
        model=source.model_name,
        context_length=source.context_length,
        keep_bos=source.keep_bos,
    )
    resolved = resolved_settings(cfg, source, d_sae)
    if state is not None:
        check_resolved(out, state, resolved)

    heldout = None  # held-out activations, for sources without a model to run
    if cfg.eval_tokens > 0:
        status("checking the held-out split")
        try:
            if isinstance(source, ModelActivations):
                source.check_heldout()
            else:
                heldout = source.heldout(cfg.eval_tokens)
                if heldout.shape[0] == 0:
                    raise DataError("the held-out split yielded no activations")
        except DataError as e:
            if "--eval-tokens 0" in str(e):
                raise
            raise DataError(f"{str(e).rstrip('.')} (or pass --eval-tokens 0 to skip the held-out evaluation).") from None

    # Everything is checked: now the output folder may change, under its lock. The
    # folder is checked again under the lock, since another run may have written to
    # it meanwhile.
    created = not out.exists()
    make_folder(out)
    try:
        with FolderLock(out, "train"), _model_reads_reported(source, progress):
            if state is None:
                check_run_folder(cfg, out, source_from_cfg)
                clear_run_files(out)  # --overwrite, or the leftovers of a run that died before its first checkpoint
            elif checkpoint_stamp(out) != stamp:
                raise CheckpointError(
                    f"the checkpoint in {out} changed while this run was starting (another run wrote it); start again"
                )
            return _run(cfg, source, out, dict_cfg, resolved, state, heldout, progress, status, device)
    except BaseException:
        if created:
            remove_if_empty(out)  # a run that failed before writing anything leaves no folder
        raise


@contextmanager
def _model_reads_reported(source: ActivationSource, progress: ProgressCallback | None) -> Iterator[None]:
    """Reading activations from the model (the first fill and every refill) shows as a phase of its own."""
    if not isinstance(source, ModelActivations):
        yield
        return
    previous, source.progress = source.progress, progress
    try:
        yield
    finally:
        source.progress = previous


def _run(
    cfg: TrainConfig, source: ActivationSource, out: Path, dict_cfg: DictionaryConfig, resolved: dict[str, Any],
    state: dict[str, Any] | None, heldout: Tensor | None, progress: ProgressCallback | None,
    status: Callable[[str], None], device: torch.device,
) -> TrainResult:
    trainer = DictionaryTrainer(cfg, dict_cfg, device, _source_hint(cfg, source))
    settings = {"given": given_settings(cfg), "resolved": resolved}
    interval = LogInterval()
    if state is not None:
        try:
            trainer.load_state_dict(state)
            buffer = ActivationBuffer(source, cfg, state=state["buffer"])
            interval.load(state["log_interval"], device)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"the checkpoint in {out} does not fit this run ({type(e).__name__}: {e}); "
                "it is from another version or configuration"
            ) from None
        run_info = read_run_info(out) or {"config": cfg.to_dict(), "resolved": resolved, "wandb_id": uuid.uuid4().hex[:12]}
        # What may change on a resume (where and how it runs) is recorded as it now is.
        run_info["config"] = {**run_info.get("config", {}), **{k: getattr(cfg, k) for k in EXECUTION_ONLY}}
        log.info("resuming %s at step %d (%d tokens)", out, trainer.step, trainer.tokens)
    else:
        buffer = ActivationBuffer(source, cfg)
        status("filling the shuffle buffer")
        sample = buffer.peek_sample()
        buffer.set_norm_cap(norm_cap(sample, cfg.max_norm_ratio))
        trainer.init_from_sample(buffer.peek_sample())
        run_info = {"config": cfg.to_dict(), "resolved": resolved, "wandb_id": uuid.uuid4().hex[:12]}
    run_info["resolved"] = {**resolved, "act_scale": trainer.scale}
    write_run_info(out, run_info)
    if trainer.total_tokens < cfg.tokens:
        log.info("training on %d of the %d tokens asked for: the rest does not fill a batch of %d",
                 trainer.total_tokens, cfg.tokens, cfg.batch_size)

    run_log = RunLog(out / LOG_FILE, cfg, {"train": cfg.to_dict(), "dictionary": dict_cfg.to_dict()},
                     run_info.get("wandb_id"), resume_at_step=trainer.step if state else None)
    every = cfg.checkpoint_interval()
    next_checkpoint = (trainer.tokens // every + 1) * every
    last_good: int | None = trainer.tokens if state else None

    def checkpoint() -> None:
        nonlocal last_good
        if not trainer.state_finite():
            raise TrainingDivergedError(f"the weights became non-finite by step {trainer.step}; lower --lr.")
        save_checkpoint(
            {**trainer.state_dict(), "buffer": buffer.state(), "log_interval": interval.state(), "settings": settings}, out
        )
        last_good = trainer.tokens

    def kept() -> str:
        if last_good is None:
            return "No checkpoint had been written yet, so there is nothing to resume."
        return (f"The checkpoint at {last_good:,} tokens is kept in {out}; `saekit train --out {out} --resume` "
                "with the same settings continues from it.")

    status("training")
    last_fvu: float | None = None
    try:
        for x in buffer:
            out_step, x_scaled, resampled = trainer.train_step(x)
            interval.add(x_scaled, out_step, resampled)
            if trainer.step % cfg.log_every == 0 or trainer.tokens >= trainer.total_tokens:
                now = time.perf_counter()
                record = interval.record(trainer, now)
                run_log.write(record)
                last_fvu = record["fvu"]
                interval.reset(now)
                if progress:
                    progress(record)
            if trainer.tokens >= next_checkpoint:
                checkpoint()
                next_checkpoint = (trainer.tokens // every + 1) * every
        if interval.steps:  # the data ran out between two log steps
            run_log.write(interval.record(trainer, time.perf_counter()))
        if trainer.tokens < trainer.total_tokens:
            log.warning("data ran out after %d of %d tokens", trainer.tokens, trainer.total_tokens)
        checkpoint()
    except (TrainingDivergedError, DataError, OutputError) as e:
        raise type(e)(f"{str(e).rstrip('.')}. {kept()}") from None
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted at {trainer.tokens:,} tokens. {kept()}") from None
    finally:
        run_log.close()

    if last_fvu is not None and last_fvu > 1:
        # Not an error (the weights are finite and saved), but a run that ends worse than
        # predicting the mean has almost surely diverged, and says so.
        log.warning("training ended with FVU %.3g on its last steps, worse than predicting the mean: the run "
                    "diverged or never learned; lower --lr (it was %.2g)", last_fvu, trainer.base_lr)
    final = trainer.finished_dictionary()
    save_dictionary(final, out)
    metrics, evaluation = None, None
    if cfg.eval_tokens > 0:
        status("evaluating on held-out text")
        try:
            metrics, evaluation = _evaluate_run(cfg, final, source, heldout, out, progress)
        except KeyboardInterrupt:
            raise RunInterrupted(
                f"interrupted during the final evaluation or report; the trained dictionary is saved in {out}: "
                f"`saekit eval {out}` evaluates it"
            ) from None
    return TrainResult(final, out, trainer.tokens, trainer.step, metrics, evaluation)


def _evaluate_run(
    cfg: TrainConfig, final: Dictionary, source: ActivationSource, heldout: Tensor | None, out: Path,
    progress: ProgressCallback | None,
) -> tuple[ReconstructionMetrics, EvalResult | None]:
    """Write eval.json and report.html for a finished run.

    With a model to run, every figure in both regimes (BOS policy as trained, recorded
    in the dictionary); from cached or in-memory activations, the reconstruction
    figures on the held-out activations only.
    """
    from .report import write_report

    evaluation = None
    if isinstance(source, ModelActivations):
        evaluation = evaluate(
            final, source.lm, dataset=cfg.dataset, tokens=cfg.eval_tokens, context_length=cfg.context_length,
            text_field=cfg.text_field, progress=progress,
        )
        metrics, record = evaluation.fixed.reconstruction, evaluation.to_dict()
    else:
        metrics = evaluate_reconstruction(final, heldout, progress=progress)
        record = {
            "dictionary": final.cfg.to_dict(), "fingerprint": final.fingerprint(), "model": source.model_name,
            "hook": source.hook, "dataset": source.dataset_name,
            "keep_bos": final.cfg.keep_bos, "keep_bos_source": BOS_AS_TRAINED,
            "fixed": {"context_length": source.context_length, **metrics.to_dict(with_distributions=True)},
        }
    atomic_write_text(out / EVAL_FILE, json.dumps(record, indent=2) + "\n")
    write_report(out)
    return metrics, evaluation
