"""The on-disk activation cache: ``saekit cache`` writes it, ``CachedActivations`` reads it.

A cache is a folder of ``.npy`` shards, a held-out file and ``manifest.json`` (model,
hook point, dataset, context length, BOS policy, token counts), read back by memory map.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..config import CacheConfig
from ..errors import ConfigError, DataError, RunInterrupted
from ..io.files import (
    LOCK_FILE,
    TEMP_GLOB,
    FolderLock,
    atomic_write_text,
    atomic_write_with,
    check_writable_folder,
    make_folder,
    output_error,
)
from ..models import resolve_device

log = logging.getLogger(__name__)
from .sources import ArrayActivations, ModelActivations, open_activation_source


MANIFEST_FILE = "manifest.json"
HELDOUT_FILE = "heldout.npy"
CACHE_FORMAT = "saekit-activations"

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
