"""Evaluation throughput against the model's own forward passes.

    python benchmarks/eval_speed.py DICTIONARY_FOLDER [--tokens 8192] [--device cpu]

`saekit.evaluate` runs, per batch, the prefix up to the hook twice (once for the mean
activation, once for the activations) and the rest of the model four times (clean,
spliced, zero, mean). The baseline is the plain model (LM head included) on the same
token batches; the naive alternative, four full passes, is 4x the baseline's time.
"""

from __future__ import annotations

import argparse
import time

import torch

import saekit
from saekit.data import ContextStream
from saekit.evaluation import evaluate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    sae = saekit.load(a.folder, device=a.device)
    lm = saekit.load_model(sae.cfg.model or None, device=a.device)
    ctx = sae.cfg.context_length or 128
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)

    batches, n = [], 0
    for batch in ContextStream(None, lm.tokenizer, context_length=ctx, batch_size=2048 // ctx, split="heldout"):
        batches.append(batch)
        n += batch.num_tokens()
        if n >= a.tokens:
            break
    with torch.no_grad():
        lm.model(input_ids=batches[0].input_ids.to(lm.device))  # warm up
        sync()
        t = time.perf_counter()
        for b in batches:
            lm.model(input_ids=b.input_ids.to(lm.device), attention_mask=b.attention_mask.to(lm.device), use_cache=False)
        sync()
        plain = n / (time.perf_counter() - t)

    t = time.perf_counter()
    res = evaluate(sae, lm, tokens=a.tokens, regimes=["fixed"])
    sync()
    rate = res.fixed.n_tokens / (time.perf_counter() - t)
    print(f"device {lm.device}; {sae.cfg.hook} of {lm.name}; {res.fixed.n_tokens} tokens in contexts of {ctx}")
    print(f"plain forward pass (with LM head): {plain:8.0f} tokens/s")
    print(f"saekit.evaluate (4 spliced passes): {rate:8.0f} tokens/s = {rate / plain:.2f}x one forward pass, "
          f"{4 * rate / plain:.2f}x the speed of four separate passes")


if __name__ == "__main__":
    main()
