"""``saekit explain``: explanations of features written by one language model and scored by another."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import DICTIONARY_ARG_HELP, FORMAT_CHOICES, add_device_flags, add_feature_flags, chosen_features

DEFAULT_FEATURES = 10  # the first ten: explaining is slow (a model call per example)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="explain features with a language model, and score the explanations",
        description="For each chosen feature, show a language model (the explainer) its top-activating contexts "
        "and a few from lower activation quantiles, and ask for a one-phrase explanation; then a scorer model "
        "judges it by detection (told the explanation, can it tell held-out activating contexts from random "
        "ones?) and fuzzing (can it tell whether the marked tokens are the activating ones?), each as a balanced "
        "accuracy and an AUROC (Paulo et al. 2024). Results go to a JSON file, written after every feature: a "
        "rerun skips the features done, with the same explainer, scorer and prompt version. The explainer and "
        "scorer are models saekit loads (default: the embedded SmolLM2-135M-Instruct, weak but offline), or "
        "with --endpoint an OpenAI-compatible chat-completions server (vLLM, llama.cpp, OpenAI), its key read "
        "from SAEKIT_API_KEY or OPENAI_API_KEY.",
    )
    p.add_argument("folder", help=DICTIONARY_ARG_HELP)
    add_feature_flags(p, f"default: those in --examples, else the first {DEFAULT_FEATURES}")
    p.add_argument("--examples", default=None, metavar="DIR",
                   help="reuse the feature examples saved in DIR (by `saekit dashboard --out DIR`) instead of "
                   "collecting them with a pass over the corpus")
    p.add_argument("--tokens", type=int, default=200_000, help="tokens of corpus to collect examples from (default 200000)")
    p.add_argument("--dataset", default=None, help="the corpus to collect examples from (default: the embedded one)")
    p.add_argument("--explainer", default=None, metavar="MODEL",
                   help="the explainer: a model saekit loads (Hub id, folder, .gguf; default: the embedded "
                   "SmolLM2-135M-Instruct), or with --endpoint the name the server serves it under")
    p.add_argument("--scorer", default=None, metavar="MODEL", help="the scorer, as --explainer (default: the explainer)")
    p.add_argument("--endpoint", default=None, metavar="URL",
                   help="an OpenAI-compatible chat-completions server for the explainer (e.g. http://localhost:8000/v1); "
                   "its key, if it needs one, from the environment variable SAEKIT_API_KEY or OPENAI_API_KEY")
    p.add_argument("--scorer-endpoint", default=None, metavar="URL",
                   help="the scorer's server (default: --endpoint; a local scorer when neither is given)")
    p.add_argument("--no-score", action="store_true", help="write explanations only; a later run scores them")
    p.add_argument("--out", default=None,
                   help="the explanations file (default: explanations.json beside the dictionary; for a Hub name, "
                   "in the current folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo features the file holds from another explainer, scorer or prompt version "
                   "(otherwise refused)")
    p.add_argument("--model", default=None, help="the model whose features these are (default: the one the dictionary records)")
    p.add_argument("--allow-other-model", action="store_true", help="collect examples on a model other than the recorded one")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the folder's format, if detection is wrong")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an endpoint's answer (default 60)")
    p.add_argument("--retries", type=int, default=4, help="further tries after an endpoint's 429, 5xx, timeout or "
                   "malformed answer, with exponential backoff (default 4)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch for a local explainer or scorer (default 8)")
    add_device_flags(p, "dtype of the models loaded (default float32)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ..hub import default_output
    from ..interpret.chat import EndpointChat, api_key_from_environment, local_label
    from ..interpret.explanations import ExplainSettings, ExplanationsFile, plan_work
    from ..io.files import check_writable_file
    from ..loading import load
    from ..models import resolve_device

    # Everything checkable before any model loads or corpus pass starts.
    if ns.endpoint and not ns.explainer:
        raise ConfigError("--endpoint needs --explainer MODEL: the name the server serves the model under")
    if ns.scorer_endpoint and not (ns.scorer or ns.endpoint):
        raise ConfigError("--scorer-endpoint needs --scorer MODEL: the name the server serves the model under")
    if ns.no_score and (ns.scorer or ns.scorer_endpoint):
        raise ConfigError("--no-score writes explanations only; drop --scorer/--scorer-endpoint, or --no-score")
    for flag, value, least in (("--tokens", ns.tokens, 1), ("--batch-size", ns.batch_size, 1), ("--retries", ns.retries, 0)):
        if value < least:
            raise ConfigError(f"{flag} must be at least {least}, got {value}")
    if ns.timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {ns.timeout:g}")
    key = api_key_from_environment()

    def endpoint_client(url: str, model: str) -> EndpointChat:
        return EndpointChat(url, model, api_key=key, timeout=ns.timeout, retries=ns.retries)

    explainer_endpoint = endpoint_client(ns.endpoint, ns.explainer) if ns.endpoint else None
    scorer_name = ns.scorer or ns.explainer
    scorer_url = ns.scorer_endpoint or ns.endpoint
    scorer_endpoint = None
    if not ns.no_score and scorer_url:
        scorer_endpoint = (explainer_endpoint if scorer_url == ns.endpoint and scorer_name == ns.explainer
                           else endpoint_client(scorer_url, scorer_name))
    explainer_label = explainer_endpoint.label if explainer_endpoint else local_label(ns.explainer)
    scorer_label = None if ns.no_score else scorer_endpoint.label if scorer_endpoint else local_label(scorer_name)

    sae = load(ns.folder, ns.format, device=resolve_device(ns.device))  # a wrong name fails here, before --out is judged
    out = check_writable_file(Path(ns.out) if ns.out else default_output(ns.folder, "explanations.json"), "--out")
    examples = None
    if ns.examples:
        from ..interpret.examples import FeatureExamples

        examples = FeatureExamples.load(ns.examples)
        if examples.hook != sae.cfg.hook:
            raise ConfigError(f"the examples in {ns.examples} were collected at {examples.hook}, but {ns.folder} reads "
                              f"{sae.cfg.hook}; give the dashboard folder made for this dictionary")
    features = chosen_features(ns, sae.cfg.d_sae, 0 if examples is not None else DEFAULT_FEATURES)
    if features is None:
        features = [int(f) for f in examples.features.tolist()]
    if examples is not None:
        for f in features:
            examples.row(f)  # a feature the examples lack fails here, naming those they hold
    store = ExplanationsFile(out, dictionary=str(ns.folder), hook=sae.cfg.hook, model=sae.cfg.model or None,
                             overwrite=ns.overwrite)
    work = plan_work(store, features, explainer_label, scorer_label, ns.overwrite)
    if not work:
        print(f"nothing left to do: the {len(features)} features chosen are done in {out}")
        _print_table(store, features)
        return 0
    return _explain(ns, sae, features, work, examples, store, explainer_endpoint, scorer_endpoint,
                    ExplainSettings(seed=ns.seed))


def _explain(ns: argparse.Namespace, sae: Any, features: list[int], work: dict, examples: Any, store: Any,
             explainer_endpoint: Any, scorer_endpoint: Any, settings: Any) -> int:
    from ..interpret.chat import LocalChat, same_model
    from ..interpret.explanations import TokenText, explain_features
    from ..models import load_model, parse_dtype
    from .progress import ProgressBars

    dtype = parse_dtype(ns.dtype)
    device = sae.W_dec.device
    subject_name = ns.model or (examples.model if examples is not None else None) or sae.cfg.model or None
    subject = load_model(subject_name, device=device, dtype=dtype)
    loaded = {subject.name: subject}

    def local(name: str | None) -> LocalChat:
        for lm in loaded.values():
            if same_model(name, lm.name):
                return LocalChat(lm, batch_size=ns.batch_size)
        lm = load_model(name, device=device, dtype=dtype)
        loaded[lm.name] = lm
        return LocalChat(lm, batch_size=ns.batch_size)

    explainer = explainer_endpoint or local(ns.explainer)
    scorer = None
    if not ns.no_score:
        scorer = scorer_endpoint or (explainer if ns.scorer in (None, ns.explainer) and not explainer_endpoint
                                     else local(ns.scorer or ns.explainer))
    bars = ProgressBars("explain")
    try:
        if examples is None:
            from ..interpret.examples import collect_examples

            examples = collect_examples(sae, subject, features=sorted(work), tokens=ns.tokens, dataset=ns.dataset,
                                        seed=ns.seed, progress=bars, allow_other_model=ns.allow_other_model)
        result = explain_features(examples, features, explainer, scorer, TokenText(subject.tokenizer), store,
                                  settings=settings, overwrite=ns.overwrite, progress=bars)
    finally:
        bars.close()
    if result.skipped:
        print(f"{result.skipped} features were already done in {store.path}")
    _print_table(store, features)
    for feature, error in sorted(result.errors.items()):
        print(f"feature {feature}: not explained: {error}")
    print(f"wrote {store.path}")
    return 0


def _print_table(store: Any, features: list[int]) -> None:
    from ..interpret.explanations import mean_scores

    records = [store.get(f) for f in features if store.get(f) is not None]
    if not records:
        print("no feature has an explanation")
        return

    def figures(record: dict, method: str) -> str:
        score = (record.get("scores") or {}).get(method)
        if not score:
            return f"{'-':>11}"
        auroc = score.get("auroc")
        return f"{score['balanced_accuracy']:.2f} / {'n/a' if auroc is None else format(auroc, '.2f')}"

    print(f"{'feature':>7}  {'explanation':<60}  {'detection':>11}  {'fuzzing':>11}")
    for record in records:
        text = record["explanation"]
        text = text if len(text) <= 60 else text[:59] + "…"
        print(f"{record['feature']:>7}  {text:<60}  {figures(record, 'detection'):>11}  {figures(record, 'fuzzing'):>11}")
    means = mean_scores(records)

    def mean(name: str) -> str:
        value = means[name]
        return "n/a" if value is None else f"{value:.3f}"

    print(f"mean over {len(records)} features (balanced accuracy / AUROC): detection "
          f"{mean('detection_balanced_accuracy')} / {mean('detection_auroc')}, fuzzing "
          f"{mean('fuzzing_balanced_accuracy')} / {mean('fuzzing_auroc')}")
