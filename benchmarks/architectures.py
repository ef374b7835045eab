"""Train each architecture on one activation cache at a fixed budget and print a table.

    saekit cache --out acts --tokens 300000          # once (about 2.5 min on 2 CPU cores)
    python benchmarks/architectures.py acts [--tokens 300000] [--runs '[{"arch": "relu", "l1_coeff": 2}]']

Every figure is measured on the cache's held-out activations (documents never trained on).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from saekit import TrainConfig, train

DEFAULT_RUNS = [{"arch": a} for a in ("topk", "batchtopk", "relu", "gated", "jumprelu")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cache")
    p.add_argument("--tokens", type=int, default=300_000)
    p.add_argument("--runs", type=json.loads, default=DEFAULT_RUNS, help="JSON list of TrainConfig overrides")
    a = p.parse_args()
    print(f"{'settings':<42} {'fvu':>7} {'L0':>7} {'dead':>6} {'cosine':>7} {'gamma':>6} {'time':>6}")
    for run in a.runs:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(activation_cache=a.cache, tokens=a.tokens, out=f"{tmp}/run", **run)
            t = time.perf_counter()
            m = train(cfg).heldout
            print(f"{json.dumps(run):<42} {m.fvu:7.4f} {m.l0:7.1f} {m.n_dead:6d} {m.cosine:7.3f} "
                  f"{m.relative_reconstruction_bias:6.3f} {time.perf_counter() - t:5.0f}s", flush=True)
    print(f"(held-out tokens: {m.n_tokens}; budget {a.tokens} tokens per run)")


if __name__ == "__main__":
    main()
