"""``saekit probe lora``: a linear head trained jointly with LoRA adapters, beside a frozen probe.

Both are trained on the training split of ``saekit probe train`` (same ``--test-fraction``
and ``--seed``) and scored on its held-out split; the table says how many parameters each
trained. ``--save DIR`` writes the model with the adapters merged into its weights
(``DIR/model``, loadable without peft) and the head (``DIR/head.safetensors``, a probe file).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import add_device_flags, add_statement_cache_flags


def register(verbs: Any) -> None:
    p = verbs.add_parser(
        "lora", help="a probe head trained jointly with LoRA adapters, against a frozen probe",
        description="Train a linear head on the activation at --hook together with LoRA adapters on the blocks "
        "below it (peft), on the training split of 'saekit probe train', and print its held-out accuracy and "
        "AUROC beside a frozen logistic probe's on the same split, with the parameters each trained. Needs "
        "peft: pip install 'saekit[probes]'.")
    p.add_argument("--dataset", nargs="+", required=True, metavar="D",
                   help="built-in dataset name(s) or CSV path(s); several are pooled")
    p.add_argument("--hook", required=True, help="the hook point the head reads, e.g. resid_post.12")
    p.add_argument("--position", default="last", help="the token: last (default), mean, or an index into the "
                   "statement's tokens (0 first, -1 last)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 2 × rank)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training split (default 3)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate for adapters and head (default 2e-4)")
    p.add_argument("--batch-size", type=int, default=16, help="statements per step (default 16)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--init", default="logistic", choices=("logistic", "zero"),
                   help="the head's start: the frozen logistic probe (default) or zero")
    p.add_argument("--l2", type=float, default=None, help="the frozen logistic probe's L2 penalty (default 1e-2)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="held-out share (default 0.25, as probe train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the builders, LoRA's start and the order")
    p.add_argument("--model", default=None, help="the model (default: the embedded SmolLM2-135M)")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="write DIR/model (the merged model) and DIR/head.safetensors (the head, a probe file)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    add_statement_cache_flags(p)
    add_device_flags(p, "model dtype (training wants float32) (default float32)")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..hooks import HookPoint
    from ..io.files import atomic_write_text, check_writable_file, check_writable_folder
    from ..models import load_model, parse_dtype, resolve_device
    from ..probes import load_dataset, parse_position
    from ..probes.lora import LoraSettings, require_peft, train_lora_probe
    from ..probes.training import ProbeRun
    from .progress import ProgressBars

    # Everything checkable is checked before the model loads.
    require_peft()
    settings = LoraSettings(rank=ns.rank, alpha=ns.lora_alpha, epochs=ns.epochs, max_steps=ns.max_steps, lr=ns.lr,
                            batch_size=ns.batch_size, weight_decay=ns.weight_decay, init=ns.init, seed=ns.seed)
    HookPoint.parse(ns.hook)
    position = parse_position(ns.position)
    run_cfg = ProbeRun(probe="logistic", params={"l2": ns.l2} if ns.l2 is not None else {}, position=position,
                       test_fraction=ns.test_fraction, seed=ns.seed)
    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    save = None
    if ns.save:
        save = check_writable_folder(Path(ns.save), "--save")
        if save.is_dir() and any(p.name in ("model", "head.safetensors") for p in save.iterdir()):
            raise ConfigError(f"--save {save} already holds a saved LoRA probe; choose a new folder or remove it")
    datasets = [load_dataset(d, ns.seed) for d in ns.dataset]

    lm = load_model(ns.model, device=resolve_device(ns.device), dtype=parse_dtype(ns.dtype))
    base_name = lm.name
    bars = ProgressBars("probe lora")
    try:
        result, probe = train_lora_probe(lm, settings, datasets, ns.hook, run_cfg,
                                         cache_dir=None if ns.no_cache else ns.cache_dir, use_cache=not ns.no_cache,
                                         progress=bars)
    finally:
        bars.close()
    what = "+".join(d.name for d in datasets)
    print(f"{what} at {ns.hook}, position {position}, {base_name}: {result.n_train} training and {result.n_test} "
          f"held-out statements (the split of saekit probe train)")
    print(f"LoRA rank {result.rank} (alpha {result.lora_alpha:g}) on blocks {result.adapter_layers[0]}-"
          f"{result.adapter_layers[-1]} ({', '.join(result.target_modules)}): {result.steps} steps, "
          f"{result.epochs} epoch(s), {result.wall_s:.1f} s; training loss by epoch "
          + " ".join(f"{v:.4f}" for v in result.losses))
    print(f"{'':<22} {'parameters':>12} {'held-out acc':>13} {'auroc':>7}")
    print(f"{'frozen logistic probe':<22} {result.frozen_parameters:>12,} {result.frozen.accuracy:>13.3f} "
          f"{result.frozen.auroc:>7.3f}")
    print(f"{'LoRA + linear head':<22} {result.lora_parameters:>12,} {result.lora.accuracy:>13.3f} "
          f"{result.lora.auroc:>7.3f}")
    if result.merged_max_diff is not None:
        print(f"merged into the weights: head scores differ from the adapter model's by at most "
              f"{result.merged_max_diff:.2e}")
    info = {"base_model": base_name, "datasets": [d.name for d in datasets], "lora": {
        "rank": result.rank, "alpha": result.lora_alpha, "layers": result.adapter_layers,
        "modules": result.target_modules, "steps": result.steps, "lr": ns.lr}}
    if save is not None:
        model_dir, head_path = probe.save(save, info)
        print(f"wrote {model_dir} (merged model) and {head_path} (head)")
    if out is not None:
        record = {"base_model": base_name, "datasets": [d.name for d in datasets], "test_fraction": ns.test_fraction,
                  "seed": ns.seed, "lr": ns.lr, "batch_size": ns.batch_size, **result.to_dict()}
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
