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

import json
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from ..activations import ActivationBuffer, ActivationSource, ModelActivations, open_activation_source
from ..config import TrainConfig
from ..dictionaries import ARCHITECTURES, Dictionary, DictionaryConfig
from ..errors import CheckpointError, ConfigError, DataError, OutputError, RunInterrupted, TrainingDivergedError
from ..evaluation import BOS_AS_TRAINED, EvalResult, ReconstructionMetrics, evaluate, evaluate_reconstruction
from ..io.checkpoint import save_checkpoint
from ..io.files import FolderLock, atomic_write_text, make_folder, remove_if_empty
from ..io.saekit_format import EVAL_FILE, LOG_FILE, save_dictionary
from ..models import resolve_device
from .log_interval import LogInterval
from .trainer import DictionaryTrainer, norm_cap
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

@dataclass
class TrainResult:
    dictionary: Dictionary
    out: Path
    tokens: int
    steps: int
    heldout: ReconstructionMetrics | None  # fixed-context reconstruction figures on held-out text
    evaluation: EvalResult | None = None  # every figure, both regimes (when trained from a model)


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
    from ..models import peek_d_model

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
    from ..report import write_report

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
