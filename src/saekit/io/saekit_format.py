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

from ..checks import is_integer
from ..data import EMBEDDED_DESCRIPTION
from ..dictionaries import Dictionary, DictionaryConfig, build_dictionary
from ..errors import FormatError
from .checkpoint import CHECKPOINT_FILE, PENDING_FILE
from .common import CONFIG_FILE, WEIGHTS_FILE, checked_tensor, make_config, read_json, read_safetensors, writable_folder_for
from .files import atomic_save_tensors, atomic_write_text, make_folder

FORMAT_NAME = "saekit"
FORMAT_VERSION = 1
# What a training run's folder holds beside the dictionary (the checkpoint's name is in
# checkpoint.py): named once here for the trainer that writes them and for the report
# and the Hub upload that read them.
TRAINING_FILE = "training.json"
LOG_FILE = "log.jsonl"
EVAL_FILE = "eval.json"
REPORT_FILE = "report.html"
# What a training run writes beside its dictionary: each describes that dictionary, so
# none may stay beside another one written over it (--overwrite and convert remove them).
RUN_RECORD_FILES = (TRAINING_FILE, LOG_FILE, EVAL_FILE, REPORT_FILE, CHECKPOINT_FILE, PENDING_FILE)


def training_setting(folder: str | os.PathLike, name: str) -> Any:
    """A setting of the run in ``folder`` as its training.json records it: the value the
    run used (``resolved``), else the one given (``config``); None where the folder has no
    readable training.json or it does not record the setting."""
    path = Path(folder) / TRAINING_FILE
    try:
        info = read_json(path) if path.is_file() else {}
    except FormatError:
        return None
    for section in ("resolved", "config"):
        values = info.get(section)
        if isinstance(values, dict) and values.get(name) is not None:
            return values[name]
    return None


def trained_text(folder: str | os.PathLike) -> str | None:
    """The text the run in ``folder`` records it was trained on, as ``--dataset`` takes it;
    None where it records none, or the embedded corpus (every verb's default anyway)."""
    text = training_setting(folder, "dataset")
    return str(text) if text and text != EMBEDDED_DESCRIPTION else None


def save_dictionary(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    folder = make_folder(folder)
    atomic_save_tensors(dict(dictionary.state_dict()), folder / WEIGHTS_FILE)
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dictionary": dictionary.cfg.to_dict()}
    atomic_write_text(folder / CONFIG_FILE, json.dumps(header, indent=2) + "\n")
    return folder


def save_saekit(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    """``formats.save_dictionary`` after refusing a folder that holds another format's
    dictionary, as every writer here does; this is ``saekit.save``."""
    return save_dictionary(dictionary, writable_folder_for("saekit", folder))


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
    if not is_integer(version) or version > FORMAT_VERSION:
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
