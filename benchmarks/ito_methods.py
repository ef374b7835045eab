"""Inference-time optimisation against a dictionary's own encoder, at matched L0.

    .venv/bin/saekit train                                   # once: the default dictionary
    .venv/bin/python benchmarks/ito_methods.py [DICT] [--tokens 1000] [--l0 N] [--threads 2]

DICT defaults to the default run's folder (runs/smollm2-135m-resid_post.9-topk). Reads
``--tokens`` held-out tokens at the dictionary's hook point (fixed contexts of its
training length, BOS as trained), then prints, for the encoder's codes and for each
solver of ``saekit.interpret`` at the encoder's mean L0 (or ``--l0``): FVU, the mean L0
the codes reach, and the time per 1,000 tokens.

Then the thresholding test: every code below T is set to 0, for T at multiples of the
median non-zero activation, and FVU is printed for the encoder's codes and OMP's, to
show how much of the gap between them is in the small activations.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import saekit
from saekit.data import ContextStream
from saekit.interpret import fista, gradient_pursuit, matching_pursuit, orthogonal_matching_pursuit

DEFAULT_DICT = Path("runs/smollm2-135m-resid_post.9-topk")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dictionary", nargs="?", default=str(DEFAULT_DICT))
    p.add_argument("--tokens", type=int, default=1000)
    p.add_argument("--l0", type=int, default=None, help="the L0 for the pursuits (default: the encoder's, rounded)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not Path(a.dictionary).exists():
        raise SystemExit(f"{a.dictionary} does not exist; train the default dictionary first (.venv/bin/saekit train)")
    sae = saekit.load(a.dictionary)
    lm = saekit.load_model(sae.cfg.model or None)
    stream = ContextStream(None, lm.tokenizer, context_length=sae.cfg.context_length or 128, batch_size=8,
                           split="heldout")
    parts, n = [], 0
    for batch in stream:
        acts = saekit.read_activations(lm, [sae.cfg.hook], batch.input_ids, batch.attention_mask)[sae.cfg.hook]
        parts.append(acts[batch.token_mask(keep_bos=sae.cfg.keep_bos)].float())
        n += parts[-1].shape[0]
        if n >= a.tokens:
            break
    x = torch.cat(parts)[: a.tokens]
    total = (x - x.mean(0)).pow(2).sum()

    def figures(f: torch.Tensor) -> tuple[float, float]:
        return float((sae.decode(f) - x).pow(2).sum() / total), float((f > 0).sum(1).float().mean())

    with torch.no_grad():
        t = time.perf_counter()
        f_enc = sae.encode(x)
        t_enc = time.perf_counter() - t
        fvu_enc, l0_enc = figures(f_enc)
        l0 = a.l0 or max(1, round(l0_enc))
        print(f"{sae.cfg.arch} dictionary, F = {sae.cfg.d_sae}, {sae.cfg.hook} of {sae.cfg.model}; "
              f"{x.shape[0]} held-out tokens; pursuits at L0 {l0}")
        print(f"{'codes':<28}{'FVU':>8}{'L0':>8}{'s / 1k tokens':>16}")
        print(f"{'encoder':<28}{fvu_enc:>8.4f}{l0_enc:>8.2f}{t_enc / x.shape[0] * 1000:>16.3f}")
        best = None
        methods = {
            "matching pursuit": lambda: matching_pursuit(sae, x, l0),
            "gradient pursuit": lambda: gradient_pursuit(sae, x, l0),
            "orthogonal matching pursuit": lambda: orthogonal_matching_pursuit(sae, x, l0),
        }
        for name, solve in methods.items():
            t = time.perf_counter()
            f = solve()
            dt = time.perf_counter() - t
            fvu, got = figures(f)
            print(f"{name:<28}{fvu:>8.4f}{got:>8.2f}{dt / x.shape[0] * 1000:>16.3f}")
            if name == "orthogonal matching pursuit":
                best = f
        # FISTA at the L1 coefficient that gives about the same L0: a short bisection on λ.
        lo, hi = 0.0, float(f_enc.max())
        for _ in range(8):
            lam = (lo + hi) / 2
            got = float((fista(sae, x[:200], lam, iterations=100) > 0).sum(1).float().mean())
            lo, hi = (lam, hi) if got > l0 else (lo, lam)
        t = time.perf_counter()
        f = fista(sae, x, lam, iterations=300)
        dt = time.perf_counter() - t
        fvu, got = figures(f)
        print(f"{f'FISTA (λ = {lam:.3g})':<28}{fvu:>8.4f}{got:>8.2f}{dt / x.shape[0] * 1000:>16.3f}")

        median = float(f_enc[f_enc > 0].median())
        print(f"\nthresholding: codes below T set to 0 (T in multiples of the encoder's median "
              f"non-zero activation, {median:.3g})")
        print(f"{'T':>8}{'encoder FVU':>14}{'encoder L0':>12}{'OMP FVU':>10}{'OMP L0':>8}")
        for m in (0.0, 0.25, 0.5, 1.0, 2.0):
            T = m * median
            fe, le = figures(f_enc * (f_enc >= T))
            fo, lo_ = figures(best * (best >= T))
            print(f"{T:>8.3g}{fe:>14.4f}{le:>12.2f}{fo:>10.4f}{lo_:>8.2f}")


if __name__ == "__main__":
    main()
