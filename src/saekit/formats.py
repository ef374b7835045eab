"""saekit's own on-disk format for a trained dictionary.

A dictionary is a folder with two files and nothing pickled:

* ``config.json``: ``{"format": "saekit", "format_version": 1, "dictionary": {...}}``,
  the ``DictionaryConfig`` (architecture, sizes, hook point, model, activation scale);
* ``weights.safetensors``: the weights, already folded to act on raw activations
  (``W_enc`` d×F, ``W_dec`` F×d with unit-norm rows, ``x̂ = f W_dec + b_dec``).

A training run's folder is a dictionary folder with more beside it (``training.json``,
the log, checkpoints, evaluation), so ``saekit.load(run_folder)`` works on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .dictionaries import Dictionary, DictionaryConfig, build_dictionary
from .checkpoint import CHECKPOINT_FILE
from .errors import ConfigError, FormatError
from .outputs import atomic_save_tensors, atomic_write_text, make_folder

FORMAT_NAME = "saekit"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
# What a training run's folder holds beside the dictionary (the checkpoint's name is in
# checkpoint.py): named once here for the trainer that writes them and for the report
# and the Hub upload that read them.
TRAINING_FILE = "training.json"
LOG_FILE = "log.jsonl"
EVAL_FILE = "eval.json"
REPORT_FILE = "report.html"
# What a training run writes beside its dictionary: each describes that dictionary, so
# none may stay beside another one written over it (--overwrite and convert remove them).
RUN_RECORD_FILES = (TRAINING_FILE, LOG_FILE, EVAL_FILE, REPORT_FILE, CHECKPOINT_FILE)


def save_dictionary(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    folder = make_folder(folder)
    atomic_save_tensors(dict(dictionary.state_dict()), folder / WEIGHTS_FILE)
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dictionary": dictionary.cfg.to_dict()}
    atomic_write_text(folder / CONFIG_FILE, json.dumps(header, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------- reading, checked
# Every loader (saekit's and the peers') reads through these, so a damaged file gets
# the same kind of message whatever its format: the file, the key or tensor, what was
# expected and what was found.
def read_json(path: Path) -> dict:
    """A JSON object from ``path``; FormatError for anything else."""
    if not path.exists():
        raise FormatError(f"{path} is missing")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        # ValueError: not JSON, not UTF-8, or an integer literal past Python's digit limit;
        # RecursionError: nesting deeper than the parser follows.
        raise FormatError(f"{path} is not valid JSON ({type(e).__name__}: {e}); the file is corrupt") from None
    except OSError as e:
        raise FormatError(f"{path} cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FormatError(f"{path} is missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FormatError(f"{path} cannot be read ({e}); the file is truncated or corrupt") from None


def checked_tensor(weights: dict[str, Any], name: str, shape: tuple, path: Path, what: str) -> torch.Tensor:
    """``weights[name]`` as float32, after checking it exists, has ``shape``, is float and finite.

    A NaN or Inf weight is an error here rather than NaN figures later; the check runs
    after the conversion to float32, which turns float64 values past 3.4e38 into Inf.
    """
    if name not in weights:
        raise FormatError(f"{path} lacks the tensor {name!r} needed by a {what} (found: {sorted(weights)[:20]})")
    t = weights[name]
    if not isinstance(t, torch.Tensor):
        raise FormatError(f"{path}: {name!r} is a {type(t).__name__}, not a tensor")
    if tuple(t.shape) != tuple(shape):
        raise FormatError(f"{path}: tensor {name!r} has shape {tuple(t.shape)} but the config implies {tuple(shape)}")
    if not t.is_floating_point():
        raise FormatError(f"{path}: tensor {name!r} has dtype {t.dtype}, expected a floating-point tensor")
    t = t.detach().to(torch.float32)
    check_finite(t, f"tensor {name!r}", path)
    return t


def check_finite(t: torch.Tensor, what: str, path: Path) -> None:
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise FormatError(f"{path}: {what} holds {bad} NaN or infinite value(s) (as float32); the file is corrupt")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a size


# What each DictionaryConfig field must be in a file, checked before the config is built
# (DictionaryConfig itself checks ranges: positive sizes, k < d_sae, a finite scale).
_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "arch": (lambda v: isinstance(v, str), "a string"),
    "d_in": (_is_int, "an integer"),
    "d_sae": (_is_int, "an integer"),
    "k": (lambda v: v is None or _is_int(v), "an integer or null"),
    "hook": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a string"),
    # abs() bound: a JSON integer of 400 digits is an int that float() cannot take.
    "act_scale": (lambda v: isinstance(v, float) or _is_int(v) and abs(v) < 1e300, "a number"),
    "context_length": (lambda v: v is None or _is_int(v) and v > 0, "a positive integer or null"),
    "keep_bos": (lambda v: isinstance(v, bool), "true or false"),
}


def make_config(path: Path, **fields: Any) -> DictionaryConfig:
    """A ``DictionaryConfig`` from values read out of ``path``; FormatError naming it otherwise."""
    for key, value in fields.items():
        ok, expected = _FIELD_TYPES[key]
        if not ok(value):
            raise FormatError(f"{path}: {key!r} must be {expected}, got {value!r}")
    if "act_scale" in fields:
        fields["act_scale"] = float(fields["act_scale"])
    try:
        return DictionaryConfig(**fields)
    except ConfigError as e:
        raise FormatError(f"{path}: the config describes an invalid dictionary: {e}") from None


def load_dictionary(path: str | os.PathLike, device: str | torch.device = "cpu") -> Dictionary:
    """Load a saekit dictionary folder (or a run folder, which contains one)."""
    folder = Path(path)
    if not folder.exists():
        raise FormatError(f"{folder} does not exist; pass the folder `saekit train --out` wrote")
    if folder.is_file():
        folder = folder.parent
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    missing = [p.name for p in (config_path, weights_path) if not p.exists()]
    if missing:
        found = sorted(p.name for p in folder.iterdir())[:20]
        raise FormatError(
            f"{folder} is not a saekit dictionary: missing {', '.join(missing)} (found: {found or 'nothing'}). "
            "A saekit dictionary folder holds config.json and weights.safetensors."
        )
    header = read_json(config_path)
    if header.get("format") != FORMAT_NAME:
        raise FormatError(f"{config_path} does not say format 'saekit'; it is not a saekit dictionary config")
    version = header.get("format_version")
    if not _is_int(version) or version > FORMAT_VERSION:
        raise FormatError(
            f"{config_path} has format_version {version!r}; this saekit reads up to {FORMAT_VERSION}. "
            "Upgrade saekit to read it."
        )
    raw = header.get("dictionary")
    if not isinstance(raw, dict):
        raise FormatError(f"{config_path} lacks the 'dictionary' section")
    for key in ("arch", "d_in", "d_sae"):
        if key not in raw:
            raise FormatError(f"{config_path}: dictionary config is missing the key {key!r}")
    known = set(DictionaryConfig.__dataclass_fields__)
    cfg = make_config(config_path, **{k: v for k, v in raw.items() if k in known})
    weights = read_safetensors(weights_path)
    what = f"{cfg.arch} dictionary (d_in={cfg.d_in}, d_sae={cfg.d_sae})"
    # W_enc first: once it matches, the config's sizes are those of real tensors, so
    # building the dictionary allocates no more than the file holds.
    checked_tensor(weights, "W_enc", (cfg.d_in, cfg.d_sae), weights_path, what)
    dictionary = build_dictionary(cfg)
    state = {name: checked_tensor(weights, name, t.shape, weights_path, what)
             for name, t in dictionary.state_dict().items()}
    dictionary.load_state_dict(state)
    # For use, not training: torch would otherwise track gradients through every encode.
    return dictionary.to(device).requires_grad_(False).eval()
