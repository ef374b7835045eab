"""What every verb's parser shares: the argparse subclass, flags generated from config dataclasses, list-valued flags, and the help said wherever a verb takes a dictionary."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Sequence

from ..config import field_type, flag_name


# The formats `saekit.io.formats` reads and writes (kept here so --help needs no torch import).
FORMAT_CHOICES = ("saekit", "saelens", "sparsify", "dictionary_learning", "gemma_scope")
WRITE_FORMATS = FORMAT_CHOICES[:4]  # Gemma Scope is read-only
# Said wherever a verb takes a dictionary.
DICTIONARY_ARG_HELP = (
    "a dictionary: a local folder in any format saekit reads (saekit, SAELens, sparsify, dictionary_learning, "
    "Gemma Scope params.npz; detected), or a Hub name OWNER/REPO[@REVISION]/PATH/INSIDE (downloaded and cached)"
)


class Parser(argparse.ArgumentParser):
    """argparse with short usage errors: the one line that says what is wrong, and where
    to read more, instead of the whole usage text (thirty lines for ``saekit train``)."""

    _verbs: Any = None  # the sub-parsers action, once added

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nsee `{self.prog} --help`\n")

    def add_subparsers(self, **kwargs: Any) -> Any:
        self._verbs = super().add_subparsers(**kwargs)
        return self._verbs

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        # argparse reports a verb's unknown flags from the top-level parser ("saekit: error");
        # the verb's own parser names the verb and its --help.
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            where = self if self._verbs is None else self._verbs.choices.get(getattr(ns, self._verbs.dest, None), self)
            where.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def add_device_flags(parser: argparse.ArgumentParser, dtype_help: str = "model dtype (default float32)") -> None:
    """``--device`` and ``--dtype``, as every command that runs a model takes them."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, or auto (default: a GPU if torch sees one)")
    parser.add_argument("--dtype", default="float32", help=dtype_help)


def add_statement_cache_flags(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir`` and ``--no-cache``: the activation cache of the probe commands."""
    parser.add_argument("--cache-dir", default=None, help="activation cache (default ~/.cache/saekit/probes)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the activation cache")


def add_feature_flags(parser: argparse.ArgumentParser, default: str) -> None:
    """``--features SPEC`` or ``--all``, one or the other; ``default`` says what neither means."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--features", default=None, metavar="SPEC",
                       help=f"the features: indices and inclusive ranges, e.g. 0-199 or 1,5,9 or 0-99,4000 ({default})")
    which.add_argument("--all", action="store_true", help="every feature of the dictionary")


def chosen_features(ns: argparse.Namespace, d_sae: int, first: int) -> list[int] | None:
    """The features ``--features``/``--all`` choose; ``None`` when neither was given and the
    caller has a default of its own; ``first`` is the caller's default count otherwise (the
    first ``first`` features, or every feature of a smaller dictionary). Pass 0 for None."""
    from ..interpret.feature_spec import parse_feature_spec

    if ns.all:
        return list(range(d_sae))
    if ns.features is not None:
        return parse_feature_spec(ns.features, d_sae)
    return list(range(min(first, d_sae))) if first > 0 else None


def add_config_flags(parser: argparse.ArgumentParser, cls: type, sweepable: frozenset[str] = frozenset()) -> None:
    """One flag per config field; a field in ``sweepable`` takes comma-separated values
    (``--k 16,32,64``), parsed into a list."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        base, _ = field_type(hints[field.name])
        help_text = field.metadata.get("help", "")
        default = field.default
        if base is bool:
            parser.add_argument(flag_name(field), dest=field.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        shown = " (required)" if field.metadata.get("required") else "" if default is None else f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
        choices = field.metadata.get("choices")
        many = field.name in sweepable
        if many:
            shown += "; comma-separated values train one dictionary each"
        parser.add_argument(
            flag_name(field),
            dest=field.name,
            type=values_type(base, choices, flag_name(field)) if many else base,
            default=default,
            choices=None if many else choices,
            required=field.metadata.get("required", False),
            help=help_text + shown,
            metavar=("{" + ",".join(choices) + "}[,...]" if choices else f"{field.name.upper()}[,...]") if many
            else field.name.upper() if choices is None else None,
        )


def values_type(base: type, choices: Sequence[str] | None, flag: str) -> Callable[[str], list[Any]]:
    """The argparse type of a sweepable flag: comma-separated values of ``base``."""

    def parse(text: str) -> list[Any]:
        parts = [part.strip() for part in text.split(",")]
        if any(not part for part in parts):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty value; separate values with commas, e.g. 16,32")
        try:
            values = [base(part) for part in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: each value must be {base.__name__}") from None
        bad = [v for v in values if choices and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"invalid choice: {bad[0]!r} (choose from {', '.join(choices)})")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r} gives a value twice")
        return values

    parse.__name__ = f"{base.__name__} list"  # what argparse names in its own messages
    return parse


def config_from_args(cls: type, ns: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def fill_unrecorded(dictionary: Any, folder: str, hook: str | None, model: str | None, target: str | None = None) -> None:
    """Take the hook point, model and a transcoder's target from the flags where the
    dictionary's format records none of them (sparsify's); a dictionary that records no
    hook point needs ``--hook``, and a transcoder no target ``--target`` where the verb has it."""
    from ..errors import ConfigError

    if not dictionary.cfg.hook:
        if hook is None:
            raise ConfigError(f"{folder} does not record its hook point; pass --hook (e.g. --hook resid_post.9)")
        dictionary.cfg.hook = hook
    if not dictionary.cfg.model and model:
        dictionary.cfg.model = model
    if dictionary.cfg.transcoder and not dictionary.cfg.target and target:
        dictionary.cfg.target = target


def add_spliced_flags(parser: argparse.ArgumentParser) -> None:
    """``--dictionaries`` (one per hook point, spliced into the model) and the flags that say
    which model and how to read them: ``--model``, ``--allow-other-model``, ``--format``."""
    parser.add_argument("--dictionaries", nargs="+", required=True, metavar="DIR",
                        help="the dictionaries, one per hook point: folders in any format saekit reads or Hub names")
    parser.add_argument("--model", default=None, help="the model to run (default: the one the dictionaries record)")
    parser.add_argument("--allow-other-model", action="store_true", help="run a model other than the recorded one")
    parser.add_argument("--format", default=None, choices=FORMAT_CHOICES,
                        help="the folders' format, if detection is wrong")


def load_spliced(ns: argparse.Namespace, device: Any) -> list[Any]:
    """The ``--dictionaries`` loaded onto ``device``, each recording the hook point it is
    spliced at."""
    from ..errors import ConfigError
    from ..loading import load

    dictionaries = [load(folder, ns.format, device=device) for folder in ns.dictionaries]
    for folder, d in zip(ns.dictionaries, dictionaries):
        if not d.cfg.hook:
            raise ConfigError(f"{folder} does not record its hook point, so saekit cannot tell where to splice it")
    return dictionaries


def model_for(folders: Sequence[str], dictionaries: Sequence[Any], model: str | None, allow_other_model: bool,
              job: str) -> str | None:
    """The model to splice ``dictionaries`` into: ``model``, or the one they record. They
    must record one model between them (``job`` says what needs that, e.g. "a circuit"),
    and unless ``allow_other_model`` it must be the one run; checked before it loads."""
    from ..errors import ConfigError
    from ..evaluation import check_model, same_model

    recorded = [(folder, d.cfg.model) for folder, d in zip(folders, dictionaries) if d.cfg.model]
    for folder, other in recorded[1:]:
        if not same_model(other, recorded[0][1]):
            raise ConfigError(f"{recorded[0][0]} was trained on {recorded[0][1]} but {folder} on {other}; "
                              f"{job} needs dictionaries of one model")
    if not allow_other_model:
        for d in dictionaries:
            check_model(d, model)
    return model or (recorded[0][1] if recorded else None)
