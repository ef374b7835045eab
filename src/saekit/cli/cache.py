"""``saekit cache``: activations written once to sharded files, read back by memory map."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import CacheConfig
from .common import add_config_flags, config_from_args


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="write activations to sharded files for repeated training",
        description="Run the model once and store the activations at a hook point as .npy shards, plus a "
        "held-out set (read back by memory map with `saekit train --activation-cache FOLDER`).",
    )
    add_config_flags(p, CacheConfig)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..activations import cache_activations

    cfg = config_from_args(CacheConfig, ns)
    bar = None

    def advance(done: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=cfg.tokens, desc="cache", unit="tok", unit_scale=True, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        result = cache_activations(cfg, progress=advance)
    finally:
        if bar is not None:
            bar.close()
    from ..activations import read_manifest

    manifest = read_manifest(result.folder)
    size = sum(p.stat().st_size for p in result.folder.glob("*.npy"))
    print(f"wrote {result.tokens:,} activations at {', '.join(manifest['hooks'])} ({manifest['dtype']}, "
          f"{size / 1e9:.2f} GB) in {result.shards} shard(s) and {result.heldout_tokens:,} held-out to {result.folder}")
    print(f"train from it with: saekit train --activation-cache {result.folder}")
    return 0
