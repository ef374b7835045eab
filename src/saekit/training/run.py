"""A training run from start to finish: checks, folders, the loop, the final evaluation.

``train_many`` trains every dictionary a list of configurations asks for (see
``plan``: configurations × hook points) from one pass over the activations;
``train`` is the one-dictionary case. Every check (output folders, checkpoints, model,
hook points, data, held-out set) runs before any folder is touched and before the
first step; each folder is locked for the whole run, so a second run into it is
refused. The loop itself is in ``loop``, one dictionary's update in ``trainer``, and
the run folder's rules in ``run_folder``.

Units: a dictionary trains on activations divided by its ``act_scale`` (so that
E‖x‖² = d). The objective (``loss`` and its ``loss_*`` terms in the log) is in those
scaled units; every figure named after a docs/metrics.md figure (``mse``, ``fvu``, ``l0``)
is in raw activation units, as in eval.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch import Tensor

from ..activations import (
    ActivationSource,
    ModelActivations,
    is_hook_pattern,
    open_activation_source,
    parse_hook_spec,
    select_hook_points,
)
from ..config import TrainConfig
from ..dictionaries import ARCHITECTURES, Dictionary, DictionaryConfig
from ..errors import ConfigError, DataError, RunInterrupted
from ..evaluation import BOS_AS_TRAINED, EvalResult, ReconstructionMetrics, evaluate_many, evaluate_reconstruction
from ..io.checkpoint import CHECKPOINT_FILE, PENDING_FILE, recover_checkpoints
from ..io.files import FolderLock, atomic_write_text, make_folder, remove_if_empty
from ..io.saekit_format import EVAL_FILE, save_dictionary
from ..models import resolve_device
from .distributed import SINGLE, Ranks, rank_device, ranks_from_environment
from ..progress import ProgressCallback
from .loop import MemberRun, start_members, train_loop
from .plan import Member, check_one_pass, pair_hook_points, plan_members
from .run_folder import RUN_FILES, CheckpointReads, check_resolved, check_run_folder, clear_run_files

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    dictionary: Dictionary
    out: Path
    tokens: int
    steps: int
    heldout: ReconstructionMetrics | None  # fixed-context reconstruction figures on held-out text
    evaluation: EvalResult | None = None  # every figure, both regimes (when trained from a model)


# ---------------------------------------------------------------------------- the run


def resolved_settings(cfg: TrainConfig, source: ActivationSource, d_sae: int) -> dict[str, Any]:
    """A member's settings with every default filled in and local paths made absolute,
    and a digest of the data read (``data_content``), which a resumed run must match."""
    content = getattr(source, "content_fingerprint", None)
    return {
        "model": source.model_name,
        **({"activation_cache": str(Path(cfg.activation_cache).expanduser().resolve())} if cfg.activation_cache else {}),
        "hook": cfg.hook,
        **({"target": cfg.target} if cfg.target else {}),
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
        **({"data_content": content} if content else {}),
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


def _plain_names(spec: str | None) -> list[str] | None:
    """The hook points ``spec`` names, in forward order, when it names them plainly (no
    pattern, no default to resolve)."""
    from ..hooks import HookPoint

    if spec is None:
        return None
    names = parse_hook_spec(spec)
    return None if any(is_hook_pattern(name) for name in names) else sorted(names, key=HookPoint.parse)


def _pairs_known_now(cfg: TrainConfig) -> tuple[list[tuple[str, str | None]], list[str]] | None:
    """The (input, target) pairs and the hook points to read, when ``--hook`` (and
    ``--target``) name them plainly: then the folders can be checked before the model loads."""
    from ..hooks import HookPoint

    inputs, targets = _plain_names(cfg.hook), _plain_names(cfg.target)
    if inputs is None or (cfg.target is not None and targets is None):
        return None
    return pair_hook_points(inputs, targets), sorted(set(inputs) | set(targets or []), key=HookPoint.parse)


def _source_spec(cfg: TrainConfig) -> str | None:
    """The ``--hook`` value for the source: the inputs, and a transcoder's targets too
    (each point once; the source reads them all in one pass)."""
    if cfg.target is None:
        return cfg.hook
    parts = parse_hook_spec(cfg.hook) + parse_hook_spec(cfg.target)
    return ",".join(dict.fromkeys(parts))


def _pairs_from_source(cfg: TrainConfig, source: ActivationSource) -> list[tuple[str, str | None]]:
    """The (input, target) pairs among the source's hook points: every point of a source
    handed in (or a cache read whole) for sparse autoencoders without --hook."""
    if cfg.target is None:
        if cfg.hook is None:
            return pair_hook_points(list(source.hooks), None)
        return pair_hook_points(_select(cfg.hook, source, "--hook"), None)
    return pair_hook_points(_select(cfg.hook, source, "--hook"), _select(cfg.target, source, "--target"))


def _select(spec: str, source: ActivationSource, flag: str) -> list[str]:
    return select_hook_points(
        spec, list(source.hooks),
        lambda part: ConfigError(
            f"{flag} {part} is not among the activations' hook points ({', '.join(source.hooks)})"
        ),
        once=True,  # each point a dictionary (or a target): one named twice is a mistake, not a merge
    )


def _check_folders(members: list[Member], source_from_cfg: bool, reads: CheckpointReads) -> list[dict[str, Any] | None]:
    """Each member's folder checked (and, on --resume, its checkpoint read, or reused from
    ``reads`` when the file has not changed since); nothing changes."""
    folders = [m.out for m in members]
    if len(set(folders)) != len(folders):
        raise ConfigError("two of this run's dictionaries would share an output folder; give each sweep value once")
    parent = folders[0].parent
    if len(members) > 1 and parent.is_dir():
        if any((parent / name).exists() for name in RUN_FILES):
            raise ConfigError(
                f"--out {parent} holds a run of one dictionary; several dictionaries go into one folder each inside "
                "--out: choose another --out"
            )
        files = sorted(p.name for p in parent.iterdir() if not p.is_dir())
        if files:
            raise ConfigError(
                f"--out {parent} holds files ({', '.join(files[:5])}); several dictionaries go into one folder each "
                "inside --out: choose an empty folder, or the --out of an earlier run of these dictionaries"
            )
    if members[0].cfg.resume:
        _check_resume_covers_the_run(members)
    return [check_run_folder(m.cfg, m.out, source_from_cfg, reads) for m in members]


def _check_resume_covers_the_run(members: list[Member]) -> None:
    """--resume of several dictionaries: each must have its checkpoint. One without (a
    value added to the sweep) cannot join the others mid-run."""
    have = [m for m in members if (m.out / CHECKPOINT_FILE).exists() or (m.out / PENDING_FILE).exists()]
    new = [m for m in members if m not in have]
    if have and new:
        raise ConfigError(
            f"--resume: {', '.join(m.name for m in new)} never started in this run (no checkpoint), while "
            f"{', '.join(m.name for m in have)} did; resume with the values the run started with, and train the new "
            "ones into another --out"
        )


def train(cfg: TrainConfig, *, source: ActivationSource | None = None, progress: ProgressCallback | None = None) -> TrainResult:
    """Train one dictionary as ``cfg`` says; return it with its held-out figures.

    ``source`` overrides where activations come from (e.g. ``ArrayActivations`` over a
    tensor you already have); by default the config decides. ``progress`` is called
    with every log record (the CLI draws its progress bar from them), before slow
    phases without counts with ``{"status": "what is happening"}``, and during slow
    phases with counts with ``{"phase", "done", "total", "unit"}``. For several hook
    points or configurations at once, use ``train_many``.
    """
    results = train_many([cfg], source=source, progress=progress, _one=True)
    return results[0]


def train_many(
    cfgs: Sequence[TrainConfig], *, source: ActivationSource | None = None, progress: ProgressCallback | None = None,
    _one: bool = False,
) -> list[TrainResult]:
    """Train one dictionary per configuration and hook point, all from one pass over the
    activations (one forward pass of the model, stopped after the last hook point
    needed); return them in the order of ``plan.plan_members``.

    The configurations must agree on everything but the dictionary's own settings
    (``config.DICTIONARY_FIELDS``); see ``train`` for ``source`` and ``progress`` (log
    records carry ``"run"``, the member's folder name, when there are several).
    """

    def status(message: str) -> None:
        if progress:
            progress({"status": message})

    cfgs = list(cfgs)
    check_one_pass(cfgs)
    cfg = cfgs[0]
    if _one and cfg.hook is not None and len(parse_hook_spec(cfg.hook)) > 1:
        raise ConfigError(f"--hook {cfg.hook} names several hook points; train_many trains one dictionary per point")
    ranks = ranks_from_environment(cfg.device)
    # Data parallel: every rank trains every dictionary and rank 0 alone writes. Dealt
    # out: each rank trains (and writes) its own dictionaries as a one-process run.
    data_parallel = ranks.distributed and cfg.parallel == "data"
    writes = ranks.main or not data_parallel
    if data_parallel and cfg.batch_size < ranks.world:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch, split over {ranks.world} ranks: it must give each "
            f"rank a token; raise it to at least {ranks.world} (or start fewer ranks)"
        )
    device = resolve_device(rank_device(ranks, cfg.device))
    source_from_cfg = source is None
    reads = CheckpointReads()  # the checks before the load and under the locks read each checkpoint once
    members: list[Member] | None = None
    # The folders are checked before the slow model load when they are known by then: the
    # hook points are named plainly and either --out is given or the source (and with it
    # the model's name, which default folders carry) was handed in.
    known = _pairs_known_now(cfg) if source is None else (_pairs_from_source(cfg, source), list(source.hooks))
    if known is not None and (cfg.out or source is not None) and writes and not ranks.distributed:
        members = plan_members(cfgs, *known, "" if source is None else source.model_name)
        states = _check_folders(members, source_from_cfg, reads)
    if source is None:
        for c in cfgs:
            _check_k_fits(c)
        status("loading the model" if not cfg.activation_cache else "opening the activation cache")
        source = open_activation_source(dataclasses.replace(cfg, hook=_source_spec(cfg)), device, cfg.activation_cache)
    pairs = _pairs_from_source(cfg, source)
    if _one and len(pairs) > 1:
        raise ConfigError(f"--hook {cfg.hook} names {len(pairs)} hook points; train_many trains one dictionary per point")
    planned = plan_members(cfgs, pairs, list(source.hooks), source.model_name)
    if ranks.distributed and not data_parallel:
        planned, source = _deal_out(planned, source, ranks)
        ranks = SINGLE  # from here on, this rank's dictionaries are a run of their own
    if data_parallel:
        states = [None] * len(planned)  # rank 0's checks under its locks decide, and reach every rank
    elif members is None or [(m.out, m.cfg.hook, m.cfg.target) for m in members] != [
        (m.out, m.cfg.hook, m.cfg.target) for m in planned
    ]:  # planned before the load, for other points
        states = _check_folders(planned, source_from_cfg, reads)
    members = planned
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("--wandb needs the wandb package: pip install wandb (or drop --wandb)") from None
    dict_cfgs = [
        DictionaryConfig(
            arch=m.cfg.arch, d_in=source.d, d_sae=m.cfg.dictionary_size(source.d),
            k=m.cfg.k,  # None for architectures without k (TrainConfig refuses one)
            hook=m.cfg.hook, model=source.model_name, context_length=source.context_length, keep_bos=source.keep_bos,
            transcoder=m.cfg.target is not None, target=m.cfg.target or "", d_out=source.d, skip=m.cfg.skip,
        )
        for m in members
    ]
    resolved = [resolved_settings(m.cfg, source, d.d_sae) for m, d in zip(members, dict_cfgs)]
    for m, state, r in zip(members, states, resolved):
        if state is not None:
            check_resolved(m.out, state, r)
    if data_parallel and isinstance(source, ModelActivations):
        source.ranks = ranks  # each rank runs 1/N of the forward passes

    heldout = None  # held-out activations, for sources without a model to run

    def writer_checks(stack: ExitStack) -> list[dict[str, Any] | None]:
        """What the writing process checks and takes before training: the held-out split,
        then each folder under its lock (taken in sorted order, so two runs sharing folders
        cannot each hold one the other waits for), checked again there, since another run
        may have written to it meanwhile, after finishing a group commit a crash
        interrupted. Returns the checkpoints to resume from."""
        nonlocal heldout
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
        for m in sorted(members, key=lambda m: str(m.out)):
            make_folder(m.out)
            stack.enter_context(FolderLock(m.out, "train"))
        recover_checkpoints([m.out for m in members])
        checked = _check_folders(members, source_from_cfg, reads)
        for m, state, r in zip(members, checked, resolved):
            if state is None:
                clear_run_files(m.out)  # --overwrite, or the leftovers of a run that died before its first checkpoint
            else:
                check_resolved(m.out, state, r)
        return checked

    # Everything is checked: now the folders may change, each under its lock.
    created = [m.out for m in members if not m.out.exists()] if writes else []
    try:
        with ExitStack() as stack:
            if data_parallel:
                # Rank 0 checks and locks; its checkpoints (read under its locks), or the
                # error it met, reach every rank: the ranks need not share a file system,
                # and a refused run ends on every rank with the same one line.
                states = ranks.from_main(lambda: writer_checks(stack))
            else:
                states = writer_checks(stack)
            stack.enter_context(_model_reads_reported(source, progress if writes else None))
            runs, buffer = start_members(members, dict_cfgs, resolved, states, source, device,
                                         _source_hint(cfg, source), status, ranks, writes)
            if runs[0].trainer.total_tokens < cfg.tokens:
                log.info("training on %d of the %d tokens asked for: the rest does not fill a batch of %d",
                         runs[0].trainer.total_tokens, cfg.tokens, cfg.batch_size)
            status("training")
            train_loop(runs, buffer, progress if writes else None, writes)
            if not writes:  # rank 0 saves and evaluates the dictionaries every rank holds
                return [TrainResult(r.trainer.finished_dictionary(), r.member.out, r.trainer.tokens, r.trainer.step, None)
                        for r in runs]
            return _finish(runs, source, heldout, progress, status)
    except BaseException:
        for folder in created:
            remove_if_empty(folder)  # a run that failed before writing anything leaves no folder
        raise


def _deal_out(members: list[Member], source: ActivationSource, ranks: Ranks) -> tuple[list[Member], ActivationSource]:
    """This rank's dictionaries when they are dealt out (``--parallel dictionaries``):
    members r, r + N, ... of the plan, with a model pass that stops after their own hook
    points (a cache or array source is read as it is)."""
    mine = members[ranks.rank :: ranks.world]
    if not mine:
        raise ConfigError(
            f"--parallel dictionaries: {ranks.world} ranks for {len(members)} dictionaries leaves rank {ranks.rank} "
            "without one; start fewer ranks (torchrun --nproc_per_node) or use --parallel data"
        )
    if isinstance(source, ModelActivations):
        needed = {h for m in mine for h in (m.cfg.hook, m.cfg.target) if h is not None}
        source = source.with_hooks([h for h in source.hooks if h in needed])
    columns = list(source.hooks)
    return [
        dataclasses.replace(m, column=columns.index(m.cfg.hook),
                            target_column=None if m.cfg.target is None else columns.index(m.cfg.target))
        for m in mine
    ], source


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


def _finish(
    runs: list[MemberRun], source: ActivationSource, heldout: Tensor | None, progress: ProgressCallback | None,
    status: Callable[[str], None],
) -> list[TrainResult]:
    """Save every finished dictionary, then evaluate them (eval.json, report.html).

    With a model to run, every figure in both regimes (BOS policy as trained, recorded
    in the dictionary), all dictionaries in one evaluation (``evaluate_many``: those at
    the same hook points share the model runs that do not depend on the dictionary);
    from cached or in-memory activations, the reconstruction figures on the held-out
    activations only.
    """
    finals = []
    for run in runs:
        if run.last_fvu is not None and run.last_fvu > 1:
            # Not an error (the weights are finite and saved), but a run that ends worse than
            # predicting the mean has almost surely diverged, and says so.
            log.warning("%s: training ended with FVU %.3g on its last steps, worse than predicting the mean: the "
                        "run diverged or never learned; lower --lr (it was %.2g)", run.member.name, run.last_fvu,
                        run.trainer.base_lr)
        final = run.trainer.finished_dictionary()
        save_dictionary(final, run.member.out)
        finals.append(final)
    cfg = runs[0].member.cfg  # the evaluation settings are pass settings, shared by every member
    evaluated: list[tuple[ReconstructionMetrics | None, EvalResult | None]] = [(None, None)] * len(runs)
    if cfg.eval_tokens > 0:
        status("evaluating on held-out text" + (f" ({len(runs)} dictionaries)" if len(runs) > 1 else ""))
        try:
            evaluated = _evaluate_runs(runs, finals, source, heldout, progress)
        except KeyboardInterrupt:
            where = runs[0].member.out if len(runs) == 1 else f"the folders under {runs[0].member.out.parent}"
            raise RunInterrupted(
                f"interrupted during the final evaluation or report; the trained dictionaries are saved in {where}: "
                "`saekit eval FOLDER` evaluates one"
            ) from None
    return [TrainResult(final, run.member.out, run.trainer.tokens, run.trainer.step, metrics, evaluation)
            for run, final, (metrics, evaluation) in zip(runs, finals, evaluated)]


def _evaluate_runs(
    runs: list[MemberRun], finals: list[Dictionary], source: ActivationSource, heldout: Tensor | None,
    progress: ProgressCallback | None,
) -> list[tuple[ReconstructionMetrics, EvalResult | None]]:
    """Each finished run's figures, written to its eval.json and report.html."""
    from ..report import write_report

    cfg = runs[0].member.cfg
    out: list[tuple[ReconstructionMetrics, EvalResult | None]] = []
    if isinstance(source, ModelActivations):
        evaluations = evaluate_many(
            finals, source.lm, dataset=cfg.dataset, tokens=cfg.eval_tokens, context_length=cfg.context_tokens(),
            text_field=cfg.text_field, progress=progress,
        )
        records = [e.to_dict() for e in evaluations]
        out = [(e.fixed.reconstruction, e) for e in evaluations]
    else:
        records = []
        for run, final in zip(runs, finals):
            held_targets = None if run.member.target_column is None else heldout[:, run.member.target_column]
            metrics = evaluate_reconstruction(final, heldout[:, run.member.column], progress=progress,
                                              targets=held_targets)
            records.append({
                "dictionary": final.cfg.to_dict(), "fingerprint": final.fingerprint(), "model": source.model_name,
                "hook": final.cfg.hook, "dataset": source.dataset_name,
                "keep_bos": final.cfg.keep_bos, "keep_bos_source": BOS_AS_TRAINED,
                "fixed": {"context_length": source.context_length, **metrics.to_dict(with_distributions=True)},
            })
            out.append((metrics, None))
    for run, record in zip(runs, records):
        atomic_write_text(run.member.out / EVAL_FILE, json.dumps(record, indent=2) + "\n")
        write_report(run.member.out)
    return out
