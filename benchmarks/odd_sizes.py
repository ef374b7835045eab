"""Odd sizes a careless user picks, and whether the result depends on them (issue 8).

    python benchmarks/odd_sizes.py

1. TopK (k = 5, F = 2048) on 50k synthetic tokens, batch 256, dead after 1,000 tokens,
   with a shuffle buffer that is a multiple of the batch (2048) and one that is not
   (2049), and with the norm filter on: held-out FVU, dead features, largest aux-k term.
   Before issue 8 the remainder of every chunk became a short batch; a one-token
   batch gave an aux-k term of ~3e9 and FVU 0.35 instead of 0.22.
2. BatchTopK (k = 4) for 4,000 and 4,001 tokens at batch 500: held-out L0. Before, the
   inference threshold came from the last batch alone, and a one-token last batch
   gave L0 1.73 instead of 3.88.

Synthetic data: x = Σ c_i g_i over a random unit-norm "true" dictionary of 512 features
in d = 64, about 8 active per token, plus a little noise. Every figure is on 8,192
held-out tokens from the same distribution.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from saekit import TrainConfig, train
from saekit.activations import ArrayActivations

D, N_TRUE = 64, 512


def synthetic(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(N_TRUE, D, generator=torch.Generator().manual_seed(1234))
    true /= true.norm(dim=1, keepdim=True)
    on = torch.rand(n, N_TRUE, generator=g) < 8 / N_TRUE
    mags = torch.rand(n, N_TRUE, generator=g) * 1.5 + 0.5
    return (on * mags) @ true + 0.01 * torch.randn(n, D, generator=g)


def run(tmp: str, name: str, **kw) -> tuple[object, list[dict]]:
    train_x, held = synthetic(60_000, 0), synthetic(8192, 1)
    cfg = TrainConfig(out=f"{tmp}/{name}", eval_tokens=8192, log_every=1, **kw)
    result = train(cfg, source=ArrayActivations([train_x.numpy()], heldout=held.numpy()))
    log = [json.loads(line) for line in (Path(tmp) / name / "log.jsonl").read_text().splitlines()]
    return result.heldout, log


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        print("1. TopK k=5, F=2048, 50,000 tokens, batch 256, dead after 1,000 tokens")
        print(f"   {'buffer':>8} {'norm cap':>8} {'tokens':>7} {'fvu':>7} {'dead':>5} {'max aux-k':>10}")
        for buffer, cap in ((2048, None), (2049, None), (2048, 1.5)):
            m, log = run(tmp, f"topk-{buffer}-{cap}", arch="topk", k=5, dict_size=2048, tokens=50_000, batch_size=256,
                         buffer_tokens=buffer, dead_after_tokens=1000, max_norm_ratio=cap)
            aux = max(r.get("loss_auxk", r.get("auxk", 0.0)) for r in log)  # "auxk" before issue 8
            print(f"   {buffer:>8} {str(cap):>8} {log[-1]['tokens']:>7} {m.fvu:7.4f} {m.n_dead:5d} {aux:10.3g}", flush=True)
        print("2. BatchTopK k=4, F=256, batch 500")
        print(f"   {'tokens':>7} {'held-out L0':>11}")
        for tokens in (4000, 4001):
            m, _ = run(tmp, f"btk-{tokens}", arch="batchtopk", k=4, dict_size=256, tokens=tokens, batch_size=500,
                       buffer_tokens=2000)
            print(f"   {tokens:>7} {m.l0:11.2f}", flush=True)


if __name__ == "__main__":
    main()
