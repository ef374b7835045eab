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
from .errors import SaekitError


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
    from .train import train

    cfg = _config_from_args(TrainConfig, ns)
    bar = _TokenBar(cfg.tokens, f"train {cfg.arch}")
    try:
        result = train(cfg, progress=bar)
    finally:
        bar.close()
    print(f"\nsaved {result.dictionary.cfg.arch} dictionary ({result.dictionary.cfg.d_sae} features, "
          f"{result.dictionary.cfg.hook} of {result.dictionary.cfg.model}) to {result.out}")
    print(f"trained on {result.tokens:,} tokens in {result.steps:,} steps")
    if result.heldout is not None:
        m = result.heldout
        print(f"held-out ({m.n_tokens:,} tokens, fixed contexts of {cfg.context_length}):")
        for name in ("fvu", "variance_explained", "mse", "cosine", "l0", "frac_alive", "relative_reconstruction_bias"):
            print(f"  {name:<30} {getattr(m, name):.4g}")
        print(f"  {'dead features':<30} {m.n_dead} of {result.dictionary.cfg.d_sae} ({m.n_dead / result.dictionary.cfg.d_sae:.1%})")
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
