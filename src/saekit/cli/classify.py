"""``saekit classify``: a dictionary's features as classifiers of labelled texts, beside a raw-activation probe."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import DICTIONARY_ARG_HELP, FORMAT_CHOICES, add_device_flags, add_statement_cache_flags, values_type

_RANKINGS = ("mean-diff", "standardised")  # saekit.probes.feature_classifiers.RANKINGS, without importing torch


def register(sub: Any) -> None:
    p = sub.add_parser(
        "classify",
        help="dictionary features as classifiers of labelled texts, beside a probe on the raw activations",
        description="Read a dictionary's features at its hook point (a transcoder's input) on texts of two "
        "classes, pooled per text (averaged over the text's tokens by default, or at one token); rank the "
        "features by how far apart their class means are on the training split; fit a logistic regression on "
        "the top k for each k in --sizes, and one on all the raw activations, pooled over the same tokens; print "
        "held-out accuracy and AUROC, the top features, and a learning curve over training-set sizes.",
    )
    p.add_argument("folder", help=DICTIONARY_ARG_HELP)
    p.add_argument("--data", required=True,
                   help="a CSV or JSONL file with 'text' and 'label' (labels 0/1, or any two values), a truth "
                   "dataset CSV ('statement', 'label'), or a built-in truth dataset name (e.g. cities)")
    p.add_argument("--text-field", default="text", help="the text column or field (default text)")
    p.add_argument("--label-field", default="label", help="the label column or field (default label)")
    p.add_argument("--positive", default=None, metavar="LABEL",
                   help="the label value that is class 1 (default: 1, true, or the later of two values in sorted order)")
    p.add_argument("--position", default="mean",
                   help="how each text is pooled: mean (default, over its own tokens), last, or a token index "
                   "(0 the first, -1 the last)")
    p.add_argument("--sizes", type=values_type(int, None, "--sizes"), default=None, metavar="K[,...]",
                   help="numbers of top features to fit on (default 1,2,5,10,20,50, those the dictionary has)")
    p.add_argument("--train-sizes", type=values_type(int, None, "--train-sizes"), default=None, metavar="N[,...]",
                   help="training-set sizes of the learning curve (default 8,16,32,... and the whole training split)")
    p.add_argument("--repeats", type=int, default=3, help="random draws per training size (default 3)")
    p.add_argument("--no-curve", action="store_true", help="skip the learning curve (and --plot)")
    p.add_argument("--rank", default="mean-diff", choices=_RANKINGS,
                   help="mean-diff (default, as SAEBench: |class-mean difference|) or standardised (divided by the "
                   "pooled within-class standard deviation)")
    p.add_argument("--l2", type=float, default=1e-2, help="L2 penalty of every logistic regression, on "
                   "standardised weights (default 0.01)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="held-out share of the texts (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the draws and the truth-dataset builders")
    p.add_argument("--top", type=int, default=10, help="top features printed (default 10; the JSON has max(--sizes))")
    p.add_argument("--model", default=None, help="the model to run (default: the one the dictionary records)")
    p.add_argument("--allow-other-model", action="store_true", help="classify on a model other than the recorded one")
    p.add_argument("--hook", default=None, help="refuse unless the dictionary reads this hook point (also: the hook "
                   "point of a dictionary whose format does not record it)")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the folder's format, if detection is wrong")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--plot", default=None, help="write the learning curve to this PNG")
    add_statement_cache_flags(p)
    p.add_argument("--batch-size", type=int, default=32)
    add_device_flags(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..errors import DimensionError
    from ..evaluation import check_hook, check_model
    from ..io.files import atomic_write_text, check_writable_file
    from ..loading import load
    from ..models import load_model, parse_dtype, peek_d_model, resolve_device
    from ..probes.feature_classifiers import DEFAULT_SIZES, ClassifyConfig, check_classify, classify, write_curve_plot
    from ..probes.text_data import load_labelled_texts
    from .common import fill_unrecorded
    from .progress import ProgressBars

    # Everything checkable is checked before the slow model load and pass.
    if ns.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {ns.batch_size}")
    if ns.top < 0:
        raise ConfigError(f"--top must be 0 or more, got {ns.top}")
    if ns.plot and ns.no_curve:
        raise ConfigError("--plot draws the learning curve; drop --no-curve")
    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    plot = check_writable_file(Path(ns.plot), "--plot") if ns.plot else None

    def config_for(d_sae: int) -> ClassifyConfig:
        sizes = ns.sizes or [k for k in DEFAULT_SIZES if k <= d_sae] or [d_sae]
        return ClassifyConfig(position=ns.position, sizes=tuple(sizes),
                              train_sizes=tuple(ns.train_sizes) if ns.train_sizes else None, repeats=ns.repeats,
                              rank=ns.rank, l2=ns.l2, test_fraction=ns.test_fraction, seed=ns.seed)

    config_for(max(DEFAULT_SIZES))  # a bad setting fails before the data and the dictionary are read
    data = load_labelled_texts(ns.data, text_field=ns.text_field, label_field=ns.label_field, positive=ns.positive,
                               seed=ns.seed)
    sae = load(ns.folder, ns.format, device=resolve_device(ns.device))
    config = config_for(sae.cfg.d_sae)
    fill_unrecorded(sae, ns.folder, ns.hook, ns.model)  # sparsify records neither
    check_hook(sae, ns.hook)
    check_classify(data, sae.cfg.d_sae, config)
    check_model(sae, None if ns.allow_other_model else ns.model)
    model_name = ns.model or sae.cfg.model or None
    width = peek_d_model(model_name)
    if width is not None and width != sae.cfg.d_in:
        raise DimensionError(f"the dictionary reads activations of width {sae.cfg.d_in} but "
                             f"{model_name or 'the embedded model'} has width {width}: it was trained on "
                             f"{sae.cfg.model or 'another model'}; pass that model with --model")

    lm = load_model(model_name, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
    bars = ProgressBars("classify")
    try:
        result = classify(lm, sae, data, config, cache_dir=None if ns.no_cache else ns.cache_dir,
                          use_cache=not ns.no_cache, batch_size=ns.batch_size, curve=not ns.no_curve, progress=bars)
    finally:
        bars.close()
    print(result.table(top=ns.top))
    if result.curve:
        print()
        print(result.curve_table())
    if out is not None:
        record = {"dictionary": str(ns.folder), **result.to_dict()}
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    if plot is not None:
        write_curve_plot(plot, result)
        print(f"wrote {plot}")
    return 0
