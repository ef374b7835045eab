"""``saekit probe intervene``: add a scaled probe direction and watch the model's verdict move.

The direction comes from a saved probe (``--probe-file``) or is fitted on the spot on the
training split of ``--dataset`` (``--probe``, ``--hook``); the statements intervened on are
the held-out ones (or, with a probe file, all of ``--dataset`` but the few-shot examples).
For each scale α the model reads "<few-shot examples> <statement> This statement is:" with
α × the probe's vector added at ``--layers`` and ``--positions``, and P(" TRUE") − P(" FALSE")
is averaged over the true and over the false statements. See saekit.probes.intervention
for the vector's scale (α = 1 moves false statements onto true ones on average).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..errors import ConfigError
from .common import add_device_flags, add_statement_cache_flags

_NUMBER_LIST = re.compile(r"^-?[\d.]+([,:]-?[\d.]*)*$")  # "-8,-4,0,4,8" or "-2:2:0.5"
_MAX_SCALES = 101


def parse_scales(text: str) -> list[float]:
    """``-8,-4,0,4,8`` or a range ``START:STOP:STEP`` (STOP included): sorted unique scales."""
    value = text.strip()
    try:
        if ":" in value:
            parts = [float(p) for p in value.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not step > 0 or stop < start:
                raise argparse.ArgumentTypeError(f"--scales {text!r}: write START:STOP:STEP with STOP >= START and "
                                                 "STEP > 0, e.g. -2:2:0.5")
            count = int(round((stop - start) / step)) + 1
            if count > _MAX_SCALES:
                raise argparse.ArgumentTypeError(f"--scales {text!r} gives {count} scales; at most {_MAX_SCALES}")
            scales = [round(start + k * step, 10) for k in range(count) if start + k * step <= stop + 1e-9]
        else:
            scales = [float(p) for p in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: give numbers separated by commas (e.g. -2,-1,0,1,2) "
                                         "or a range START:STOP:STEP (e.g. -2:2:0.5)") from None
    if any(s != s or s in (float("inf"), float("-inf")) for s in scales):
        raise argparse.ArgumentTypeError(f"--scales {text!r}: the scales must be finite")
    return sorted(set(scales))


def register(verbs: Any) -> None:
    p = verbs.add_parser(
        "intervene", help="add a scaled probe direction and measure P(TRUE) - P(FALSE)",
        description="Add α × a probe's vector to the activations at --layers and --positions of prompts asking "
        "whether each statement is true, sweep α, and print and plot the mean P(' TRUE') − P(' FALSE') over the "
        "true and over the false statements (Marks & Tegmark 2023). The vector at α = 1 is the gap between the "
        "mean true and mean false activation along the probe's direction (for a mass-mean probe, the difference "
        "of the class means): α = 1 moves false statements onto true ones on average, α = -1 the reverse.")
    p.add_argument("--dataset", required=True, metavar="D",
                   help="built-in dataset name or CSV path: the statements to intervene on (and, without "
                   "--probe-file, to fit the probe on)")
    p.add_argument("--probe-file", default=None, metavar="FILE",
                   help="a probe saved by 'saekit probe train --save'; its hook point and token position are used")
    p.add_argument("--probe", default="mass_mean", choices=("mass_mean", "logistic", "lda"),
                   help="without --probe-file: the probe to fit on the training split (default mass_mean)")
    p.add_argument("--hook", default=None, help="without --probe-file: where to fit the probe, e.g. resid_post.12")
    p.add_argument("--position", default="last",
                   help="without --probe-file: the token the probe reads (last, mean or an index; default last)")
    p.add_argument("--layers", default=None, metavar="SPEC",
                   help="the layers to add the vector at, at the probe's site: e.g. 8-12, 10,12 (default: the "
                   "probe's own layer)")
    p.add_argument("--positions", default="last:2",
                   help="the prompt tokens to add it at: last:K (the statement's last K tokens; default last:2, "
                   "its final word and full stop), from-end (every token from the statement's last to the prompt's "
                   "end), or indices like -2,-1 (0 the statement's first token, -1 its last)")
    p.add_argument("--scales", type=parse_scales, default=parse_scales("-2,-1,0,1,2"), metavar="LIST",
                   help="the values of α: e.g. -8,-4,0,4,8 or a range -2:2:0.5 (default -2,-1,0,1,2; 0 is "
                   "always measured)")
    p.add_argument("--unit", action="store_true", help="add α × the unit direction instead (α in activation units)")
    p.add_argument("--random-control", action="store_true",
                   help="add a random vector of the same norm instead (seeded by --seed): the control that tells "
                   "the probe direction's effect from that of any push of its size")
    p.add_argument("--template", default="{statement} This statement is:",
                   help="the prompt, with {statement} where the statement goes (default: '{statement} This "
                   "statement is:')")
    p.add_argument("--answers", nargs=2, default=[" TRUE", " FALSE"], metavar=("TRUE", "FALSE"),
                   help="the true and the false verdict (default ' TRUE' ' FALSE'); an answer of several tokens is "
                   "scored by its whole probability")
    p.add_argument("--shots", type=int, default=4,
                   help="few-shot examples before each prompt, alternately true and false, drawn from the "
                   "training statements (default 4; 0 for none)")
    p.add_argument("--max-statements", type=int, default=100, metavar="N",
                   help="intervene on at most N true and N false statements (default 100)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="held-out share (default 0.25, as probe train)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the builders and the few-shot draw")
    p.add_argument("--model", default=None, help="the model (default: the probe file's, else the embedded SmolLM2)")
    p.add_argument("--plot", default="probe-intervene.png", help="the PNG to write (default probe-intervene.png)")
    p.add_argument("--json", default=None, help="also write the sweep to this JSON file")
    add_statement_cache_flags(p)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    add_device_flags(p)
    # Scales such as "-8,-4,0,4,8" start with '-'; argparse would take them for an option.
    # This parser has no option that looks like a number, so reading them as values is safe.
    if hasattr(p, "_negative_number_matcher"):
        p._negative_number_matcher = _NUMBER_LIST
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..hooks import HookPoint, resolve_hook_point
    from ..io.files import atomic_write_text, check_writable_file
    from ..models import load_model, parse_dtype, resolve_device
    from ..probes import load_dataset, load_probe, parse_position, statement_activations
    from ..probes.intervention import (EditPositions, encode_prompts, few_shot_prefix, hooks_text, intervention_sweep,
                                       intervention_vector, random_like, write_intervention_plot)
    from ..probes.verdicts import VerdictPrompt, answer_token_ids
    from ..probes.training import training_split
    from ..probes.training import ProbeRun, run_probe
    from .probe import parse_layers
    from .progress import ProgressBars

    # Everything checkable is checked before the model loads.
    fmt = VerdictPrompt(template=ns.template, answers=tuple(ns.answers))
    positions = EditPositions.parse(ns.positions)
    if ns.max_statements < 1:
        raise ConfigError(f"--max-statements must be at least 1, not {ns.max_statements}")
    if ns.shots < 0:
        raise ConfigError(f"--shots must be >= 0, not {ns.shots}")
    plot = check_writable_file(Path(ns.plot), "--plot")
    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    dataset = load_dataset(ns.dataset, ns.seed)
    labels = list(dataset.labels)
    run_cfg = None
    if ns.probe_file:
        if ns.hook or ns.position != "last":
            raise ConfigError("--hook and --position come from the probe file; drop them, or drop --probe-file to "
                              "fit a probe here")
        probe, info = load_probe(ns.probe_file)
        hook = info.get("hook")
        if not hook:
            raise ConfigError(f"{ns.probe_file} does not record its hook point; save it with saekit probe train --save")
        position = parse_position(info.get("position", "last"))
        model_name = ns.model or info.get("model")
        what = f"{probe.name} probe from {ns.probe_file}"
    else:
        if ns.hook is None:
            raise ConfigError("give --probe-file, or --hook (with --probe) to fit a probe on --dataset")
        hook, position, model_name = ns.hook, parse_position(ns.position), ns.model
        run_cfg = ProbeRun(probe=ns.probe, position=position, test_fraction=ns.test_fraction, seed=ns.seed)
        _, train_idx, test_idx = training_split(run_cfg, [dataset])
        what = f"{ns.probe} probe fitted on {dataset.name} ({len(train_idx)} statements)"
    point = HookPoint.parse(hook)
    layers = parse_layers(ns.layers) if ns.layers else [point.layer]
    edit_hooks = [f"{point.site}.{layer}" for layer in layers]
    # Which statements scale the vector, give the few-shot examples and are intervened on:
    # with a fitted probe, the training split does the first two and the held-out split
    # the last (so no statement is both an example and a test); with a probe file, all of
    # --dataset but the examples.
    if run_cfg is not None:
        scale_rows, shot_pool, pool = train_idx, train_idx, test_idx
    else:
        scale_rows = shot_pool = pool = list(range(len(dataset)))
    prefix, used = few_shot_prefix([dataset.statements[i] for i in shot_pool], [labels[i] for i in shot_pool],
                                   fmt, ns.shots, ns.seed)
    used_rows = {shot_pool[k] for k in used}
    fmt = VerdictPrompt(template=ns.template, prefix=prefix, answers=tuple(ns.answers))
    chosen: dict[int, list[int]] = {1: [], 0: []}
    for i in pool:
        if i not in used_rows and len(chosen[labels[i]]) < ns.max_statements:
            chosen[labels[i]].append(i)
    if not chosen[1] or not chosen[0]:
        raise ConfigError("no true or no false statement is left to intervene on; lower --shots or use a larger "
                          "dataset")

    lm = load_model(model_name, device=resolve_device(ns.device), dtype=parse_dtype(ns.dtype))
    for name in [hook, *edit_hooks]:
        resolve_hook_point(lm, name)
    # Tokenizer-only checks (prompt lengths, positions inside each prompt) before any forward pass.
    true_prompts = encode_prompts(lm.tokenizer, [dataset.statements[i] for i in chosen[1]], fmt, positions,
                                  lm.max_length)
    false_prompts = encode_prompts(lm.tokenizer, [dataset.statements[i] for i in chosen[0]], fmt, positions,
                                   lm.max_length)
    answer_ids = answer_token_ids(lm.tokenizer, fmt.answers)
    cache = dict(cache_dir=None if ns.no_cache else ns.cache_dir, use_cache=not ns.no_cache)
    bars = ProgressBars("probe intervene")
    try:
        if run_cfg is not None:
            probe = run_probe(lm, run_cfg, [dataset], [hook], batch_size=32, progress=bars, **cache)[0].probe
        acts = statement_activations(lm, dataset, [hook], position, progress=bars, **cache)[hook]
        if acts.shape[1] != probe.direction.shape[0]:
            raise ConfigError(f"the probe has width {probe.direction.shape[0]} but {lm.name} has width "
                              f"{acts.shape[1]} at {hook}; use the model the probe was trained on (--model)")
        vector = intervention_vector(probe.direction, acts[[i for i in scale_rows if labels[i] == 1]],
                                     acts[[i for i in scale_rows if labels[i] == 0]], unit=ns.unit)
        if ns.random_control:
            vector = random_like(vector, ns.seed)
            what = f"random control (the norm of the {what})"
        result = intervention_sweep(lm, true_prompts, false_prompts, answer_ids, {h: vector for h in edit_hooks},
                                    ns.scales, fmt=fmt, positions=positions, batch_size=ns.batch_size,
                                    progress=bars)
    finally:
        bars.close()

    t0, f0 = result.baseline()
    a, b = (repr(x) for x in fmt.answers)
    print(f"{what} at {hook} ({lm.name}); {'unit direction' if ns.unit else 'vector'} of norm {result.vector_norm:.4g} "
          f"added at {hooks_text(edit_hooks)}, positions {positions}")
    print(f"{result.n_true} true and {result.n_false} false statements of {dataset.name}, {ns.shots} few-shot "
          f"examples; P = P({a}) − P({b}) after the prompt")
    print(f"{'α':>8}  {'true: P':>9} {'change':>8}  {'false: P':>9} {'change':>8}  {'P(T)+P(F)':>9}")
    for k, alpha in enumerate(result.scales):
        mass = (result.true_mass[k] * result.n_true + result.false_mass[k] * result.n_false) / (
            result.n_true + result.n_false)
        print(f"{alpha:>8g}  {result.true_diff[k]:>9.4f} {result.true_diff[k] - t0:>+8.4f}  "
              f"{result.false_diff[k]:>9.4f} {result.false_diff[k] - f0:>+8.4f}  {mass:>9.4f}")
    write_intervention_plot(plot, result, title=f"{what}, {lm.name}")
    print(f"wrote {plot}")
    if out is not None:
        record = {"model": lm.name, "probe": what, "random_control": ns.random_control, "probe_hook": hook, "probe_position": position,
                  "dataset": dataset.name, "shots": ns.shots, "prefix": prefix, "unit": ns.unit,
                  "seed": ns.seed, **result.to_dict()}
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
