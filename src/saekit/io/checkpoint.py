"""Training checkpoints: one safetensors file, written atomically, nothing pickled.

Tensors (dictionary weights, optimiser moments, RNG states, dead-feature counters)
go into the file's tensor table; everything else (step, tokens done, data position,
scheduler, the run's config) goes into its string metadata as JSON. Nested state such
as ``optimizer.state_dict()`` is flattened: each tensor leaf is stored under its path
and replaced by a ``{"__tensor__": path}`` marker in the JSON skeleton.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import CheckpointError
from .files import atomic_save_tensors

CHECKPOINT_FILE = "checkpoint.safetensors"
# A checkpoint written but not yet committed, in a group of runs that commit together
# (``save_checkpoints``).
PENDING_FILE = "checkpoint.pending.safetensors"
_META_KEY = "saekit_state"
UNCHECKED_PREFIX = "s.buffer."  # the flattened path of the shuffle buffer's state


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, dict):
        # JSON keys are strings; remember which were ints (optimizer state uses them).
        return {"__dict__": [[k, _flatten(v, f"{path}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(state: dict[str, Any], folder: Path, name: str = CHECKPOINT_FILE) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "s", tensors)
    path = folder / name
    atomic_save_tensors(tensors, path, metadata={_META_KEY: json.dumps(skeleton)})
    return path


def save_checkpoints(states: dict[Path, dict[str, Any]]) -> None:
    """Checkpoints of several runs that train in step (one pass, many dictionaries),
    committed as one: after a crash, every folder resumes from the same step.

    Two phases, over the folders in sorted order: each state is first written whole as
    ``PENDING_FILE`` (atomically, synced), then each is renamed over ``CHECKPOINT_FILE``.
    A crash in the first phase leaves every old checkpoint in place; one in the second
    leaves every folder either committed or holding its complete pending file.
    ``recover_checkpoints`` tells the two apart by the last folder alone: it holds a
    pending file exactly when the first phase had finished.
    """
    folders = sorted(states, key=str)
    if len(folders) == 1:
        save_checkpoint(states[folders[0]], folders[0])
        return
    for folder in folders:
        save_checkpoint(states[folder], folder, PENDING_FILE)
    for folder in folders:
        os.replace(folder / PENDING_FILE, folder / CHECKPOINT_FILE)


def recover_checkpoints(folders: list[Path]) -> None:
    """Finish or undo a group commit that ``save_checkpoints`` did not complete.

    Call with every folder of the group, each locked. If the last folder (sorted) holds
    a pending file, all pending files were written before any was committed, so the
    rest are committed now; otherwise the crash came while they were being written, and
    they are removed, leaving the previous checkpoints, which all agree.
    """
    folders = sorted(folders, key=str)
    if not any((f / PENDING_FILE).exists() for f in folders):
        return
    commit = (folders[-1] / PENDING_FILE).exists()
    for folder in folders:
        pending = folder / PENDING_FILE
        if not pending.exists():
            continue
        if commit:
            os.replace(pending, folder / CHECKPOINT_FILE)
        else:
            pending.unlink()


def load_checkpoint(folder: Path) -> dict[str, Any]:
    path = folder / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(
            f"--resume found no checkpoint in {folder} ({CHECKPOINT_FILE} is missing); "
            "start the run without --resume"
        )
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        skeleton = json.loads(meta[_META_KEY])
        state = _unflatten(skeleton, tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        # KeyError/TypeError/ValueError: a skeleton without the metadata entry, naming a
        # tensor the file lacks, or not shaped as _flatten writes it; RecursionError: one
        # nested deeper than the JSON parser (or _unflatten) follows.
        raise _corrupt(path, f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _corrupt(path, f"it holds a {type(state).__name__}, not a training state keyed by name")
    # saekit checks the weights and Adam's moments before every checkpoint, so a
    # non-finite value among them was not written by training: the file was damaged
    # afterwards. Say so now, rather than let the resumed run diverge and blame the
    # learning rate. (The buffer's carried rows are activations not yet trained on, not
    # checked when saved: a NaN there is the data's, and training names it when it
    # reaches a batch.)
    for name, t in tensors.items():
        if name.startswith(UNCHECKED_PREFIX):
            continue
        # (isfinite has no kernel for some exotic dtypes, such as float8: widen those first)
        if t.is_floating_point() and not bool(torch.isfinite(t if t.element_size() >= 2 else t.float()).all()):
            raise _corrupt(path, f"the tensor {name.removeprefix('s.')} holds NaN or Inf")
    return state


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"the checkpoint {path} is corrupt or truncated ({why}); delete it to start over, or restore it from a backup"
    )
