"""A model's activations on each statement of a truth dataset, at one token, cached on disk.

The token is a position within the statement's own tokens (special tokens such as BOS
excluded): ``"last"`` (the default, the token where a model has read the whole claim), an
index (0 the first, -1 the last), or ``"mean"`` (the average over the statement's tokens).
Each (model, dtype, hook point, statement list, position) is one cache file, so a layer
sweep that reads thirty hook points in one forward pass writes thirty entries, and a
later probe on any of them, or on the same statements relabelled, runs no model at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator, Protocol, Sequence, Union

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..progress import Phase, ProgressCallback

logger = logging.getLogger(__name__)

Position = Union[int, str]
"""``"last"``, ``"mean"`` or an index into the statement's tokens (negative from the end)."""

DEFAULT_CACHE_DIR = Path("~/.cache/saekit/probes")
_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """~/.cache/saekit/probes, or under $XDG_CACHE_HOME when that is set."""
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "saekit" / "probes" if base else DEFAULT_CACHE_DIR.expanduser()


def parse_position(text: Position) -> Position:
    """``"last"``, ``"mean"`` or an integer index, from the command line or Python."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower()
    if value in ("last", "mean"):
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"position {text!r} is not 'last', 'mean' or a token index (0 the first token of the "
                          "statement, -1 the last)") from None


def tokenize_statements(tokenizer, statements: Sequence[str], max_length: int,
                        position: Position) -> list[tuple[list[int], int, int]]:
    """Each statement's token ids (special tokens included, as the model is fed) and the
    span [start, end) of the statement's own tokens; checks length and position first."""
    out = []
    for i, statement in enumerate(statements):
        enc = tokenizer(statement, add_special_tokens=True, return_special_tokens_mask=True)
        ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
        own = [k for k, s in enumerate(special) if not s]
        if not own:
            raise DataError(f"statement {i} ({statement!r}) has no tokens of its own")
        if len(ids) > max_length:
            raise DataError(f"statement {i} is {len(ids)} tokens long but the model reads at most {max_length}; "
                            f"shorten it or remove it: {statement[:80]!r}...")
        start, end = own[0], own[-1] + 1
        if isinstance(position, int) and not -(end - start) <= position < end - start:
            raise ConfigError(f"position {position} is outside statement {i}, which has {end - start} tokens "
                              f"({statement!r}); use an index between {-(end - start)} and {end - start - 1}, or "
                              "'last' or 'mean'")
        out.append((ids, start, end))
    return out


class Statements(Protocol):
    """What ``statement_activations`` reads of a set of texts: a truth dataset, the control
    texts of a calibration, the labelled texts of ``saekit classify``."""

    name: str

    @property
    def statements(self) -> Sequence[str]: ...

    @property
    def content_hash(self) -> str: ...

    def __len__(self) -> int: ...


def padded_batches(tokenizer, encoded: Sequence[tuple[list[int], int, int]],
                   batch_size: int) -> Iterator[tuple[list[tuple[list[int], int, int]], Tensor, Tensor]]:
    """``encoded`` (from ``tokenize_statements``) in batches, each with its token ids and
    attention mask. Padding goes on the right, so every statement keeps the positions it
    has in a pass of its own."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for begin in range(0, len(encoded), batch_size):
        batch = list(encoded[begin:begin + batch_size])
        width = max(len(ids) for ids, _, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (tokens, _, _) in enumerate(batch):
            ids[r, :len(tokens)] = torch.tensor(tokens)
            mask[r, :len(tokens)] = 1
        yield batch, ids, mask


def statement_rows(acts: Tensor, spans: Sequence[tuple[int, int]], position: Position) -> Tensor:
    """``(B, d)``: from ``acts`` ``(B, T, d)``, each row's activation at ``position`` of its
    statement's tokens ``[start, end)``: their mean, the last, or an index into them."""
    rows = []
    for r, (start, end) in enumerate(spans):
        if position == "mean":
            rows.append(acts[r, start:end].mean(0))
        elif position == "last":
            rows.append(acts[r, end - 1])
        else:
            assert isinstance(position, int)
            rows.append(acts[r, start + position if position >= 0 else end + position])
    return torch.stack(rows)


def file_slug(text: str) -> str:
    """``text`` made safe as one part of a file name (the cache names files by model and dataset)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[-80:] or "model"


def cache_path(cache_dir: Path, model: str, dtype: torch.dtype, hook: str, dataset: Statements,
               position: Position) -> Path:
    """Where the activations of ``dataset`` at ``hook`` and ``position`` are cached."""
    key = json.dumps({"format": _CACHE_FORMAT, "model": model, "dtype": str(dtype), "hook": hook,
                      "statements": dataset.content_hash, "position": position}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir / file_slug(model) / hook / f"{file_slug(dataset.name)}-{position}-{digest}.safetensors"


def _read_cached(path: Path, n: int) -> Tensor | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        acts = load_file(str(path))["acts"]
    except (SafetensorError, KeyError, OSError) as e:
        logger.warning("ignoring the unreadable cache file %s (%s); recomputing", path, e)
        return None
    if acts.ndim != 2 or acts.shape[0] != n:
        logger.warning("ignoring the cache file %s: it holds %s, expected %d rows", path, tuple(acts.shape), n)
        return None
    return acts


def statement_activations(lm, dataset: Statements, hooks: Sequence[str], position: Position = "last", *,
                          cache_dir: str | Path | None = None, use_cache: bool = True, batch_size: int = 32,
                          progress: ProgressCallback | None = None) -> dict[str, Tensor]:
    """``{hook: (N, d) float32}``: the activation at ``position`` of each statement.

    What the cache holds is read; the rest comes from one forward pass per batch over all
    missing hook points at once (stopped after the last), and is written to the cache
    atomically. Errors (an unknown hook point, a statement longer than the model's context,
    a position outside a statement) are raised before the model runs.
    """
    from ..hooks import read_activations, resolve_hook_point
    from ..io.files import atomic_save_tensors, make_folder

    if isinstance(hooks, str):
        hooks = [hooks]
    if not hooks:
        raise ConfigError("statement_activations needs at least one hook point")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    position = parse_position(position)
    for hook in hooks:
        resolve_hook_point(lm, hook)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    found: dict[str, Tensor] = {}
    paths = {hook: cache_path(folder, lm.name, lm.dtype, hook, dataset, position) for hook in hooks}
    if use_cache:
        for hook in hooks:
            cached = _read_cached(paths[hook], len(dataset))
            if cached is not None:
                found[hook] = cached
    missing = [h for h in hooks if h not in found]
    if not missing:
        return {h: found[h] for h in hooks}
    if use_cache:
        make_folder(folder, "--cache-dir")
    encoded = tokenize_statements(lm.tokenizer, dataset.statements, lm.max_length, position)
    rows: dict[str, list[Tensor]] = {h: [] for h in missing}
    phase = Phase(progress, f"activations of {dataset.name}", len(encoded), unit="statements")
    for batch, ids, mask in padded_batches(lm.tokenizer, encoded, batch_size):
        with torch.no_grad():
            acts = read_activations(lm, missing, ids, mask)
        for hook in missing:
            a = acts[hook].float().cpu()
            rows[hook].append(statement_rows(a, [(start, end) for _, start, end in batch], position))
        phase.advance(len(batch))
    for hook in missing:
        found[hook] = torch.cat(rows[hook])
        if use_cache:
            paths[hook].parent.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors({"acts": found[hook]}, paths[hook], metadata={
                "model": lm.name, "hook": hook, "dataset": dataset.name, "statements": dataset.content_hash,
                "position": str(position), "dtype": str(lm.dtype)})
    return {h: found[h] for h in hooks}


def centre(acts: Tensor) -> Tensor:
    """Activations minus their mean: one dataset centred on its own mean."""
    return acts - acts.mean(0, keepdim=True)
