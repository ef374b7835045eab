"""``saekit probe``: truth datasets and linear probes on a model's activations.

``saekit probe datasets`` lists the built-in datasets; ``saekit probe train`` fits a probe
on one dataset (or several, pooled) at a hook point and prints accuracy and AUROC on a
held-out split and on other datasets, or, with ``--layers``, sweeps the layers.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..errors import ConfigError

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
    t.add_argument("--cache-dir", default=None, help="activation cache (default ~/.cache/saekit/probes)")
    t.add_argument("--no-cache", action="store_true", help="neither read nor write the activation cache")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--device", default="auto")
    t.add_argument("--dtype", default="float32", help="model dtype")
    t.set_defaults(func=run_train)


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
