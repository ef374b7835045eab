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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .dictionaries import ARCHITECTURES, Dictionary, DictionaryConfig, build_dictionary
from .errors import ConfigError, FormatError

FORMAT_NAME = "saekit"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    # safetensors creates the file private (0600); give it the permissions any other
    # file the user writes would get, so a shared run folder stays readable.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def save_dictionary(dictionary: Dictionary, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(dict(dictionary.state_dict()), folder / WEIGHTS_FILE)
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dictionary": dictionary.cfg.to_dict()}
    atomic_write_text(folder / CONFIG_FILE, json.dumps(header, indent=2) + "\n")
    return folder


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
    try:
        header = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{config_path} is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise FormatError(f"{config_path} does not say format 'saekit'; it is not a saekit dictionary config")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
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
    if raw["arch"] not in ARCHITECTURES:
        raise FormatError(f"{config_path} names unknown architecture {raw['arch']!r}; known: {sorted(ARCHITECTURES)}")
    known = set(DictionaryConfig.__dataclass_fields__)
    try:
        cfg = DictionaryConfig(**{k: v for k, v in raw.items() if k in known})
    except (ConfigError, TypeError) as e:
        raise FormatError(f"{config_path}: invalid dictionary config: {e}") from None
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{weights_path} cannot be read ({e}); the file is truncated or corrupt") from None
    dictionary = build_dictionary(cfg)
    expected = dictionary.state_dict()
    missing_keys = sorted(set(expected) - set(weights))
    if missing_keys:
        raise FormatError(f"{weights_path} lacks tensor(s) {missing_keys} needed by a {cfg.arch} dictionary")
    for name, tensor in expected.items():
        if weights[name].shape != tensor.shape:
            raise FormatError(
                f"{weights_path}: tensor {name!r} has shape {tuple(weights[name].shape)} but the config "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) implies {tuple(tensor.shape)}"
            )
    dictionary.load_state_dict({k: weights[k] for k in expected})
    return dictionary.to(device).eval()
