"""Activation extraction throughput against the bare truncated forward pass.

Bare: the model cut after the hook's block (no hooks, no masking, no tokenizer),
run on the same token batches. saekit: ``ModelActivations.read_chunk``, which
includes tokenisation, the hook, early stopping, BOS removal and the copy out.

    python benchmarks/extraction_speed.py [--model M] [--hook resid_post.9] [--tokens 65536] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from saekit.activations import ModelActivations
from saekit.data import ContextStream
from saekit.hooks import HookPoint
from saekit.models import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--hook", default="resid_post.9")
    p.add_argument("--tokens", type=int, default=65_536)
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    lm = load_model(a.model, device=a.device, dtype=a.dtype)
    layer = HookPoint.parse(a.hook).layer
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)

    batches = []
    stream = ContextStream(None, lm.tokenizer, context_length=a.context_length, batch_size=a.batch)
    for batch in stream:
        batches.append(batch)
        if sum(b.input_ids.numel() for b in batches) >= a.tokens:
            break
    n_tokens = sum(b.input_ids.numel() for b in batches)

    truncated = copy.copy(lm.model.model)  # shares weights; only the layer list differs
    truncated._modules = dict(truncated._modules)  # copy.copy shares this dict with the original
    truncated.layers = lm.model.model.layers[: layer + 1]

    def bare() -> float:
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                truncated(input_ids=b.input_ids.to(lm.device)).last_hidden_state
        sync()
        return n_tokens / (time.perf_counter() - t)

    # Steady state, as in training: the stream is opened (and the corpus read and
    # shuffled) once per run, so that one-off cost is paid before the clock starts.
    src = ModelActivations(lm, a.hook, dataset=None, context_length=a.context_length, model_batch_size=a.batch)
    position = src.read_chunk({"contexts": 0}, 1)[1]

    def saekit_path() -> float:
        nonlocal position
        sync()
        t = time.perf_counter()
        acts, after = src.read_chunk(position, a.tokens)
        sync()
        elapsed = time.perf_counter() - t
        n = (after["contexts"] - position["contexts"]) * a.context_length
        position = after
        return n / elapsed

    bare()  # warm up
    rb, rs = 0.0, 0.0
    for _ in range(a.repeats):  # interleaved, so a busy moment hits both alike
        rb, rs = max(rb, bare()), max(rs, saekit_path())
    print(f"device {lm.device}, {lm.name}, hook {a.hook}, {n_tokens} tokens in contexts of {a.context_length}, batch {a.batch}")
    print(f"bare truncated forward : {rb:10.0f} tokens/s")
    print(f"saekit extraction      : {rs:10.0f} tokens/s  ({rs / rb:.1%} of bare)")


if __name__ == "__main__":
    main()
