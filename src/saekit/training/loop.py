"""The training loop: one buffer of activations feeding every dictionary of a run.

Deliberately plain (nanoGPT-style): take a full batch of rows ``(B, H, d)`` from the
shuffling buffer, hand each trainer its hook point's column, log, checkpoint. Every
trainer steps on every batch, so they all stay at the same step and token count, and
their checkpoints are committed together (``io.checkpoint.save_checkpoints``): after
any crash every dictionary resumes from the same batch.

Exact resume: the schedules are pure functions of the tokens done, the buffer is a
pure function of its recorded state (``activations.ActivationBuffer``), and each
checkpoint holds its trainer's whole state (weights, Adam's moments, RNG, dead-feature
counters, calibration sample), the buffer's state and the log interval's partial sums.
A resumed run therefore ends with the weights, and writes the log, of an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..activations import ActivationBuffer, ActivationSource
from ..dictionaries import DictionaryConfig
from ..errors import CheckpointError, DataError, OutputError, RunInterrupted, TrainingDivergedError
from ..io.checkpoint import save_checkpoints
from ..io.saekit_format import LOG_FILE
from ..progress import ProgressCallback
from .log_interval import LogInterval
from .distributed import SINGLE, Ranks
from .plan import Member
from .run_folder import EXECUTION_ONLY, RunLog, given_settings, read_run_info, write_run_info
from .trainer import DictionaryTrainer

log = logging.getLogger(__name__)



@dataclass
class MemberRun:
    """A member while it trains: its trainer, its log and what its checkpoint records."""

    member: Member
    trainer: DictionaryTrainer
    resolved: dict[str, Any]
    interval: LogInterval = field(default_factory=LogInterval)
    run_log: RunLog | None = None
    last_fvu: float | None = None

    def checkpoint_state(self, buffer: ActivationBuffer) -> dict[str, Any]:
        settings = {"given": given_settings(self.member.cfg), "resolved": self.resolved}
        return {**self.trainer.state_dict(), "buffer": buffer.state(), "log_interval": self.interval.state(),
                "settings": settings}


def start_members(
    members: list[Member], dict_cfgs: list[DictionaryConfig], resolved: list[dict[str, Any]],
    states: list[dict[str, Any] | None], source: ActivationSource, device: torch.device, source_hint: str,
    status: Callable[[str], None], ranks: Ranks = SINGLE, writes: bool = True,
) -> tuple[list[MemberRun], ActivationBuffer]:
    """Build every trainer (restored from its checkpoint on resume) and the shared buffer.

    ``ranks``: those of a data-parallel run (every rank builds the same trainers and
    buffer); ``writes``: whether this process writes the run folders (rank 0's job).
    """
    cfg = members[0].cfg  # the pass settings (buffer, batch, seed) are the same in every member
    runs = [MemberRun(m, DictionaryTrainer(m.cfg, d, device, source_hint, ranks), r)
            for m, d, r in zip(members, dict_cfgs, resolved)]
    resuming = states[0] is not None
    if resuming:
        steps = {(s["step"], s["tokens_done"]) for s in states if s is not None}
        if len(steps) != 1 or any(s is None for s in states):
            where = ", ".join(f"{r.member.name}: {s and s.get('tokens_done')} tokens" for r, s in zip(runs, states))
            raise CheckpointError(
                f"the checkpoints of this run's dictionaries stopped at different points ({where}), so they cannot "
                "resume together (the ranks of a --parallel dictionaries run checkpoint apart: resume it on as many "
                "ranks); resume those at one point on their own (--resume with the --hook and sweep values that "
                "select just them; for a single one, --out its own folder)"
            )
        for run, state in zip(runs, states):
            try:
                run.trainer.load_state_dict(state)
                run.interval.load(state["log_interval"], device)
            except (KeyError, RuntimeError, ValueError, TypeError) as e:
                raise CheckpointError(
                    f"the checkpoint in {run.member.out} does not fit this run ({type(e).__name__}: {e}); "
                    "it is from another version or configuration"
                ) from None
        try:
            buffer = ActivationBuffer(source, cfg, state=states[0]["buffer"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"the checkpoint in {runs[0].member.out} does not fit this run ({e})") from None
    else:
        buffer = ActivationBuffer(source, cfg)
        status("filling the shuffle buffer")
        sample = buffer.peek_sample()
        buffer.set_norm_cap(norm_caps(sample, cfg.max_norm_ratio))
        sample = buffer.peek_sample()
        for run in runs:
            target = run.member.target_column
            run.trainer.init_from_sample(sample[:, run.member.column], None if target is None else sample[:, target])
    for run, state in zip(runs, states):
        if not writes:
            continue
        out, mcfg = run.member.out, run.member.cfg
        fresh = {"config": mcfg.to_dict(), "resolved": run.resolved, "wandb_id": uuid.uuid4().hex[:12]}
        info = (read_run_info(out) or fresh) if resuming else fresh
        # What may change on a resume (where and how it runs) is recorded as it now is.
        info["config"] = {**info.get("config", {}), **{k: getattr(mcfg, k) for k in EXECUTION_ONLY}}
        info["resolved"] = {**run.resolved, "act_scale": run.trainer.scale,
                            **({"target_scale": run.trainer.target_scale} if run.trainer.transcoder else {})}
        write_run_info(out, info)
        run.run_log = RunLog(out / LOG_FILE, mcfg, {"train": mcfg.to_dict(), "dictionary": run.trainer.sae.cfg.to_dict()},
                             info.get("wandb_id"), resume_at_step=run.trainer.step if resuming else None)
    if resuming:
        log.info("resuming %d dictionaries at step %d (%d tokens)", len(runs), runs[0].trainer.step, runs[0].trainer.tokens)
    return runs, buffer


def norm_caps(sample: torch.Tensor, ratio: float | None) -> list[float] | None:
    """Per hook point, the norm above which tokens are dropped (``--max-norm-ratio`` × the
    median norm of the sample ``(N, H, d)``)."""
    if ratio is None:
        return None
    return [float(ratio * sample[:, h].float().norm(dim=-1).median()) for h in range(sample.shape[1])]


def train_loop(
    runs: list[MemberRun], buffer: ActivationBuffer, progress: ProgressCallback | None, writes: bool = True
) -> None:
    """Step every trainer on every batch until the budget is spent; log and checkpoint on
    the way (``writes``: this process writes the logs and checkpoints; in a data-parallel
    run only rank 0 does, the others keep the same state)."""
    cfg = runs[0].member.cfg
    lead = runs[0].trainer  # every trainer is at the same step and token count
    every = cfg.checkpoint_interval()
    next_checkpoint = (lead.tokens // every + 1) * every
    last_good: int | None = lead.tokens if lead.step else None
    many = len(runs) > 1

    def checkpoint() -> None:
        nonlocal last_good
        for run in runs:
            if not run.trainer.state_finite():
                raise TrainingDivergedError(
                    f"the weights of {run.member.name} became non-finite by step {run.trainer.step}; lower --lr."
                )
        if writes:
            save_checkpoints({run.member.out: run.checkpoint_state(buffer) for run in runs})
        last_good = lead.tokens

    def kept() -> str:
        if not writes:  # a data-parallel rank other than 0: rank 0 writes, and says what it kept
            return "Rank 0 writes the checkpoints and says which one is kept."
        if last_good is None:
            return "No checkpoint had been written yet, so there is nothing to resume."
        where = runs[0].member.out if not many else f"the {len(runs)} folders under {runs[0].member.out.parent}"
        return (f"The checkpoint at {last_good:,} tokens is kept in {where}; the same command with --resume "
                "continues from it.")

    source = buffer.source
    io_mark = (getattr(source, "bytes_read", None), getattr(source, "read_seconds", None))

    def io_rate() -> dict[str, float]:
        """GB/s read from disk since the last record, for sources that count it (caches)."""
        nonlocal io_mark
        now_mark = (getattr(source, "bytes_read", None), getattr(source, "read_seconds", None))
        (b0, s0), (b1, s1) = io_mark, now_mark
        io_mark = now_mark
        if None in (b0, s0, b1, s1) or s1 - s0 <= 0:
            return {}
        return {"read_gb_per_s": (b1 - b0) / (s1 - s0) / 1e9}

    def record(run: MemberRun, now: float, io: dict[str, float]) -> None:
        entry = {**run.interval.record(run.trainer, now), **io}
        run.last_fvu = entry["fvu"]
        run.interval.reset(now)
        if not writes:
            return
        assert run.run_log is not None
        run.run_log.write(entry)
        if progress:
            progress({**entry, "run": run.member.name} if many else entry)

    try:
        batches = iter(buffer)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - asked
            if batch is None:
                break
            for run in runs:
                target = run.member.target_column
                step = run.trainer.train_step(batch[:, run.member.column], None if target is None else batch[:, target])
                run.interval.add(step, waited, run.trainer.group)
            if lead.step % cfg.log_every == 0 or lead.tokens >= lead.total_tokens:
                now, io = time.perf_counter(), io_rate()
                for run in runs:
                    record(run, now, io)
            if lead.tokens >= next_checkpoint:
                checkpoint()
                next_checkpoint = (lead.tokens // every + 1) * every
        if runs[0].interval.steps:  # the data ran out between two log steps
            now, io = time.perf_counter(), io_rate()
            for run in runs:
                record(run, now, io)
        if lead.tokens < lead.total_tokens:
            log.warning("data ran out after %d of %d tokens", lead.tokens, lead.total_tokens)
        checkpoint()
    except (TrainingDivergedError, DataError, OutputError) as e:
        raise type(e)(f"{str(e).rstrip('.')}. {kept()}") from None
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted at {lead.tokens:,} tokens. {kept()}") from None
    finally:
        for run in runs:
            if run.run_log is not None:
                run.run_log.close()
