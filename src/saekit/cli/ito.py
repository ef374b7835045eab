"""``saekit ito``: the encoder's codes against inference-time optimisation at matched L0, with the thresholding test."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError, OutputError
from .common import DICTIONARY_ARG_HELP, FORMAT_CHOICES, add_device_flags, fill_unrecorded


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ito",
        help="the encoder's codes against codes found by optimisation (pursuits, FISTA), at matched L0",
        description="Compare a dictionary's encoder with codes found for its decoder by inference-time optimisation "
        "(matching pursuit, orthogonal matching pursuit, gradient pursuit at the encoder's mean L0; FISTA with its "
        "L1 penalty bisected to about that L0) on held-out text in fixed contexts of the training length: FVU, L0, "
        "the model's loss with each reconstruction spliced in (loss recovered, CE diff, as saekit eval measures "
        "them) and the time per 1,000 tokens; then the thresholding test (codes below T set to 0, for the encoder "
        "and the best optimised codes). Prints the tables and writes JSON (default FOLDER/ito.json) and a PNG "
        "(default FOLDER/ito.png).",
    )
    p.add_argument("folder", help=DICTIONARY_ARG_HELP)
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the folder's format, if detection is wrong")
    p.add_argument("--methods", default="encoder,mp,omp,gp,fista",
                   help="comma-separated, from encoder, mp, omp, gp, fista (default: all)")
    p.add_argument("--l0", type=int, default=None,
                   help="the L0 of the optimised codes (default: the encoder's mean L0 on the same tokens, rounded)")
    p.add_argument("--tokens", type=int, default=2048, help="held-out tokens compared (default 2,048: some 10 minutes on a 2-core CPU for all five methods, FISTA the slowest)")
    p.add_argument("--thresholds", default="0,0.1,0.25,0.5,1,2",
                   help="the thresholding test's T, in multiples of the encoder's median non-zero activation")
    p.add_argument("--fista-iterations", type=int, default=200, help="FISTA's iterations per solve (default 200)")
    p.add_argument("--dataset", default=None, help="as for saekit train; its held-out split is used (default: embedded corpus)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--model", default=None, help="the model to run (default: the one the dictionary records)")
    p.add_argument("--hook", default=None, help="refuse unless the dictionary was trained on this hook point")
    p.add_argument("--allow-other-model", action="store_true", help="compare on a model other than the recorded one")
    p.add_argument("--json", default=None, help="where to write the figures (default FOLDER/ito.json; for a Hub name, ito-NAME.json here)")
    p.add_argument("--plot", default=None, help="the thresholding plot, a PNG (default FOLDER/ito.png; for a Hub name, ito-NAME.png here)")
    add_device_flags(p)
    p.set_defaults(func=run)


def _thresholds(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--thresholds takes comma-separated numbers (e.g. 0,0.5,1,2), got {text!r}") from None


def run(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..data import validate_source
    from ..evaluation import check_hook, check_model
    from ..hub import default_output
    from ..interpret.ito_comparison import check_comparison, compare_codes
    from ..io.files import atomic_write_text, check_writable_file
    from ..loading import load
    from ..models import load_model, parse_dtype, resolve_device
    from ..report import write_thresholding_plot
    from .progress import ProgressBars

    # Everything that can be checked before the slow model load and the passes is checked here.
    methods = [m.strip() for m in ns.methods.split(",") if m.strip()]
    thresholds = _thresholds(ns.thresholds)
    if ns.tokens <= 0:
        raise ConfigError(f"--tokens must be positive, got {ns.tokens}")
    if ns.fista_iterations <= 0:
        raise ConfigError(f"--fista-iterations must be positive, got {ns.fista_iterations}")
    out = check_writable_file(Path(ns.json) if ns.json else default_output(ns.folder, "ito.json"), "--json")
    plot = check_writable_file(Path(ns.plot) if ns.plot else default_output(ns.folder, "ito.png"), "--plot")
    sae = load(ns.folder, ns.format, device=resolve_device(ns.device))
    fill_unrecorded(sae, ns.folder, ns.hook, ns.model)  # sparsify records neither
    check_comparison(sae, methods, ns.tokens, ns.l0, thresholds)
    check_hook(sae, ns.hook)
    check_model(sae, None if ns.allow_other_model else ns.model)  # both before the slow model load
    validate_source(ns.dataset, ns.text_field)
    lm = load_model(ns.model or sae.cfg.model or None, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
    bars = ProgressBars("ito")
    try:
        result = compare_codes(
            sae, lm, methods=methods, tokens=ns.tokens, l0=ns.l0, dataset=ns.dataset, text_field=ns.text_field,
            thresholds=thresholds, fista_iterations=ns.fista_iterations,
            allow_other_model=True,  # checked above, against the name the user gave
            progress=bars,
        )
    finally:
        bars.close()
    print(result.table())
    print()
    print(result.thresholding_table())
    try:
        atomic_write_text(out, json.dumps(result.to_dict(), indent=2) + "\n")
        write_thresholding_plot(plot, result)
    except OutputError as e:
        raise OutputError(f"{e}. The figures are printed above but were not all saved; rerun with --json and --plot "
                          "naming writable files") from None
    print(f"wrote {out}\nwrote {plot}")
    return 0
