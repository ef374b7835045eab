"""How fast training reads an activation cache, and how long verifying it takes.

Writes a synthetic cache (random activations, --tokens × --hooks × --d) once per storage
dtype, then reads one epoch as training does (``read_chunk`` in buffer-sized chunks,
decoding to float32 and checking finiteness) in storage order and shuffled across
shards, and verifies every file's checksum. Each read is measured twice: from the page
cache ("warm") and after asking the kernel to drop this cache's pages ("cold",
``posix_fadvise(DONTNEED)``, which touches no other file), so the second figure is the
disk's. GB/s counts bytes as stored (a bfloat16 cache holds half the bytes of a float32
one for the same tokens); tokens/s is what the trainer receives.

    python benchmarks/cache_read_speed.py [--tokens 500000] [--d 768] [--hooks 1] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from saekit.activations import CachedActivations, write_activation_cache
from saekit.activations.cache import DEFAULT_BLOCK_ROWS


class RandomActivations:
    """A stand-in for a model: Gaussian rows, any number of them, the same for a seed."""

    model_name, context_length, keep_bos, seed, dataset_name = "synthetic", 128, False, 0, "random"

    def __init__(self, hooks: int, d: int):
        self.hooks, self.d = tuple(f"resid_post.{i}" for i in range(hooks)), d

    def start_position(self) -> dict[str, int]:
        return {"token": 0}

    def read_chunk(self, position: dict[str, int], min_tokens: int):
        g = torch.Generator().manual_seed(position["token"])
        return torch.randn(min_tokens, len(self.hooks), self.d, generator=g), {"token": position["token"] + min_tokens}

    def heldout(self, n: int):
        return torch.randn(n, len(self.hooks), self.d)


def drop_from_page_cache(folder: Path) -> None:
    for path in folder.glob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_epoch(folder: Path, block_rows: int, chunk: int) -> tuple[float, float, float]:
    """(GB/s stored, tokens/s, seconds) for one epoch read as training reads it."""
    cached = CachedActivations(folder, block_rows=block_rows, verify=False)
    position = cached.start_position()
    started = time.perf_counter()
    done = 0
    while done < cached.total:
        rows, position = cached.read_chunk(position, min(chunk, cached.total - done))
        done += rows.shape[0]
    seconds = time.perf_counter() - started
    return cached.bytes_read / cached.read_seconds / 1e9, done / seconds, seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=500_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--hooks", type=int, default=1)
    p.add_argument("--shard-tokens", type=int, default=65_536)
    p.add_argument("--chunk", type=int, default=65_536, help="rows per read_chunk (the training buffer's size)")
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.add_argument("--dtypes", default="float32,bfloat16")
    a = p.parse_args()
    torch.set_num_threads(1)  # as a training run's data path uses it: numpy decodes on one core

    root = Path(tempfile.mkdtemp(prefix="saekit-cache-bench-", dir=a.dir))
    print(f"{a.tokens:,} tokens × {a.hooks} hook point(s) × d {a.d}, shards of {a.shard_tokens:,}, "
          f"chunks of {a.chunk:,}, shuffled blocks of {DEFAULT_BLOCK_ROWS:,} rows; cpu cores {os.cpu_count()}")
    try:
        for dtype in a.dtypes.split(","):
            folder = root / dtype
            started = time.perf_counter()
            write_activation_cache(RandomActivations(a.hooks, a.d), folder, a.tokens, shard_tokens=a.shard_tokens,
                                   heldout_tokens=4096, dtype=dtype)
            size = sum(f.stat().st_size for f in folder.glob("*.npy")) / 1e9
            print(f"\n{dtype}: {size:.2f} GB written in {time.perf_counter() - started:.1f} s (random rows included)")
            for state in ("warm", "cold"):
                if state == "cold":
                    drop_from_page_cache(folder)
                cached = CachedActivations(folder, verify=False)
                started = time.perf_counter()
                cached.verify()
                seconds = time.perf_counter() - started
                print(f"  verify checksums  {state}: {size / seconds:6.2f} GB/s ({seconds:.2f} s, {seconds / size:.2f} s per GB)")
            for order, block_rows in (("sequential", 0), ("shuffled", DEFAULT_BLOCK_ROWS)):
                for state in ("warm", "cold"):
                    if state == "cold":
                        drop_from_page_cache(folder)
                    else:
                        read_epoch(folder, block_rows, a.chunk)  # bring the pages in
                    gbps, tps, seconds = read_epoch(folder, block_rows, a.chunk)
                    print(f"  read {order:10s} {state}: {gbps:6.2f} GB/s stored, {tps / 1e6:6.2f} M tokens/s "
                          f"({seconds:.2f} s per epoch)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
