"""``saekit probe``: truth datasets and linear probes on a model's activations.

``saekit probe datasets`` lists the built-in datasets; ``saekit probe train`` fits a probe
on one dataset (or several, pooled) at a hook point and prints accuracy and AUROC on a
held-out split and on other datasets, or, with ``--layers``, sweeps the layers;
``matrix``, ``pca``, ``calibrate`` and ``likelihood`` are the analyses written here, and
``intervene`` and ``lora`` live in ``probe_intervene`` and ``probe_lora``.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..errors import ConfigError
from .common import add_device_flags, add_statement_cache_flags

PROBE_NAMES = ("logistic", "mass_mean", "lda", "ccs", "ttpd")  # saekit.probes.PROBES, without importing torch
# Each built-in dataset's counterpart for CCS (a statement and its negation share a pair key).
_NEGATIONS = {"cities": "neg_cities", "neg_cities": "cities", "larger_than": "smaller_than",
              "smaller_than": "larger_than"}
_LAYERS = re.compile(r"^(\d+)(?:-(\d+))?$")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="linear probes for truth: datasets, training, layer sweeps",
        description="Linear probes on a model's activations at one token of true and false statements.",
    )
    verbs = p.add_subparsers(dest="probe_verb", required=True)

    d = verbs.add_parser("datasets", help="list the built-in truth datasets with their sizes",
                         description="List the built-in truth datasets: name, statements, true/false, negated, "
                         "and an example. Any CSV with 'statement' and 0/1 'label' columns works as well.")
    d.add_argument("--seed", type=int, default=0, help="the builders' seed (default 0)")
    d.add_argument("--write", default=None, metavar="FOLDER", help="also write each dataset as FOLDER/NAME.csv")
    d.set_defaults(func=run_datasets)

    t = verbs.add_parser(
        "train", help="fit a probe and score it on held-out statements",
        description="Fit a probe on the activations at --hook (or at resid_post of each of --layers) of the "
        "statements of --dataset, and print its accuracy and AUROC on a held-out split and on each --test-dataset.")
    t.add_argument("--dataset", nargs="+", required=True, metavar="D",
                   help="built-in dataset name(s) or CSV path(s); several are pooled (e.g. cities neg_cities for ttpd)")
    t.add_argument("--probe", default="mass_mean", choices=PROBE_NAMES, help="default mass_mean")
    t.add_argument("--hook", default=None, help="the hook point, e.g. resid_post.12 (or use --layers)")
    t.add_argument("--layers", default=None, metavar="SPEC",
                   help="sweep layers instead of one --hook: e.g. 0-29, 0-29:3 (every 3rd), 3,6,9; the site is "
                   "--hook's (default resid_post)")
    t.add_argument("--model", default=None, help="the model (default: the embedded SmolLM2-135M)")
    t.add_argument("--position", default="last", help="the token: last (default), mean, or an index into the "
                   "statement's tokens (0 first, -1 last)")
    t.add_argument("--paired", default=None, metavar="D",
                   help="for ccs: the dataset of the training statements' negations, matched by pair key "
                   "(default: neg_cities for cities, smaller_than for larger_than, and back)")
    t.add_argument("--test-dataset", nargs="+", default=[], metavar="D", help="also score on these whole datasets")
    t.add_argument("--centre", "--center", dest="centre", action="store_true", help="centre each dataset on its own mean activation")
    t.add_argument("--test-fraction", type=float, default=0.25, help="held-out share of the statements (default 0.25)")
    t.add_argument("--seed", type=int, default=0, help="seed of the split, the builders and CCS's starts")
    t.add_argument("--l2", type=float, default=None, help="logistic/ttpd: L2 penalty on standardised weights (1e-2)")
    t.add_argument("--shrinkage", type=float, default=None, help="lda: covariance shrinkage (default 0.01)")
    t.add_argument("--json", default=None, help="write the figures to this JSON file")
    t.add_argument("--save", default=None, metavar="FILE", help="save the probe (safetensors); not with --layers")
    t.add_argument("--plot", default=None, help="with --layers: the PNG to write (default probe-layers.png)")
    add_statement_cache_flags(t)
    t.add_argument("--batch-size", type=int, default=32)
    add_device_flags(t)
    t.set_defaults(func=run_train)

    m = verbs.add_parser(
        "matrix", help="train on each dataset, test on each: the generalisation matrix and a prompting baseline",
        description="Fit the probe at --hook on the training split of each --train dataset and score it on each "
        "--test dataset (its held-out split where it is the training dataset, the whole set otherwise): the "
        "accuracy and AUROC matrix, printed, as JSON (--json) and as a heat-map (--plot). Beside it, a calibrated "
        "few-shot prompting baseline: the model shown --shots labelled training statements ('<statement> This "
        "statement is: TRUE/FALSE') and scored by log P(' TRUE') - log P(' FALSE'), contextually calibrated "
        "(Zhao et al. 2021), as an extra row.")
    m.add_argument("--train", nargs="+", required=True, metavar="D", help="training datasets (names or CSV paths)")
    m.add_argument("--test", nargs="+", required=True, metavar="D", help="test datasets (names or CSV paths)")
    m.add_argument("--probe", default="mass_mean", choices=[n for n in PROBE_NAMES if n != "ccs"],
                   help="default mass_mean (ccs needs paired datasets: use probe train)")
    m.add_argument("--hook", required=True, help="the hook point, e.g. resid_post.12")
    _shared_probe_flags(m)
    m.add_argument("--test-fraction", type=float, default=0.25, help="held-out share of each training dataset (0.25)")
    m.add_argument("--l2", type=float, default=None, help="logistic/ttpd: L2 penalty on standardised weights (1e-2)")
    m.add_argument("--shrinkage", type=float, default=None, help="lda: covariance shrinkage (default 0.01)")
    m.add_argument("--no-prompting", action="store_true", help="skip the few-shot prompting baseline")
    m.add_argument("--shots", type=int, default=4, help="labelled examples in each prompt (default 4)")
    m.add_argument("--answers", nargs=2, default=[" TRUE", " FALSE"], metavar=("TRUE", "FALSE"),
                   help="the true and the false answer, leading space included (default ' TRUE' ' FALSE'); an answer "
                   "of several tokens is scored by its whole probability")
    m.add_argument("--prompt-limit", type=int, default=None, metavar="N",
                   help="prompt at most N statements per test dataset (a seeded, label-balanced subset; default all)")
    m.add_argument("--prompt-batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    m.add_argument("--json", default=None, help="write the matrices to this JSON file")
    m.add_argument("--plot", default="probe-matrix.png", help="the heat-map PNG (default probe-matrix.png)")
    m.set_defaults(func=run_matrix)

    c = verbs.add_parser(
        "pca", help="the top principal components of the activations, coloured by label",
        description="Pool the activations at --hook of the statements of each --dataset, print the variance their "
        "top principal components explain and draw PC1 against PC2 (a grid of pairs for more components), true "
        "statements blue and false red, one marker per dataset.")
    c.add_argument("--dataset", nargs="+", required=True, metavar="D", help="dataset names or CSV paths")
    c.add_argument("--hook", required=True, help="the hook point, e.g. resid_post.12")
    c.add_argument("--components", type=int, default=2, help="how many components (default 2)")
    _shared_probe_flags(c)
    c.add_argument("--out", default="pca.png", help="the PNG to write (default pca.png)")
    c.add_argument("--json", default=None, help="also write the explained variance to this JSON file")
    c.set_defaults(func=run_pca)

    f = verbs.add_parser(
        "calibrate", help="set a saved probe's threshold to a false-positive rate on ordinary texts",
        description="Score control texts (ordinary text: by default sentences of the embedded Wikipedia corpus) "
        "with a probe saved by 'saekit probe train --save', set its threshold to the (1 - FPR) quantile of the "
        "scores on one half of them, report the FPR realised on the other half and the recall on --dataset at "
        "that threshold.")
    f.add_argument("--probe-file", required=True, metavar="FILE", help="a probe saved by saekit probe train --save")
    f.add_argument("--dataset", required=True, metavar="D", help="the labelled dataset to measure recall on")
    f.add_argument("--control", default=None, metavar="TEXTS",
                   help="control texts: a .txt file (one per line) or .jsonl (--text-field); default: sentences "
                   "of the embedded Wikipedia corpus")
    f.add_argument("--text-field", default="text", help="the text field of a .jsonl control file (default text)")
    f.add_argument("--fpr", type=float, default=0.01, help="the false-positive rate to set (default 0.01)")
    f.add_argument("--positive", default="true", choices=("true", "false"),
                   help="which statements the probe flags: true (high scores, the default) or false (low scores)")
    f.add_argument("--max-controls", type=int, default=2000, help="use at most this many control texts (2000)")
    f.add_argument("--hook", default=None, help="optional: must be the probe's hook point")
    f.add_argument("--model", default=None, help="the model (default: the one the probe was trained on)")
    f.add_argument("--seed", type=int, default=0, help="seed of the control texts' order and halves, and the builders")
    f.add_argument("--json", default=None, help="write the figures to this JSON file")
    _cache_and_device_flags(f)
    f.set_defaults(func=run_calibrate)

    k = verbs.add_parser(
        "likelihood", help="truth against likelihood: does the model's log-probability of a statement track its label?",
        description="The model's log-probability of each statement (summed over its tokens after the first, and "
        "per token), and per dataset its point-biserial correlation with the label and its AUROC as a truth "
        "classifier.")
    k.add_argument("--dataset", nargs="+", required=True, metavar="D", help="dataset names or CSV paths")
    k.add_argument("--model", default=None, help="the model (default: the embedded SmolLM2-135M)")
    k.add_argument("--seed", type=int, default=0, help="the builders' seed")
    k.add_argument("--json", default=None, help="write the figures to this JSON file")
    k.add_argument("--batch-size", type=int, default=16)
    add_device_flags(k)
    k.set_defaults(func=run_likelihood)

    # Subverbs written in modules of their own (one job each); each adds its parsers to `verbs`.
    from . import probe_intervene, probe_lora

    probe_intervene.register(verbs)
    probe_lora.register(verbs)


def run(ns: argparse.Namespace) -> int:
    return ns.func(ns)


def run_datasets(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from ..io.files import make_folder
    from ..probes import BUILDERS, build_dataset, write_csv_dataset

    folder = make_folder(Path(ns.write), "--write") if ns.write else None
    print(f"{'name':<14} {'statements':>10} {'true':>6} {'false':>6} {'negated':>8}  example")
    for name in BUILDERS:
        ds = build_dataset(name, ns.seed)
        negated = sum(1 for p in ds.polarities if p == -1)
        print(f"{name:<14} {len(ds):>10} {ds.n_true:>6} {len(ds) - ds.n_true:>6} {negated:>8}  {ds.statements[0]}")
        if folder is not None:
            write_csv_dataset(ds, folder / f"{name}.csv")
    if folder is not None:
        print(f"wrote {len(BUILDERS)} CSV files into {folder}")
    return 0


def parse_layers(spec: str) -> list[int]:
    """``0-29``, ``0-29:3`` (every third), ``3,6,9``: sorted unique layers."""
    text, _, step_text = spec.strip().partition(":")
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) < 1:
            raise ConfigError(f"--layers {spec!r}: the step after ':' must be a whole number >= 1")
        step = int(step_text)
    layers: set[int] = set()
    for item in text.split(","):
        match = _LAYERS.match(item.strip())
        if match is None:
            raise ConfigError(f"--layers {spec!r}: {item!r} is neither a layer (e.g. 12) nor a range (e.g. 0-29)")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        if stop < start:
            raise ConfigError(f"--layers: the range {item!r} runs backwards; write it {stop}-{start}")
        layers.update(range(start, stop + 1, step))
    return sorted(layers)


def _probe_params(ns: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if ns.l2 is not None:
        if ns.probe not in ("logistic", "ttpd"):
            raise ConfigError("--l2 applies to the logistic and ttpd probes only")
        params["l2"] = ns.l2
    if ns.shrinkage is not None:
        if ns.probe != "lda":
            raise ConfigError("--shrinkage applies to the lda probe only")
        params["shrinkage"] = ns.shrinkage
    if ns.probe == "ccs":
        params["seed"] = ns.seed
    return params


def run_train(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..hooks import HookPoint
    from ..io.files import atomic_write_text, check_writable_file
    from ..models import load_model, parse_dtype, resolve_device
    from ..probes import load_dataset, make_probe, parse_position
    from ..probes.training import ProbeRun, run_probe
    from .progress import ProgressBars

    # Everything checkable is checked before the model loads.
    if ns.hook is None and ns.layers is None:
        raise ConfigError("give --hook (e.g. resid_post.12) or --layers (e.g. 0-29)")
    site = "resid_post"
    if ns.hook is not None:
        point = HookPoint.parse(ns.hook)
        site = point.site
    layers = parse_layers(ns.layers) if ns.layers is not None else None
    if layers is not None and ns.save:
        raise ConfigError("--save keeps one probe; drop --layers, or save from a run at one --hook")
    if layers is None and ns.plot:
        raise ConfigError("--plot draws a layer sweep; give --layers")
    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    save = check_writable_file(Path(ns.save), "--save") if ns.save else None
    plot = check_writable_file(Path(ns.plot or "probe-layers.png"), "--plot") if layers is not None else None
    position = parse_position(ns.position)
    make_probe(ns.probe, **_probe_params(ns))  # a bad setting fails here
    train_sets = [load_dataset(d, ns.seed) for d in ns.dataset]
    test_sets = [load_dataset(d, ns.seed) for d in ns.test_dataset]
    paired = None
    if ns.probe == "ccs":
        paired_name = ns.paired or (_NEGATIONS.get(ns.dataset[0]) if len(ns.dataset) == 1 else None)
        if paired_name is None:
            raise ConfigError("the ccs probe trains on pairs: give --paired D, the dataset of the negations of "
                              "--dataset's statements (matched by pair key)")
        paired = load_dataset(paired_name, ns.seed)
    elif ns.paired:
        raise ConfigError("--paired is for the ccs probe")
    hooks = [f"{site}.{layer}" for layer in layers] if layers is not None else [ns.hook]
    run_cfg = ProbeRun(probe=ns.probe, params=_probe_params(ns), position=position, centre=ns.centre,
                       test_fraction=ns.test_fraction, seed=ns.seed)

    lm = load_model(ns.model, device=resolve_device(ns.device), dtype=parse_dtype(ns.dtype))
    bars = ProgressBars("probe")
    try:
        results = run_probe(lm, run_cfg, train_sets, hooks, test_sets=test_sets, paired=paired,
                            cache_dir=None if ns.no_cache else ns.cache_dir, use_cache=not ns.no_cache,
                            batch_size=ns.batch_size, progress=bars)
    finally:
        bars.close()
    names = [s.dataset for s in results[0].scores]
    what = "+".join(d.name for d in train_sets)
    print(f"{ns.probe} probe on {what} ({results[0].n_train} training statements), {lm.name}, position {position}"
          f"{', centred' if ns.centre else ''}")
    width = max(12, *(len(n) + 4 for n in names))
    print(f"{'hook':<14}" + "".join(f"  {n + ' acc':>{width}} {'auroc':>6}" for n in names))
    for r in results:
        print(f"{r.hook:<14}" + "".join(f"  {s.accuracy:>{width}.3f} {s.auroc:>6.3f}" for s in r.scores))
    if save is not None:
        results[0].probe.save(save, info={"model": lm.name, "hook": hooks[0], "position": position,
                                          "datasets": [d.name for d in train_sets], "centred": ns.centre})
        print(f"wrote {save}")
    if plot is not None:
        from ..probes.training import write_layer_plot

        write_layer_plot(plot, results, title=f"{ns.probe} probe on {what}, {lm.name}")
        print(f"wrote {plot}")
    if out is not None:
        record = {"model": lm.name, "probe": ns.probe, "params": run_cfg.params, "position": position,
                  "centred": ns.centre, "train": [d.name for d in train_sets], "test_fraction": ns.test_fraction,
                  "seed": ns.seed, "results": [r.to_dict() for r in results]}
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- matrix, pca, calibrate, likelihood


def _cache_and_device_flags(p: Any) -> None:
    add_statement_cache_flags(p)
    p.add_argument("--batch-size", type=int, default=32)
    add_device_flags(p)


def _shared_probe_flags(p: Any) -> None:
    p.add_argument("--model", default=None, help="the model (default: the embedded SmolLM2-135M)")
    p.add_argument("--position", default="last", help="the token: last (default), mean, or an index into the "
                   "statement's tokens (0 first, -1 last)")
    p.add_argument("--centre", "--center", dest="centre", action="store_true",
                   help="centre each dataset on its own mean activation")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, the builders and the prompt's shots")
    _cache_and_device_flags(p)


def _load(ns: argparse.Namespace, name: str | None = None):
    from ..models import load_model, parse_dtype, resolve_device

    return load_model(name if name is not None else ns.model, device=resolve_device(ns.device),
                      dtype=parse_dtype(ns.dtype))


def _cache(ns: argparse.Namespace) -> dict[str, Any]:
    return {"cache_dir": None if ns.no_cache else ns.cache_dir, "use_cache": not ns.no_cache,
            "batch_size": ns.batch_size}


def _check_batch_size(value: int, flag: str = "--batch-size") -> None:
    if value < 1:
        raise ConfigError(f"{flag} must be at least 1, not {value}")


def run_matrix(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..hooks import HookPoint
    from ..io.files import atomic_write_text, check_writable_file
    from ..probes import load_dataset, parse_position
    from ..probes.matrix import dataset_split, generalisation_matrix, same_dataset, write_matrix_plot
    from ..probes.prompting import PromptFormat, prompting_baseline
    from ..probes.training import ProbeRun
    from .progress import ProgressBars

    # Everything checkable is checked before the model loads.
    HookPoint.parse(ns.hook)
    _check_batch_size(ns.batch_size)
    _check_batch_size(ns.prompt_batch_size, "--prompt-batch-size")
    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    plot = check_writable_file(Path(ns.plot), "--plot")
    run_cfg = ProbeRun(probe=ns.probe, params=_probe_params(ns), position=parse_position(ns.position),
                       centre=ns.centre, test_fraction=ns.test_fraction, seed=ns.seed)
    fmt = PromptFormat(shots=ns.shots, seed=ns.seed, true_word=ns.answers[0], false_word=ns.answers[1])
    if ns.prompt_limit is not None and ns.prompt_limit < 2:
        raise ConfigError(f"--prompt-limit must be at least 2, not {ns.prompt_limit}")
    train_sets = [load_dataset(d, ns.seed) for d in ns.train]
    test_sets = [load_dataset(d, ns.seed) for d in ns.test]
    splits = [dataset_split(ds, ns.test_fraction, ns.seed) for ds in train_sets]
    shot_rows = [(ds.statements[i], ds.labels[i]) for ds, (tr, _) in zip(train_sets, splits) for i in tr]
    test_rows = []
    for test in test_sets:
        own = next((split for ds, split in zip(train_sets, splits) if same_dataset(ds, test)), None)
        test_rows.append(own[1] if own is not None else list(range(len(test))))

    lm = _load(ns)
    bars = ProgressBars("probe matrix")
    try:
        matrix = generalisation_matrix(lm, run_cfg, train_sets, test_sets, ns.hook, progress=bars, **_cache(ns))
        if not ns.no_prompting:
            matrix.prompting = prompting_baseline(lm, shot_rows, test_sets, test_rows, fmt,
                                                  batch_size=ns.prompt_batch_size, limit=ns.prompt_limit,
                                                  progress=bars)
    finally:
        bars.close()
    print(f"{ns.probe} probe at {ns.hook}, {lm.name}, position {run_cfg.position}{', centred' if ns.centre else ''}: "
          "accuracy / AUROC (rows: trained on; * the held-out split of the training dataset)")
    names = [d.name for d in test_sets]
    width = max(13, *(len(n) + 1 for n in names))
    label_width = max(14, *(len(d.name) + 1 for d in train_sets), len(f"prompting {fmt.shots}-shot") + 1)
    print(f"{'':<{label_width}}" + "".join(f"{n:>{width}}" for n in names))
    for row in matrix.rows:
        cells = [f"{s.accuracy:.3f}{'*' if h else ' '}/{s.auroc:.3f}" for s, h in zip(row.scores, row.held_out)]
        print(f"{row.train:<{label_width}}" + "".join(f"{c:>{width}}" for c in cells))
    if matrix.prompting is not None:
        p = matrix.prompting
        cells = [f"{s.accuracy:.3f} /{s.auroc:.3f}" for s in p.scores]
        print(f"{f'prompting {fmt.shots}-shot':<{label_width}}" + "".join(f"{c:>{width}}" for c in cells))
        print(f"  (prompting: n = {', '.join(str(s.n) for s in p.scores)}; contextual calibration offset "
              f"{p.content_free_offset if p.content_free_offset is None else round(p.content_free_offset, 3)}; "
              f"uncalibrated accuracy {', '.join(f'{a:.3f}' for a in p.raw_accuracy)})")
    write_matrix_plot(plot, matrix)
    print(f"wrote {plot}")
    if out is not None:
        atomic_write_text(out, json.dumps({**matrix.to_dict(), "params": run_cfg.params}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def run_pca(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..hooks import HookPoint
    from ..io.files import atomic_write_text, check_writable_file
    from ..probes import load_dataset, parse_position
    from ..probes.pca import dataset_pca, write_pca_plot
    from .progress import ProgressBars

    HookPoint.parse(ns.hook)
    _check_batch_size(ns.batch_size)
    if not 2 <= ns.components <= 8:
        raise ConfigError(f"--components must be between 2 and 8 (a scatter needs two; a grid of more is "
                          f"unreadable), not {ns.components}")
    plot = check_writable_file(Path(ns.out), "--out")
    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    position = parse_position(ns.position)
    datasets = [load_dataset(d, ns.seed) for d in ns.dataset]

    lm = _load(ns)
    bars = ProgressBars("probe pca")
    try:
        result = dataset_pca(lm, datasets, ns.hook, ns.components, position=position, centre_each=ns.centre,
                             progress=bars, **_cache(ns))
    finally:
        bars.close()
    print(f"principal components of {' + '.join(result.datasets)} at {ns.hook}, {lm.name}"
          f"{', each dataset centred' if ns.centre else ''} ({len(result.labels)} statements)")
    names = result.datasets
    width = max(10, *(len(n) + 2 for n in names))
    print("true minus false mean along each component, in its SDs, per dataset:")
    print(f"{'component':<10} {'explained':>10} {'variance':>10}" + "".join(f"{n:>{width}}" for n in names))
    all_gaps = result.label_gaps()
    for i, (ex, var) in enumerate(zip(result.components.explained, result.components.variance)):
        gaps = all_gaps[i]
        print(f"{'PC' + str(i + 1):<10} {float(ex):>10.1%} {float(var):>10.4g}" + "".join(f"{g:>+{width}.2f}" for g in gaps))
    write_pca_plot(plot, result)
    print(f"wrote {plot}")
    if out is not None:
        atomic_write_text(out, json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _model_key(name: str) -> str:
    """A --model value as LoadedModel.name records it: a local path absolute, else as given."""
    from pathlib import Path

    from ..models import EMBEDDED_MODEL

    if name == EMBEDDED_MODEL:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def run_calibrate(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..errors import DataError
    from ..io.files import atomic_write_text, check_writable_file
    from ..probes import load_dataset, load_probe, parse_position
    from ..probes.calibration import (check_enough_controls, check_fpr, probe_scores_on, read_control_texts,
                                      recall_at_fpr)
    from .progress import ProgressBars

    check_fpr(ns.fpr)
    _check_batch_size(ns.batch_size)
    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    probe, info = load_probe(ns.probe_file)
    hook = info.get("hook")
    if hook is None and ns.hook is None:
        raise ConfigError(f"{ns.probe_file} does not record its hook point; give --hook")
    if hook is not None and ns.hook is not None and ns.hook != hook:
        raise ConfigError(f"{ns.probe_file} was trained at {hook}, not {ns.hook}; drop --hook (its own is used) or "
                          "train a probe at that hook point")
    hook = hook or ns.hook
    recorded = info.get("model")
    if recorded is None and ns.model is None:
        raise ConfigError(f"{ns.probe_file} does not record its model; give --model")
    if recorded is not None and ns.model is not None and _model_key(ns.model) != recorded:
        raise ConfigError(f"{ns.probe_file} was trained on the model {recorded}, not {ns.model}; drop --model (its "
                          "own is used) or train a probe on that model")
    position = parse_position(info.get("position", "last"))
    dataset = load_dataset(ns.dataset, ns.seed)
    controls = read_control_texts(ns.control, max_texts=ns.max_controls, seed=ns.seed, text_field=ns.text_field)
    check_enough_controls(len(controls), ns.fpr)

    lm = _load(ns, ns.model if ns.model is not None else recorded)
    if probe.weight is not None and probe.weight.shape[0] != lm.d_model:
        raise DataError(f"{ns.probe_file} has width {probe.weight.shape[0]}, but {lm.name} is {lm.d_model} wide; "
                        "it was trained on another model")
    bars = ProgressBars("probe calibrate")
    centred = bool(info.get("centred", False))
    try:
        control_scores = probe_scores_on(lm, probe, controls, hook, position, centred=centred, progress=bars,
                                         **_cache(ns))
        data_scores = probe_scores_on(lm, probe, dataset, hook, position, centred=centred, progress=bars,
                                      **_cache(ns))
    finally:
        bars.close()
    result = recall_at_fpr(control_scores, data_scores, dataset.labels, ns.fpr, positive=ns.positive,
                           own_threshold=probe.threshold, dataset=dataset.name, seed=ns.seed)
    c = result.calibration
    print(f"{probe.name} probe from {ns.probe_file} at {hook}, {lm.name}; positive: {ns.positive} statements")
    print(f"control texts: {len(controls)} from {controls.source} ({c.n_calibration} to set the threshold, "
          f"{c.n_heldout} held out)")
    print(f"threshold at FPR {ns.fpr:g}: {c.threshold:+.4g} (probe's own threshold {probe.threshold:+.4g})")
    print(f"  FPR on the threshold half {c.calibration_fpr:.4f}, on the held-out half {c.heldout_fpr:.4f} "
          f"(binomial SD at the target {c.heldout_fpr_sd:.4f})")
    print(f"  recall on {dataset.name} ({result.n_positive} {ns.positive} statements): {result.recall:.3f}; "
          f"its other statements flagged: {result.dataset_fpr:.3f}")
    print(f"at the probe's own threshold: recall {result.own_recall:.3f}, control texts flagged "
          f"{result.own_control_fpr:.3f}")
    if dataset.name in info.get("datasets", []):
        print(f"note: the probe was trained on part of {dataset.name}, so this recall includes its training "
              "statements; measure it on another dataset (or a CSV of the held-out part) for an unbiased figure")
    if out is not None:
        record = {"model": lm.name, "probe_file": str(ns.probe_file), "probe": probe.name, "hook": hook,
                  "position": position, "control": controls.source, "n_control": len(controls), **result.to_dict()}
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def run_likelihood(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..io.files import atomic_write_text, check_writable_file
    from ..probes import load_dataset
    from ..probes.likelihood import likelihood_correlation, statement_log_probs
    from .progress import ProgressBars

    _check_batch_size(ns.batch_size)
    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    datasets = [load_dataset(d, ns.seed) for d in ns.dataset]

    lm = _load(ns)
    bars = ProgressBars("probe likelihood")
    try:
        results = [likelihood_correlation(ds, statement_log_probs(lm, ds, batch_size=ns.batch_size, progress=bars))
                   for ds in datasets]
    finally:
        bars.close()
    print(f"truth against likelihood, {lm.name}: log P(statement) summed over its tokens after the first, and per token")
    width = max(14, *(len(r.dataset) + 1 for r in results))
    print(f"{'dataset':<{width}} {'n':>5} {'logP true':>10} {'logP false':>11} {'r':>7} {'AUROC':>6} "
          f"{'r/token':>8} {'AUROC/token':>12}")
    for r in results:
        print(f"{r.dataset:<{width}} {r.n:>5} {r.mean_logprob_true:>10.2f} {r.mean_logprob_false:>11.2f} "
              f"{r.r_total:>+7.3f} {r.auroc_total:>6.3f} {r.r_per_token:>+8.3f} {r.auroc_per_token:>12.3f}")
    if out is not None:
        atomic_write_text(out, json.dumps({"model": lm.name, "results": [r.to_dict() for r in results]}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
