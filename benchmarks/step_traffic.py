"""How much of the (B, F) batch a dense training step reads and writes, per architecture:
the figure that sets a graphed GPU step's time once its launches are gone.

    python benchmarks/step_traffic.py                       # bf16 autocast, as on a GPU
    python benchmarks/step_traffic.py --precision fp32 --ops

On an H200 a graphed step at B = 4096 takes roughly the time of its (B, F)-sized memory
traffic at the device's bandwidth plus its products at the matmul rate, a little more
(at F = 18432 in bf16, by this count: ReLU 22 tensors, 2.9 ms per step; gated 101, 7.7 ms;
a bf16 (B, F) tensor is 151 MB there), so this count, which needs no GPU, says where a
dense step's time goes. It runs the step that
``training.graphed_step`` captures (forward and backward under ``sparse.static_shapes``,
with dead features for aux-k) on the CPU under a dispatch mode and adds up, for every op
that is not a view, the (B, F)-sized tensors it takes or returns, in units of one bf16
(B, F) tensor: an upper bound on the traffic (an op writing a few entries of a (B, F)
tensor in place is counted whole), comparable between versions of the code.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, LossParams, build_dictionary, sparse

VIEWS = {"detach", "view", "t", "expand", "_unsafe_view", "as_strided", "permute", "transpose", "unsqueeze",
         "squeeze", "reshape", "alias", "slice", "select"}


class BatchTraffic(TorchDispatchMode):
    """Each non-view op's (B, F)-sized operands and results, in bytes."""

    def __init__(self, batch_entries: int):
        super().__init__()
        self.batch_entries = batch_entries
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func).split(".")[1] in VIEWS:
            return out
        results = out if isinstance(out, (tuple, list)) else [out]
        tensors = [t for t in [*args, *(kwargs or {}).values(), *results] if isinstance(t, torch.Tensor)]
        moved = sum(t.numel() * t.element_size() for t in tensors if t.numel() >= self.batch_entries)
        if moved:
            self.ops.append((str(func), moved))
        return out


def traffic(arch: str, B: int, d: int, F: int, bf16: bool) -> BatchTraffic:
    k = 16 if ARCHITECTURES[arch].uses_k else None
    torch.manual_seed(0)
    sae = build_dictionary(DictionaryConfig(arch=arch, d_in=d, d_sae=F, k=k))
    x = torch.randn(B, d)
    params = LossParams(sparsity_coeff=torch.tensor(0.1), dead_mask=torch.arange(F) % 7 == 0)
    counted = BatchTraffic(B * F)
    with sparse.static_shapes(), counted:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            out = sae(x, None, params)
        out.loss.backward()
    return counted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default=",".join(sorted(ARCHITECTURES)))
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--ops", action="store_true", help="list each op")
    args = p.parse_args()
    B, d, F = 512, 64, 2048  # the counts scale with B·F; small enough to run anywhere
    unit = B * F * 2
    print(f"(B, F) traffic of one dense step (forward and backward), in bf16 (B, F) tensors, {args.precision}")
    for arch in args.archs.split(","):
        counted = traffic(arch, B, d, F, args.precision == "bf16")
        print(f"{arch:>10}: {sum(b for _, b in counted.ops) / unit:5.1f} in {len(counted.ops)} ops")
        if args.ops:
            for name, moved in counted.ops:
                print(f"{'':14}{name:<44}{moved / unit:5.1f}")


if __name__ == "__main__":
    main()
