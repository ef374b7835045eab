"""Where training activations come from: a live model, an array in memory, (see cache.py) a cache on disk.

Every source has one small interface (``read_chunk(position, min_tokens)``):

* ``ModelActivations`` runs the language model on packed contexts, stops the forward
  pass after the hook point, and keeps only real tokens: padding never, BOS only when
  asked (both masked by position, see ``data.TokenBatch``).
* ``ArrayActivations`` serves rows of a tensor or array the caller already has.
* ``cache.CachedActivations`` reads the sharded ``.npy`` files ``saekit cache`` wrote.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import SourceConfig
from ..data import ContextStream, content_fingerprint, describe_source, validate_source
from ..errors import ConfigError, DataError
from ..hooks import HookPoint, hook_point_names, read_activations, resolve_hook_point
from ..models import LoadedModel, load_model, parse_dtype

log = logging.getLogger(__name__)


class ActivationSource(Protocol):
    """Activations at one or more hook points of the same tokens.

    Rows have shape ``(H, d)``: one activation per hook point in ``hooks`` (same order),
    all of the same token, so that every dictionary trained from one pass sees the same
    tokens and a transcoder's input and target rows stay paired.

    Reading is a pure function of the position dict (and the source's data and seed), so
    a run resumed from a checkpointed position reads exactly the rows it would have.

    saekit's sources also count what ``read_chunk`` costs, for telling an I/O-bound run
    from a compute-bound one: ``read_seconds`` (wall time spent in ``read_chunk``: reading
    and decoding stored activations, or the model's forward passes) and, for stored
    activations (arrays, caches), ``bytes_read`` (bytes read as stored, in the cache's
    dtype). Both only grow; a source written by a user need not have them (read them
    with ``getattr(source, "bytes_read", None)``), nor ``content_fingerprint`` (a digest of
    the text or stored activations it reads, by which a resumed run recognises its data).
    """

    model_name: str
    hooks: tuple[str, ...]
    d: int
    context_length: int | None  # of the contexts the activations were read on, if known
    dataset_name: str  # the text they were read on, as a user would name it
    keep_bos: bool  # whether BOS positions are among the activations

    def start_position(self) -> dict[str, int]: ...

    def read_chunk(self, position: dict[str, int], min_tokens: int) -> tuple[Tensor, dict[str, int]]:
        """At least ``min_tokens`` rows ``(N, H, d)`` from ``position`` (fewer only at the
        end of data, empty past it), and the position after them."""
        ...

    def heldout(self, n_tokens: int) -> Tensor:
        """Held-out rows ``(n, H, d)``."""
        ...


def default_hook(n_layers: int) -> str:
    """A middle-early residual stream: 30% of the depth (resid_post.9 of 30 layers)."""
    return f"resid_post.{min(n_layers - 1, round(0.3 * n_layers))}"


def parse_hook_spec(spec: str) -> list[str]:
    """The names or patterns in a ``--hook`` value: comma-separated, each checked for form.

    ``resid_post.3,mlp_out.6`` names two points; ``resid_post.*`` (any glob) stands for
    every point of the model that matches, expanded by ``expand_hook_spec`` once the
    model is loaded. A malformed plain name fails here, before the model loads.
    """
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip() or any(not part for part in parts):
        raise ConfigError(f"--hook {spec!r} has an empty name; give names separated by commas, e.g. resid_post.3,resid_post.6")
    named: dict[str, str] = {}
    for part in parts:
        key = part if is_hook_pattern(part) else HookPoint.parse(part).name  # resid_post.03 is resid_post.3
        if key in named:
            raise ConfigError(f"--hook {spec!r} names {key} twice ({named[key]!r} and {part!r}); name each hook point once")
        named[key] = part
    return parts


def is_hook_pattern(name: str) -> bool:
    """Whether one part of a ``--hook`` value is a glob (expanded against the model) rather than a name."""
    return any(c in name for c in "*?[")


def expand_hook_spec(spec: str, lm: LoadedModel) -> list[str]:
    """Every hook point ``spec`` names in this model, in forward order, each once."""
    for part in parse_hook_spec(spec):
        if not is_hook_pattern(part):
            resolve_hook_point(lm, part)  # the model's own error: it lists the points that exist
    names = hook_point_names(lm)
    return select_hook_points(
        spec, names,
        lambda part: ConfigError(
            f"--hook pattern {part!r} matches no hook point of {lm.name}; its points are named like "
            f"{', '.join(names[:5])}, ... ({len(names)} in all)"
        ),
    )


def select_hook_points(spec: str, names: Sequence[str], refuse: Callable[[str], Exception], *,
                       once: bool = False) -> list[str]:
    """The points among ``names`` that ``spec`` names (plain names or globs), in the order of
    ``names``, each once; ``refuse(part)`` is raised for the first part that names none.

    With ``once``, a point that two parts name (a plain name and a pattern that covers it,
    or overlapping patterns) is refused: where each point becomes a dictionary, the user
    asked for two and would silently get one. Without it (the points a source reads, a
    union of inputs and targets) the overlap is merged."""
    chosen: dict[str, str] = {}  # point -> the part that named it
    for part in parse_hook_spec(spec):
        if is_hook_pattern(part):
            matched = fnmatch.filter(names, part)
        else:
            name = HookPoint.parse(part).name
            matched = [name] if name in names else []
        if not matched:
            raise refuse(part)
        twice = [name for name in matched if name in chosen]
        if once and twice:
            raise ConfigError(
                f"{spec!r} names the hook point {twice[0]} twice (by {chosen[twice[0]]!r} and by {part!r}); name each "
                "point once, e.g. drop the plain name that the pattern already covers"
            )
        chosen.update((name, part) for name in matched if name not in chosen)
    return [name for name in names if name in chosen]


class ModelActivations:
    """Activations at one or more hook points of a live model, on packed fixed-length contexts.

    One forward pass serves every hook point, and it stops after the last of them.
    """

    def __init__(
        self,
        lm: LoadedModel,
        hooks: str | Sequence[str],
        *,
        dataset: str | None,
        text_field: str = "text",
        context_length: int = 128,
        model_batch_size: int = 32,
        seed: int = 0,
        keep_bos: bool = False,
    ):
        self.lm = lm
        names = [hooks] if isinstance(hooks, str) else list(hooks)
        if not names:
            raise ConfigError("ModelActivations needs at least one hook point")
        self.hooks = tuple(resolve_hook_point(lm, name).name for name in names)
        self.model_name = lm.name
        self.d = lm.d_model  # every site saekit hooks (resid, attn_out, mlp_in, mlp_out) is d_model wide
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
        self.read_seconds = 0.0  # in read_chunk: tokenising and the forward passes
        # The ranks of a data-parallel run (``training.distributed.Ranks``): each runs the
        # model on its share of every chunk's batches and all gather the whole chunk.
        self.ranks: Any = None

    @functools.cached_property
    def content_fingerprint(self) -> str | None:
        """A digest of the text read (``data.content_fingerprint``; None for a Hub dataset)."""
        return content_fingerprint(self.dataset)

    def with_hooks(self, hooks: Sequence[str]) -> "ModelActivations":
        """The same model and text, read at other hook points (the pass stops after the last)."""
        return ModelActivations(
            self.lm, hooks, dataset=self.dataset, text_field=self.text_field, context_length=self.context_length,
            model_batch_size=self.model_batch_size, seed=self.seed, keep_bos=self.keep_bos,
        )

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
        """The kept tokens' activations of one ``TokenBatch``, as ``(n, H, d)`` float32."""
        dev = self.lm.device
        acts = read_activations(self.lm.model, self.hooks, batch.input_ids.to(dev), batch.attention_mask.to(dev))
        keep = batch.token_mask(self.keep_bos).to(dev)
        return torch.stack([acts[name][keep] for name in self.hooks], dim=1).float()

    def start_position(self) -> dict[str, int]:
        return {"contexts": 0}

    def read_chunk(self, position: dict[str, int], min_tokens: int) -> tuple[Tensor, dict[str, int]]:
        started = time.perf_counter()
        # Keep one live stream; rebuild it only when asked for another position (on
        # resume), since rebuilding re-tokenises everything before that position.
        if self._stream is None or self._stream.contexts_done != position["contexts"]:
            self._stream = self._contexts("train", position["contexts"], repeat=True)
        if self.ranks is not None and self.ranks.distributed:
            rows = self._collect_shared(self._stream, min_tokens, "reading activations from the model")
        else:
            rows = self._collect(self._stream, min_tokens, "reading activations from the model")
        # No device sync needed for the timing: selecting the kept tokens by a boolean
        # mask already waits for the forward pass (the row count must reach the host).
        self.read_seconds += time.perf_counter() - started
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
        return torch.cat(parts) if parts else torch.empty(0, len(self.hooks), self.d, device=self.lm.device)

    def _collect_shared(self, stream: ContextStream, min_tokens: int, phase: str) -> Tensor:
        """``_collect``'s chunk, for 1/N of its forward passes: every rank takes the same
        batches from the stream (their token counts come from the masks, before any
        forward pass), runs the model on every N-th one (batch i on rank i mod N), and
        all gather the results back into stream order."""
        from ..training.distributed import gather_rows

        ranks = self.ranks
        batches, counts, n = [], [], 0
        for batch in stream:
            batches.append(batch)
            counts.append(int(batch.token_mask(self.keep_bos).sum()))
            n += counts[-1]
            if n >= min_tokens:
                break
        mine = [self.activations(b) for b in batches[ranks.rank :: ranks.world]]
        local = torch.cat(mine) if mine else torch.empty(0, len(self.hooks), self.d, device=self.lm.device)
        everyone = gather_rows(local, ranks, sizes=[sum(counts[r :: ranks.world]) for r in range(ranks.world)])
        if self.progress:
            self.progress({"phase": phase, "done": min(n, min_tokens), "total": min_tokens, "unit": "tok"})
        # Rank r's block holds batches r, r + N, ...: put every batch back in its place.
        starts = np.cumsum([0] + [sum(counts[r :: ranks.world]) for r in range(ranks.world)])
        taken = [0] * ranks.world
        pieces = []
        for i, count in enumerate(counts):
            r = i % ranks.world
            lo = int(starts[r]) + taken[r]
            pieces.append(everyone[lo : lo + count])
            taken[r] += count
        return torch.cat(pieces) if pieces else local

    def check_heldout(self) -> None:
        """Raise `DataError` now if the held-out split is empty (reads one batch)."""
        next(iter(self._contexts("heldout", 0, repeat=False)), None)

    def heldout(self, n_tokens: int) -> Tensor:
        acts = self._collect(self._contexts("heldout", 0, repeat=False), n_tokens)[:n_tokens]
        if acts.shape[0] < n_tokens:
            log.warning("the held-out split has only %d of the %d tokens asked for", acts.shape[0], n_tokens)
        return acts


class BlockOrder:
    """The order one epoch reads the rows of several arrays in.

    With ``block_rows`` > 0 every array is cut into blocks of that many rows (its last
    block may be shorter) and the blocks of all arrays are permuted by a generator
    seeded with ``(seed, epoch)``: each row is read exactly once per epoch, the order
    differs between epochs, and any stretch of reading mixes many arrays (shards, and
    so documents), while each block stays one contiguous slice of one array (one
    sequential read of a memory map). With ``block_rows`` = 0 the arrays are read
    in storage order.
    """

    def __init__(self, sizes: Sequence[int], block_rows: int, seed: int, epoch: int):
        if block_rows < 0:
            raise ConfigError(f"block_rows must be zero (storage order) or positive, got {block_rows}")
        sizes_arr = np.asarray(sizes, dtype=np.int64)
        if block_rows == 0:
            array, lo = np.arange(len(sizes_arr)), np.zeros(len(sizes_arr), dtype=np.int64)
            hi = sizes_arr
        else:
            counts = -(-sizes_arr // block_rows)  # blocks per array, rounded up
            array = np.repeat(np.arange(len(sizes_arr)), counts)
            lo = (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)) * block_rows
            hi = np.minimum(lo + block_rows, sizes_arr[array])
            # NumPy's SeedSequence mixes the pair (seed, epoch) into independent streams;
            # the buffer seeds torch with (seed, chunk), so the two never share a stream.
            perm = np.random.default_rng([seed, epoch]).permutation(len(array))
            array, lo, hi = array[perm], lo[perm], hi[perm]
        keep = hi > lo
        self.array, self.lo, self.hi = array[keep], lo[keep], hi[keep]
        self.ends = np.cumsum(self.hi - self.lo)  # rows of the epoch read after each block

    def pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(array, lo, hi)`` slices that together hold rows ``start:stop`` of the epoch."""
        b = int(np.searchsorted(self.ends, start, side="right"))
        while start < stop:
            block_start = int(self.ends[b] - (self.hi[b] - self.lo[b]))
            lo = int(self.lo[b]) + start - block_start
            hi = min(int(self.hi[b]), lo + stop - start)
            yield int(self.array[b]), lo, hi
            start += hi - lo
            b += 1


class ArrayActivations:
    """Activations already in memory (or memory-mapped): a list of ``(n_i, d)`` arrays (one
    hook point) or ``(n_i, H, d)`` arrays (the H hook points named in ``hooks``).

    Positions count tokens across epochs; reading past the end starts another epoch.
    By default each epoch reads the arrays in order; with ``block_rows`` > 0 it reads
    them in blocks shuffled across arrays (see ``BlockOrder``), seeded by ``seed``.
    Useful on its own for activations a user already has (``train(cfg, source=...)``).
    """

    def __init__(
        self,
        shards: list[np.ndarray | Tensor],
        *,
        model_name: str = "",
        hooks: str | Sequence[str] = "",
        heldout: np.ndarray | Tensor | None = None,
        name: str = "activations",
        context_length: int | None = None,
        shard_names: list[str] | None = None,
        keep_bos: bool = False,
        seed: int = 0,
        block_rows: int = 0,
    ):
        self.hooks = (hooks,) if isinstance(hooks, str) else tuple(hooks)
        H = len(self.hooks)
        shape = "(tokens × d)" if H == 1 else f"(tokens × {H} hook points × d)"
        if not shards or any(s.ndim != 3 and not (s.ndim == 2 and H == 1) for s in shards):
            raise DataError(f"{name}: expected one or more arrays of activations {shape}")
        if any(s.ndim == 3 and s.shape[1] != H for s in shards):
            raise DataError(f"{name}: the arrays do not hold one row per hook point ({H}): expected {shape}")
        if block_rows < 0:
            raise ConfigError(f"block_rows must be zero (storage order) or positive, got {block_rows}")
        self.shards, self._heldout, self.name = shards, heldout, name
        self.model_name, self.d = model_name, int(shards[0].shape[-1])
        self.context_length, self.keep_bos, self.dataset_name = context_length, keep_bos, name
        self.seed, self.block_rows = seed, block_rows
        self.shard_names = shard_names or [f"array {i}" for i in range(len(shards))]
        self.rewrite_hint = "replace them with finite values"
        if any(s.shape[-1] != self.d for s in shards):
            raise DataError(f"{name}: the arrays disagree on the activation width")
        self.sizes = [int(s.shape[0]) for s in shards]
        self.total = sum(self.sizes)
        if self.total == 0:
            raise DataError(f"{name} holds no activations")
        self.read_seconds, self.bytes_read = 0.0, 0
        self._order: tuple[tuple[int, int], BlockOrder] | None = None  # the last epoch's, by (epoch, block_rows)

    def start_position(self) -> dict[str, int]:
        # The block size travels in the position, so a checkpoint resumes in the order it
        # was written in even if a later default changes (and a position without it, from
        # before shuffling, resumes in storage order).
        return {"token": 0, "block_rows": self.block_rows} if self.block_rows else {"token": 0}

    def _decode_into(self, out: np.ndarray, part: np.ndarray | Tensor) -> None:
        """Write stored rows as float32 into ``out`` ``(n, H, d)``."""
        if isinstance(part, Tensor):
            part = part.detach().to("cpu", torch.float32).numpy()
        np.copyto(out, np.asarray(part).reshape(out.shape), casting="unsafe")

    def _rows(self, part: np.ndarray | Tensor) -> Tensor:
        """float32 rows ``(n, H, d)``."""
        out = np.empty((part.shape[0], len(self.hooks), self.d), dtype=np.float32)
        self._decode_into(out, part)
        return torch.from_numpy(out)

    def _epoch_order(self, epoch: int, block_rows: int) -> BlockOrder:
        if self._order is None or self._order[0] != (epoch, block_rows):
            self._order = ((epoch, block_rows), BlockOrder(self.sizes, block_rows, self.seed, epoch))
        return self._order[1]

    def read_chunk(self, position: dict[str, int], min_tokens: int) -> tuple[Tensor, dict[str, int]]:
        started = time.perf_counter()
        start, block_rows = position["token"], position.get("block_rows", 0)
        epoch, offset = divmod(start, self.total)
        if offset == 0 and start > 0:  # said once; later epochs only with -v
            log.log(logging.WARNING if epoch == 1 else logging.INFO, "%s exhausted; starting epoch %d", self.name,
                    epoch + 1)
        n = max(0, min(min_tokens, self.total - offset))
        # Every piece is decoded straight into one output array: concatenating decoded
        # pieces instead cost a second copy into fresh memory, which measured slower
        # than the reading itself (torch.cat 0.8 GB/s against 3.6 GB/s for the copy out
        # of the memory map, one thread).
        out = np.empty((n, len(self.hooks), self.d), dtype=np.float32)
        done = 0
        for i, lo, hi in self._epoch_order(epoch, block_rows).pieces(offset, offset + n):
            stored = self.shards[i][lo:hi]
            self.bytes_read += int(stored.nbytes) if isinstance(stored, np.ndarray) else stored.numel() * stored.element_size()
            dest = out[done : done + hi - lo]
            self._decode_into(dest, stored)
            check_finite_rows(torch.from_numpy(dest), f"{self.name}: {self.shard_names[i]}", lo, self.rewrite_hint)
            done += hi - lo
        self.read_seconds += time.perf_counter() - started
        return torch.from_numpy(out), {**position, "token": start + n}

    def heldout(self, n_tokens: int) -> Tensor:
        if self._heldout is None or self._heldout.shape[0] == 0:
            raise DataError(f"{self.name} has no held-out activations; pass --eval-tokens 0 to skip the evaluation")
        if self._heldout.shape[0] < n_tokens:
            log.warning("%s: only %d of the %d held-out tokens asked for", self.name, self._heldout.shape[0], n_tokens)
        held = self._rows(self._heldout[:n_tokens])
        check_finite_rows(held, f"{self.name}: the held-out activations", 0, self.rewrite_hint)
        return held


def check_finite_rows(rows: Tensor, where: str, first_row: int, fix: str) -> None:
    """Stored activations must be finite; name the array and row, since the model is not to blame."""
    # The sum is finite only if every value is (NaN and Inf propagate; a finite sum
    # that overflows falls through to the exact check), and summing runs about 30× faster
    # than torch.isfinite on one CPU thread (14 vs 0.4 GB/s): this check reads every
    # activation trained on.
    if bool(torch.isfinite(rows.sum())):
        return
    bad = ~torch.isfinite(rows.reshape(rows.shape[0], -1)).all(-1)
    if bool(bad.any()):
        row = first_row + int(bad.nonzero()[0, 0])
        raise DataError(f"NaN or Inf activations in {where} (the first in row {row}); {fix}")


def open_activation_source(cfg: SourceConfig, device: torch.device, activation_cache: str | None = None) -> ActivationSource:
    """Build the source a config asks for, validating it before heavy work.

    From a cache: ``--hook`` may name some of its hook points (or patterns); training
    then reads just those. The cache is checked against ``--model`` and ``--keep-bos``
    first, then every file's checksum is verified, all before the first step.
    """
    if activation_cache:
        from .cache import CachedActivations, read_manifest  # the cache module builds on this one

        target = getattr(cfg, "target", None)  # a TrainConfig's: cfg.hook then spans inputs and targets
        if target:
            manifest = read_manifest(activation_cache)
            held = list(manifest.get("hooks") or [manifest.get("hook")])
            select_hook_points(target, held, lambda part: ConfigError(
                f"--target {part} contradicts the activation cache {activation_cache}, which holds {', '.join(held)}; "
                "name some of those, or write a cache with it (`saekit cache --hook ...`)"))
        source = CachedActivations(activation_cache, hooks=cfg.hook, seed=cfg.seed, verify=False)
        if cfg.keep_bos and not source.keep_bos:
            raise ConfigError(
                f"--keep-bos contradicts the activation cache {activation_cache}, which was written without BOS "
                "positions; drop --keep-bos or write a cache with `saekit cache --keep-bos`"
            )
        if source.keep_bos and not cfg.keep_bos:  # the default, which cannot be told from --no-keep-bos
            log.warning("the activation cache %s holds BOS positions (written with --keep-bos): the dictionaries "
                        "train on them and record keep_bos; write a cache without them to leave them out",
                        activation_cache)
        model = cfg.model
        if model is not None and Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())  # caches record local models resolved
        if model is not None and model != source.model_name:
            raise ConfigError(
                f"--model {model} contradicts the activation cache {activation_cache}, which holds activations of "
                f"{source.model_name}; drop --model or point --activation-cache at a cache of the right activations"
            )
        if cfg.context_length is not None and cfg.context_length != source.context_length:
            raise ConfigError(
                f"--context-length {cfg.context_length} contradicts the activation cache {activation_cache}, whose "
                f"activations were read in contexts of {source.context_length} tokens; drop --context-length or "
                "write a cache with the length you want"
            )
        if cfg.dataset is not None and describe_source(cfg.dataset) != source.dataset_name:
            raise ConfigError(
                f"--dataset {cfg.dataset} contradicts the activation cache {activation_cache}, which holds "
                f"activations of {source.dataset_name}; drop --dataset or write a cache of that text"
            )
        # What only shapes a model run: with a cache the model never runs, so a value
        # given here would be silently ignored.
        defaults = SourceConfig()
        unused = [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name in ("text_field", "dtype", "model_batch_size")
                  if getattr(cfg, name) != getattr(defaults, name)]
        if unused:
            several = len(unused) > 1
            them = "them" if several else "it"
            raise ConfigError(
                f"{', '.join(unused)}: the activation cache {activation_cache} holds activations already read, so the "
                f"model does not run: {'these flags have' if several else 'this flag has'} no effect; drop {them}, "
                f"or pass {them} to the `saekit cache` command that writes a cache"
            )
        source.verify()  # reads every file: after the cheap checks above
        return source
    if cfg.hook is not None:
        parse_hook_spec(cfg.hook)  # a malformed name fails before the model loads
    validate_source(cfg.dataset, cfg.text_field)
    lm = load_model(cfg.model, device=device, dtype=parse_dtype(cfg.dtype))
    return ModelActivations(
        lm,
        expand_hook_spec(cfg.hook, lm) if cfg.hook else default_hook(lm.n_layers),
        dataset=cfg.dataset,
        text_field=cfg.text_field,
        context_length=cfg.context_tokens(),
        model_batch_size=cfg.model_batch_size,
        seed=cfg.seed,
        keep_bos=cfg.keep_bos,
    )
