"""Training-step throughput of saekit on one accelerator: every architecture, two widths,
fp32 and bf16 autocast, against the dense-matmul bound of the same device.

    python benchmarks/gpu_step.py [--device cuda] [--sizes 4608,18432] [--batch 4096] [--steps 20]

Synthetic activations (sparse non-negative combinations of random unit directions in
d = 576, as train_throughput.py makes them) so that no model is needed. Per (precision,
architecture, F): tokens per second over the timed steps (after untimed warm-up steps,
the device synchronised around the clock), and the share of the dense bound: what a step
of five B×d×F products (10·d·F FLOPs per token) would do at the matmul rate measured here
in the same precision. bf16 runs the step under ``torch.autocast`` (weights and optimizer
state stay fp32); a configuration that fails says why instead of a figure.
"""

from __future__ import annotations

import argparse
import time

import torch

ARCHS = ("relu", "topk", "batchtopk", "gated", "jumprelu")


def synthetic(n: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(4096, d, generator=g), dim=-1)
    idx = torch.randint(0, 4096, (n, 20), generator=g)
    coef = torch.rand(n, 20, generator=g) * 3
    x = torch.zeros(n, d).index_add_(0, torch.arange(n).repeat_interleave(20), atoms[idx.reshape(-1)] * coef.reshape(-1, 1))
    return (x + 0.5 + 0.05 * torch.randn(n, d, generator=g)).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, B: int, d: int, F: int, dtype: torch.dtype) -> float:
    a, w = torch.randn(B, d, device=device, dtype=dtype), torch.randn(d, F, device=device, dtype=dtype)
    for _ in range(3):
        a @ w
    sync(device)
    t, n = time.perf_counter(), 20
    for _ in range(n):
        a @ w
    sync(device)
    return 2 * B * d * F * n / (time.perf_counter() - t)


def step_rate(arch: str, F: int, x: torch.Tensor, B: int, steps: int, warmup: int, bf16: bool) -> float:
    from saekit.config import TrainConfig
    from saekit.dictionaries import ARCHITECTURES, DictionaryConfig
    from saekit.training import DictionaryTrainer

    device, d = x.device, x.shape[1]
    k = 32 if ARCHITECTURES[arch].uses_k else None
    total = steps + warmup
    cfg = TrainConfig(arch=arch, k=k, expansion=F // d, batch_size=B, tokens=total * B, lr_warmup=0.0,
                      sparsity_warmup=0.0, buffer_tokens=B, eval_tokens=0, device=str(device), hook="resid_post.0")
    trainer = DictionaryTrainer(cfg, DictionaryConfig(arch=arch, d_in=d, d_sae=F, k=k, hook="resid_post.0"), device)
    trainer.init_from_sample(x[: 8 * B])
    batches = [x[i * B:(i + 1) * B] for i in range(x.shape[0] // B)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for i in range(total):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        with autocast:
            trainer.train_step(batches[i % len(batches)])
    sync(device)
    return steps * B / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="4608,18432", help="dictionary sizes F, comma-separated")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precisions", default="fp32,bf16")
    a = p.parse_args()
    device, d, B = torch.device(a.device), 576, a.batch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, batch {B}, d {d}, {a.steps} timed steps after {a.warmup}")
    x = synthetic(16 * B, d, device)
    print(f"{'precision':>9} {'arch':>10} {'F':>6} {'tok/s':>12} {'dense bound':>12} {'share':>6}")
    for precision in a.precisions.split(","):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for F in (int(s) for s in a.sizes.split(",")):
            bound = matmul_rate(device, B, d, F, dtype) / (10 * d * F)
            for arch in a.archs.split(","):
                try:
                    rate = step_rate(arch, F, x, B, a.steps, a.warmup, precision == "bf16")
                    print(f"{precision:>9} {arch:>10} {F:>6} {rate:>12,.0f} {bound:>12,.0f} {rate / bound:>6.1%}", flush=True)
                except Exception as e:  # a configuration that fails is a finding, not the end of the table
                    print(f"{precision:>9} {arch:>10} {F:>6} failed: {type(e).__name__}: {str(e)[:150]}", flush=True)


if __name__ == "__main__":
    main()
