"""`saekit train` from text against the bare truncated forward pass: is the trainer ever the bottleneck?

Runs a short training on the embedded model (or --model) and reads its log: the
training rate (tokens/s over the intervals after the first buffer fill) and
``data_wait_frac``, the share of each interval spent waiting for the model. Beside it,
the model alone: the decoder stack cut after the hook's block, on the same kind of
token batches, with no hooks and no copying. When the model is the bottleneck,
training runs at nearly the bare rate and ``data_wait_frac`` is near 1; the gap is
what the dictionary's steps (and saekit's reading) add.

    python benchmarks/end_to_end.py [--tokens 131072] [--arch topk] [--expansion 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from saekit import TrainConfig, train
from saekit.data import ContextStream
from saekit.hooks import HookPoint
from saekit.models import load_model


def bare_rate(model: str | None, hook: str, tokens: int, context_length: int, batch: int, device: str) -> float:
    lm = load_model(model, device=device)
    layer = HookPoint.parse(hook).layer
    truncated = copy.copy(lm.model.model)  # shares weights; only the layer list differs
    truncated._modules = dict(truncated._modules)
    truncated.layers = lm.model.model.layers[: layer + 1]
    batches = []
    for b in ContextStream(None, lm.tokenizer, context_length=context_length, batch_size=batch):
        batches.append(b)
        if sum(x.input_ids.numel() for x in batches) >= tokens:
            break
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        truncated(input_ids=batches[0].input_ids.to(lm.device))  # warm up
        sync()
        t = time.perf_counter()
        for b in batches:
            truncated(input_ids=b.input_ids.to(lm.device))
        sync()
    return sum(b.input_ids.numel() for b in batches) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--hook", default="resid_post.9")
    p.add_argument("--tokens", type=int, default=131_072)
    p.add_argument("--arch", default="topk")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--model-batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=a.model, hook=a.hook, arch=a.arch, expansion=a.expansion, tokens=a.tokens,
                          batch_size=a.batch_size, buffer_tokens=max(a.batch_size, 32_768), eval_tokens=0,
                          context_length=a.context_length, model_batch_size=a.model_batch_size, device=a.device,
                          log_every=2, out=str(Path(tmp) / "run"))
        t = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - t
        log = [json.loads(line) for line in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    # Every interval after the first (which holds the first fill of the buffer), refills
    # included, weighted by its duration: tokens over time, not a mean of rates.
    tokens = [b["tokens"] - a["tokens"] for a, b in zip(log, log[1:])]
    seconds = [n / r["tokens_per_s"] for n, r in zip(tokens, log[1:])]
    rate = sum(tokens) / sum(seconds)
    wait = sum(s * r["data_wait_frac"] for s, r in zip(seconds, log[1:])) / sum(seconds)
    bare = bare_rate(a.model, a.hook, min(a.tokens, 65_536), a.context_length, a.model_batch_size, a.device)
    print(f"{a.arch} x{a.expansion} at {a.hook}, batch {a.batch_size}, {a.tokens:,} tokens, device {a.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"  saekit train (steady intervals): {rate:,.0f} tok/s; waiting for the model {wait:.0%} of the time")
    print(f"  bare truncated forward:          {bare:,.0f} tok/s")
    print(f"  train / bare: {rate / bare:.2f}  (1.00: the dictionary's steps cost nothing beside the model)")
    print(f"  whole command incl. model load and first fill: {wall:.1f} s")


if __name__ == "__main__":
    main()
