"""Where a training step's time goes on a GPU: wall time against the time the kernels
take, kernel launches and host-device copies per step, and the ops that cost most.

    python benchmarks/gpu_profile.py                          # on the GPU machine, from the repo root
    python benchmarks/gpu_profile.py --archs topk --sizes 18432 --precisions fp32
    python benchmarks/gpu_profile.py --device cpu --sizes 1152 --batch 512   # the same report here (CPU ops)

A step whose wall time is well above its kernels' time is launch-bound: the host cannot
queue kernels as fast as the GPU runs them (on an H200 at B = 4096, TopK 8x bf16 ran 7 ms
of wall time for 3.7 ms of kernels before the gathers were chunked for GPUs; see
``GATHER_CHUNK_BYTES_GPU``). The fix there is fewer launches (fusion, CUDA graphs), not
faster kernels. Synthetic activations as benchmarks/gpu_cutover.py makes them; the step
is ``DictionaryTrainer.train_step`` with ``--autocast`` as configured, on the path
``saekit train`` would take.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from gpu_cutover import add_shape_flags, make_trainer, steps_ms, synthetic

COPIES = ("cudaMemcpyAsync", "cudaStreamSynchronize", "cudaDeviceSynchronize")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_flags(p)
    p.add_argument("--steps", type=int, default=8, help="timed (and then profiled) steps")
    p.add_argument("--top", type=int, default=8, help="ops listed per step")
    p.add_argument("--graphs", action="store_true", help="the step from a CUDA graph, where saekit would use one")
    args = p.parse_args()
    device = torch.device(args.device)
    d, B, warmup = 576, args.batch, 3
    batches = list(synthetic(B * (warmup + args.steps), d).to(device).split(B))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for F in (int(s) for s in args.sizes.split(",")):
        for precision in args.precisions.split(","):
            for arch in args.archs.split(","):
                trainer = make_trainer(arch, F, batches, device, precision == "bf16", args.graphs)
                steps_ms(trainer, batches[:warmup], device)
                wall = steps_ms(trainer, batches[warmup:], device)
                with profile(activities=activities) as prof:
                    steps_ms(trainer, batches[warmup:], device)
                ops = prof.key_averages()
                n = args.steps
                kernels = sum(e.self_device_time_total for e in ops) / n / 1000
                launches = sum(e.count for e in ops if e.key in ("cudaLaunchKernel", "cuLaunchKernel")) / n
                copies = sum(e.count for e in ops if e.key in COPIES) / n
                print(f"\n{arch} F = {F} {precision}: {wall:.2f} ms per step (wall), kernels {kernels:.2f} ms, "
                      f"{launches:.0f} launches, {copies:.0f} copies/syncs per step")
                by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
                for e in sorted(ops, key=lambda e: -getattr(e, by))[: args.top]:
                    print(f"   {e.key[:72]:<72} {getattr(e, by) / n / 1000:7.3f} ms  x{e.count / n:.0f}")


if __name__ == "__main__":
    main()
