"""The on-disk activation cache: ``saekit cache`` writes it, ``CachedActivations`` reads it.

A cache is a folder of ``.npy`` shards, a held-out file and ``manifest.json``, read back
by memory map. Format 2 (this module writes it):

* every shard holds rows ``(N, H, d)``: one activation per hook point of the manifest's
  ``"hooks"`` (in the order the source served them) for each of N tokens, all written
  from one forward pass;
* ``"dtype"`` is float32, float16 or bfloat16. NumPy has no bfloat16, so bfloat16 is
  stored as its raw 16-bit words (``np.uint16``; ``np.load`` gives the words and
  ``decode_bfloat16`` the values, exactly);
* every file (each of ``"shards"``, and ``"heldout"``) is listed with ``"file"``,
  ``"tokens"``, ``"bytes"`` and ``"checksum"`` (``"crc32:<8 hex digits>"`` of the whole
  file), so a truncated, corrupt or missing file is found before training starts;
* the rest says what the activations are: ``"model"``, ``"d"``, ``"dataset"``,
  ``"context_length"``, ``"keep_bos"``, ``"seed"``, ``"tokens"``, ``"heldout_tokens"``.

Format 1 caches (written before issue 9: one hook point under ``"hook"``, shards
``(N, d)``, float32 or float16, no sizes or checksums) are still read; their shapes
are checked, their contents cannot be.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import tokenize
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

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
from .sources import ActivationSource, ArrayActivations, ModelActivations, open_activation_source, select_hook_points

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
HELDOUT_FILE = "heldout.npy"
CACHE_FORMAT = "saekit-activations"
FORMAT_VERSION = 2

# How each storage dtype lies on disk (bfloat16 as its raw words: NumPy has no bfloat16).
STORAGE_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}

# Training reads a cache in blocks of this many consecutive rows, shuffled across all
# shards (see sources.BlockOrder). Each block is one sequential read of a memory map
# (4096 rows × d 768 in bfloat16 is 6 MB; in float32 at d 2304, 38 MB), large enough
# to read at the disk's sequential speed, while a 65,536-token buffer chunk still draws
# on 16 blocks from as many shards. benchmarks/cache_read_speed.py measures both orders.
DEFAULT_BLOCK_ROWS = 4096

# CRC-32, because it is the fastest checksum in the standard library and the threat is
# accident (a bad disk, an interrupted copy), not tampering. Measured on one core of the
# development machine (zlib 1.2.13, 256 MiB buffer): crc32 2.3 GB/s, adler32 1.9,
# sha256 0.9, blake2b 0.5. A CRC-32 catches every error burst up to 32 bits long (any
# flipped byte) and others with probability 1 - 2^-32; truncation is caught by the size.
CHECKSUM = "crc32"
_READ_BLOCK = 8 << 20  # bytes per read while checksumming a file


def file_checksum(path: str | os.PathLike) -> str:
    """The checksum a format-2 manifest records for a file: ``"crc32:<8 hex digits>"``."""
    crc, buf = 0, bytearray(_READ_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{CHECKSUM}:{crc:08x}"


class _ChecksumWriter:
    """A write-only file wrapper that checksums and counts what passes through it."""

    def __init__(self, fh: BinaryIO):
        self.fh, self.crc, self.n_bytes = fh, 0, 0

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.n_bytes += len(data)
        return self.fh.write(data)

    def checksum(self) -> str:
        return f"{CHECKSUM}:{self.crc:08x}"


def decode_bfloat16(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The float32 values of bfloat16 raw words (written into ``out`` if given). A bfloat16
    is the top half of a float32, so widening the word and shifting it into the high
    half is exact (and measured twice as fast as torch's bfloat16 → float32 on one
    CPU thread)."""
    bits = np.empty(words.shape, dtype=np.uint32) if out is None else out.view(np.uint32)
    np.copyto(bits, words)
    np.left_shift(bits, 16, out=bits)
    return bits.view(np.float32)


# ------------------------------------------------------------------------------ reading


def _rewrite_hint(folder: Path) -> str:
    return f"write the cache again: rerun the `saekit cache` command that made it with --out {folder} --overwrite"


_NONE = type(None)
_V2_KEYS: dict[str, tuple[type, ...]] = {
    "format": (str,), "format_version": (int,), "model": (str,), "hooks": (list,), "d": (int,), "dtype": (str,),
    "dataset": (str,), "context_length": (int, _NONE), "keep_bos": (bool,), "seed": (int, _NONE),
    "tokens": (int,), "heldout_tokens": (int,), "shards": (list,), "heldout": (dict,),
}
_FILE_KEYS: dict[str, tuple[type, ...]] = {"file": (str,), "tokens": (int,), "bytes": (int,), "checksum": (str,)}
_V1_REQUIRED = ("model", "hook", "d", "shards")


def _check_keys(obj: Any, spec: dict[str, tuple[type, ...]], where: str, path: Path) -> None:
    """``obj`` is a dict with exactly the keys of ``spec``, each of its type(s)."""
    fix = _rewrite_hint(path.parent)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where} is not a JSON object; {fix}")
    missing = [k for k in spec if k not in obj]
    if missing:
        raise DataError(f"{path}: {where} lacks the key {missing[0]!r}; {fix}")
    extra = sorted(k for k in obj if k not in spec)
    if extra:
        raise DataError(
            f"{path}: {where} has keys saekit does not write ({', '.join(map(repr, extra))}): it was edited or "
            f"written by another version; {fix}"
        )
    for key, types in spec.items():
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is _NONE else t.__name__ for t in types)
            raise DataError(f"{path}: {where}'s {key!r} must be {names}, not {value!r}; {fix}")


def _check_file_entry(entry: Any, where: str, path: Path) -> None:
    _check_keys(entry, _FILE_KEYS, where, path)
    fix = _rewrite_hint(path.parent)
    name = entry["file"]
    if not name or Path(name).name != name:
        raise DataError(f"{path}: {where} names {name!r}, not a file inside the cache folder; {fix}")
    if entry["tokens"] < 0 or entry["bytes"] < 0:
        raise DataError(f"{path}: {where} has a negative size; {fix}")
    algorithm, _, digits = entry["checksum"].partition(":")
    if algorithm != CHECKSUM or len(digits) != 8 or any(c not in "0123456789abcdef" for c in digits):
        raise DataError(f"{path}: {where}'s checksum {entry['checksum']!r} is not a {CHECKSUM} one; {fix}")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """A cache's manifest, checked key by key (format 2 strictly, format 1 as it was written)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    fix = _rewrite_hint(folder)
    if not path.exists():
        raise DataError(f"{folder} is not an activation cache ({MANIFEST_FILE} is missing); write one with `saekit cache`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}); {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a saekit activation cache manifest")
    version = manifest.get("format_version", 1)
    if version == 1:
        for key in _V1_REQUIRED:
            if key not in manifest:
                raise DataError(f"{path} lacks the key {key!r}; {fix}")
        for i, s in enumerate(manifest["shards"]):
            if not isinstance(s, dict) or "file" not in s or "tokens" not in s:
                raise DataError(f"{path}: shard {i} lacks its 'file' or 'tokens'; {fix}")
        return manifest
    if version != FORMAT_VERSION:
        raise DataError(
            f"{path} is in cache format {version!r}; this saekit reads formats 1 and {FORMAT_VERSION}: "
            "upgrade saekit, or write the cache again with this one"
        )
    _check_keys(manifest, _V2_KEYS, "the manifest", path)
    hooks = manifest["hooks"]
    if not hooks or not all(isinstance(h, str) and h for h in hooks) or len(set(hooks)) != len(hooks):
        raise DataError(f"{path}: 'hooks' must list one or more distinct hook-point names, not {hooks!r}; {fix}")
    if manifest["d"] <= 0:
        raise DataError(f"{path}: 'd' must be positive, not {manifest['d']}; {fix}")
    if manifest["dtype"] not in STORAGE_DTYPES:
        raise DataError(f"{path}: dtype {manifest['dtype']!r} is not one saekit writes ({', '.join(STORAGE_DTYPES)}); {fix}")
    if not manifest["shards"]:
        raise DataError(f"{path} lists no shards; {fix}")
    for i, entry in enumerate(manifest["shards"]):
        _check_file_entry(entry, f"shard {i}", path)
    _check_file_entry(manifest["heldout"], "the held-out entry", path)
    for key, counted in (("tokens", sum(s["tokens"] for s in manifest["shards"])),
                         ("heldout_tokens", manifest["heldout"]["tokens"])):
        if manifest[key] != counted:
            raise DataError(f"{path}: {key!r} is {manifest[key]}, its files hold {counted}; {fix}")
    return manifest


def cache_fingerprint(manifest: dict[str, Any]) -> str:
    """A digest of a cache's contents from its manifest (each file's name, token count
    and checksum, which ``verify`` checks against the bytes): a cache written again, with
    other text, seed or hook points, fingerprints differently."""
    files = [*manifest.get("shards", []), *([manifest["heldout"]] if isinstance(manifest.get("heldout"), dict) else [])]
    listed = [[f.get("file"), f.get("tokens"), f.get("checksum")] for f in files]
    return "blake2b:" + hashlib.blake2b(json.dumps(listed).encode(), digest_size=16).hexdigest()


class CachedActivations(ArrayActivations):
    """Activations read back from a ``saekit cache`` folder by memory map.

    ``hooks`` (names or globs, as a ``--hook`` value or a list) picks some of the cache's
    hook points; they keep the cache's order, and one it lacks is refused by name.
    Training reads the shards in blocks of ``block_rows`` rows shuffled across all
    shards, a new permutation every epoch seeded by (``seed``, epoch); 0 reads them in
    the order they were written. The position is ``{"token": k, "block_rows": B}``: the
    k-th token of that order (counting across epochs).

    Opening checks every file's presence, size, dtype and shape; with ``verify`` it also
    reads every file and compares its checksum (``verify()`` does it later). Either
    failure is a ``DataError`` naming the file, before any training step. Format-1
    caches (see the module docstring) are read too, without checksums.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        hooks: str | Sequence[str] | None = None,
        seed: int = 0,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        verify: bool = True,
    ):
        self.folder = Path(folder)
        self.manifest = manifest = read_manifest(self.folder)
        self.format_version = int(manifest.get("format_version", 1))
        self.storage_dtype = str(manifest.get("dtype", "float32"))
        d = int(manifest["d"])
        v2 = self.format_version >= 2
        cache_hooks = list(manifest["hooks"]) if v2 else [manifest["hook"]]
        row_shape = (len(cache_hooks), d) if v2 else (d,)
        self._files = list(manifest["shards"]) + ([manifest["heldout"]] if v2 else [])
        shards = [self._open(entry, row_shape) for entry in manifest["shards"]]
        if v2:
            heldout = self._open(manifest["heldout"], row_shape)
        else:
            held = self.folder / HELDOUT_FILE
            heldout = self._open({"file": HELDOUT_FILE}, row_shape) if held.exists() else None
        self.cache_hooks = tuple(cache_hooks)  # as stored; ``hooks`` may be a subset
        self._columns: list[int] | None = None  # which of them are read, when a subset
        super().__init__(
            shards,
            model_name=str(manifest["model"]),
            hooks=cache_hooks,
            heldout=heldout,
            name=f"activation cache {self.folder}",
            context_length=manifest.get("context_length"),
            shard_names=[s["file"] for s in manifest["shards"]],
            keep_bos=bool(manifest.get("keep_bos", False)),
            seed=seed,
            block_rows=block_rows,
        )
        if hooks is not None:
            chosen = self._choose_hooks(hooks)
            if chosen != cache_hooks:
                self._columns = [cache_hooks.index(h) for h in chosen]
            self.hooks = tuple(chosen)
        self.dataset_name = str(manifest.get("dataset") or f"the text behind {self.folder}")
        self.rewrite_hint = f"the stored data is corrupt: {_rewrite_hint(self.folder)}"
        self.verify_seconds: float | None = None  # how long verify() took, once it has run
        if verify:
            self.verify()

    @property
    def content_fingerprint(self) -> str:
        return cache_fingerprint(self.manifest)

    def _open(self, entry: dict[str, Any], row_shape: tuple[int, ...]) -> np.ndarray:
        """Memory-map one file after checking its size (format 2), dtype and shape."""
        path, fix = self.folder / entry["file"], _rewrite_hint(self.folder)
        if not path.is_file():
            raise DataError(f"{path} is missing (the manifest lists it); {fix}")
        if "bytes" in entry and path.stat().st_size != entry["bytes"]:
            raise DataError(
                f"{path} is {path.stat().st_size:,} bytes, the manifest says {entry['bytes']:,}: the file is "
                f"truncated or was replaced; {fix}"
            )
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, SyntaxError, tokenize.TokenError, RecursionError) as e:
            # numpy parses the header as a Python literal: damaged header bytes fail with
            # whatever error the parser meets (TokenError for an unclosed bracket).
            raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); {fix}") from None
        if "tokens" in entry and arr.shape != (entry["tokens"], *row_shape):
            raise DataError(f"{path} has shape {arr.shape}, the manifest says {(entry['tokens'], *row_shape)}; {fix}")
        if arr.ndim != 1 + len(row_shape) or arr.shape[1:] != row_shape:
            raise DataError(f"{path} has shape {arr.shape}, expected (tokens, {', '.join(map(str, row_shape))}); {fix}")
        expected = STORAGE_DTYPES.get(self.storage_dtype)
        if self.format_version == 1 and "dtype" not in self.manifest:
            expected = arr.dtype if arr.dtype in (np.float32, np.float16) else None
        if arr.dtype != expected:
            stored = f" (stored as {expected})" if self.storage_dtype == "bfloat16" else ""
            raise DataError(f"{path} holds {arr.dtype} values, the manifest says {self.storage_dtype}{stored}; {fix}")
        return arr

    def _choose_hooks(self, hooks: str | Sequence[str]) -> list[str]:
        spec = hooks if isinstance(hooks, str) else ",".join(hooks)
        cache_hooks = list(self.cache_hooks)
        return select_hook_points(
            spec, cache_hooks,
            lambda part: ConfigError(
                f"--hook {part} contradicts the activation cache {self.folder}, which holds {', '.join(cache_hooks)}; "
                "drop --hook, name some of those, or write a cache with it (`saekit cache --hook ...`)"
            ),
        )

    def verify(self) -> None:
        """Read every file and compare its checksum with the manifest's; raise `DataError`
        naming the first that differs. Files are read in parallel threads (zlib and file
        reads release the GIL), so a fast disk is not held to one core's CRC speed."""
        if self.format_version < 2:
            log.info("%s was written before caches had checksums (format 1): its shapes are checked, its contents "
                     "cannot be; `saekit cache --overwrite` writes it with checksums", self.folder)
            return
        started = time.perf_counter()
        paths = [self.folder / entry["file"] for entry in self._files]

        def checksum(path: Path) -> str | OSError:
            try:
                return file_checksum(path)
            except OSError as e:
                return e

        with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1, 8))) as pool:
            sums = list(pool.map(checksum, paths))
        fix = _rewrite_hint(self.folder)
        for entry, path, got in zip(self._files, paths, sums):
            if isinstance(got, OSError):
                raise DataError(f"{path} cannot be read ({got}); {fix}")
            if got != entry["checksum"]:
                raise DataError(
                    f"{path} does not match its checksum ({got}; the manifest says {entry['checksum']}): the file "
                    f"is corrupt; {fix}"
                )
        self.verify_seconds = time.perf_counter() - started
        n_bytes = sum(int(entry["bytes"]) for entry in self._files)
        log.info("verified the %d files of %s (%.3g GB) in %.2f s (%.2f GB/s)", len(paths), self.folder, n_bytes / 1e9,
                 self.verify_seconds, n_bytes / 1e9 / max(self.verify_seconds, 1e-9))

    def _decode_into(self, out: np.ndarray, part: np.ndarray | Tensor) -> None:
        """The chosen hook points of stored rows, as float32, into ``out`` ``(n, H, d)``."""
        assert isinstance(part, np.ndarray)
        part = part.reshape(part.shape[0], len(self.cache_hooks), self.d)
        if self._columns is None:
            pairs = [(out, part)]
        else:  # column by column: no temporary copy of the rows
            pairs = [(out[:, j], part[:, c]) for j, c in enumerate(self._columns)]
        for dest, stored in pairs:
            if self.storage_dtype == "bfloat16":
                decode_bfloat16(stored, out=dest)
            else:
                np.copyto(dest, stored)


# ------------------------------------------------------------------------------ writing


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
    """``saekit cache``: open the model and data the config names and write the cache
    (every hook point ``cfg.hook`` names or matches, from one forward pass)."""
    _check_cache_folder(Path(cfg.out), cfg.overwrite)  # before the slow model load
    source = open_activation_source(cfg, resolve_device(cfg.device))
    assert isinstance(source, ModelActivations)
    return write_activation_cache(
        source, cfg.out, cfg.tokens, shard_tokens=cfg.shard_tokens, heldout_tokens=cfg.heldout_tokens,
        dtype=cfg.storage_dtype, overwrite=cfg.overwrite, progress=progress,
    )


def write_activation_cache(
    source: ActivationSource,
    folder: str | os.PathLike,
    tokens: int,
    *,
    shard_tokens: int = 262_144,
    heldout_tokens: int = 32_768,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> CacheResult:
    """Write ``tokens`` training activations (and a held-out set) of every hook point of
    ``source`` as ``.npy`` shards of rows ``(N, H, d)`` in ``dtype``, with a format-2
    manifest (see the module docstring).

    Every shard but the last holds exactly ``shard_tokens`` activations. Shards are
    written under temporary names and renamed; the manifest is written last, so a
    folder with a manifest always holds a complete cache. With ``overwrite`` the old
    cache's files are removed first (only those: anything else stops the write), so no
    stale shard survives beside the new ones. The folder is locked while writing.
    Activations the dtype cannot hold (beyond float16's range) or that are not finite
    stop the write with the hook point named.
    """
    if tokens <= 0:
        raise ConfigError(f"--tokens must be positive, got {tokens}")
    if shard_tokens <= 0:
        raise ConfigError(f"--shard-tokens must be positive, got {shard_tokens}")
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"--storage-dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    if not source.hooks or not all(source.hooks) or len(set(source.hooks)) != len(source.hooks):
        raise ConfigError(f"a cache records which hook point each activation is from; this source names {source.hooks!r}")
    folder = Path(folder)
    _check_cache_folder(folder, overwrite)
    make_folder(folder)
    with FolderLock(folder, "cache"):
        _check_cache_folder(folder, overwrite)  # again: another process may have written here meanwhile
        try:
            return _write_cache(source, folder, tokens, shard_tokens, heldout_tokens, dtype, progress)
        except KeyboardInterrupt:
            raise RunInterrupted(
                f"interrupted; {folder} holds an incomplete cache (shards without a manifest, which training "
                "refuses): run the same command with --overwrite to write it again"
            ) from None


def _to_storage(rows: Tensor, dtype: str, hooks: Sequence[str]) -> np.ndarray:
    """Rows ``(n, H, d)`` converted to ``dtype`` (on their device, halving the copy to the
    CPU for 16-bit dtypes) as a NumPy array; values the dtype cannot hold are refused."""
    stored = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    converted = rows.to(stored)
    finite = torch.isfinite(converted).all(dim=-1)  # (n, H)
    if not bool(finite.all()):
        source_finite = torch.isfinite(rows).all(dim=-1)
        if not bool(source_finite.all()):
            hook = hooks[int(torch.nonzero(~source_finite)[0, 1])]
            raise DataError(
                f"the activations at {hook} include NaN or Inf (the model produced them); a model run in float16 "
                "overflows: use --dtype bfloat16 or float32"
            )
        hook = hooks[int(torch.nonzero(~finite)[0, 1])]
        largest = float(rows.abs().max())
        raise ConfigError(
            f"the activations at {hook} reach {largest:.4g}, beyond the largest {dtype} ({torch.finfo(stored).max:.5g}); "
            "store them as bfloat16 (float32's range at half the size) or float32 (--storage-dtype)"
        )
    if dtype == "bfloat16":
        return converted.view(torch.int16).cpu().numpy().view(np.uint16)
    return converted.cpu().numpy()


def _write_cache(
    source: ActivationSource, folder: Path, tokens: int, shard_tokens: int, heldout_tokens: int, dtype: str,
    progress: Callable[[int], None] | None,
) -> CacheResult:
    # The manifest goes first: from here until the new one is written the folder is
    # visibly not a complete cache.
    for old in sorted(_cache_files(folder), key=lambda p: p.name != MANIFEST_FILE):
        try:
            old.unlink()
        except OSError as e:
            raise output_error(old, e, "the old cache is incomplete now: run with --overwrite again") from None

    H, d = len(source.hooks), source.d

    def save(rows: Tensor, name: str) -> dict[str, Any]:
        """Write rows as ``name`` (checksummed as written); return its manifest entry."""
        arr = _to_storage(rows.reshape(-1, H, d), dtype, source.hooks)
        entry: dict[str, Any] = {}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                counted = _ChecksumWriter(fh)
                np.lib.format.write_array(counted, arr, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            entry.update(file=name, tokens=int(arr.shape[0]), bytes=counted.n_bytes, checksum=counted.checksum())

        atomic_write_with(folder / name, write)
        return entry

    shards: list[dict[str, Any]] = []
    done, position = 0, source.start_position()
    pending: list[Tensor] = []  # read but not yet written (less than one shard)
    n_pending = 0

    def flush(n: int) -> None:
        nonlocal pending, n_pending
        rows = torch.cat(pending)
        shards.append(save(rows[:n], f"shard-{len(shards):05d}.npy"))
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
    held = source.heldout(heldout_tokens) if heldout_tokens > 0 else torch.empty(0, H, d)
    held_entry = save(held, HELDOUT_FILE)
    seed = getattr(source, "seed", None)
    manifest = {
        "format": CACHE_FORMAT,
        "format_version": FORMAT_VERSION,
        "model": str(source.model_name),
        "hooks": list(source.hooks),
        "d": int(d),
        "dtype": dtype,
        "dataset": str(source.dataset_name),
        "context_length": None if source.context_length is None else int(source.context_length),
        "keep_bos": bool(source.keep_bos),
        "seed": None if seed is None else int(seed),
        "tokens": done,
        "heldout_tokens": held_entry["tokens"],
        "shards": shards,
        "heldout": held_entry,
    }
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return CacheResult(folder, done, held_entry["tokens"], len(shards))
