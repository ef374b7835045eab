"""Where the sparse training step stops paying on a GPU: each architecture's step on the
sparse path and on the dense path, side by side, at two widths, in bf16 autocast and fp32.

    python benchmarks/gpu_cutover.py                       # on the GPU machine, from the repo root
    python benchmarks/gpu_cutover.py --device cpu --sizes 1152 --batch 512 --steps 4   # a quick try here

The figures behind ``SPARSE_BELOW_DENSITY_GPU``, ``SPARSE_BELOW_DENSITY_GPU_HALF`` and
``SPARSE_MIN_FEATURES_GPU_HALF`` in ``saekit/dictionaries/sparse.py`` (their comment holds
the H200 table). Each (architecture, width, precision) builds a fresh
``DictionaryTrainer`` per path from the same seed and synthetic activations (sparse
non-negative combinations of random unit directions, d = 576), forces the path by setting
the device's cut-over to 1.01 (sparse) or 0 (dense), and times ``train_step`` (untimed
warm-up steps first, the device synchronised around the clock); the two paths alternate
twice and the faster run of each is printed, in ms per step.
"""

from __future__ import annotations

import argparse
import time

import torch

from saekit.config import TrainConfig
from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, sparse
from saekit.training import DictionaryTrainer

ARCHS = ("relu", "topk", "batchtopk", "gated", "jumprelu")
CUTOVERS = ("SPARSE_BELOW_DENSITY", "SPARSE_BELOW_DENSITY_GPU", "SPARSE_BELOW_DENSITY_GPU_HALF")


def synthetic(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(4096, d, generator=g), dim=-1)
    idx = torch.randint(0, 4096, (n, 20), generator=g)
    return (atoms[idx] * torch.rand(n, 20, 1, generator=g) * 3).sum(1) + 0.5


def force(path: str) -> None:
    for name in CUTOVERS:
        setattr(sparse, name, 1.01 if path == "sparse" else 0.0)
    sparse.SPARSE_MIN_FEATURES_GPU_HALF = 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(
    arch: str, F: int, batches: list[torch.Tensor], device: torch.device, bf16: bool, graphs: bool = False
) -> DictionaryTrainer:
    """A fresh trainer for (arch, F), seeded alike, its scale and init from the first batches;
    its step op by op unless ``graphs`` (then from a CUDA graph where ``graph_pays``)."""
    d, B = batches[0].shape[1], batches[0].shape[0]
    k = 32 if ARCHITECTURES[arch].uses_k else None
    cfg = TrainConfig(arch=arch, k=k, dict_size=F, batch_size=B, tokens=100 * B, lr_warmup=0.05, sparsity_warmup=0.05,
                      buffer_tokens=B, eval_tokens=0, device=str(device), hook="resid_post.9",
                      autocast="bf16" if bf16 else "none", cuda_graphs=graphs)
    torch.manual_seed(0)
    trainer = DictionaryTrainer(cfg, DictionaryConfig(arch=arch, d_in=d, d_sae=F, k=k, hook="resid_post.9"), device)
    trainer.init_from_sample(torch.cat(batches[:4]))
    return trainer


def steps_ms(trainer: DictionaryTrainer, batches: list[torch.Tensor], device: torch.device) -> float:
    """Milliseconds per ``train_step`` over ``batches``, the device synchronised around the clock."""
    sync(device)
    start = time.perf_counter()
    for x in batches:
        trainer.train_step(x)
    sync(device)
    return (time.perf_counter() - start) / len(batches) * 1000


def step_ms(arch: str, F: int, batches: list[torch.Tensor], device: torch.device, bf16: bool, warmup: int) -> float:
    trainer = make_trainer(arch, F, batches, device, bf16)
    steps_ms(trainer, batches[:warmup], device)
    return steps_ms(trainer, batches[warmup:], device)


def add_shape_flags(p: argparse.ArgumentParser) -> None:
    """The flags both GPU scripts take: where, which widths, architectures, batch and precisions."""
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="4608,18432", help="dictionary sizes F, comma-separated")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--precisions", default="bf16,fp32")


def timed_runs(description: str) -> tuple[argparse.Namespace, torch.device, list[torch.Tensor]]:
    """The flags of a script that times runs of steps (shapes, ``--steps``, ``--warmup``),
    parsed; the device; the synthetic batches for the warm-up and the timed steps (d = 576)."""
    p = argparse.ArgumentParser(description=description)
    add_shape_flags(p)
    p.add_argument("--steps", type=int, default=16, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=4)
    args = p.parse_args()
    device = torch.device(args.device)
    x = synthetic(args.batch * (args.warmup + args.steps), 576).to(device)
    return args, device, list(x.split(args.batch))


def main() -> None:
    args, device, batches = timed_runs(__doc__.split("\n\n")[0])
    d = batches[0].shape[1]
    print(f"ms per training step, sparse / dense path, B = {args.batch}, d = {d}, {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    saved = {name: getattr(sparse, name) for name in (*CUTOVERS, "SPARSE_MIN_FEATURES_GPU_HALF")}
    try:
        for F in (int(s) for s in args.sizes.split(",")):
            for precision in args.precisions.split(","):
                cells = []
                for arch in args.archs.split(","):
                    times: dict[str, list[float]] = {"sparse": [], "dense": []}
                    for order in (("sparse", "dense"), ("dense", "sparse")):
                        for path in order:
                            force(path)
                            times[path].append(step_ms(arch, F, batches, device, precision == "bf16", args.warmup))
                    cells.append(f"{arch} {min(times['sparse']):.2f}/{min(times['dense']):.2f}")
                print(f"F = {F}, {precision}: " + "  ".join(cells), flush=True)
    finally:
        for name, value in saved.items():
            setattr(sparse, name, value)


if __name__ == "__main__":
    main()
