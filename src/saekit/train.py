"""One training loop for every dictionary architecture.

The loop is deliberately plain (nanoGPT-style): fetch a batch of activations, scale
it, ask the dictionary for its loss, step Adam, keep the decoder rows unit-norm,
track dead features, log, checkpoint. Everything an architecture does differently
lives in its ``training_loss``; everything about the run lives in ``TrainConfig``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .activations import ActivationBuffer, ActivationSource, open_activation_source
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .config import DEFAULT_L1_COEFF, RESAMPLE_STOP_FRACTION, TOPK_FAMILY, TrainConfig
from .dictionaries import Dictionary, DictionaryConfig, LossParams, build_dictionary
from .errors import CheckpointError, ConfigError, TrainingDivergedError
from .evaluate import ReconstructionMetrics, evaluate_reconstruction
from .formats import CONFIG_FILE, atomic_write_text, save_dictionary

log = logging.getLogger(__name__)

TRAINING_FILE = "training.json"
LOG_FILE = "log.jsonl"
EVAL_FILE = "eval.json"
# Options that change where or how a run executes but not what it computes; they may
# differ between a run and its resumption.
_EXECUTION_ONLY = {"out", "resume", "overwrite", "device", "log_every", "wandb", "wandb_project", "eval_tokens"}


@dataclass
class TrainResult:
    dictionary: Dictionary
    out: Path
    tokens: int
    steps: int
    heldout: ReconstructionMetrics | None


def lr_multiplier(progress: float, warmup: float, decay: float) -> float:
    """Linear warm-up from 0, flat, then linear decay to 0 over the last ``decay``."""
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if decay > 0 and progress > 1.0 - decay:
        return max(0.0, (1.0 - progress) / decay)
    return 1.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but torch sees no GPU; use --device cpu")
    return dev


def default_out(cfg: TrainConfig, model_name: str, hook: str) -> Path:
    stem = Path(model_name).name.removesuffix(".gguf").replace("/", "_")
    return Path("runs") / f"{stem}-{hook}-{cfg.arch}"


def _identity(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg_dict.items() if k not in _EXECUTION_ONLY}


def prepare_output(cfg: TrainConfig, out: Path) -> None:
    """Refuse to clobber a different run, and refuse a resume with nothing to resume."""
    recorded = out / TRAINING_FILE
    if cfg.resume:
        if not (out / CHECKPOINT_FILE).exists():
            raise CheckpointError(f"--resume: {out} holds no checkpoint to resume; start without --resume")
        if recorded.exists():
            before = json.loads(recorded.read_text()).get("config", {})
            diff = {k: (before.get(k), v) for k, v in _identity(cfg.to_dict()).items() if before.get(k) != v}
            if diff:
                listed = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in sorted(diff.items()))
                raise ConfigError(f"--resume with settings that differ from the run in {out} ({listed}); resume with the same settings")
        return
    if out.exists() and any(out.iterdir()):
        if cfg.overwrite:
            for name in (CHECKPOINT_FILE, TRAINING_FILE, LOG_FILE, EVAL_FILE, CONFIG_FILE, "weights.safetensors"):
                (out / name).unlink(missing_ok=True)
            return
        what = "a run" if recorded.exists() or (out / CHECKPOINT_FILE).exists() else "other files"
        raise ConfigError(
            f"the output folder {out} already holds {what}; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )


class DeadFeatureTracker:
    """Counts, per feature, the tokens since it last fired."""

    def __init__(self, d_sae: int, window: int, device: torch.device):
        self.window = window
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def update(self, f: torch.Tensor) -> None:
        fired = (f > 0).any(0)
        self.tokens_since_fired += f.shape[0]
        self.tokens_since_fired[fired] = 0

    @property
    def dead(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.window


@torch.no_grad()
def resample_dead(
    sae: Dictionary, opt: torch.optim.Adam, x: torch.Tensor, x_hat: torch.Tensor, dead: torch.Tensor, gen: torch.Generator
) -> int:
    """Point dead features at badly reconstructed inputs (Bricken et al. 2023).

    Inputs are drawn with probability proportional to their squared error; the
    new encoder rows get 0.2 × the mean alive encoder norm, and Adam's moments for
    the touched rows are zeroed so old statistics do not push them back.
    """
    idx = dead.nonzero().squeeze(1)
    if idx.numel() == 0:
        return 0
    err = (x - x_hat).pow(2).sum(-1)
    if float(err.sum()) <= 0:
        return 0
    picks = torch.multinomial(err / err.sum(), idx.numel(), replacement=True, generator=gen)
    alive = ~dead
    enc_norm = 0.2 * (sae.W_enc[:, alive].norm(dim=0).mean().item() if bool(alive.any()) else 1.0)
    sae.reset_features(idx, x[picks] - sae.b_dec, enc_norm)
    for name, p in sae.named_parameters():
        state = opt.state.get(p)
        if not state or p.dim() == 0:
            continue
        axis = 1 if name == "W_enc" else 0
        if p.shape[axis] != sae.cfg.d_sae:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            state[key].index_fill_(axis, idx, 0.0)
    return idx.numel()


def train(
    cfg: TrainConfig,
    *,
    source: ActivationSource | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a dictionary as ``cfg`` says; return it with its held-out figures.

    ``source`` overrides where activations come from (e.g. ``ArrayActivations`` over
    a tensor you already have); by default the config decides. ``progress`` is
    called with every log record (the CLI draws its progress bar from them). All
    validation happens before the first forward pass of the model.
    """
    device = resolve_device(cfg.device)
    if source is None:
        source = open_activation_source(cfg, device)  # validates model, hook and data
    out = Path(cfg.out) if cfg.out else default_out(cfg, source.model_name, source.hook)
    prepare_output(cfg, out)
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
        k=cfg.k if cfg.arch in TOPK_FAMILY else None,
        hook=source.hook,
        model=source.model_name,
        context_length=cfg.context_length,
    )
    torch.manual_seed(cfg.seed)
    sae = build_dictionary(dict_cfg).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.learning_rate(d_sae), betas=(0.9, 0.999))
    tracker = DeadFeatureTracker(d_sae, cfg.dead_window(), device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    out.mkdir(parents=True, exist_ok=True)

    if cfg.resume:
        state = load_checkpoint(out)
        try:
            sae.load_state_dict(state["dictionary"])
            opt.load_state_dict(state["optimizer"])
            tracker.tokens_since_fired.copy_(state["tokens_since_fired"])
            gen.set_state(state["generator"])
            scale, norm_cap = state["act_scale"], state["norm_cap"]
            buffer = ActivationBuffer(source, cfg, state=state["buffer"])
            step, tokens_done = state["step"], state["tokens_done"]
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"the checkpoint in {out} does not fit this run ({type(e).__name__}: {e}); "
                "it is from another version or configuration"
            ) from None
        log.info("resuming %s at step %d (%d tokens)", out, step, tokens_done)
    else:
        buffer = ActivationBuffer(source, cfg)
        sample = buffer.peek_sample()
        scale, norm_cap = estimate_scale(sample, cfg.max_norm_ratio)
        sae.init_from_data(sample / scale)
        step, tokens_done = 0, 0
        atomic_write_text(out / TRAINING_FILE, json.dumps({"config": cfg.to_dict()}, indent=2) + "\n")

    run_logger = _RunLogger(out / LOG_FILE, cfg, dict_cfg, resume_at_step=step if cfg.resume else None)
    sparsity = cfg.sparsity_coeff()
    base_lr = cfg.learning_rate(d_sae)
    checkpoint_every = cfg.checkpoint_interval()
    next_checkpoint = (tokens_done // checkpoint_every + 1) * checkpoint_every
    resample_every = cfg.dead_window()
    next_resample = (tokens_done // resample_every + 1) * resample_every
    resamples = cfg.resample and cfg.arch in DEFAULT_L1_COEFF
    t0, tokens_at_t0 = time.perf_counter(), tokens_done
    last_good = tokens_done if cfg.resume else None

    def checkpoint() -> None:
        nonlocal last_good
        save_checkpoint(
            {
                "dictionary": sae.state_dict(),
                "optimizer": opt.state_dict(),
                "tokens_since_fired": tracker.tokens_since_fired,
                "generator": gen.get_state(),
                "act_scale": scale,
                "norm_cap": norm_cap,
                "buffer": buffer.state(),
                "step": step,
                "tokens_done": tokens_done,
            },
            out,
        )
        last_good = tokens_done

    for x in buffer:
        x = x.to(device, torch.float32)
        if norm_cap is not None:
            x = x[x.norm(dim=-1) <= norm_cap]
        if not torch.isfinite(x).all():
            raise TrainingDivergedError(
                f"the activations at {source.hook} contain NaN or Inf (step {step}); the model overflows "
                f"in --dtype {cfg.dtype}: use float32 or bfloat16. " + _kept(last_good, out)
            )
        x = x / scale
        progress_frac = tokens_done / cfg.tokens
        for group in opt.param_groups:
            group["lr"] = base_lr * lr_multiplier(progress_frac, cfg.lr_warmup, cfg.lr_decay)
        params = LossParams(
            sparsity_coeff=sparsity * min(1.0, progress_frac / cfg.sparsity_warmup if cfg.sparsity_warmup else 1.0),
            dead_mask=tracker.dead if cfg.arch in TOPK_FAMILY else None,
            auxk_coeff=cfg.auxk_coeff,
            jumprelu_bandwidth=cfg.jumprelu_bandwidth,
        )
        out_step = sae.training_loss(x, params)
        if not torch.isfinite(out_step.loss):
            raise TrainingDivergedError(
                f"the loss became {float(out_step.loss)} at step {step} ({tokens_done} tokens) with lr "
                f"{opt.param_groups[0]['lr']:.2e}; lower --lr. " + _kept(last_good, out)
            )
        opt.zero_grad(set_to_none=True)
        out_step.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.after_step()
        tracker.update(out_step.f.detach())
        step += 1
        tokens_done += x.shape[0]

        n_resampled = 0
        if resamples and tokens_done >= next_resample:
            next_resample += resample_every
            if tokens_done < RESAMPLE_STOP_FRACTION * cfg.tokens:
                n_resampled = resample_dead(sae, opt, x, out_step.x_hat.detach(), tracker.dead, gen)
                tracker.tokens_since_fired[tracker.dead] = 0

        if step % cfg.log_every == 0 or tokens_done >= cfg.tokens:
            record = _step_record(step, tokens_done, x, out_step, tracker, opt, t0, tokens_at_t0)
            if n_resampled:
                record["resampled"] = n_resampled
            run_logger.write(record)
            if progress:
                progress(record)
        if tokens_done >= next_checkpoint:
            checkpoint()
            next_checkpoint = (tokens_done // checkpoint_every + 1) * checkpoint_every

    if tokens_done < cfg.tokens:
        log.warning("data ran out after %d of %d tokens", tokens_done, cfg.tokens)
    checkpoint()
    run_logger.close()

    final = copy.deepcopy(sae).eval()
    final.fold_activation_scale(scale)
    save_dictionary(final, out)
    metrics = None
    if cfg.eval_tokens > 0:
        heldout = source.heldout(cfg.eval_tokens)
        metrics = evaluate_reconstruction(final, heldout)
        atomic_write_text(out / EVAL_FILE, json.dumps({"heldout": metrics.to_dict()}, indent=2) + "\n")
    return TrainResult(final, out, tokens_done, step, metrics)


def _kept(last_good: int | None, out: Path) -> str:
    if last_good is None:
        return "No checkpoint had been written yet."
    return f"The last good checkpoint ({last_good} tokens) is kept in {out}; --resume continues from it."


@torch.no_grad()
def estimate_scale(sample: torch.Tensor, max_norm_ratio: float | None) -> tuple[float, float | None]:
    """The constant that makes E‖x‖² = d on the sample, and the optional norm cap.

    Dividing by one constant keeps a sparsity coefficient meaningful across layers
    and models (METRICS.md, "Training objectives"). The cap, when asked for, is
    computed first so the extreme tokens it removes do not skew the scale.
    """
    x = sample.float()
    norms = x.norm(dim=-1)
    cap = None
    if max_norm_ratio is not None:
        cap = float(max_norm_ratio * norms.median())
        x = x[norms <= cap]
    mean_sq = x.pow(2).sum(-1).mean()
    if not torch.isfinite(mean_sq) or float(mean_sq) <= 0:
        raise TrainingDivergedError(
            "the activation sample used to estimate the scale is all zeros or non-finite; "
            "check the hook point and --dtype"
        )
    return math.sqrt(float(mean_sq) / x.shape[-1]), cap


def _step_record(step, tokens, x, out_step, tracker, opt, t0, tokens_at_t0) -> dict[str, Any]:
    with torch.no_grad():
        err = (x - out_step.x_hat).pow(2).sum()
        var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        l0 = (out_step.f > 0).sum(-1).float().mean()
    elapsed = max(time.perf_counter() - t0, 1e-9)
    record = {
        "step": step,
        "tokens": tokens,
        "loss": float(out_step.loss.detach()),
        **{k: float(v.detach()) for k, v in out_step.terms.items()},
        "l0": float(l0),
        "fvu": float(err / var),
        "dead_frac": float(tracker.dead.float().mean()),
        "lr": opt.param_groups[0]["lr"],
        "tokens_per_s": (tokens - tokens_at_t0) / elapsed,
    }
    return record


class _RunLogger:
    """The JSONL log in the run folder, plus Weights & Biases when asked for."""

    def __init__(self, path: Path, cfg: TrainConfig, dict_cfg: DictionaryConfig, resume_at_step: int | None):
        kept = ""
        if resume_at_step is not None and path.exists():
            # Steps logged after the checkpoint will be run (and logged) again.
            lines = path.read_text().splitlines()
            kept = "".join(line + "\n" for line in lines if line and json.loads(line)["step"] <= resume_at_step)
        atomic_write_text(path, kept)
        self.fh = open(path, "a")
        self.wandb = None
        if cfg.wandb:
            import wandb

            self.wandb = wandb.init(
                project=cfg.wandb_project,
                config={"train": cfg.to_dict(), "dictionary": dict_cfg.to_dict()},
                name=path.parent.name,
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
