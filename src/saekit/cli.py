"""``saekit <verb>``: parse, validate, call the library, print.

The flags of ``saekit train`` are generated from ``TrainConfig``'s fields (their
types, defaults and help text), so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from typing import Any, Sequence

from .config import CacheConfig, TrainConfig
from .errors import ConfigError, SaekitError

# The formats `saekit.peer_formats` reads and writes (kept here so --help needs no torch import).
FORMAT_CHOICES = ("saekit", "saelens", "sparsify", "dictionary_learning", "gemma_scope")
WRITE_FORMATS = FORMAT_CHOICES[:4]  # Gemma Scope is read-only
# Said wherever a verb takes a dictionary.
DICTIONARY_ARG_HELP = (
    "a dictionary: a local folder in any format saekit reads (saekit, SAELens, sparsify, dictionary_learning, "
    "Gemma Scope params.npz; detected), or a Hub name OWNER/REPO[@REVISION]/PATH/INSIDE (downloaded and cached)"
)


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint
        help_text = field.metadata.get("help", "")
        default = field.default
        if base is bool:
            parser.add_argument(_flag(field), dest=field.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        shown = " (required)" if field.metadata.get("required") else "" if default is None else f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
        parser.add_argument(
            _flag(field),
            dest=field.name,
            type=base,
            default=default,
            choices=field.metadata.get("choices"),
            required=field.metadata.get("required", False),
            help=help_text + shown,
            metavar=field.name.upper() if "choices" not in field.metadata else None,
        )


def _config_from_args(cls: type, ns: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


class _TokenBar:
    """A tqdm bar over tokens, fed by the trainer's log records.

    Created on the first record, so nothing is drawn before validation and model
    loading have succeeded.
    """

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.bar, self.done = total, desc, None, 0

    def __call__(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit="tok", unit_scale=True, dynamic_ncols=True)
        if "status" in record:
            self.bar.set_description(f"{self.desc}: {record['status']}")
            return
        self.bar.update(record["tokens"] - self.done)
        self.done = record["tokens"]
        self.bar.set_postfix(
            loss=f"{record['loss']:.3g}", l0=f"{record['l0']:.1f}", fvu=f"{record['fvu']:.3f}",
            dead=f"{record['dead_frac']:.1%}", refresh=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _cmd_train(ns: argparse.Namespace) -> int:
    from .formats import REPORT_FILE
    from .training import train

    cfg = _config_from_args(TrainConfig, ns)
    bar = _TokenBar(cfg.tokens, f"train {cfg.arch}")
    try:
        result = train(cfg, progress=bar)
    finally:
        bar.close()
    print(f"\nsaved {result.dictionary.cfg.arch} dictionary ({result.dictionary.cfg.d_sae} features, "
          f"{result.dictionary.cfg.hook} of {result.dictionary.cfg.model}) to {result.out}")
    print(f"trained on {result.tokens:,} tokens in {result.steps:,} steps")
    if result.evaluation is not None:
        print(result.evaluation.table())
    elif result.heldout is not None:
        m = result.heldout
        print(f"held-out activations ({m.n_tokens:,} tokens): fvu {m.fvu:.4g}  l0 {m.l0:.4g}  dead {m.n_dead}")
    if (result.out / REPORT_FILE).exists():
        print(f"report: {result.out / REPORT_FILE}")
    return 0


def _cmd_cache(ns: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .activations import cache_activations

    cfg = _config_from_args(CacheConfig, ns)
    bar = None

    def advance(done: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=cfg.tokens, desc="cache", unit="tok", unit_scale=True, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        result = cache_activations(cfg, progress=advance)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {result.tokens:,} activations in {result.shards} shard(s) and {result.heldout_tokens:,} held-out to {result.folder}")
    print(f"train from it with: saekit train --activation-cache {result.folder}")
    return 0


def _cmd_eval(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .data import validate_source
    from .evaluation import check_hook, check_model, evaluate
    from .formats import EVAL_FILE, atomic_write_text
    from .hub import default_output
    from .models import load_model, parse_dtype, resolve_device
    from .peer_formats import load_any

    # Everything that can be checked before the slow model load and the passes is checked here.
    if ns.tokens <= 0:
        raise ConfigError(f"--tokens must be positive, got {ns.tokens}")
    if ns.max_length < 2:
        raise ConfigError(f"--max-length must be at least 2, got {ns.max_length}")
    folder = ns.folder
    out = Path(ns.json) if ns.json else default_output(folder, EVAL_FILE)
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write {out}: the folder {out.parent} does not exist; create it or choose another --json")
    sae = load_any(folder, ns.format, device=resolve_device(ns.device))
    # Some formats (sparsify) record neither the hook point nor the model: take them from the flags.
    if not sae.cfg.hook:
        if ns.hook is None:
            raise ConfigError(f"{folder} does not record its hook point; pass --hook (e.g. --hook resid_post.9)")
        sae.cfg.hook = ns.hook
    if not sae.cfg.model and ns.model:
        sae.cfg.model = ns.model
    check_hook(sae, ns.hook)
    check_model(sae, None if ns.allow_other_model else ns.model)  # both before the slow model load
    validate_source(ns.dataset, ns.text_field)
    lm = load_model(ns.model or sae.cfg.model or None, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
    result = evaluate(
        sae, lm, dataset=ns.dataset, tokens=ns.tokens, max_length=ns.max_length, text_field=ns.text_field,
        regimes=ns.regimes, allow_other_model=True,  # checked above, against the name the user gave
    )
    print(result.table())
    atomic_write_text(out, json.dumps(result.to_dict(), indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _cmd_convert(ns: argparse.Namespace) -> int:
    from .peer_formats import convert

    print(f"wrote {ns.to} dictionary to {convert(ns.src, ns.dst, ns.to, ns.format)}")
    return 0


def _cmd_push(ns: argparse.Namespace) -> int:
    from .hub import push

    name = push(ns.folder, ns.repo_id, path_in_repo=ns.path, revision=ns.revision, private=ns.private or None,
                commit_message=ns.message, include_checkpoint=ns.include_checkpoint)
    print(f"pushed {ns.folder} to {name}; load it with saekit.load({name!r}) or `saekit eval {name}`")
    return 0


def _cmd_report(ns: argparse.Namespace) -> int:
    from .report import write_report

    print(f"wrote {write_report(ns.folder, eval_path=ns.eval, out=ns.out)}")
    return 0


def _cmd_compare(ns: argparse.Namespace) -> int:
    from .report import compare

    table, page = compare(ns.folders, out=ns.out)
    print(table)
    print(f"wrote {page}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit", description="Sparse dictionary learning on language-model activations.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser(
        "train",
        help="train a dictionary",
        description="Train a sparse dictionary on a model's activations. With no flags: a TopK "
        "dictionary (k=32, 8x) on resid_post.9 of the embedded SmolLM2-135M, on the embedded "
        "Wikipedia summaries, 300k tokens.",
    )
    _add_config_flags(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "cache",
        help="write activations to sharded files for repeated training",
        description="Run the model once and store the activations at a hook point as .npy shards, plus a "
        "held-out set (read back by memory map with `saekit train --activation-cache FOLDER`).",
    )
    _add_config_flags(p, CacheConfig)
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser(
        "eval",
        help="every figure of METRICS.md for a dictionary, in both context regimes",
        description="Evaluate a dictionary on held-out text: reconstruction, sparsity and downstream figures "
        "(the model with the dictionary spliced in), for fixed contexts as in training and for whole documents, "
        "with FVU and CE diff by position. Prints a table and writes JSON (default FOLDER/eval.json).",
    )
    p.add_argument("folder", help=DICTIONARY_ARG_HELP)
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the folder's format, if detection is wrong")
    p.add_argument("--tokens", type=int, default=32_768, help="evaluated tokens per regime (default 32,768)")
    p.add_argument("--dataset", default=None, help="as for saekit train; its held-out split is used (default: embedded corpus)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--model", default=None, help="the model to run (default: the one the dictionary records)")
    p.add_argument("--hook", default=None, help="refuse unless the dictionary was trained on this hook point")
    p.add_argument("--regimes", nargs="+", default=["fixed", "documents"], choices=["fixed", "documents"])
    p.add_argument("--max-length", type=int, default=1024, help="document length cap in the documents regime")
    p.add_argument("--allow-other-model", action="store_true", help="evaluate on a model other than the recorded one")
    p.add_argument("--json", default=None, help="where to write the figures (default FOLDER/eval.json; for a Hub name, eval-NAME.json here)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", help="model dtype")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "convert",
        help="write a dictionary in another library's format",
        description="Read a dictionary folder in any supported format and write it as saekit, SAELens "
        "(cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors) or dictionary_learning "
        "(config.json + ae.pt). Conventions (transposed weights, b_dec subtracted or not, thresholds, "
        "activation scale) are mapped explicitly.",
    )
    p.add_argument("src", help=DICTIONARY_ARG_HELP)
    p.add_argument("dst", help="the folder to write")
    p.add_argument("--to", required=True, choices=WRITE_FORMATS, help="the format to write")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the source's format, if detection is wrong")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "push",
        help="upload a dictionary to the Hugging Face Hub with a model card",
        description="Upload a dictionary folder (any format saekit reads) to a Hub model repository, created if "
        "missing, in one commit: the dictionary's files, eval.json, training.json, log.jsonl and report.html when "
        "present, and a model card (the folder's README.md if it has one, else one written from the config and "
        "evaluation). Log in first with `hf auth login` or set HF_TOKEN; HF_ENDPOINT selects another Hub.",
    )
    p.add_argument("folder", help="the dictionary folder to upload")
    p.add_argument("repo_id", help="the Hub repository, OWNER/NAME")
    p.add_argument("--path", default="", help="a folder inside the repository (default: its top level), e.g. resid_post.9")
    p.add_argument("--revision", default=None, help="the branch to commit to (default: main)")
    p.add_argument("--private", action="store_true", help="create the repository private (if it does not exist)")
    p.add_argument("--message", default=None, help="the commit message")
    p.add_argument("--include-checkpoint", action="store_true",
                   help="also upload checkpoint.safetensors (optimizer state, for resuming; ~3x the weights)")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("report", help="a self-contained HTML page of a run's figures and plots")
    p.add_argument("folder", help="a run or dictionary folder (any format) or a Hub name, holding eval.json "
                   "(saekit train writes one; else run saekit eval)")
    p.add_argument("--eval", default=None, help="an eval JSON elsewhere")
    p.add_argument("--out", default=None, help="the page to write (default FOLDER/report.html)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("compare", help="several dictionaries side by side, with sparsity-fidelity frontiers")
    p.add_argument("folders", nargs="+", help="dictionary folders (any format) or Hub names, each holding eval.json")
    p.add_argument("--out", default=None, help="the page to write (default compare.html)")
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return ns.func(ns)
    except SaekitError as e:
        print(f"saekit {ns.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nsaekit {ns.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
