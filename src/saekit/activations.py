"""Activations for training: from a live model or from an on-disk cache, shuffled.

Two sources share one small interface (``read_chunk(position, min_tokens)``):

* ``ModelActivations`` runs the language model on packed contexts, stops the forward
  pass after the hook point, and keeps only real tokens: padding never, BOS only when
  asked (both masked by position, see ``data.TokenBatch``).
* ``CachedActivations`` reads the sharded ``.npy`` files ``saekit cache`` wrote, by
  memory map, cycling through them for several epochs.

``ActivationBuffer`` turns either into shuffled batches. It fills a chunk of at least
``buffer_tokens`` activations, permutes it with a generator seeded by (seed, chunk
index), and serves it batch by batch. Its whole state is three numbers (where the
chunk started, the chunk's index, batches served), so a checkpoint stays small and a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor

from .config import CacheConfig, SourceConfig, TrainConfig
from .data import ContextStream, describe_source, validate_source
from .errors import ConfigError, DataError, RunInterrupted
from .outputs import (
    LOCK_FILE,
    TEMP_GLOB,
    FolderLock,
    atomic_write_text,
    atomic_write_with,
    check_writable_folder,
    make_folder,
    output_error,
)
from .hooks import HookPoint, read_activations, resolve_hook_point
from .models import LoadedModel, load_model, parse_dtype, resolve_device

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
HELDOUT_FILE = "heldout.npy"
CACHE_FORMAT = "saekit-activations"


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
            _check_finite(part, f"{self.name}: {self.shard_names[i]}", lo, self.rewrite_hint)
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
        _check_finite(held, f"{self.name}: the held-out activations", 0, self.rewrite_hint)
        return held


def _check_finite(rows: Tensor, where: str, first_row: int, fix: str) -> None:
    """Stored activations must be finite; name the array and row, since the model is not to blame."""
    bad = ~torch.isfinite(rows).all(-1)
    if bool(bad.any()):
        row = first_row + int(bad.nonzero()[0, 0])
        raise DataError(f"NaN or Inf activations in {where} (the first in row {row}); {fix}")


class CachedActivations(ArrayActivations):
    """Activations read back from a ``saekit cache`` folder by memory map."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.manifest = manifest = read_manifest(self.folder)
        d = int(manifest["d"])
        shards = []
        for s in manifest["shards"]:
            path = self.folder / s["file"]
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"{path} cannot be read ({e}); write the cache again with `saekit cache`") from None
            if arr.shape != (s["tokens"], d):
                raise DataError(
                    f"{path} has shape {arr.shape}, the manifest says ({s['tokens']}, {d}); "
                    "the cache is corrupt: write it again with `saekit cache`"
                )
            shards.append(arr)
        held = self.folder / HELDOUT_FILE
        super().__init__(
            shards,
            model_name=manifest["model"],
            hook=manifest["hook"],
            heldout=np.load(held, mmap_mode="r") if held.exists() else None,
            name=f"activation cache {self.folder}",
            context_length=manifest.get("context_length"),
            shard_names=[s["file"] for s in manifest["shards"]],
            keep_bos=bool(manifest.get("keep_bos", False)),
        )
        self.dataset_name = str(manifest.get("dataset") or f"the text behind {self.folder}")
        self.rewrite_hint = "the stored data is corrupt: write the cache again with `saekit cache`"


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.exists():
        raise DataError(f"{folder} is not an activation cache ({MANIFEST_FILE} is missing); write one with `saekit cache`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is corrupt ({e}); write the cache again with `saekit cache`") from None
    if manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a saekit activation cache manifest")
    for key in ("model", "hook", "d", "shards"):
        if key not in manifest:
            raise DataError(f"{path} lacks the key {key!r}; write the cache again with `saekit cache`")
    return manifest


def open_activation_source(cfg: SourceConfig, device: torch.device, activation_cache: str | None = None) -> ActivationSource:
    """Build the source a config asks for, validating it before heavy work."""
    if activation_cache:
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


class ActivationBuffer:
    """Chunk-shuffled, full batches from a source, resumable exactly from ``state()``.

    Every batch holds exactly ``batch_size`` activations. A chunk rarely divides into
    whole batches (a buffer size that is not a multiple of the batch size, tokens
    dropped by the norm cap), so the rows a chunk cannot fill a batch with are carried
    into the next chunk and shuffled with it. A short batch would be worse than a
    wasted one: its statistics (the aux-k loss's normaliser, a batch-top-k cut-off, a
    figure like FVU) can be arbitrarily far from a full batch's, and Adam remembers a
    gradient spike for thousands of steps.

    It serves ``cfg.tokens`` rounded down to whole batches (``cfg.trainable_tokens()``) and
    reads no more from the source, so no forward pass is spent on activations never
    trained on. With a ``norm_cap``, tokens whose norm exceeds it are dropped as each
    chunk loads, before anything is counted, so the budget and the schedules count
    trained tokens. The state is a few numbers plus the carried rows (< one batch).
    """

    def __init__(self, source: ActivationSource, cfg: TrainConfig, state: dict[str, Any] | None = None):
        self.source = source
        self.buffer_tokens, self.batch_size, self.seed = cfg.buffer_tokens, cfg.batch_size, cfg.seed
        self.budget = cfg.trainable_tokens()
        state = state or {
            "chunk_start": source.start_position(), "chunk_index": 0, "batches_done": 0,
            "served_before_chunk": 0, "norm_cap": None, "carry": torch.empty(0, source.d),
        }
        self.chunk_start: dict[str, int] = dict(state["chunk_start"])
        self.chunk_index: int = int(state["chunk_index"])
        self.batches_done: int = int(state["batches_done"])
        # Tokens read into the buffer (after the norm cap) before the current chunk.
        self.served_before_chunk: int = int(state["served_before_chunk"])
        self.norm_cap: float | None = state["norm_cap"]
        # Rows of earlier chunks that did not fill a batch; they open the current chunk.
        self.carry: Tensor = state["carry"]
        # (rows: carried + new, new rows kept, rows read from the source, next position)
        self._chunk: tuple[Tensor, int, int, dict[str, int]] | None = None

    def state(self) -> dict[str, Any]:
        return {
            "chunk_start": dict(self.chunk_start),
            "chunk_index": self.chunk_index,
            "batches_done": self.batches_done,
            "served_before_chunk": self.served_before_chunk,
            "norm_cap": self.norm_cap,
            "carry": self.carry.cpu(),
        }

    def _load(self) -> tuple[Tensor, int, int, dict[str, int]]:
        if self._chunk is None:
            want = min(self.buffer_tokens, self.budget - self.served_before_chunk)
            if want <= 0:
                read, nxt = torch.empty(0, self.source.d), self.chunk_start
            else:
                read, nxt = self.source.read_chunk(self.chunk_start, want)
                read = read[:want]
            new = self._filter(read)
            rows = torch.cat([self.carry.to(new.device), new]) if self.carry.shape[0] else new
            self._chunk = (rows, new.shape[0], read.shape[0], nxt)
        return self._chunk

    def _filter(self, chunk: Tensor) -> Tensor:
        return chunk if self.norm_cap is None else chunk[chunk.norm(dim=-1) <= self.norm_cap]

    def peek_sample(self) -> Tensor:
        """The current chunk, unshuffled: the sample the activation scale is estimated on."""
        rows = self._load()[0]
        if rows.shape[0] == 0:
            raise DataError("the data source yielded no activations; check --dataset (it may be empty)")
        return rows

    def set_norm_cap(self, cap: float | None) -> None:
        """Drop tokens with a norm above ``cap`` from now on (the chunk in hand included)."""
        self.norm_cap = cap
        if self._chunk is not None:
            assert self.carry.shape[0] == 0, "the norm cap is set before training starts"
            rows = self._filter(self._chunk[0])
            self._chunk = (rows, rows.shape[0], *self._chunk[2:])

    def __iter__(self) -> Iterator[Tensor]:
        B = self.batch_size
        while True:
            rows, n_new, n_read, next_start = self._load()
            if n_read == 0:
                return  # budget spent or data exhausted; the carry (< B rows) is never trained on
            n = rows.shape[0]
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.chunk_index)
            perm = torch.randperm(n, generator=gen).to(rows.device)
            n_batches = n // B
            while self.batches_done < n_batches:
                b = self.batches_done
                self.batches_done += 1
                yield rows[perm[b * B : (b + 1) * B]]
            self.carry = rows[perm[n_batches * B :]]
            self.chunk_start, self.chunk_index, self.batches_done = next_start, self.chunk_index + 1, 0
            self.served_before_chunk += n_new
            self._chunk = None


@dataclass
class CacheResult:
    folder: Path
    tokens: int
    heldout_tokens: int
    shards: int


# What a cache folder holds (temporary files included), for --overwrite to remove.
CACHE_FILE_PATTERNS = ("shard-*.npy", HELDOUT_FILE, MANIFEST_FILE, TEMP_GLOB, ".*.tmp.npy")


def _cache_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in CACHE_FILE_PATTERNS for p in folder.glob(pattern)})


def _check_cache_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a folder we must not write into; changes nothing."""
    check_writable_folder(folder)
    if not folder.exists():
        return
    present = [p for p in folder.iterdir() if p.name != LOCK_FILE]
    if not present:
        return
    if not overwrite:
        raise ConfigError(f"{folder} is not empty; choose another folder or pass --overwrite to replace the cache in it")
    ours = set(_cache_files(folder))
    foreign = sorted(p.name for p in present if p not in ours)
    if foreign:
        raise ConfigError(
            f"{folder} holds files saekit cache did not write ({', '.join(foreign[:5])}); --overwrite only "
            "replaces an activation cache: choose another folder"
        )


def cache_activations(cfg: CacheConfig, progress: Callable[[int], None] | None = None) -> CacheResult:
    """``saekit cache``: open the model and data the config names and write the cache."""
    _check_cache_folder(Path(cfg.out), cfg.overwrite)  # before the slow model load
    source = open_activation_source(cfg, resolve_device(cfg.device))
    assert isinstance(source, ModelActivations)
    return write_activation_cache(
        source, cfg.out, cfg.tokens, shard_tokens=cfg.shard_tokens, heldout_tokens=cfg.heldout_tokens,
        dtype=cfg.storage_dtype, overwrite=cfg.overwrite, progress=progress,
    )


def write_activation_cache(
    source: ModelActivations,
    folder: str | os.PathLike,
    tokens: int,
    *,
    shard_tokens: int = 262_144,
    heldout_tokens: int = 32_768,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> CacheResult:
    """Write ``tokens`` training activations (and a held-out set) as ``.npy`` shards.

    Every shard but the last holds exactly ``shard_tokens`` activations. Shards are
    written under temporary names and renamed; the manifest is written last, so a
    folder with a manifest always holds a complete cache. With ``overwrite`` the old
    cache's files are removed first (only those: anything else stops the write), so no
    stale shard survives beside the new ones. The folder is locked while writing.
    """
    if tokens <= 0:
        raise ConfigError(f"--tokens must be positive, got {tokens}")
    if shard_tokens <= 0:
        raise ConfigError(f"--shard-tokens must be positive, got {shard_tokens}")
    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise ConfigError(f"cache dtype must be float32 or float16, got {dtype!r}")
    folder = Path(folder)
    _check_cache_folder(folder, overwrite)
    make_folder(folder)
    with FolderLock(folder, "cache"):
        _check_cache_folder(folder, overwrite)  # again: another process may have written here meanwhile
        try:
            return _write_cache(source, folder, tokens, shard_tokens, heldout_tokens, dtype, np_dtype, progress)
        except KeyboardInterrupt:
            raise RunInterrupted(
                f"interrupted; {folder} holds an incomplete cache (shards without a manifest, which training "
                "refuses): run the same command with --overwrite to write it again"
            ) from None


def _write_cache(
    source: ModelActivations, folder: Path, tokens: int, shard_tokens: int, heldout_tokens: int, dtype: str,
    np_dtype: Any, progress: Callable[[int], None] | None,
) -> CacheResult:
    # The manifest goes first: from here until the new one is written the folder is
    # visibly not a complete cache.
    for old in sorted(_cache_files(folder), key=lambda p: p.name != MANIFEST_FILE):
        try:
            old.unlink()
        except OSError as e:
            raise output_error(old, e, "the old cache is incomplete now: run with --overwrite again") from None

    def save(arr: np.ndarray, name: str) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
                fh.flush()
                os.fsync(fh.fileno())

        atomic_write_with(folder / name, write)

    shards, done, position = [], 0, source.start_position()
    pending: list[Tensor] = []  # read but not yet written (less than one shard)
    n_pending = 0

    def flush(n: int) -> None:
        nonlocal pending, n_pending
        rows = torch.cat(pending)
        name = f"shard-{len(shards):05d}.npy"
        save(rows[:n].cpu().numpy().astype(np_dtype), name)
        shards.append({"file": name, "tokens": n})
        pending, n_pending = [rows[n:]], rows.shape[0] - n

    while done + n_pending < tokens:
        chunk, position = source.read_chunk(position, min(shard_tokens, tokens - done - n_pending))
        chunk = chunk[: tokens - done - n_pending]
        if chunk.shape[0] == 0:
            break
        pending.append(chunk)
        n_pending += chunk.shape[0]
        while n_pending >= shard_tokens:
            flush(shard_tokens)
            done += shard_tokens
            if progress:
                progress(done)
    if n_pending:
        n = n_pending
        flush(n)
        done += n
        if progress:
            progress(done)
    held = source.heldout(heldout_tokens) if heldout_tokens > 0 else torch.empty(0, source.d)
    save(held.cpu().numpy().astype(np_dtype), HELDOUT_FILE)
    manifest = {
        "format": CACHE_FORMAT,
        "format_version": 1,
        "model": source.model_name,
        "hook": source.hook,
        "d": source.d,
        "dtype": dtype,
        "dataset": source.dataset_name,
        "context_length": source.context_length,
        "keep_bos": source.keep_bos,
        "seed": source.seed,
        "tokens": done,
        "heldout_tokens": int(held.shape[0]),
        "shards": shards,
    }
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return CacheResult(folder, done, int(held.shape[0]), len(shards))

