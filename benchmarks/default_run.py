"""Time the default `saekit train` end to end and print its held-out figures.

    python benchmarks/default_run.py [extra saekit-train flags...]

Runs in a temporary folder; the figures are those `saekit train` writes to eval.json
(held-out documents, both context regimes, BOS excluded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "saekit.cli", "train", "--out", str(out), *sys.argv[1:]], check=True)
        wall = time.perf_counter() - t
        cfg = json.loads((out / "config.json").read_text())["dictionary"]
        evaluation = json.loads((out / "eval.json").read_text())
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    print(f"\n{cfg['arch']} k={cfg['k']} F={cfg['d_sae']} on {cfg['hook']} of {cfg['model']}")
    print(f"wall clock (load, extract, train, evaluate): {wall:.0f} s; training throughput {log[-1]['tokens_per_s']:.0f} tokens/s")
    for regime in ("fixed", "documents"):
        held = evaluation.get(regime)
        if held is None:
            continue
        print(f"held-out, {regime} ({held['n_tokens']} tokens): fvu {held['fvu']:.4f}  l0 {held['l0']:.1f}  "
              f"dead {held['n_dead']}/{cfg['d_sae']} ({held['n_dead'] / cfg['d_sae']:.1%})  cosine {held['cosine']:.3f}  "
              f"gamma {held['relative_reconstruction_bias']:.3f}  loss_recovered {held['loss_recovered']:.3f}  "
              f"ce_diff {held['ce_diff']:.3f}  kl {held['kl']:.3f}")


if __name__ == "__main__":
    main()
