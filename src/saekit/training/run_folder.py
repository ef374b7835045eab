"""A training run's folder: what it holds, whether a new run may use it, and its log.

A run folder holds the dictionary (``config.json``, ``weights.safetensors``), the
run's settings (``training.json``), its log (``log.jsonl``), the resumable checkpoint,
and the end-of-run evaluation (``eval.json``, ``report.html``). Everything here exists
so that nothing a user made is lost or mixed with another run's files:

* ``check_run_folder`` decides, before any slow work, whether a run may start in a
  folder: a folder holding a run needs ``--resume`` or ``--overwrite``, a folder of
  someone else's files is refused, ``--resume`` needs a checkpoint whose settings match.
* ``clear_run_files`` removes every file a run writes (``--overwrite``, or the
  leftovers of a run that died before its first checkpoint), so no old report or
  evaluation is left beside a new dictionary.
* Settings are compared twice on ``--resume``: as given (before the model loads), and
  as resolved (defaults filled in, paths made absolute) once the model is known, so a
  default spelled out or a path written differently is accepted and a real change is
  not. The settings live in the checkpoint too, so deleting ``training.json`` does not
  let a changed setting slip through.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError
from ..io.checkpoint import CHECKPOINT_FILE, load_checkpoint
from ..io.files import LOCK_FILE, TEMP_GLOB, atomic_write_text, check_writable_folder, output_error
from ..io.saekit_format import CONFIG_FILE, LOG_FILE, RUN_RECORD_FILES, TRAINING_FILE, WEIGHTS_FILE
from .plan import member_name

log = logging.getLogger(__name__)

# Every file a training run writes into its folder.
RUN_FILES = (*RUN_RECORD_FILES, CONFIG_FILE, WEIGHTS_FILE)

# Options that change where or how a run executes but not what it computes (beyond
# rounding: a device or a precision); they may differ between a run and its resumption.
EXECUTION_ONLY = frozenset(
    {"out", "resume", "overwrite", "device", "autocast", "cuda_graphs", "log_every", "wandb", "wandb_project",
     "eval_tokens", "checkpoint_every", "parallel"}
)
# Options whose default is filled in, or whose value is a path, once the model and data
# are known: compared by their resolved values (``resolved_settings``) instead.
RESOLVED_LATER = frozenset(
    {"model", "hook", "dataset", "activation_cache", "expansion", "dict_size", "lr", "dead_after_tokens", "l1_coeff", "l0_coeff",
     "context_length"}
)


def given_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that decide what a run computes, as given."""
    return {k: v for k, v in cfg.to_dict().items() if k not in EXECUTION_ONLY}


def _differences(before: dict[str, Any], now: dict[str, Any], keys: set[str] | frozenset[str]) -> dict[str, tuple[Any, Any]]:
    """The keys among ``keys`` whose values differ, with both values."""
    return {k: (before.get(k), now.get(k)) for k in sorted(keys) if before.get(k) != now.get(k)}


def resolvable_now(cfg: TrainConfig, before: dict[str, Any], source_from_cfg: bool = True) -> dict[str, Any]:
    """The resolved settings a resumed run can work out without loading the model.

    Paths are made absolute as the run recorded them; defaults that depend only on the
    dictionary's size are computed from the recorded size. Settings left to a default
    that needs the model (the hook point) are checked once it is loaded.
    """
    from ..activations.cache import cache_fingerprint, read_manifest
    from ..data import content_fingerprint, describe_source
    from ..hooks import HookPoint
    from ..models import EMBEDDED_MODEL

    now: dict[str, Any] = {}
    reads_model = source_from_cfg and cfg.activation_cache is None
    if "dataset" in before and reads_model:
        now["dataset"] = describe_source(cfg.dataset)
    if "model" in before and reads_model:
        model = cfg.model or EMBEDDED_MODEL
        path = Path(model).expanduser()
        now["model"] = str(path.resolve()) if path.exists() else model
    if "activation_cache" in before and cfg.activation_cache is not None:
        now["activation_cache"] = str(Path(cfg.activation_cache).expanduser().resolve())
    if "data_content" in before and source_from_cfg:  # one read of the text or of the cache's manifest
        if cfg.activation_cache is not None:
            now["data_content"] = cache_fingerprint(read_manifest(cfg.activation_cache))
        elif (fingerprint := content_fingerprint(cfg.dataset)) is not None:
            now["data_content"] = fingerprint
    if cfg.hook is not None and "hook" in before and source_from_cfg:
        try:
            now["hook"] = HookPoint.parse(cfg.hook).name
        except ValueError:
            pass  # a malformed name is reported with the valid ones when the model loads
    if "d_in" in before and "d_sae" in before:
        d_sae = cfg.dictionary_size(before["d_in"])
        now.update(d_sae=d_sae, lr=cfg.learning_rate(d_sae))
    now.update(sparsity_coeff=cfg.sparsity_coeff(), dead_after_tokens=cfg.dead_window())
    return {k: v for k, v in now.items() if k in before}


def _refuse_changes(out: Path, diff: dict[str, tuple[Any, Any]], what: str) -> None:
    if "data_content" in diff and len(diff) == 1:
        raise ConfigError(
            f"--resume: the data the run in {out} trained on has changed since (its files hold other bytes: "
            "rewritten, reordered, truncated or another cache); a resumed run would read other batches and hold "
            "out other text. Restore the data, or start a new run with --overwrite or another --out"
        )
    if diff:
        listed = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"--resume with {what} that differ from the run in {out} ({listed}); resume with the same settings, "
            "or start a new run with --overwrite or another --out"
        )


class CheckpointReads:
    """The checkpoints a run has read, each with the stamp of the file it came from.

    A run checks its folders twice on --resume: before the model loads and again under
    the folder locks. A checkpoint can be hundreds of megabytes (a wide dictionary plus
    Adam's moments and the buffer), so the second check reuses the first read unless
    the file changed in between (another run, or the recovery of an interrupted group
    commit, replaced it).
    """

    def __init__(self) -> None:
        self._read: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def load(self, out: Path) -> dict[str, Any]:
        stamp = checkpoint_stamp(out)  # taken before the read: a change during it makes the next stamp differ
        kept = self._read.get(out)
        if kept is not None and stamp is not None and kept[0] == stamp:
            return kept[1]
        state = load_checkpoint(out)
        if stamp is not None:
            self._read[out] = (stamp, state)
        return state


def check_run_folder(cfg: TrainConfig, out: Path, source_from_cfg: bool = True,
                     reads: CheckpointReads | None = None) -> dict[str, Any] | None:
    """Check the output folder without changing it; on --resume, return the checkpoint.

    ``source_from_cfg`` is False when the activations were handed to ``train`` directly:
    the config's model and data then say nothing about them. ``reads`` keeps the
    checkpoints read by an earlier check of the same folders.

    A folder "holds a run" when it has a checkpoint or a saved dictionary; a folder
    with only the settings and log of a run that died before its first checkpoint
    holds nothing worth keeping and is simply started again.
    """
    check_writable_folder(out)
    if cfg.resume:
        if not (out / CHECKPOINT_FILE).exists():
            _refuse_one_of_several(cfg, out)
            raise CheckpointError(f"--resume: {out} holds no checkpoint to resume; start without --resume")
        state = (reads or CheckpointReads()).load(out)
        recorded = state.get("settings")
        if not isinstance(recorded, dict):
            raise CheckpointError(
                f"the checkpoint in {out} does not record its run's settings (it was written by an older saekit); "
                "start the run again with --overwrite"
            )
        now = given_settings(cfg)
        diff = _differences(recorded.get("given", {}), now, set(now) - RESOLVED_LATER)
        before = recorded.get("resolved", {})
        now_resolved = resolvable_now(cfg, before, source_from_cfg)
        diff.update(_differences(before, now_resolved, set(now_resolved)))  # before the model loads
        _refuse_changes(out, dict(sorted(diff.items())), "settings")
        return state
    if not out.exists():
        return None
    temps = {p.name for p in out.glob(TEMP_GLOB)}
    present = [p.name for p in out.iterdir() if p.name != LOCK_FILE and p.name not in temps]
    others = sorted(set(present) - set(RUN_FILES))
    if others:
        _refuse_one_of_several(cfg, out)
    if cfg.overwrite:
        if others:
            raise ConfigError(
                f"the output folder {out} holds files a training run did not write ({', '.join(others[:5])}); "
                "--overwrite replaces only a run: choose another --out"
            )
        return None
    if set(present) <= {TRAINING_FILE, LOG_FILE}:
        return None  # empty, or a run that died before its first checkpoint: start it again
    if others:
        raise ConfigError(
            f"the output folder {out} holds files a training run did not write ({', '.join(others[:5])}); "
            "choose another --out"
        )
    fix = "pass --resume to continue it, " if (out / CHECKPOINT_FILE).exists() else ""
    raise ConfigError(f"the output folder {out} already holds a run; {fix}pass --overwrite to replace it, or choose another --out")


def _refuse_one_of_several(cfg: TrainConfig, out: Path) -> None:
    """A command for one dictionary, pointed at the folder of a run of several (``--out``
    is then the dictionary's own folder, not their parent): name the member's folder."""
    try:
        members = sorted(p.name for p in out.iterdir() if p.is_dir() and (p / TRAINING_FILE).is_file())
    except OSError:
        return
    if not members:
        return
    name = member_name(cfg, cfg.hook, cfg.target) if cfg.hook else None
    which = f"--out {out / name}" if name in members else f"--out {out}/<its folder>"
    listed = ", ".join(members[:4]) + (", ..." if len(members) > 4 else "")
    held = f"the folders of {len(members)} training runs" if len(members) > 1 else "the folder of a training run"
    raise ConfigError(
        f"{out} holds {held} ({listed}), and this command trains just one dictionary, so --out is that "
        f"dictionary's own folder: pass {which}, or choose another --out"
    )


def checkpoint_stamp(out: Path) -> tuple[int, int, int] | None:
    """Which checkpoint file is there (inode, size, modification time), to tell cheaply
    whether it changed between the checks and the lock."""
    try:
        st = (out / CHECKPOINT_FILE).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def check_resolved(out: Path, state: dict[str, Any], resolved: dict[str, Any]) -> None:
    """On --resume, once the model and data are known: the resolved settings must match."""
    before = state["settings"].get("resolved", {})
    keys = {k for k in resolved if k in before and k not in EXECUTION_ONLY}
    _refuse_changes(out, _differences(before, resolved, keys), "resolved settings")


def clear_run_files(out: Path) -> None:
    """Remove every file a run writes (and temporary files a crash left), nothing else."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for p in out.glob(TEMP_GLOB):
        p.unlink(missing_ok=True)


def write_run_info(out: Path, info: dict[str, Any]) -> None:
    atomic_write_text(out / TRAINING_FILE, json.dumps(info, indent=2) + "\n")


def read_run_info(out: Path) -> dict[str, Any]:
    path = out / TRAINING_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (ValueError, OSError):
        log.warning("%s is unreadable; it will be written again from the checkpoint", path)
        return {}
    return info if isinstance(info, dict) else {}


class RunLog:
    """``log.jsonl`` in the run folder, plus Weights & Biases when asked for."""

    def __init__(self, path: Path, cfg: TrainConfig, config_record: dict[str, Any], wandb_id: str | None, resume_at_step: int | None):
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
        self.path = path
        self.fh = open(path, "a")
        self.wandb = None
        if cfg.wandb:
            import wandb

            self.wandb = wandb.init(
                project=cfg.wandb_project, config=config_record, name=path.parent.name, id=wandb_id, resume="allow",
            )

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.fh.write(json.dumps(record) + "\n")
            self.fh.flush()
        except OSError as e:
            raise output_error(self.path, e, "the lines before this one are kept") from None
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if v is not None}, step=record["step"])

    def close(self) -> None:
        try:
            self.fh.close()
        except OSError:
            pass  # a failed flush was reported by write()
        if self.wandb is not None:
            self.wandb.finish()

