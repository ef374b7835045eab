"""Where training activations come from: a live model, an array in memory, (see cache.py) a cache on disk.

Every source has one small interface (``read_chunk(position, min_tokens)``):

* ``ModelActivations`` runs the language model on packed contexts, stops the forward
  pass after the hook point, and keeps only real tokens: padding never, BOS only when
  asked (both masked by position, see ``data.TokenBatch``).
* ``ArrayActivations`` serves rows of a tensor or array the caller already has.
* ``cache.CachedActivations`` reads the sharded ``.npy`` files ``saekit cache`` wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from ..config import SourceConfig
from ..data import ContextStream, describe_source, validate_source
from ..errors import ConfigError, DataError
from ..hooks import HookPoint, read_activations, resolve_hook_point
from ..models import LoadedModel, load_model, parse_dtype

log = logging.getLogger(__name__)


class ActivationSource(Protocol):
    model_name: str
    hook: str
    d: int
    context_length: int | None  # of the contexts the activations were read on, if known
    dataset_name: str  # the text they were read on, as a user would name it
    keep_bos: bool  # whether BOS positions are among the activations

    def start_position(self) -> dict[str, int]: ...

    def read_chunk(self, position: dict[str, int], min_tokens: int) -> tuple[Tensor, dict[str, int]]:
        """At least ``min_tokens`` activations ``(N, d)`` from ``position`` (fewer only at
        the end of data, empty past it), and the position after them."""
        ...

    def heldout(self, n_tokens: int) -> Tensor: ...


def default_hook(n_layers: int) -> str:
    """A middle-early residual stream: 30% of the depth (resid_post.9 of 30 layers)."""
    return f"resid_post.{min(n_layers - 1, round(0.3 * n_layers))}"


class ModelActivations:
    """Activations at one hook point of a live model, on packed fixed-length contexts."""

    def __init__(
        self,
        lm: LoadedModel,
        hook: str,
        *,
        dataset: str | None,
        text_field: str = "text",
        context_length: int = 128,
        model_batch_size: int = 32,
        seed: int = 0,
        keep_bos: bool = False,
    ):
        self.lm = lm
        self.hook = resolve_hook_point(lm, hook).name
        self.model_name = lm.name
        self.d = lm.d_model
        self.dataset, self.text_field = dataset, text_field
        self.context_length, self.model_batch_size = context_length, model_batch_size
        self.seed, self.keep_bos = seed, keep_bos
        self.dataset_name = describe_source(dataset)
        # Called with {"phase", "done", "total", "unit"} while a chunk is read (the
        # trainer forwards these to its progress callback).
        self.progress: Callable[[dict[str, Any]], None] | None = None
        if context_length > lm.max_length:
            raise ConfigError(
                f"--context-length {context_length} exceeds the model's maximum of {lm.max_length} tokens; lower it"
            )
        self._stream: ContextStream | None = None

    def _contexts(self, split: str, start: int, repeat: bool) -> ContextStream:
        return ContextStream(
            self.dataset,
            self.lm.tokenizer,
            context_length=self.context_length,
            batch_size=self.model_batch_size,
            split=split,  # type: ignore[arg-type]
            seed=self.seed,
            start_context=start,
            repeat=repeat,
            text_field=self.text_field,
        )

    @torch.no_grad()
    def activations(self, batch) -> Tensor:
        """The kept tokens' activations of one ``TokenBatch``, as ``(n, d)`` float32."""
        dev = self.lm.device
        acts = read_activations(
            self.lm.model, [self.hook], batch.input_ids.to(dev), batch.attention_mask.to(dev)
        )[self.hook]
        return acts[batch.token_mask(self.keep_bos).to(dev)].float()

    def start_position(self) -> dict[str, int]:
        return {"contexts": 0}

    def read_chunk(self, position: dict[str, int], min_tokens: int) -> tuple[Tensor, dict[str, int]]:
        # Keep one live stream; rebuild it only when asked for another position (on
        # resume), since rebuilding re-tokenises everything before that position.
        if self._stream is None or self._stream.contexts_done != position["contexts"]:
            self._stream = self._contexts("train", position["contexts"], repeat=True)
        rows = self._collect(self._stream, min_tokens, "reading activations from the model")
        return rows, {"contexts": self._stream.contexts_done}

    def _collect(self, stream: ContextStream, min_tokens: int, phase: str | None = None) -> Tensor:
        parts, n = [], 0
        for batch in stream:
            acts = self.activations(batch)
            parts.append(acts)
            n += acts.shape[0]
            if phase and self.progress:
                self.progress({"phase": phase, "done": min(n, min_tokens), "total": min_tokens, "unit": "tok"})
            if n >= min_tokens:
                break
        return torch.cat(parts) if parts else torch.empty(0, self.d, device=self.lm.device)

    def check_heldout(self) -> None:
        """Raise `DataError` now if the held-out split is empty (reads one batch)."""
        next(iter(self._contexts("heldout", 0, repeat=False)), None)

    def heldout(self, n_tokens: int) -> Tensor:
        acts = self._collect(self._contexts("heldout", 0, repeat=False), n_tokens)[:n_tokens]
        if acts.shape[0] < n_tokens:
            log.warning("the held-out split has only %d of the %d tokens asked for", acts.shape[0], n_tokens)
        return acts


class ArrayActivations:
    """Activations already in memory (or memory-mapped): a list of ``(n_i, d)`` arrays.

    Positions count tokens across epochs; reading past the end starts another epoch.
    Useful on its own for activations a user already has (``train(cfg, source=...)``).
    """

    def __init__(
        self,
        shards: list[np.ndarray | Tensor],
        *,
        model_name: str = "",
        hook: str = "",
        heldout: np.ndarray | Tensor | None = None,
        name: str = "activations",
        context_length: int | None = None,
        shard_names: list[str] | None = None,
        keep_bos: bool = False,
    ):
        if not shards or any(s.ndim != 2 for s in shards):
            raise DataError(f"{name}: expected one or more 2-D arrays of activations (tokens × d)")
        self.shards, self._heldout, self.name = shards, heldout, name
        self.model_name, self.hook, self.d = model_name, hook, int(shards[0].shape[1])
        self.context_length, self.keep_bos, self.dataset_name = context_length, keep_bos, name
        self.shard_names = shard_names or [f"array {i}" for i in range(len(shards))]
        self.rewrite_hint = "replace them with finite values"
        if any(s.shape[1] != self.d for s in shards):
            raise DataError(f"{name}: the arrays disagree on the activation width")
        self.offsets = np.cumsum([0] + [s.shape[0] for s in shards])
        self.total = int(self.offsets[-1])
        if self.total == 0:
            raise DataError(f"{name} holds no activations")

    def start_position(self) -> dict[str, int]:
        return {"token": 0}

    def _slice(self, start: int, stop: int) -> Tensor:
        parts = []
        while start < stop:
            i = int(np.searchsorted(self.offsets, start, side="right") - 1)
            lo = start - int(self.offsets[i])
            hi = min(self.shards[i].shape[0], lo + stop - start)
            part = torch.from_numpy(np.array(self.shards[i][lo:hi], dtype=np.float32))
            check_finite_rows(part, f"{self.name}: {self.shard_names[i]}", lo, self.rewrite_hint)
            parts.append(part)
            start += hi - lo
        return torch.cat(parts)

    def read_chunk(self, position: dict[str, int], min_tokens: int) -> tuple[Tensor, dict[str, int]]:
        start = position["token"]
        epoch_start = start % self.total
        if epoch_start == 0 and start > 0:
            log.warning("%s exhausted; starting epoch %d", self.name, start // self.total + 1)
        n = min(min_tokens, self.total - epoch_start)
        return self._slice(epoch_start, epoch_start + n), {"token": start + n}

    def heldout(self, n_tokens: int) -> Tensor:
        if self._heldout is None or self._heldout.shape[0] == 0:
            raise DataError(f"{self.name} has no held-out activations; pass --eval-tokens 0 to skip the evaluation")
        if self._heldout.shape[0] < n_tokens:
            log.warning("%s: only %d of the %d held-out tokens asked for", self.name, self._heldout.shape[0], n_tokens)
        held = torch.from_numpy(np.array(self._heldout[:n_tokens], dtype=np.float32))
        check_finite_rows(held, f"{self.name}: the held-out activations", 0, self.rewrite_hint)
        return held


def check_finite_rows(rows: Tensor, where: str, first_row: int, fix: str) -> None:
    """Stored activations must be finite; name the array and row, since the model is not to blame."""
    bad = ~torch.isfinite(rows).all(-1)
    if bool(bad.any()):
        row = first_row + int(bad.nonzero()[0, 0])
        raise DataError(f"NaN or Inf activations in {where} (the first in row {row}); {fix}")



def open_activation_source(cfg: SourceConfig, device: torch.device, activation_cache: str | None = None) -> ActivationSource:
    """Build the source a config asks for, validating it before heavy work."""
    if activation_cache:
        from .cache import CachedActivations  # the cache module builds on this one
        source = CachedActivations(activation_cache)
        if cfg.keep_bos and not source.keep_bos:
            raise ConfigError(
                f"--keep-bos contradicts the activation cache {activation_cache}, which was written without BOS "
                "positions; drop --keep-bos or write a cache with `saekit cache --keep-bos`"
            )
        model = cfg.model
        if model is not None and Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())  # caches record local models resolved
        for flag, wanted, have in (("--hook", cfg.hook, source.hook), ("--model", model, source.model_name)):
            if wanted is not None and wanted != have:
                raise ConfigError(
                    f"{flag} {wanted} contradicts the activation cache, which holds {have}; drop {flag} or "
                    "point --activation-cache at a cache of the right activations"
                )
        return source
    if cfg.hook is not None:
        HookPoint.parse(cfg.hook)  # a malformed name fails before the model loads
    validate_source(cfg.dataset, cfg.text_field)
    lm = load_model(cfg.model, device=device, dtype=parse_dtype(cfg.dtype))
    return ModelActivations(
        lm,
        cfg.hook or default_hook(lm.n_layers),
        dataset=cfg.dataset,
        text_field=cfg.text_field,
        context_length=cfg.context_length,
        model_batch_size=cfg.model_batch_size,
        seed=cfg.seed,
        keep_bos=cfg.keep_bos,
    )
