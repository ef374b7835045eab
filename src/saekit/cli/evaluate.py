"""``saekit eval``: every figure of docs/metrics.md, in both context regimes."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError, OutputError
from .common import DICTIONARY_ARG_HELP, FORMAT_CHOICES, add_device_flags, fill_unrecorded
from .progress import ProgressBars


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="every figure of docs/metrics.md for a dictionary, in both context regimes",
        description="Evaluate a dictionary on held-out text: reconstruction, sparsity and downstream figures "
        "(the model with the dictionary spliced in), for fixed contexts as in training and for whole documents, "
        "with FVU and CE diff by position. Prints a table and writes JSON (default FOLDER/eval.json).",
    )
    p.add_argument("folder", help=DICTIONARY_ARG_HELP)
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the folder's format, if detection is wrong")
    p.add_argument("--tokens", type=int, default=32_768, help="evaluated tokens per regime (default 32,768)")
    p.add_argument("--dataset", default=None,
                   help="as for saekit train; its held-out split is used (default: for a saekit run folder, the text "
                   "the dictionary was trained on, as its training.json records it; else the embedded corpus)")
    p.add_argument("--text-field", default=None, help="as for saekit train (default: the run's, else text)")
    p.add_argument("--model", default=None, help="the model to run (default: the one the dictionary records)")
    p.add_argument("--hook", default=None, help="refuse unless the dictionary was trained on this hook point")
    p.add_argument("--target", default=None,
                   help="the hook point a transcoder reconstructs, for a format that does not record it (sparsify's)")
    p.add_argument("--regimes", nargs="+", default=["fixed", "documents"], choices=["fixed", "documents"])
    p.add_argument("--max-length", type=int, default=1024, help="document length cap in the documents regime")
    p.add_argument("--allow-other-model", action="store_true", help="evaluate on a model other than the recorded one")
    p.add_argument("--keep-bos", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate and splice the BOS position (default: as the dictionary was trained, which it "
                   "records; an override is recorded in the JSON)")
    p.add_argument("--json", default=None, help="where to write the figures (default FOLDER/eval.json; for a Hub name, eval-NAME.json here)")
    add_device_flags(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..evaluation import check_hook, check_model, evaluate
    from ..io.saekit_format import EVAL_FILE
    from ..hub import default_output
    from ..loading import load
    from ..models import load_model, parse_dtype, resolve_device
    from ..io.files import atomic_write_text, check_writable_file

    # Everything that can be checked before the slow model load and the passes is checked here.
    if ns.tokens <= 0:
        raise ConfigError(f"--tokens must be positive, got {ns.tokens}")
    if ns.max_length < 3:  # a BOS, a token spliced and the one it predicts (see --context-length)
        raise ConfigError(f"--max-length must be at least 3, got {ns.max_length}")
    folder = ns.folder
    out = check_writable_file(Path(ns.json) if ns.json else default_output(folder, EVAL_FILE), "--json")
    sae = load(folder, ns.format, device=resolve_device(ns.device))
    fill_unrecorded(sae, folder, ns.hook, ns.model, ns.target)  # sparsify records none of them
    if sae.cfg.transcoder and not sae.cfg.target:
        raise ConfigError(f"{folder} is a transcoder that does not record the hook point it reconstructs; pass "
                          "--target (e.g. --target mlp_out.6)")
    if ns.target is not None and ns.target != sae.cfg.output_hook:
        raise ConfigError(f"--target {ns.target}: {folder} reconstructs {sae.cfg.output_hook}"
                          f"{'' if sae.cfg.transcoder else ' (its own input: it is a sparse autoencoder)'}")
    check_hook(sae, ns.hook)
    check_model(sae, None if ns.allow_other_model else ns.model)  # both before the slow model load
    dataset, text_field = evaluation_text(folder, ns.dataset, ns.text_field)
    lm = load_model(ns.model or sae.cfg.model or None, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
    bars = ProgressBars("eval")
    try:
        result = evaluate(
            sae, lm, dataset=dataset, tokens=ns.tokens, max_length=ns.max_length, text_field=text_field,
            regimes=ns.regimes, allow_other_model=True,  # checked above, against the name the user gave
            splice_bos=ns.keep_bos, progress=bars,
        )
    finally:
        bars.close()
    print(result.table())
    try:
        atomic_write_text(out, json.dumps(result.to_dict(), indent=2) + "\n")
    except OutputError as e:
        raise OutputError(f"{e}. The figures are printed above but were not saved; rerun with --json naming a "
                          "writable file") from None
    print(f"wrote {out}")
    return 0


def evaluation_text(folder: str, dataset: str | None, text_field: str | None) -> tuple[str | None, str]:
    """The text to evaluate on, checked: ``--dataset``, else the text a saekit run folder
    records it was trained on (its held-out split is what no step of the run saw), else
    the embedded corpus (None). Says which when it is the run's."""
    from ..data import validate_source
    from ..errors import DataError
    from ..io.saekit_format import trained_text, training_setting

    recorded = trained_text(folder) if dataset is None else None
    if recorded is not None:
        dataset, text_field = recorded, text_field or training_setting(folder, "text_field")
    text_field = text_field or "text"
    try:
        validate_source(dataset, text_field)
    except (ConfigError, DataError) as e:
        if recorded is None:
            raise
        raise type(e)(f"{folder} was trained on {dataset} (its training.json says so), which saekit eval "
                      f"evaluates on by default, but: {e} Pass --dataset to evaluate on other text.") from None
    if recorded is not None:
        print(f"evaluating on the held-out split of {dataset}, the text the dictionary was trained on "
              "(--dataset names other text)")
    return dataset, text_field
