"""``saekit steer``: continuations without and with a feature added or clamped, or a sweep of the scale."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..errors import ConfigError
from .common import DICTIONARY_ARG_HELP, FORMAT_CHOICES, add_device_flags, values_type


def register(sub: Any) -> None:
    p = sub.add_parser(
        "steer",
        help="generate with and without a feature added or clamped",
        description="Continue a prompt twice, without and with an intervention on one feature: its decoder "
        "direction added at every position (--scale), or the feature clamped to a value (--clamp, keeping the "
        "dictionary's error term so only that feature changes). Greedy by default; --temperature samples, with "
        "the same --seed both times.",
    )
    p.add_argument("folder", help=DICTIONARY_ARG_HELP)
    p.add_argument("--feature", type=int, required=True, help="the feature's index")
    p.add_argument("--scale", type=float, default=8.0, help="add scale × its decoder direction (default 8)")
    p.add_argument("--clamp", type=float, default=None, help="instead, clamp the feature to this value")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above 0: sampled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="the model to run (default: the one the dictionary records)")
    p.add_argument("--allow-other-model", action="store_true", help="steer a model other than the recorded one")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the folder's format, if detection is wrong")
    p.add_argument("--sweep", type=values_type(float, None, "--sweep"), default=None, metavar="SCALE[,...]",
                   help="instead of generating, sweep the added scale (e.g. 0,4,8,16) and plot the next token's "
                   "log-probabilities against it")
    p.add_argument("--watch", nargs="+", default=None, metavar="TOKEN",
                   help="with --sweep: the tokens to follow, each one token of the model (e.g. ' Paris'); default: "
                   "the three likeliest without steering and at the largest scale")
    p.add_argument("--plot", default=None, help="with --sweep: the PNG to write (default steer-sweep-featureN.png)")
    p.add_argument("--json", default=None, help="also write both continuations (or the sweep) to this JSON file")
    add_device_flags(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..interpret import AddFeature, ClampFeatures, generate_with_and_without
    from ..io.files import atomic_write_text, check_writable_file
    from ..loading import load
    from ..models import load_model, parse_dtype, resolve_device

    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    if ns.sweep is not None and ns.clamp is not None:
        raise ConfigError("--sweep varies the added scale; it does not combine with --clamp")
    plot = None
    if ns.sweep is not None:
        plot = check_writable_file(Path(ns.plot or f"steer-sweep-feature{ns.feature}.png"), "--plot")
    sae = load(ns.folder, ns.format, device=resolve_device(ns.device))
    if not sae.cfg.hook:
        raise ConfigError(f"{ns.folder} does not record its hook point, so saekit cannot tell where to steer")
    if ns.sweep is not None:
        return _steer_sweep(ns, sae, out, plot)
    # Built before the model loads: a feature out of range fails here.
    intervention = (ClampFeatures(sae, [ns.feature], ns.clamp) if ns.clamp is not None
                    else AddFeature(sae, ns.feature, ns.scale))
    lm = load_model(ns.model or sae.cfg.model or None, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
    result = generate_with_and_without(lm, ns.prompt, intervention, max_new_tokens=ns.max_new_tokens,
                                       temperature=ns.temperature, seed=ns.seed, allow_other_model=ns.allow_other_model)
    what = f"feature {ns.feature} clamped to {ns.clamp:g}" if ns.clamp is not None else f"{ns.scale:g} x feature {ns.feature}"
    where = sae.cfg.output_hook
    print(f"prompt: {result.prompt}\n")
    print(f"without: {result.without}\n")
    print(f"with {what} at {where}: {result.steered}")
    if out is not None:
        record = {"prompt": result.prompt, "without": result.without, "with": result.steered,
                  "dictionary": str(ns.folder), "hook": where, "feature": ns.feature,
                  "scale": None if ns.clamp is not None else ns.scale, "clamp": ns.clamp,
                  "max_new_tokens": ns.max_new_tokens, "temperature": ns.temperature, "seed": ns.seed}
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _steer_sweep(ns: argparse.Namespace, sae: Any, out: Any, plot: Any) -> int:
    """``saekit steer --sweep``: next-token log-probabilities against the steering scale."""
    import json

    from ..interpret import AddFeature, scale_sweep
    from ..io.files import atomic_write_text
    from ..models import load_model, parse_dtype
    from ..report import write_sweep_plot

    AddFeature(sae, ns.feature, 0.0)  # a feature out of range fails before the model loads
    lm = load_model(ns.model or sae.cfg.model or None, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
    sweep = scale_sweep(lm, ns.prompt, sae, ns.feature, ns.sweep, ns.watch, allow_other_model=ns.allow_other_model)
    width = max(8, *(len(repr(t)) for t in sweep.tokens))
    print(f"next-token log-probabilities after {sweep.prompt!r}, adding α · W_dec[{ns.feature}]")
    print(f"{'α':>8}  " + "  ".join(f"{t!r:>{width}}" for t in sweep.tokens))
    for alpha, row in zip(sweep.scales, sweep.logprobs):
        print(f"{alpha:>8g}  " + "  ".join(f"{v:>{width}.3f}" for v in row))
    write_sweep_plot(plot, sweep)
    print(f"wrote {plot}")
    if out is not None:
        atomic_write_text(out, json.dumps({"dictionary": str(ns.folder), **dataclasses.asdict(sweep)}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
