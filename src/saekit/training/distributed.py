"""Training on several processes with torch.distributed (``torchrun … -m saekit train``).

Two ways to use N ranks (``--parallel``):

* ``data`` (data parallel, DDP): every dictionary is trained by all ranks. The global
  batch (``--batch-size``) is the batch of a one-process run; rank r steps on its share
  of it (``Ranks.share``) and DDP averages the gradients, so with the same flags N ranks
  see the same global batches as one and end with the same weights, to floating-point
  tolerance. What a one-process step computes over the whole batch is computed over
  the whole batch here too (``RankGroup``): BatchTopK's cut-off, the aux-k normaliser,
  the record of which features fired (dead features), the logged figures, and the
  resampling of dead features. Every rank holds the whole shuffle buffer (filled with
  1/N of the model's forward passes per rank and gathered), so the global batches, the
  activation scale and the initialisation are identical on every rank without further
  communication, and the state every rank holds is the whole run's: rank 0 alone
  writes it, and a checkpoint resumes on any number of ranks.
* ``dictionaries``: the dictionaries of a run (hook points × sweep values) are dealt
  out to the ranks; each rank runs its own model pass for the hook points of its own
  dictionaries and trains them alone, writing their folders.

Backends: NCCL on GPUs (each rank on ``cuda:LOCAL_RANK``), gloo on CPUs; the process
group comes from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError, SaekitError

PARALLEL_MODES = ("data", "dictionaries")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run (one rank when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that checks and writes the run's folders."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's rows of a batch of ``n``: contiguous, sizes differing by at most one."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def share_sizes(self, n: int) -> list[int]:
        """Every rank's number of rows of a batch of ``n`` (``share``), in rank order."""
        return [n * (r + 1) // self.world - n * r // self.world for r in range(self.world)]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small records and checkpoints)."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main(self, work: Callable[[], Any]) -> Any:
        """``work()`` run on rank 0 alone, its result on every rank; a ``SaekitError`` it
        raises (a refused folder, a missing held-out split) is raised on every rank alike,
        where the others would wait in their next collective until rank 0's exit broke
        it, each with a traceback."""
        if not self.distributed:
            return work()
        if self.main:
            try:
                result = work()
            except SaekitError as e:
                self.broadcast(("error", e))
                raise
            return self.broadcast(("ok", result))[1]
        outcome, value = self.broadcast(None)
        if outcome == "error":
            raise value
        return value

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = Ranks()


def ranks_from_environment(device: str = "auto") -> Ranks:
    """The ranks torchrun describes in the environment, with the process group started
    (once); one rank when the environment names none. The backend follows ``device``
    (``--device``): NCCL where the ranks use GPUs, gloo where they use CPUs (also on a
    machine that has GPUs: NCCL cannot reduce CPU tensors)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={world} but {', '.join(missing)} is not set; start distributed runs with torchrun "
                "(torchrun --nproc_per_node N -m saekit train ...)"
            )
        on_gpus = device in ("auto", "cuda") or device.startswith("cuda:")
        backend = "nccl" if on_gpus and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        # A long timeout: rank 0 evaluates on its own at the end while the others wait.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def rank_device(ranks: Ranks, asked: str) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` when GPUs are used, else as asked."""
    if not ranks.distributed:
        return asked
    if asked in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank}"
    if asked.startswith("cuda:"):
        raise ConfigError(
            f"--device {asked} names one GPU, but each of the {ranks.world} ranks takes its own "
            "(cuda:LOCAL_RANK); pass --device cuda or auto"
        )
    return asked


class RankGroup:
    """The ranks of a data-parallel run as the dictionaries see them (``LossParams.group``):
    sums and concatenations over every rank's share of the global batch."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the ranks (a new tensor; differentiable as the identity is not)."""
        out = t.detach().clone()
        dist.all_reduce(out)
        return out

    def gather(self, t: Tensor) -> Tensor:
        """Every rank's ``t`` concatenated along dim 0 in rank order (sizes may differ)."""
        return gather_rows(t, self.ranks)


def gather_rows(t: Tensor, ranks: Ranks, sizes: list[int] | None = None) -> Tensor:
    """Every rank's rows of ``t`` concatenated in rank order; ``sizes`` (each rank's row
    count) when every rank knows them already, else exchanged first."""
    if not ranks.distributed:
        return t
    if sizes is None:
        counts = torch.tensor([t.shape[0]], device=t.device)
        everyone = [torch.zeros_like(counts) for _ in range(ranks.world)]
        dist.all_gather(everyone, counts)
        sizes = [int(c) for c in everyone]
    longest = max(sizes)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(ranks.world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def close(ranks: Ranks) -> None:
    """End the process group (at the end of a distributed command)."""
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
