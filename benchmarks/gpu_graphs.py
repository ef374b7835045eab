"""What capturing the step in a CUDA graph buys: each architecture's training step run op
by op (on the path saekit picks: sparse or dense by width, precision and density) and
replayed from a CUDA graph (the dense path under ``static_shapes``), side by side, at
two widths, in bf16 autocast and fp32.

    python benchmarks/gpu_graphs.py                        # on the GPU machine, from the repo root
    python benchmarks/gpu_graphs.py --sizes 4608 --precisions bf16 --archs topk,relu

The figures behind ``graph_pays`` in ``saekit/training/graphed_step.py`` (its comment
holds the H200 table). As in
benchmarks/gpu_cutover.py: synthetic activations (d = 576), a fresh ``DictionaryTrainer``
per run from the same seed, ``train_step`` timed after untimed warm-up steps (the graph
is captured during those), the two variants alternating twice and the faster run of
each printed, in ms per step, with the ratio eager / graphed (above 1: the graph pays).
"""

from __future__ import annotations

import torch

from gpu_cutover import make_trainer, steps_ms, timed_runs
from saekit.training import trainer as trainer_module


def main() -> None:
    args, device, batches = timed_runs(__doc__.split("\n\n")[0])
    d = batches[0].shape[1]
    print(f"ms per training step, eager / CUDA graph (ratio), B = {args.batch}, d = {d}, "
          + (torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)), flush=True)
    # Every architecture and width graphed when asked, so that both sides of the limits
    # in graph_pays are measured.
    chosen = trainer_module.graph_pays
    trainer_module.graph_pays = lambda device, *rest: device.type == "cuda"
    try:
        for F in (int(s) for s in args.sizes.split(",")):
            for precision in args.precisions.split(","):
                cells = []
                for arch in args.archs.split(","):
                    times: dict[bool, list[float]] = {False: [], True: []}
                    for order in ((False, True), (True, False)):
                        for graphs in order:
                            trainer = make_trainer(arch, F, batches, device, precision == "bf16", graphs)
                            assert (trainer.graphs == graphs) or device.type != "cuda"
                            steps_ms(trainer, batches[: args.warmup], device)
                            times[graphs].append(steps_ms(trainer, batches[args.warmup:], device))
                            del trainer
                    eager, graphed = min(times[False]), min(times[True])
                    cells.append(f"{arch} {eager:.2f}/{graphed:.2f} ({eager / graphed:.2f}x)")
                print(f"F = {F}, {precision}: " + "  ".join(cells), flush=True)
    finally:
        trainer_module.graph_pays = chosen


if __name__ == "__main__":
    main()
