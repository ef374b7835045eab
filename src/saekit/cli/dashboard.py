"""``saekit dashboard``: one pass over a corpus, then a static site of feature pages."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import DICTIONARY_ARG_HELP, FORMAT_CHOICES, add_device_flags, add_feature_flags, chosen_features

DEFAULT_FEATURES = 200  # the first 200: a first look in about a minute on a CPU; --all for every feature
EXPLANATIONS_FILE = "explanations.json"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="feature pages in the browser: top contexts, quantile samples, histograms, output tokens",
        description="Run the model over a corpus once, keep each chosen feature's top-activating contexts, a sample "
        "across its activation range and its statistics, and write a static site into --out: an index of the "
        "features (searchable, sortable, paged) and one page per feature. It works offline, opened from its "
        "file:// URL or served with `saekit serve DIR`. The examples are saved there too, for "
        "`saekit explain DICT --examples DIR`.",
    )
    p.add_argument("folder", help=DICTIONARY_ARG_HELP)
    add_feature_flags(p, f"default: the first {DEFAULT_FEATURES}, or every feature of a smaller dictionary")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write the site into (required)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that holds no dashboard (only the dashboard's files are "
                   "replaced); a folder holding a dashboard is rewritten without it")
    p.add_argument("--tokens", type=int, default=200_000, help="tokens of the corpus to read (default 200,000)")
    p.add_argument("--dataset", default=None, help="as for saekit train; its training split is read (default: the embedded corpus)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--context-length", type=int, default=128, help="tokens per context (default 128)")
    p.add_argument("--top", type=int, default=20, help="top-activating contexts kept per feature (default 20)")
    p.add_argument("--samples", type=int, default=40,
                   help="activating contexts sampled per feature, shown in four activation intervals (default 40)")
    p.add_argument("--explanations", default=None, metavar="FILE",
                   help=f"explanations and scores to show (saekit explain's JSON; default: {EXPLANATIONS_FILE} in "
                   "--out, or in the dictionary's folder, when there is one)")
    p.add_argument("--model", default=None, help="the model to run (default: the one the dictionary records)")
    p.add_argument("--allow-other-model", action="store_true", help="run a model other than the recorded one")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the folder's format, if detection is wrong")
    p.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass (default 32)")
    p.add_argument("--seed", type=int, default=0, help="the corpus order and the samples (default 0)")
    add_device_flags(p)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import validate_source
    from ..evaluation import check_model
    from ..interpret.dashboard import check_dashboard_folder, file_url, write_dashboard
    from ..interpret.directions import nearest_features, output_tokens
    from ..interpret.examples import collect_examples
    from ..io.files import FolderLock, make_folder, remove_if_empty
    from ..loading import load
    from ..models import load_model, parse_dtype, resolve_device
    from .progress import ProgressBars

    # Everything that can be checked is checked before the slow model load and corpus pass.
    for flag, value, least in (("--tokens", ns.tokens, 1), ("--top", ns.top, 1), ("--samples", ns.samples, 0),
                               ("--context-length", ns.context_length, 2), ("--batch-size", ns.batch_size, 1)):
        if value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    out = check_dashboard_folder(Path(ns.out), ns.overwrite)
    explanations_path = _explanations_path(ns, out)
    explanations = _read_explanations(explanations_path) if explanations_path else {}
    sae = load(ns.folder, ns.format, device=resolve_device(ns.device))
    if not sae.cfg.hook:
        raise ConfigError(f"{ns.folder} does not record its hook point, so saekit cannot tell which activations to read")
    d_sae = sae.cfg.d_sae
    features = chosen_features(ns, d_sae, DEFAULT_FEATURES)
    check_model(sae, None if ns.allow_other_model else ns.model)
    validate_source(ns.dataset, ns.text_field)
    if explanations_path:
        shown = sum(1 for f in features if f in explanations)
        print(f"explanations: {explanations_path} ({shown} of the {len(features)} features shown)")

    created = not out.exists()
    make_folder(out)
    try:
        with FolderLock(out, "dashboard"):
            lm = load_model(ns.model or sae.cfg.model or None, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
            bars = ProgressBars("dashboard")
            try:
                examples = collect_examples(
                    sae, lm, features=features, tokens=ns.tokens, dataset=ns.dataset, text_field=ns.text_field,
                    context_length=ns.context_length, top=ns.top, samples=ns.samples, batch_size=ns.batch_size,
                    seed=ns.seed, progress=bars, allow_other_model=ns.allow_other_model, name=str(ns.folder),
                )
                boosts = _output_tokens(output_tokens, sae, lm, features)
                nearest = nearest_features(sae, features, k=min(10, d_sae - 1)) if d_sae > 1 else None
                index = write_dashboard(out, examples, lm.tokenizer, output_tokens=boosts, nearest=nearest,
                                        explanations=explanations, d_sae=d_sae, progress=bars)
            finally:
                bars.close()
    except BaseException:
        if created:
            remove_if_empty(out)
        raise
    fired = int((examples.count > 0).sum())
    print(f"wrote a dashboard of {len(features)} features ({fired} fired in {examples.tokens_seen:,} tokens) into {out}")
    print(f"open {file_url(index)}")
    print(f"or serve it: saekit serve {out}")
    return 0


def _output_tokens(output_tokens: Any, sae: Any, lm: Any, features: list[int]) -> Any:
    """The tokens each feature most boosts and suppresses, or None (said on stderr) where the
    decoder does not write into the residual stream (a foreign dictionary on an MLP's hidden
    layer): the pages then leave them out rather than the whole dashboard failing."""
    import sys

    from ..errors import SaekitError

    try:
        return output_tokens(sae, lm, features, k=10)
    except SaekitError as e:
        print(f"saekit dashboard: the pages show no output tokens: {e}", file=sys.stderr)
        return None


def _explanations_path(ns: argparse.Namespace, out: Any) -> Any:
    """The explanations file to show: --explanations (must be readable), else explanations.json in
    --out or in the dictionary's local folder, when one is there."""
    from pathlib import Path

    from ..errors import DataError

    if ns.explanations:
        path = Path(ns.explanations)
        if not path.is_file():
            raise DataError(f"--explanations {path} does not exist; give the file saekit explain wrote "
                            f"(or leave the flag out)")
        return path
    candidates = [Path(out) / EXPLANATIONS_FILE]
    local = Path(ns.folder)
    if local.is_dir():
        candidates.append(local / EXPLANATIONS_FILE)
    elif local.is_file():
        candidates.append(local.parent / EXPLANATIONS_FILE)
    return next((p for p in candidates if p.is_file()), None)


def _read_explanations(path: Any) -> dict[int, dict]:
    from ..errors import DataError
    from ..interpret.explanations import read_explanations

    try:
        return read_explanations(path)
    except OSError as e:
        raise DataError(f"cannot read the explanations {path}: {e.strerror or e}") from None
