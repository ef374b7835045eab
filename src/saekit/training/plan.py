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

from ..config import DEFAULT_EXPANSION, DEFAULT_SPARSITY_COEFF, DICTIONARY_FIELDS, TrainConfig, flag_name
from ..errors import ConfigError

# How a member's folder name shows a setting that varies across the sweep.
_NAME_PARTS = {
    "arch": "{}", "k": "k{}", "expansion": "x{}", "dict_size": "F{}", "l1_coeff": "l1_{}", "l0_coeff": "l0_{}",
    "lr": "lr{}", "lr_warmup": "warmup{}", "lr_decay": "decay{}", "sparsity_warmup": "swarmup{}",
    "dead_after_tokens": "dead{}", "auxk_coeff": "auxk{}", "resample": "resample{}", "jumprelu_bandwidth": "bw{}",
    "skip": "skip",
}
assert set(_NAME_PARTS) == DICTIONARY_FIELDS


@dataclass
class Member:
    """One dictionary of a run: its own config (one hook point, a transcoder's one target,
    its own folder) and where its activations sit in the source's rows."""

    cfg: TrainConfig
    column: int  # index of cfg.hook in the source's hook points
    target_column: int | None = None  # index of cfg.target (a transcoder's), else None

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


def pair_hook_points(inputs: Sequence[str], targets: Sequence[str] | None) -> list[tuple[str, str | None]]:
    """(input, target) per dictionary: ``(hook, None)`` for sparse autoencoders; for
    transcoders the inputs and targets paired in forward order (the first input with
    the first target), or one target for every input, or one input for every target.
    Each target must come after its input in the forward pass."""
    from ..hooks import HookPoint

    if targets is None:
        return [(h, None) for h in inputs]
    inputs, targets = list(inputs), list(targets)
    if len(targets) == 1:
        targets = targets * len(inputs)
    elif len(inputs) == 1:
        inputs = inputs * len(targets)
    elif len(inputs) != len(targets):
        raise ConfigError(
            f"--hook names {len(inputs)} points ({', '.join(inputs)}) and --target {len(targets)} "
            f"({', '.join(targets)}); give one target per input (paired in forward order), or one target for all"
        )
    for source, target in zip(inputs, targets):
        if not HookPoint.parse(source) < HookPoint.parse(target):
            raise ConfigError(
                f"a transcoder reads its input and reconstructs a later point, but --target {target} is "
                f"{'the same point as' if source == target else 'before'} --hook {source} in the forward pass; "
                "swap them or pick a later target"
            )
    return list(zip(inputs, targets))


def _point_name(hook: str, target: str | None) -> str:
    return hook if target is None else f"{hook}-to-{target}"


def default_out(cfg: TrainConfig, model_name: str, hook: str, target: str | None = None) -> Path:
    """``runs/<model>-<hook>-<arch>`` (``<hook>-to-<target>`` for a transcoder) for one dictionary."""
    return Path("runs") / f"{_model_stem(model_name)}-{_point_name(hook, target)}-{cfg.arch}"


def _model_stem(model_name: str) -> str:
    return Path(model_name).name.removesuffix(".gguf").replace("/", "_")


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def plan_members(
    cfgs: Sequence[TrainConfig], pairs: Sequence[tuple[str, str | None]], source_hooks: Sequence[str], model_name: str
) -> list[Member]:
    """One member per (configuration, (input, target) pair), each with its folder.

    ``pairs`` come from ``pair_hook_points``; ``source_hooks`` are the source's hook
    points, whose positions are the members' columns. One member: ``--out`` is its
    folder (``default_out`` without one). Several: ``--out`` (default ``runs/<model>``)
    holds one folder per member, named by its hook point (``<hook>-to-<target>`` for a
    transcoder), its architecture and each of its settings that differs from the
    default, e.g. ``resid_post.6-topk-k32-x16``. A name depends on the member alone,
    never on which other members the run has, so the same member finds the same folder
    again even when a later command sweeps fewer values.
    """
    source_hooks = list(source_hooks)

    def member(cfg: TrainConfig, hook: str, target: str | None, out: Path) -> Member:
        cfg = dataclasses.replace(cfg, hook=hook, target=target, out=str(out))
        return Member(cfg, source_hooks.index(hook), None if target is None else source_hooks.index(target))

    if len(cfgs) == 1 and len(pairs) == 1:
        cfg, (hook, target) = cfgs[0], pairs[0]
        return [member(cfg, hook, target, Path(cfg.out) if cfg.out else default_out(cfg, model_name, hook, target))]
    parent = Path(cfgs[0].out) if cfgs[0].out else Path("runs") / _model_stem(model_name)
    return [
        member(cfg, hook, target, parent / member_name(cfg, hook, target))
        for hook, target in pairs
        for cfg in cfgs
    ]


# Settings whose flag defaults to None but stands for a value: given as that value, they
# name the same dictionary as left out, so they add nothing to its folder's name.
_IMPLIED_DEFAULTS = {
    "expansion": DEFAULT_EXPANSION, "l1_coeff": DEFAULT_SPARSITY_COEFF["l1"], "l0_coeff": DEFAULT_SPARSITY_COEFF["l0"],
}


def member_name(cfg: TrainConfig, hook: str, target: str | None) -> str:
    """The folder of the dictionary ``cfg`` trains on ``hook`` (to ``target``) among the
    members of a run of several: ``resid_post.6-topk-k32-x16``."""
    return "-".join([_point_name(hook, target), cfg.arch, *_setting_parts(cfg)])


def _setting_parts(cfg: TrainConfig) -> list[str]:
    """The parts of a member's folder name: each dictionary setting that is not its default
    (k always, for the architectures that take it, since TrainConfig fills it in)."""
    fields = TrainConfig.__dataclass_fields__
    parts = []
    for name, pattern in _NAME_PARTS.items():
        value = getattr(cfg, name)
        default = (fields[name].default, _IMPLIED_DEFAULTS.get(name))
        if name != "arch" and value is not None and value not in default:
            parts.append(pattern.format(_value(value)))
    return parts
