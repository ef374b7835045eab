"""``saekit shift``: a spurious signal removed from a linear probe by ablating the features that carry it (SHIFT)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import add_device_flags, add_spliced_flags, load_spliced, model_for

# saekit.circuits.feature_trimming's defaults and choices, named here so that --help imports no torch.
DEFAULT_TOP_K = 30
DEFAULT_MIN_ASSOCIATION = 0.5
DEFAULT_STEPS = 10
PROBE_CHOICES = ("logistic", "mass_mean", "lda")  # the probes that train on labels alone
SYNTHETIC_SIZES = {"--n-train": 64, "--n-test": 64, "--n-judge": 16}  # spurious_task()'s defaults
SYNTHETIC_FILE = "synthetic_task.jsonl"  # the built-in task, written as a --data file would hold it
SHIFT_FILES = ("shift.json", SYNTHETIC_FILE)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "shift",
        help="remove a spurious signal from a linear probe by ablating the features that carry it (SHIFT)",
        description="SHIFT (Marks et al. 2024, Sparse Feature Circuits, section 4). Splice the dictionaries into "
        "the model; train a linear probe for the intended concept on texts where a spurious concept always comes "
        "with it; rank the features by their effect on the probe; ablate those that carry the spurious concept "
        "(judged on a small decorrelated judge set, or given with --features), error terms kept; measure the "
        "probe again where the concepts are decorrelated, and retrain it on the edited activations (SHIFT + "
        "retrain). Writes OUT/shift.json and prints the accuracies.",
    )
    add_spliced_flags(p)
    p.add_argument("--out", required=True, metavar="OUT", help="the folder to write shift.json into")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", default=None, metavar="FILE.jsonl",
                      help='your task: one JSON object per line, {"text": ..., "intended": 0 or 1, "spurious": 0 or '
                      '1, "set": train, ambiguous_test, balanced_test or judge}. train and ambiguous_test are '
                      "ambiguous (spurious equal to intended on every line); balanced_test holds every (intended, "
                      "spurious) pair; judge (a few lines, every pair) is for the automatic judge, not needed with "
                      "--features")
    data.add_argument("--synthetic", action="store_true",
                      help="the built-in task: topic (sports or cooking) is the intended concept, the subject's "
                      f"gender the spurious one; written to OUT/{SYNTHETIC_FILE}")
    p.add_argument("--seed", type=int, default=None, help="which sentences the synthetic task draws (default 0)")
    for flag, n in SYNTHETIC_SIZES.items():
        p.add_argument(flag, type=int, default=None, metavar="N", help=f"the synthetic task's {flag[4:]} texts "
                       f"(default {n}; a multiple of {2 if flag == '--n-train' else 4})")
    p.add_argument("--intended-name", default=None, metavar="NAME",
                   help="with --data: what the intended concept is, for the report (default intended)")
    p.add_argument("--spurious-name", default=None, metavar="NAME",
                   help="with --data: what the spurious concept is, for the report (default spurious)")
    p.add_argument("--probe-point", default=None, metavar="HOOK",
                   help="where the probe reads, e.g. resid_post.9 (default: the last point a dictionary writes)")
    p.add_argument("--pooling", default="mean", choices=("mean", "last"),
                   help="the probe's input per text: the mean over its tokens after BOS (default) or the last token")
    p.add_argument("--probe", default="logistic", choices=PROBE_CHOICES, help="the probe (default logistic)")
    p.add_argument("--method", default="atp", choices=("atp", "ig"),
                   help="feature effects by attribution patching (default) or integrated gradients")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"integrated gradients' steps (default {DEFAULT_STEPS})")
    p.add_argument("--top-k", type=int, default=None, metavar="N",
                   help="the automatic judge's candidates: the N features of largest |effect| "
                   f"(default {DEFAULT_TOP_K})")
    p.add_argument("--min-association", type=float, default=None, metavar="X",
                   help="the automatic judge ablates a candidate whose association with the spurious concept on the "
                   "judge set (2|AUROC - 0.5|, 0 to 1) is at least X and above its association with the intended one "
                   f"(default {DEFAULT_MIN_ASSOCIATION})")
    p.add_argument("--features", nargs="+", default=None, metavar="HOOK:SPEC",
                   help="you as the judge: the features to ablate, per hook point, e.g. resid_post.9:4446,2721 "
                   "resid_post.6:3326 (indices and inclusive ranges, as --features elsewhere: 0-9,300)")
    p.add_argument("--ablation", default="zero", choices=("zero", "mean"),
                   help="an ablated feature is set to zero (default) or to its mean over the training texts' tokens")
    p.add_argument("--batch-size", type=int, default=16, help="texts per pass (default 16)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that holds no SHIFT result (only shift.json and "
                   f"{SYNTHETIC_FILE} are replaced)")
    add_device_flags(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import json
    import math
    from pathlib import Path

    from ..circuits import Node, SplicedModel, shift
    from ..errors import DataError
    from ..io.files import atomic_write_text, check_output_folder, make_folder
    from ..models import load_model, parse_dtype, resolve_device
    from .progress import ProgressBars

    # Everything that can be checked is checked before the model loads.
    for flag, value in (("--steps", ns.steps), ("--batch-size", ns.batch_size), ("--top-k", ns.top_k)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if ns.min_association is not None and not 0.0 <= ns.min_association <= 1.0:
        raise ConfigError(f"--min-association is an association between 0 and 1, got {ns.min_association}")
    if ns.features is not None:
        judging = [flag for flag, value in (("--top-k", ns.top_k), ("--min-association", ns.min_association))
                   if value is not None]
        if judging:
            raise ConfigError(f"{' and '.join(judging)} set the automatic judge; with --features you are the judge "
                              "(drop one or the other)")
    task = _task(ns)
    out = check_output_folder(Path(ns.out), overwrite=ns.overwrite, own_files=SHIFT_FILES,
                              holds_result=lambda folder: (folder / "shift.json").is_file(),
                              result="SHIFT result", written="shift.json")
    device = resolve_device(ns.device)
    dictionaries = load_spliced(ns, device)
    widths = _written_points(dictionaries)
    probe_point = _probe_point(ns.probe_point, list(widths))
    features = None if ns.features is None else [Node(p, i) for p, i in _given_features(ns.features, widths)]
    if features is None and task.judge is None:
        raise DataError(f"{ns.data} has no judge lines (\"set\": \"judge\"), which the automatic judge needs: add a "
                        "few lines where the two concepts are decorrelated (every intended, spurious pair), or "
                        "name the features to ablate with --features HOOK:SPEC")
    model_name = model_for(ns.dictionaries, dictionaries, ns.model, ns.allow_other_model, "SHIFT")

    lm = load_model(model_name, device=device, dtype=parse_dtype(ns.dtype))
    model = SplicedModel(lm, dictionaries, allow_other_model=ns.allow_other_model)
    bars = ProgressBars("shift")
    try:
        result = shift(model, task, probe_point=probe_point, pooling=ns.pooling, probe=ns.probe, features=features,
                       method=ns.method, steps=ns.steps,
                       top_k=DEFAULT_TOP_K if ns.top_k is None else ns.top_k,
                       min_association=DEFAULT_MIN_ASSOCIATION if ns.min_association is None else ns.min_association,
                       ablation=ns.ablation, batch_size=ns.batch_size, progress=bars)
    finally:
        bars.close()
    make_folder(out)
    written = []
    if ns.synthetic:
        atomic_write_text(out / SYNTHETIC_FILE, "".join(json.dumps(r) + "\n" for r in _task_records(task)))
        written.append(out / SYNTHETIC_FILE)
    result.write_json(out / "shift.json")
    written.append(out / "shift.json")

    print(f"intended: {result.intended_name}; spurious: {result.spurious_name}")
    print(f"probe: {result.probe_kind} at {result.probe_point}, {result.pooling}-pooled; texts: "
          + ", ".join(f"{n} {k}" for k, n in result.sizes.items()))
    print(result.table())
    if result.judge == "given":
        print(f"ablated the {len(result.ablated)} features given ({result.ablation} ablation; effects by "
              f"{result.method}):")
    else:
        print(f"ablated {len(result.ablated)} of the top {len(result.candidates)} features by |effect| "
              f"({result.method}), judged spurious on the judge set ({result.ablation} ablation):")
    shown = [c for c in result.candidates if c.ablated]
    for c in shown[:20]:
        judged = "" if math.isnan(c.spurious_association) else (  # NaN: no judge set to measure it on
            f"  association: spurious {c.spurious_association:.2f}, intended {c.intended_association:.2f}")
        print(f"  {c.node.label():<24} effect {c.effect:+.4f}{judged}")
    if len(shown) > 20:
        print(f"  ... and {len(shown) - 20} more (all in shift.json)")
    for path in written:
        print(f"wrote {path}")
    return 0


def _task(ns: argparse.Namespace) -> Any:
    """The task: the synthetic one (its flags checked) or the user's file, read and checked whole."""
    from ..circuits import read_spurious_task, spurious_task

    sizes = {flag: getattr(ns, flag[2:].replace("-", "_")) for flag in SYNTHETIC_SIZES}
    if ns.synthetic:
        named = [flag for flag, v in (("--intended-name", ns.intended_name), ("--spurious-name", ns.spurious_name))
                 if v is not None]
        if named:
            raise ConfigError(f"{' and '.join(named)} name the concepts of a --data file; the synthetic task names its "
                              "own (topic and gender)")
        chosen = {flag[2:].replace("-", "_"): SYNTHETIC_SIZES[flag] if v is None else v for flag, v in sizes.items()}
        return spurious_task(0 if ns.seed is None else ns.seed, **chosen)
    given = [flag for flag, v in (("--seed", ns.seed), *sizes.items()) if v is not None]
    if given:
        raise ConfigError(f"{' and '.join(given)} choose the texts of the synthetic task (--synthetic); --data "
                          f"{ns.data} is read as it is")
    return read_spurious_task(ns.data, intended_name="intended" if ns.intended_name is None else ns.intended_name,
                              spurious_name="spurious" if ns.spurious_name is None else ns.spurious_name)


def _task_records(task: Any) -> list[dict[str, Any]]:
    """The task as the lines of a --data file (so that it can be read, edited and run again)."""
    return [{"text": t, "intended": i, "spurious": s, "set": role}
            for role, labelled in task.sets().items()
            for t, i, s in zip(labelled.texts, labelled.intended, labelled.spurious)]


def _written_points(dictionaries: list[Any]) -> dict[str, int]:
    """Each point a dictionary writes (a transcoder its target), with its number of features."""
    from ..errors import HookPointError

    widths: dict[str, int] = {}
    for d in dictionaries:
        writes = d.cfg.output_hook
        if writes in widths:
            raise HookPointError(f"two dictionaries write {writes}; give one dictionary per hook point")
        widths[writes] = d.cfg.d_sae
    return widths


def _probe_point(given: str | None, points: list[str]) -> str:
    """Where the probe reads: given (not before any point a dictionary writes), or the last written point."""
    from ..hooks import HookPoint

    order = sorted(points, key=HookPoint.parse)
    if given is None:
        return order[-1]
    where = HookPoint.parse(given)  # a malformed name says what a hook point looks like
    late = [p for p in order if HookPoint.parse(p) > where]
    if late:
        raise ConfigError(f"--probe-point {given} is before {late[0]}, which a dictionary writes: no feature there can "
                          f"change what the probe reads; read the probe at {order[-1]} or later, or leave that "
                          "dictionary out")
    return where.name


def _given_features(specs: list[str], widths: dict[str, int]) -> list[tuple[str, int]]:
    """``--features HOOK:SPEC ...`` as (point, feature) pairs, checked against the dictionaries."""
    from ..interpret.feature_spec import parse_feature_spec

    chosen: list[tuple[str, int]] = []
    for item in specs:
        point, sep, spec = item.partition(":")
        point = point.strip()
        if not sep or not point or not spec.strip():
            raise ConfigError(f"--features {item!r}: write HOOK:SPEC, a hook point and its feature indices, e.g. "
                              "resid_post.9:4446,2721")
        if point not in widths:
            raise ConfigError(f"--features {item}: no dictionary writes {point}; the dictionaries write "
                              f"{', '.join(widths)}")
        try:
            indices = parse_feature_spec(spec, widths[point])
        except ConfigError as e:
            said = str(e).removeprefix("--features: ")
            raise ConfigError(f"--features {item} ({point}): {said}") from None
        chosen.extend((point, i) for i in indices)
    return list(dict.fromkeys(chosen))
