"""Inference-time optimisation against a dictionary's own encoder, at matched L0.

    .venv/bin/saekit train                                   # once: the default dictionary
    .venv/bin/python benchmarks/ito_methods.py [DICT] [--tokens 2048] [--l0 N] [--methods ...] [--threads 2]

DICT defaults to the default run's folder (runs/smollm2-135m-resid_post.9-topk). A thin
front to ``saekit.interpret.ito_comparison.compare_codes`` (what ``saekit ito`` runs),
printing its tables and writing nothing: on ``--tokens`` held-out tokens in fixed
contexts of the dictionary's training length (BOS as trained), FVU, the mean L0 reached,
loss recovered, CE diff and the time per 1,000 tokens for the encoder's codes and for
each solver of ``saekit.interpret`` at the encoder's mean L0 (or ``--l0``; FISTA's L1
penalty bisected to about that L0); then the thresholding test (codes below T set to 0,
T in multiples of the encoder's median non-zero activation) for the encoder's codes and
the best optimised ones, with the share of the gap between them that small activations
explain.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import saekit
from saekit.models import resolve_device
from saekit.interpret.ito_comparison import METHODS, compare_codes

DEFAULT_DICT = Path("runs/smollm2-135m-resid_post.9-topk")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dictionary", nargs="?", default=str(DEFAULT_DICT))
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--l0", type=int, default=None, help="the L0 for the pursuits (default: the encoder's, rounded)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not Path(a.dictionary).exists():
        raise SystemExit(f"{a.dictionary} does not exist; train the default dictionary first (.venv/bin/saekit train)")
    device = resolve_device(a.device)
    sae = saekit.load(a.dictionary, device=device)
    lm = saekit.load_model(sae.cfg.model or None, device=device)
    start = time.perf_counter()
    result = compare_codes(sae, lm, methods=a.methods.split(","), tokens=a.tokens, l0=a.l0)
    print(result.table())
    print()
    print(result.thresholding_table())
    print(f"\n{time.perf_counter() - start:.0f} s in all on {device} ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
