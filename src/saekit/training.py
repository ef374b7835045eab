"""One training loop for every dictionary architecture.

The loop is deliberately plain (nanoGPT-style): fetch a batch of activations, scale
it, ask the dictionary for its loss, step Adam, keep the decoder rows unit-norm,
track dead features, log, checkpoint. Everything an architecture does differently
lives in its ``training_loss`` and its class attributes; everything about the run
lives in ``TrainConfig``.

``DictionaryTrainer`` holds one dictionary's optimisation state and steps it on a
batch; ``train`` wires a source of activations, the shuffling buffer, logging and
checkpoints around it. (Several trainers can share one buffer of activations, which
is how training many dictionaries from one forward pass will plug in.)

Exact resume: the learning-rate and sparsity schedules are pure functions of the
tokens done, the activation buffer is a pure function of its recorded position
(see ``activations.ActivationBuffer``), and the checkpoint holds the weights, Adam's
moments, the RNG state and the dead-feature counters. An interrupted run resumed
from its last checkpoint therefore ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .activations import ActivationBuffer, ActivationSource, ModelActivations, open_activation_source
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .config import RESAMPLE_STOP_FRACTION, TrainConfig
from .dictionaries import ARCHITECTURES, Dictionary, DictionaryConfig, LossOutput, LossParams, build_dictionary
from .errors import CheckpointError, ConfigError, DataError, TrainingDivergedError
from .evaluation import EvalResult, ReconstructionMetrics, evaluate, evaluate_reconstruction
from .formats import CONFIG_FILE, EVAL_FILE, LOG_FILE, TRAINING_FILE, WEIGHTS_FILE, atomic_write_text, save_dictionary
from .models import resolve_device

log = logging.getLogger(__name__)

RUN_FILES = (CHECKPOINT_FILE, TRAINING_FILE, LOG_FILE, EVAL_FILE, CONFIG_FILE, WEIGHTS_FILE)
# Options that change where or how a run executes but not what it computes; they may
# differ between a run and its resumption.
_EXECUTION_ONLY = {"out", "resume", "overwrite", "device", "log_every", "wandb", "wandb_project", "eval_tokens"}


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
    """Counts, per feature, the tokens since it last fired."""

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


@torch.no_grad()
def resample_dead(
    sae: Dictionary, opt: torch.optim.Adam, x: Tensor, x_hat: Tensor, dead: Tensor, gen: torch.Generator
) -> int:
    """Point dead features at badly reconstructed inputs (Bricken et al. 2023).

    Inputs are drawn with probability proportional to their squared error; the
    new encoder rows get 0.2 × the mean alive encoder norm, and Adam's moments for
    the touched slices (``sae.feature_axes``) are zeroed so old statistics do not push
    them back. The generator stays on the CPU so checkpoints do not depend on the device.
    """
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    err = (x - x_hat).pow(2).sum(-1).double().cpu()
    if float(err.sum()) <= 0:
        return 0
    picks = torch.multinomial(err / err.sum(), idx.numel(), replacement=True, generator=gen).to(x.device)
    alive = ~dead
    enc_norm = 0.2 * (sae.W_enc[:, alive].norm(dim=0).mean().item() if bool(alive.any()) else 1.0)
    sae.reset_features(idx, x[picks] - sae.b_dec, enc_norm)
    for name, axis in sae.feature_axes.items():
        state = opt.state.get(getattr(sae, name))
        for key in ("exp_avg", "exp_avg_sq"):
            if state and key in state:
                state[key].index_fill_(axis, idx, 0.0)
    return idx.numel()


class DictionaryTrainer:
    """One dictionary's optimisation: weights, Adam, schedules, dead features, scale."""

    def __init__(self, cfg: TrainConfig, dict_cfg: DictionaryConfig, device: torch.device):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.sae = build_dictionary(dict_cfg).to(device)
        self.base_lr = cfg.learning_rate(dict_cfg.d_sae)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.base_lr, betas=(0.9, 0.999))
        self.tracker = DeadFeatureTracker(dict_cfg.d_sae, cfg.dead_window(), device)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.scale = 1.0
        self.step = 0
        self.tokens = 0
        self.resamples = cfg.resample and type(self.sae).revive_dead == "resample"
        self.last_x: Tensor | None = None

    def init_from_sample(self, sample: Tensor) -> None:
        """Estimate the activation scale and start ``b_dec`` at the data's centre."""
        self.scale = estimate_scale(sample)
        self.sae.init_from_data(sample.to(self.sae.W_dec.device, torch.float32) / self.scale)

    def train_step(self, x_raw: Tensor) -> tuple[LossOutput, Tensor, int]:
        """One optimiser step on raw activations; returns the loss, the scaled batch and
        the number of features resampled."""
        cfg, sae = self.cfg, self.sae
        x = x_raw.to(sae.W_dec.device, torch.float32)
        if not torch.isfinite(x).all():
            raise TrainingDivergedError(
                f"the activations at {sae.cfg.hook} contain NaN or Inf (step {self.step}); the model overflows "
                f"in --dtype {cfg.dtype}: use float32 or bfloat16."
            )
        x = x / self.scale
        progress = self.tokens / cfg.tokens
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
        self.tracker.update(out.f.detach())
        self.step += 1
        self.tokens += x.shape[0]
        self.last_x = x

        resampled = 0
        window = self.tracker.window
        if self.resamples and self.tokens // window > (self.tokens - x.shape[0]) // window:
            if self.tokens < RESAMPLE_STOP_FRACTION * cfg.tokens:
                resampled = resample_dead(sae, self.opt, x, out.x_hat.detach(), self.tracker.dead, self.gen)
                self.tracker.tokens_since_fired[self.tracker.dead] = 0
        return out, x, resampled

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.sae.parameters())

    def finished_dictionary(self) -> Dictionary:
        """A copy that acts on raw activations: calibrated, then with the scale folded in."""
        final = copy.deepcopy(self.sae).eval()
        if self.last_x is not None:
            final.calibrate(self.last_x)
        final.fold_activation_scale(self.scale)
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
            "last_x": self.last_x,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sae.load_state_dict(state["dictionary"])
        self.opt.load_state_dict(state["optimizer"])
        self.tracker.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.gen.set_state(state["generator"])
        self.scale, self.step, self.tokens = state["act_scale"], state["step"], state["tokens_done"]
        last_x = state["last_x"]  # checkpoints hold CPU tensors
        self.last_x = None if last_x is None else last_x.to(self.sae.W_dec.device)


@torch.no_grad()
def estimate_scale(sample: Tensor) -> float:
    """The constant that makes E‖x‖² = d on the sample (METRICS.md, "Training objectives").

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


# ---------------------------------------------------------------------------- the run


def default_out(cfg: TrainConfig, model_name: str, hook: str) -> Path:
    stem = Path(model_name).name.removesuffix(".gguf").replace("/", "_")
    return Path("runs") / f"{stem}-{hook}-{cfg.arch}"


def _identity(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg_dict.items() if k not in _EXECUTION_ONLY}


def check_output(cfg: TrainConfig, out: Path) -> dict[str, Any] | None:
    """Validate the output folder without changing it; on --resume, load the checkpoint.

    A folder "holds a run" when it has a checkpoint or a saved dictionary; a folder
    with only the settings and log of a run that died before its first checkpoint
    holds nothing worth keeping and is simply started again.
    """
    recorded = out / TRAINING_FILE
    if cfg.resume:
        if not (out / CHECKPOINT_FILE).exists():
            raise CheckpointError(f"--resume: {out} holds no checkpoint to resume; start without --resume")
        if recorded.exists():
            try:
                before = json.loads(recorded.read_text()).get("config", {})
            except json.JSONDecodeError:
                raise CheckpointError(f"{recorded} is corrupt; it records the run's settings and is needed to resume") from None
            diff = {k: (before.get(k), v) for k, v in _identity(cfg.to_dict()).items() if before.get(k) != v}
            if diff:
                listed = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in sorted(diff.items()))
                raise ConfigError(f"--resume with settings that differ from the run in {out} ({listed}); resume with the same settings")
        return load_checkpoint(out)
    if not out.exists() or cfg.overwrite:
        return None
    ours = [name for name in RUN_FILES if (out / name).exists()]
    holds_run = (out / CHECKPOINT_FILE).exists() or (out / WEIGHTS_FILE).exists()
    foreign = [p.name for p in out.iterdir() if p.name not in RUN_FILES]
    if holds_run or (foreign and not ours):
        what = "a run" if holds_run else f"other files ({', '.join(sorted(foreign)[:5])})"
        raise ConfigError(
            f"the output folder {out} already holds {what}; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    return None


def train(
    cfg: TrainConfig,
    *,
    source: ActivationSource | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a dictionary as ``cfg`` says; return it with its held-out figures.

    ``source`` overrides where activations come from (e.g. ``ArrayActivations`` over a
    tensor you already have); by default the config decides. ``progress`` is called
    with every log record (the CLI draws its progress bar from them) and, before slow
    phases without steps, with ``{"status": "what is happening"}``. Every check
    (output folder, checkpoint, model, hook point, data, held-out set) runs before
    the output folder is touched and before the first training step.
    """
    device = resolve_device(cfg.device)
    state = check_output(cfg, Path(cfg.out)) if cfg.out else None  # before the slow model load
    if source is None:
        source = open_activation_source(cfg, device, cfg.activation_cache)
    out = Path(cfg.out) if cfg.out else default_out(cfg, source.model_name, source.hook)
    if not cfg.out:
        state = check_output(cfg, out)
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    dict_cfg = DictionaryConfig(
        arch=cfg.arch,
        d_in=source.d,
        d_sae=cfg.dictionary_size(source.d),
        k=cfg.k if ARCHITECTURES[cfg.arch].uses_k else None,
        hook=source.hook,
        model=source.model_name,
        context_length=source.context_length,
    )

    def status(message: str) -> None:
        if progress:
            progress({"status": message})

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
            raise DataError(f"{e} (or pass --eval-tokens 0 to skip the held-out evaluation)") from None

    # Everything is checked: now the output folder may change.
    if cfg.overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    trainer = DictionaryTrainer(cfg, dict_cfg, device)
    if state is not None:
        try:
            trainer.load_state_dict(state)
            buffer = ActivationBuffer(source, cfg, state=state["buffer"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"the checkpoint in {out} does not fit this run ({type(e).__name__}: {e}); "
                "it is from another version or configuration"
            ) from None
        run_info = json.loads((out / TRAINING_FILE).read_text()) if (out / TRAINING_FILE).exists() else {}
        log.info("resuming %s at step %d (%d tokens)", out, trainer.step, trainer.tokens)
    else:
        buffer = ActivationBuffer(source, cfg)
        status("filling the shuffle buffer")
        sample = buffer.peek_sample()
        cap = norm_cap(sample, cfg.max_norm_ratio)
        buffer.set_norm_cap(cap)
        trainer.init_from_sample(buffer.peek_sample())
        run_info = {"config": cfg.to_dict(), "wandb_id": uuid.uuid4().hex[:12]}
        atomic_write_text(out / TRAINING_FILE, json.dumps(run_info, indent=2) + "\n")

    run_logger = _RunLogger(out / LOG_FILE, cfg, dict_cfg, run_info.get("wandb_id"), resume_at_step=trainer.step if state else None)
    every = cfg.checkpoint_interval()
    next_checkpoint = (trainer.tokens // every + 1) * every
    last_good: list[int | None] = [trainer.tokens if state else None]
    t0, tokens_at_t0 = time.perf_counter(), trainer.tokens

    def checkpoint() -> None:
        if not trainer.weights_finite():
            raise TrainingDivergedError(f"the weights became non-finite by step {trainer.step}; lower --lr.")
        save_checkpoint({**trainer.state_dict(), "buffer": buffer.state()}, out)
        last_good[0] = trainer.tokens

    status("training")
    try:
        for x in buffer:
            out_step, x_scaled, resampled = trainer.train_step(x)
            if trainer.step % cfg.log_every == 0 or trainer.tokens >= cfg.tokens:
                record = _step_record(trainer, x_scaled, out_step, t0, tokens_at_t0)
                if resampled:
                    record["resampled"] = resampled
                run_logger.write(record)
                if progress:
                    progress(record)
            if trainer.tokens >= next_checkpoint:
                checkpoint()
                next_checkpoint = (trainer.tokens // every + 1) * every
        if trainer.tokens < cfg.tokens:
            log.warning("data ran out after %d of %d tokens", trainer.tokens, cfg.tokens)
        checkpoint()
    except TrainingDivergedError as e:
        kept = last_good[0]
        where = "No checkpoint had been written yet." if kept is None else (
            f"The last good checkpoint ({kept} tokens) is kept in {out}; --resume continues from it."
        )
        raise TrainingDivergedError(f"{e} {where}") from None
    finally:
        run_logger.close()

    final = trainer.finished_dictionary()
    save_dictionary(final, out)
    metrics, evaluation = None, None
    if cfg.eval_tokens > 0:
        status("evaluating on held-out text")
        metrics, evaluation = _evaluate_run(cfg, final, source, heldout, out)
    return TrainResult(final, out, trainer.tokens, trainer.step, metrics, evaluation)


def _evaluate_run(
    cfg: TrainConfig, final: Dictionary, source: ActivationSource, heldout: Tensor | None, out: Path
) -> tuple[ReconstructionMetrics, EvalResult | None]:
    """Write eval.json and report.html for a finished run.

    With a model to run, every figure in both regimes; from cached or in-memory
    activations, the reconstruction figures on the held-out activations only.
    """
    from .report import write_report

    evaluation = None
    if isinstance(source, ModelActivations):
        evaluation = evaluate(
            final, source.lm, dataset=cfg.dataset, tokens=cfg.eval_tokens, context_length=cfg.context_length,
            splice_bos=cfg.keep_bos, text_field=cfg.text_field,
        )
        metrics, record = evaluation.fixed.reconstruction, evaluation.to_dict()
    else:
        metrics = evaluate_reconstruction(final, heldout)
        record = {
            "dictionary": final.cfg.to_dict(), "model": source.model_name, "hook": source.hook, "dataset": cfg.dataset,
            "fixed": {"context_length": source.context_length, **metrics.to_dict(with_distributions=True)},
        }
    atomic_write_text(out / EVAL_FILE, json.dumps(record, indent=2) + "\n")
    write_report(out)
    return metrics, evaluation


def _step_record(trainer: DictionaryTrainer, x: Tensor, out: LossOutput, t0: float, tokens_at_t0: int) -> dict[str, Any]:
    with torch.no_grad():
        err = (x - out.x_hat).pow(2).sum()
        var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        l0 = (out.f > 0).sum(-1).float().mean()
    elapsed = max(time.perf_counter() - t0, 1e-9)
    return {
        "step": trainer.step,
        "tokens": trainer.tokens,
        "loss": float(out.loss.detach()),
        **{k: float(v.detach()) for k, v in out.terms.items()},
        "l0": float(l0),
        "fvu": float(err / var),
        "dead_frac": float(trainer.tracker.dead.float().mean()),
        "lr": trainer.opt.param_groups[0]["lr"],
        "tokens_per_s": (trainer.tokens - tokens_at_t0) / elapsed,
    }


class _RunLogger:
    """The JSONL log in the run folder, plus Weights & Biases when asked for."""

    def __init__(self, path: Path, cfg: TrainConfig, dict_cfg: DictionaryConfig, wandb_id: str | None, resume_at_step: int | None):
        kept = []
        if resume_at_step is not None and path.exists():
            # Steps logged after the checkpoint will be run (and logged) again; a line cut
            # short by the crash is dropped.
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resume_at_step:
                        kept.append(line + "\n")
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        atomic_write_text(path, "".join(kept))
        self.fh = open(path, "a")
        self.wandb = None
        if cfg.wandb:
            import wandb

            self.wandb = wandb.init(
                project=cfg.wandb_project,
                config={"train": cfg.to_dict(), "dictionary": dict_cfg.to_dict()},
                name=path.parent.name,
                id=wandb_id,
                resume="allow",
            )

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self) -> None:
        self.fh.close()
        if self.wandb is not None:
            self.wandb.finish()
