"""Shuffled full batches from any activation source, resumable exactly.

``ActivationBuffer`` fills a chunk of at least ``buffer_tokens`` activations, permutes it
with a generator seeded by (seed, chunk index), and serves it batch by batch. Its
state is a few numbers plus the rows carried into the next chunk, so a checkpoint
stays small and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch
from torch import Tensor

from ..config import TrainConfig
from ..errors import DataError
from .sources import ActivationSource

log = logging.getLogger(__name__)


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
            "served_before_chunk": 0, "norm_cap": None, "carry": torch.empty(0, len(source.hooks), source.d),
        }
        self.chunk_start: dict[str, int] = dict(state["chunk_start"])
        self.chunk_index: int = int(state["chunk_index"])
        self.batches_done: int = int(state["batches_done"])
        # Tokens read into the buffer (after the norm cap) before the current chunk.
        self.served_before_chunk: int = int(state["served_before_chunk"])
        # One cap per hook point; a token over any of its caps is dropped for all of them
        # (every dictionary of one pass trains on the same tokens). A float: a checkpoint
        # of a one-hook run written before sources served several hook points.
        cap = state["norm_cap"]
        self.norm_cap: list[float] | None = [cap] if isinstance(cap, (int, float)) else cap
        # Rows of earlier chunks that did not fill a batch; they open the current chunk.
        carry = state["carry"]
        self.carry: Tensor = carry[:, None] if carry.ndim == 2 else carry
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
                read, nxt = torch.empty(0, len(self.source.hooks), self.source.d), self.chunk_start
            else:
                read, nxt = self.source.read_chunk(self.chunk_start, want)
                read = read[:want]
            new = self._filter(read)
            rows = torch.cat([self.carry.to(new.device), new]) if self.carry.shape[0] else new
            self._chunk = (rows, new.shape[0], read.shape[0], nxt)
        return self._chunk

    def _filter(self, chunk: Tensor) -> Tensor:
        if self.norm_cap is None:
            return chunk
        cap = torch.tensor(self.norm_cap, dtype=chunk.dtype, device=chunk.device)
        return chunk[(chunk.norm(dim=-1) <= cap).all(-1)]

    def peek_sample(self) -> Tensor:
        """The current chunk, unshuffled: the sample the activation scale is estimated on."""
        rows = self._load()[0]
        if rows.shape[0] == 0:
            raise DataError("the data source yielded no activations; check --dataset (it may be empty)")
        return rows

    def set_norm_cap(self, cap: list[float] | None) -> None:
        """Drop tokens with a norm above ``cap`` (one per hook point) from now on (the chunk
        in hand included)."""
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
