"""``saekit train``: one dictionary, a sweep, or many hook points from one pass."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from typing import Any

from ..config import ARCH_SPECIFIC_FLAGS, DICTIONARY_FIELDS, TrainConfig, archs_taking
from ..errors import ConfigError, SaekitError
from .common import add_config_flags
from .progress import ProgressBars


# The flags that take comma-separated values, one dictionary each.
SWEEPABLE = frozenset(DICTIONARY_FIELDS - {"resample"})


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a dictionary",
        description="Train a sparse dictionary on a model's activations. With no flags: a TopK "
        "dictionary (k=32, 8x) on resid_post.9 of the embedded SmolLM2-135M, on the embedded "
        "Wikipedia summaries, 300k tokens.",
    )
    add_config_flags(p, TrainConfig, SWEEPABLE)
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from ..activations import is_hook_pattern, parse_hook_spec
    from ..io.saekit_format import REPORT_FILE
    from ..training import train_many

    from ..training.distributed import close, ranks_from_environment

    cfgs = train_configs(ns)
    hooks = [] if cfgs[0].hook is None else parse_hook_spec(cfgs[0].hook)
    many = len(cfgs) > 1 or len(hooks) > 1 or any(is_hook_pattern(h) for h in hooks)
    ranks = ranks_from_environment(cfgs[0].device)  # under torchrun: this process's rank
    # In a data-parallel run rank 0 speaks for all (the others hold the same figures).
    quiet = ranks.distributed and cfgs[0].parallel == "data" and not ranks.main
    bars = None if quiet else ProgressBars(
        "train several dictionaries" if many else f"train {cfgs[0].arch}", cfgs[0].trainable_tokens()
    )
    try:
        results = train_many(cfgs, progress=bars)
    except SaekitError:
        if quiet:  # every rank of a data-parallel run meets rank 0's error; rank 0 says it
            return 2
        raise
    finally:
        if bars is not None:
            bars.close()
        close(ranks)
    if quiet:
        return 0
    for result in results:
        c = result.dictionary.cfg
        print(f"\nsaved {c.describe()} ({c.d_sae:,} features) to {result.out}")
        if len(results) == 1:
            print(f"trained on {result.tokens:,} tokens in {result.steps:,} steps")
        if result.evaluation is not None:
            print(result.evaluation.table())
        elif result.heldout is not None:
            m = result.heldout
            print(f"held-out activations ({m.n_tokens:,} tokens): fvu {m.fvu:.4g}  l0 {m.l0:.4g}  dead {m.n_dead}")
        if (result.out / REPORT_FILE).exists():
            print(f"report: {result.out / REPORT_FILE}")
    if len(results) > 1:
        parent = results[0].out.parent
        print(f"\ntrained {len(results)} dictionaries from one pass over {results[0].tokens:,} tokens "
              f"({results[0].steps:,} steps); compare them with `saekit compare {parent}/*`")
    return 0


def train_configs(ns: argparse.Namespace) -> list[TrainConfig]:
    """One TrainConfig per combination of the sweepable flags' values.

    When the architecture itself is swept, a flag only some of them take (``--k`` for the
    TopK family, ``--l1`` for ReLU and gated, ``--l0-coeff`` for JumpReLU) applies to those
    and is left out for the others, so ``--arch relu,topk --k 16,32`` is three dictionaries;
    one that none of them takes is refused.
    """
    from ..dictionaries import ARCHITECTURES

    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    swept = {name: getattr(ns, name) for name in SWEEPABLE if isinstance(getattr(ns, name), list)}
    arch_swept = len(swept.get("arch", [])) > 1
    if arch_swept:  # a flag that none of the swept architectures takes would be dropped for all
        archs = swept["arch"]
        for flag, name, takes in ARCH_SPECIFIC_FLAGS:
            if getattr(ns, name) is not None and not any(takes(ARCHITECTURES[a]) for a in archs):
                raise ConfigError(f"{flag} applies to {archs_taking(takes)}, none of --arch {','.join(archs)}; drop "
                                  "it or add an architecture that takes it")
    configs: list[TrainConfig] = []
    seen: set[tuple[Any, ...]] = set()
    for combo in itertools.product(*swept.values()):
        values = {name: getattr(ns, name) for name in fields} | dict(zip(swept, combo))
        if arch_swept:
            cls = ARCHITECTURES[values["arch"]]
            for _, name, takes in ARCH_SPECIFIC_FLAGS:
                if not takes(cls):
                    values[name] = None
        key = tuple(values[name] for name in fields)
        if key not in seen:
            seen.add(key)
            configs.append(TrainConfig(**values))
    return configs
