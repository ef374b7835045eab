"""Which dictionaries one pass over the activations trains, and the folder of each.

A run trains one dictionary per (configuration, hook point): several configurations
(a sweep of k, widths, architectures, sparsity coefficients, learning rates) that share
everything that decides which tokens arrive in which batch (``TrainConfig.pass_settings``),
times the hook points their ``--hook`` names. Each such member is an ordinary run of its
own: its config names exactly one hook point and its own folder, where its settings,
log, checkpoint, dictionary and evaluation go, so a member's folder looks and loads
like the folder of a run that trained it alone, and with the same flags it would hold
the same weights (same seed, same batches).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import DICTIONARY_FIELDS, TrainConfig, flag_name
from ..errors import ConfigError

# How a member's folder name shows a setting that varies across the sweep.
_NAME_PARTS = {
    "arch": "{}", "k": "k{}", "expansion": "x{}", "dict_size": "F{}", "l1_coeff": "l1_{}", "l0_coeff": "l0_{}",
    "lr": "lr{}", "lr_warmup": "warmup{}", "lr_decay": "decay{}", "sparsity_warmup": "swarmup{}",
    "dead_after_tokens": "dead{}", "auxk_coeff": "auxk{}", "resample": "resample{}", "jumprelu_bandwidth": "bw{}",
}
assert set(_NAME_PARTS) == DICTIONARY_FIELDS


@dataclass
class Member:
    """One dictionary of a run: its own config (one hook point, its own folder) and where
    its activations sit in the source's rows."""

    cfg: TrainConfig
    column: int  # index of cfg.hook in the source's hook points

    @property
    def out(self) -> Path:
        assert self.cfg.out is not None
        return Path(self.cfg.out)

    @property
    def name(self) -> str:
        return self.out.name


def check_one_pass(cfgs: Sequence[TrainConfig]) -> None:
    """Configurations trained from one pass must agree on everything but the dictionary."""
    if not cfgs:
        raise ConfigError("train_many needs at least one TrainConfig")
    first = cfgs[0].pass_settings()
    for cfg in cfgs[1:]:
        for key, value in cfg.pass_settings().items():
            if value != first[key]:
                flag = flag_name(TrainConfig.__dataclass_fields__[key])
                raise ConfigError(
                    f"dictionaries trained from one pass must share {flag} (one has {first[key]!r}, another "
                    f"{value!r}); only {', '.join(sorted(flag_name(TrainConfig.__dataclass_fields__[f]) for f in DICTIONARY_FIELDS))} "
                    "may differ between them"
                )
    names = [tuple(getattr(cfg, f) for f in sorted(DICTIONARY_FIELDS)) for cfg in cfgs]
    if len(set(names)) != len(names):
        raise ConfigError("two of the configurations are the same dictionary; give each sweep value once")


def default_out(cfg: TrainConfig, model_name: str, hook: str) -> Path:
    """``runs/<model>-<hook>-<arch>`` for one dictionary."""
    return Path("runs") / f"{_model_stem(model_name)}-{hook}-{cfg.arch}"


def _model_stem(model_name: str) -> str:
    return Path(model_name).name.removesuffix(".gguf").replace("/", "_")


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def plan_members(cfgs: Sequence[TrainConfig], hooks: Sequence[str], model_name: str) -> list[Member]:
    """One member per (configuration, hook point), each with its folder.

    One member: ``--out`` is its folder (``default_out`` without one). Several: ``--out``
    (default ``runs/<model>``) holds one folder per member, named by its hook point, its
    architecture and each of its settings that differs from the default, e.g.
    ``resid_post.6-topk-k32-x16``. A name depends on the member alone, never on which
    other members the run has, so the same member finds the same folder again even
    when a later command sweeps fewer values.
    """
    if len(cfgs) == 1 and len(hooks) == 1:
        cfg = cfgs[0]
        out = Path(cfg.out) if cfg.out else default_out(cfg, model_name, hooks[0])
        return [Member(dataclasses.replace(cfg, hook=hooks[0], out=str(out)), 0)]
    parent = Path(cfgs[0].out) if cfgs[0].out else Path("runs") / _model_stem(model_name)
    members = []
    for column, hook in enumerate(hooks):
        for cfg in cfgs:
            name = "-".join([hook, cfg.arch, *_setting_parts(cfg)])
            members.append(Member(dataclasses.replace(cfg, hook=hook, out=str(parent / name)), column))
    return members


def _setting_parts(cfg: TrainConfig) -> list[str]:
    """The parts of a member's folder name: each dictionary setting that is not its default
    (k always, for the architectures that take it, since TrainConfig fills it in)."""
    fields = TrainConfig.__dataclass_fields__
    parts = []
    for name, pattern in _NAME_PARTS.items():
        value = getattr(cfg, name)
        if name != "arch" and value is not None and value != fields[name].default:
            parts.append(pattern.format(_value(value)))
    return parts
