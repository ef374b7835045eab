"""What every dictionary format's reader and writer share.

The file names that identify each format (so any writer can refuse a folder that holds
another format's dictionary), and reading with checks: every loader, saekit's and the
peers', reads through these functions, so a damaged file gets the same kind of message
whatever its format (the file, the key or tensor, what was expected and what was found).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..checks import is_integer
from ..dictionaries import Dictionary, DictionaryConfig, build_dictionary
from ..errors import ConfigError, FormatError, OutputError
from .files import check_writable_folder, make_folder

# saekit's own format (saekit_format.py): a config naming the format, and the weights.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"

SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"
DL_CFG, DL_WEIGHTS = "config.json", "ae.pt"
GEMMA_SCOPE_PARAMS = "params.npz"
GEMMA_SCOPE_ARRAYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")

FORMATS = ("saekit", "saelens", "dictionary_learning", "sparsify", "gemma_scope")
FORMAT_FILES = {
    "saekit": (CONFIG_FILE, WEIGHTS_FILE),
    "saelens": (SAELENS_CFG, SAELENS_WEIGHTS),
    "sparsify": (SPARSIFY_CFG, SPARSIFY_WEIGHTS),
    "dictionary_learning": (DL_CFG, DL_WEIGHTS),
    "gemma_scope": (GEMMA_SCOPE_PARAMS,),
}
DICTIONARY_FILES = tuple(dict.fromkeys(name for files in FORMAT_FILES.values() for name in files))
# How the writers' messages name the folder they write into.
DESTINATION = "the destination"


def dictionary_folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise FormatError(f"{folder} does not exist")
    return folder.parent if folder.is_file() else folder

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


# What each DictionaryConfig field must be in a file, checked before the config is built
# (DictionaryConfig itself checks ranges: positive sizes, k < d_sae, a finite scale).
_FIELD_TYPES: dict[str, tuple[Any, str]] = {
    "arch": (lambda v: isinstance(v, str), "a string"),
    "d_in": (is_integer, "an integer"),
    "d_sae": (is_integer, "an integer"),
    "k": (lambda v: v is None or is_integer(v), "an integer or null"),
    "hook": (lambda v: isinstance(v, str), "a string"),
    "model": (lambda v: isinstance(v, str), "a string"),
    # abs() bound: a JSON integer of 400 digits is an int that float() cannot take.
    "act_scale": (lambda v: isinstance(v, float) or is_integer(v) and abs(v) < 1e300, "a number"),
    "context_length": (lambda v: v is None or is_integer(v) and v > 0, "a positive integer or null"),
    "keep_bos": (lambda v: isinstance(v, bool), "true or false"),
    "transcoder": (lambda v: isinstance(v, bool), "true or false"),
    "target": (lambda v: isinstance(v, str), "a string"),
    "d_out": (lambda v: v is None or is_integer(v), "an integer or null"),
    "skip": (lambda v: isinstance(v, bool), "true or false"),
    "target_scale": (lambda v: isinstance(v, float) or is_integer(v) and abs(v) < 1e300, "a number"),
}


def make_config(path: Path, **fields: Any) -> DictionaryConfig:
    """A ``DictionaryConfig`` from values read out of ``path``; FormatError naming it otherwise."""
    for key, value in fields.items():
        ok, expected = _FIELD_TYPES[key]
        if not ok(value):
            raise FormatError(f"{path}: {key!r} must be {expected}, got {value!r}")
    for key in ("act_scale", "target_scale"):
        if key in fields:
            fields[key] = float(fields[key])
    try:
        return DictionaryConfig(**fields)
    except ConfigError as e:
        raise FormatError(f"{path}: the config describes an invalid dictionary: {e}") from None


def require_key(cfg: dict, key: str, path: Path, kind: type | tuple = int) -> Any:
    if key not in cfg:
        raise FormatError(f"{path} is missing the key {key!r}")
    value = cfg[key]
    if kind is int and not is_integer(value):
        raise FormatError(f"{path}: {key!r} must be an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise FormatError(f"{path}: {key!r} has the wrong type ({value!r})")
    return value


def build_checked(cfg: DictionaryConfig, tensors: dict[str, torch.Tensor], path: Path) -> Dictionary:
    for name, t in tensors.items():
        # The file's tensors are finite (checked_tensor), but converting them to saekit's
        # conventions (b_enc + b_dec W_enc, exp(r_mag), rescaled rows) can overflow float32.
        check_finite(t, f"saekit's {name!r}, computed from the file's tensors,", path)
    dictionary = build_dictionary(cfg)
    state = dictionary.state_dict()
    assert set(state) == set(tensors), (sorted(state), sorted(tensors))
    dictionary.load_state_dict({k: v.reshape(state[k].shape).to(state[k].dtype) for k, v in tensors.items()})
    return dictionary.requires_grad_(False).eval()


def weights_of(dictionary: Dictionary) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32).cpu().clone() for k, v in dictionary.state_dict().items()}


def unsupported(fmt: str, arch: str, supported: list[str]) -> FormatError:
    return FormatError(f"a {arch} dictionary cannot be written as {fmt}; {fmt} supports {supported}")


def writable_folder_for(fmt: str, folder: str | os.PathLike) -> Path:
    """``folder``, created, after refusing one that holds another format's dictionary.

    Two formats share file names (``cfg.json``; ``config.json``), so writing one over
    another leaves a folder whose files the detector pairs wrongly, or two dictionaries
    of which ``saekit.load`` returns the old one.
    """
    folder = check_writable_folder(folder, DESTINATION)
    if folder.is_dir():
        foreign = [name for name in DICTIONARY_FILES if name not in FORMAT_FILES[fmt] and (folder / name).exists()]
        if foreign:
            raise OutputError(
                f"{folder} already holds another dictionary ({', '.join(foreign)}); writing a {fmt} one beside it "
                "would leave two in one folder. Choose an empty folder, or replace it with "
                "`saekit convert SRC DST --overwrite`"
            )
    return make_folder(folder, DESTINATION)
