"""``saekit <verb>``: parse, validate, call the library, print.

The flags of ``saekit train`` are generated from ``TrainConfig``'s fields (their
types, defaults and help text), so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
import time
import typing
from typing import Any, Callable, Sequence

from .config import DICTIONARY_FIELDS, CacheConfig, TrainConfig, field_type, flag_name
from .errors import ConfigError, OutputError, RunInterrupted, SaekitError

# The formats `saekit.io.formats` reads and writes (kept here so --help needs no torch import).
FORMAT_CHOICES = ("saekit", "saelens", "sparsify", "dictionary_learning", "gemma_scope")
WRITE_FORMATS = FORMAT_CHOICES[:4]  # Gemma Scope is read-only
# The `saekit train` flags that take comma-separated values, one dictionary each.
SWEEPABLE = frozenset(DICTIONARY_FIELDS - {"resample"})
# Said wherever a verb takes a dictionary.
DICTIONARY_ARG_HELP = (
    "a dictionary: a local folder in any format saekit reads (saekit, SAELens, sparsify, dictionary_learning, "
    "Gemma Scope params.npz; detected), or a Hub name OWNER/REPO[@REVISION]/PATH/INSIDE (downloaded and cached)"
)


class _Parser(argparse.ArgumentParser):
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


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, sweepable: frozenset[str] = frozenset()) -> None:
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
            type=_values(base, choices, flag_name(field)) if many else base,
            default=default,
            choices=None if many else choices,
            required=field.metadata.get("required", False),
            help=help_text + shown,
            metavar=("{" + ",".join(choices) + "}[,...]" if choices else f"{field.name.upper()}[,...]") if many
            else field.name.upper() if choices is None else None,
        )


def _values(base: type, choices: Sequence[str] | None, flag: str) -> Callable[[str], list[Any]]:
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


def _config_from_args(cls: type, ns: argparse.Namespace) -> Any:
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def _train_configs(ns: argparse.Namespace) -> list[TrainConfig]:
    """One TrainConfig per combination of the sweepable flags' values.

    When the architecture itself is swept, a flag only some of them take (``--k`` for the
    TopK family, ``--l1`` for ReLU and gated, ``--l0-coeff`` for JumpReLU) applies to those
    and is left out for the others, so ``--arch relu,topk --k 16,32`` is three dictionaries.
    """
    from .dictionaries import ARCHITECTURES

    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    swept = {name: getattr(ns, name) for name in SWEEPABLE if isinstance(getattr(ns, name), list)}
    arch_swept = len(swept.get("arch", [])) > 1
    configs: list[TrainConfig] = []
    seen: set[tuple[Any, ...]] = set()
    for combo in itertools.product(*swept.values()):
        values = {name: getattr(ns, name) for name in fields} | dict(zip(swept, combo))
        if arch_swept:
            cls = ARCHITECTURES[values["arch"]]
            if not cls.uses_k:
                values["k"] = None
            if cls.sparsity_penalty != "l1":
                values["l1_coeff"] = None
            if cls.sparsity_penalty != "l0":
                values["l0_coeff"] = None
        key = tuple(values[name] for name in fields)
        if key not in seen:
            seen.add(key)
            configs.append(TrainConfig(**values))
    return configs


def _amount(value: Any, spec: str) -> str:
    """A figure of a progress record; None (not known yet) as "n/a"."""
    return "n/a" if value is None else format(value, spec)


class _ProgressBars:
    """tqdm bars on stderr drawn from the library's progress records.

    Three kinds of record arrive:

    * a training log record (``step``, ``tokens``, figures, ``tokens_per_s``): advances
      the training bar. Its rate and time left come from the record's current rate, not
      tqdm's average, which would count the first buffer fill as training time.
      ``fvu`` and ``dead_frac`` may be None (not known yet) and read "n/a";
    * ``{"status": text}``, a slow step without counts: shown on the training bar
      while training runs, on a line of its own once it is over;
    * ``{"phase", "done", "total", "unit"}``: a bar per phase, closed when it is done
      or the next phase starts. During training (a buffer refill) it is drawn below
      the training bar and goes when done; afterwards (evaluation) each one stays.

    Training is over once its bar is full, or at a status after the first step (the
    trainer reports statuses for the slow steps around its loop, such as the final
    evaluation; a run whose data ran out never fills its bar). Then the
    training bar is closed, so it does not sit there while evaluation runs. Without a
    total (``saekit eval``) there is no training bar. Nothing is drawn before the first
    record, so nothing appears before validation has succeeded.
    """

    TRAIN_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tok [{elapsed}{postfix}]"

    def __init__(self, desc: str, total: int | None = None, file: Any = None):
        self.desc, self.total, self.file = desc, total, file
        self.train_bar: Any = None
        self.training_over = total is None
        self.stepped = False
        self.first_step: tuple[float, int] | None = None  # (time, tokens) of the first training record
        self.side_bar: Any = None  # the current phase's bar, or a status line
        self.side_name: str | None = None
        self.shown_run: str | None = None  # with several dictionaries, whose figures the bar shows

    def __call__(self, record: dict[str, Any]) -> None:
        if "step" in record and "tokens" in record:
            self._step(record)
            return
        full = self.train_bar is not None and self.train_bar.n >= self.total
        if full or self.stepped and "status" in record:
            self._end_training()
        if "phase" in record:
            self._phase(record)
        elif "status" in record:
            self._status(str(record["status"]))

    def _tqdm(self, **kwargs: Any) -> Any:
        from tqdm.auto import tqdm

        return tqdm(file=self.file, dynamic_ncols=True, **kwargs)

    def _training_bar(self) -> Any:
        if self.train_bar is None:
            self.train_bar = self._tqdm(total=self.total, desc=self.desc, unit="tok", unit_scale=True,
                                        bar_format=self.TRAIN_FORMAT)
        return self.train_bar

    def _end_training(self) -> None:
        self.training_over = True
        if self.train_bar is not None:
            self.train_bar.close()
            self.train_bar = None

    def _step(self, record: dict[str, Any]) -> None:
        # Several dictionaries log the same step; the bar shows the first one's figures.
        run = record.get("run")
        if run is not None:
            self.shown_run = self.shown_run or run
            if run != self.shown_run:
                return
        self.stepped, self.training_over = True, False
        bar = self._training_bar()
        bar.set_description_str(self.desc, refresh=False)  # a status shown before is over
        rate = record.get("tokens_per_s")
        tokens = int(record["tokens"])
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = (now, tokens)
        parts = []
        if rate:
            parts.append(f"{_si(rate)} tok/s")
            # Time left from the pace since the first step (refills of the shuffle buffer
            # included, the fill before training not): one interval's rate swings with
            # every refill, and the time left with it.
            t0, n0 = self.first_step
            pace = (tokens - n0) / (now - t0) if tokens > n0 and now > t0 else rate
            if self.total and tokens < self.total:
                parts.append(f"{_duration((self.total - tokens) / pace)} left")
        if record.get("data_wait_frac") is not None:
            parts.append(f"waiting for data {record['data_wait_frac']:.0%}")
        if run is not None:
            parts.append(run)
        parts += [f"loss {_amount(record.get('loss'), '.3g')}", f"l0 {_amount(record.get('l0'), '.1f')}",
                  f"fvu {_amount(record.get('fvu'), '.3f')}", f"dead {_amount(record.get('dead_frac'), '.1%')}"]
        bar.set_postfix_str(", ".join(parts), refresh=False)
        bar.update(tokens - bar.n)

    def _status(self, text: str) -> None:
        if not self.training_over:
            self._training_bar().set_description_str(f"{self.desc}: {text}")
            return
        self._close_side()
        self.side_bar = self._tqdm(total=None, desc=text, bar_format="{desc} [{elapsed}]", leave=False)

    def _phase(self, record: dict[str, Any]) -> None:
        if not self.training_over:
            self._training_bar()  # first, so that it keeps the top line
        phase = str(record["phase"])
        if phase != self.side_name:
            self._close_side()
            # leave=None: a bar below the training bar goes when done, one on the top line stays.
            self.side_bar = self._tqdm(total=record.get("total"), desc=phase, unit=record.get("unit", "tok"),
                                       unit_scale=True, leave=None)
            self.side_name = phase
        self.side_bar.update(int(record["done"]) - self.side_bar.n)
        if record.get("total") and self.side_bar.n >= record["total"]:
            self._close_side()  # now, so its time and rate are the phase's own

    def _close_side(self) -> None:
        if self.side_bar is not None:
            self.side_bar.close()
            self.side_bar, self.side_name = None, None

    def close(self) -> None:
        self._close_side()
        self._end_training()


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _cmd_train(ns: argparse.Namespace) -> int:
    from .activations import is_hook_pattern, parse_hook_spec
    from .io.saekit_format import REPORT_FILE
    from .training import train_many

    from .training.distributed import close, ranks_from_environment

    cfgs = _train_configs(ns)
    hooks = [] if cfgs[0].hook is None else parse_hook_spec(cfgs[0].hook)
    many = len(cfgs) > 1 or len(hooks) > 1 or any(is_hook_pattern(h) for h in hooks)
    ranks = ranks_from_environment()  # under torchrun: this process's rank
    # In a data-parallel run rank 0 speaks for all (the others hold the same figures).
    quiet = ranks.distributed and cfgs[0].parallel == "data" and not ranks.main
    bars = None if quiet else _ProgressBars(
        "train several dictionaries" if many else f"train {cfgs[0].arch}", cfgs[0].trainable_tokens()
    )
    try:
        results = train_many(cfgs, progress=bars)
    finally:
        if bars is not None:
            bars.close()
        close(ranks)
    if quiet:
        return 0
    for result in results:
        c = result.dictionary.cfg
        print(f"\nsaved {c.arch} dictionary ({c.d_sae} features, {c.hook} of {c.model}) to {result.out}")
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
    from .activations import read_manifest

    manifest = read_manifest(result.folder)
    size = sum(p.stat().st_size for p in result.folder.glob("*.npy"))
    print(f"wrote {result.tokens:,} activations at {', '.join(manifest['hooks'])} ({manifest['dtype']}, "
          f"{size / 1e9:.2f} GB) in {result.shards} shard(s) and {result.heldout_tokens:,} held-out to {result.folder}")
    print(f"train from it with: saekit train --activation-cache {result.folder}")
    return 0


def _cmd_eval(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .data import validate_source
    from .evaluation import check_hook, check_model, evaluate
    from .io.saekit_format import EVAL_FILE
    from .hub import default_output
    from .loading import load
    from .models import load_model, parse_dtype, resolve_device
    from .io.files import atomic_write_text, check_writable_file

    # Everything that can be checked before the slow model load and the passes is checked here.
    if ns.tokens <= 0:
        raise ConfigError(f"--tokens must be positive, got {ns.tokens}")
    if ns.max_length < 2:
        raise ConfigError(f"--max-length must be at least 2, got {ns.max_length}")
    folder = ns.folder
    out = check_writable_file(Path(ns.json) if ns.json else default_output(folder, EVAL_FILE), "--json")
    sae = load(folder, ns.format, device=resolve_device(ns.device))
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
    bars = _ProgressBars("eval")
    try:
        result = evaluate(
            sae, lm, dataset=ns.dataset, tokens=ns.tokens, max_length=ns.max_length, text_field=ns.text_field,
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


def _cmd_convert(ns: argparse.Namespace) -> int:
    from .loading import convert

    print(f"wrote {ns.to} dictionary to {convert(ns.src, ns.dst, ns.to, ns.format, overwrite=ns.overwrite)}")
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


def _cmd_steer(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .interpret import AddFeature, ClampFeatures, generate_with_and_without
    from .io.files import atomic_write_text, check_writable_file
    from .loading import load
    from .models import load_model, parse_dtype, resolve_device

    out = check_writable_file(Path(ns.json), "--json") if ns.json else None
    if ns.sweep is not None and ns.clamp is not None:
        raise ConfigError("--sweep varies the added scale; it does not combine with --clamp")
    plot = None
    if ns.sweep is not None:
        plot = check_writable_file(Path(ns.plot or f"steer-sweep-feature{ns.feature}.png"), "--plot")
    sae = load(ns.folder, ns.format, device=resolve_device(ns.device))
    if not sae.cfg.hook:
        raise ConfigError(f"{ns.folder} does not record its hook point, so saekit cannot tell where to steer")
    if ns.sweep is not None:
        return _steer_sweep(ns, sae, out, plot)
    # Built before the model loads: a feature out of range fails here.
    intervention = (ClampFeatures(sae, [ns.feature], ns.clamp) if ns.clamp is not None
                    else AddFeature(sae, ns.feature, ns.scale))
    lm = load_model(ns.model or sae.cfg.model or None, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
    result = generate_with_and_without(lm, ns.prompt, intervention, max_new_tokens=ns.max_new_tokens,
                                       temperature=ns.temperature, seed=ns.seed, allow_other_model=ns.allow_other_model)
    what = f"feature {ns.feature} clamped to {ns.clamp:g}" if ns.clamp is not None else f"{ns.scale:g} x feature {ns.feature}"
    where = sae.cfg.target if sae.cfg.transcoder else sae.cfg.hook
    print(f"prompt: {result.prompt}\n")
    print(f"without: {result.without}\n")
    print(f"with {what} at {where}: {result.steered}")
    if out is not None:
        record = {"prompt": result.prompt, "without": result.without, "with": result.steered,
                  "dictionary": str(ns.folder), "hook": where, "feature": ns.feature,
                  "scale": None if ns.clamp is not None else ns.scale, "clamp": ns.clamp,
                  "max_new_tokens": ns.max_new_tokens, "temperature": ns.temperature, "seed": ns.seed}
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _steer_sweep(ns: argparse.Namespace, sae: Any, out: Any, plot: Any) -> int:
    """``saekit steer --sweep``: next-token log-probabilities against the steering scale."""
    import json

    from .interpret import AddFeature, scale_sweep
    from .io.files import atomic_write_text
    from .models import load_model, parse_dtype
    from .report import write_sweep_plot

    AddFeature(sae, ns.feature, 0.0)  # a feature out of range fails before the model loads
    lm = load_model(ns.model or sae.cfg.model or None, device=sae.W_dec.device, dtype=parse_dtype(ns.dtype))
    sweep = scale_sweep(lm, ns.prompt, sae, ns.feature, ns.sweep, ns.watch, allow_other_model=ns.allow_other_model)
    width = max(8, *(len(repr(t)) for t in sweep.tokens))
    print(f"next-token log-probabilities after {sweep.prompt!r}, adding α · W_dec[{ns.feature}]")
    print(f"{'α':>8}  " + "  ".join(f"{t!r:>{width}}" for t in sweep.tokens))
    for alpha, row in zip(sweep.scales, sweep.logprobs):
        print(f"{alpha:>8g}  " + "  ".join(f"{v:>{width}.3f}" for v in row))
    write_sweep_plot(plot, sweep)
    print(f"wrote {plot}")
    if out is not None:
        atomic_write_text(out, json.dumps({"dictionary": str(ns.folder), **dataclasses.asdict(sweep)}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="saekit", description="Sparse dictionary learning on language-model activations.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser(
        "train",
        help="train a dictionary",
        description="Train a sparse dictionary on a model's activations. With no flags: a TopK "
        "dictionary (k=32, 8x) on resid_post.9 of the embedded SmolLM2-135M, on the embedded "
        "Wikipedia summaries, 300k tokens.",
    )
    _add_config_flags(p, TrainConfig, SWEEPABLE)
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
        help="every figure of docs/metrics.md for a dictionary, in both context regimes",
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
    p.add_argument("--keep-bos", action=argparse.BooleanOptionalAction, default=None,
                   help="evaluate and splice the BOS position (default: as the dictionary was trained, which it "
                   "records; an override is recorded in the JSON)")
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
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty DST: first remove every dictionary file there (any format) and the "
                   "files of a training run (training.json, log.jsonl, eval.json, report.html, checkpoint)")
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

    p = sub.add_parser(
        "steer",
        help="generate with and without a feature added or clamped",
        description="Continue a prompt twice, without and with an intervention on one feature: its decoder "
        "direction added at every position (--scale), or the feature clamped to a value (--clamp, keeping the "
        "dictionary's error term so only that feature changes). Greedy by default; --temperature samples, with "
        "the same --seed both times.",
    )
    p.add_argument("folder", help=DICTIONARY_ARG_HELP)
    p.add_argument("--feature", type=int, required=True, help="the feature's index")
    p.add_argument("--scale", type=float, default=8.0, help="add scale × its decoder direction (default 8)")
    p.add_argument("--clamp", type=float, default=None, help="instead, clamp the feature to this value")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); above 0: sampled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="the model to run (default: the one the dictionary records)")
    p.add_argument("--allow-other-model", action="store_true", help="steer a model other than the recorded one")
    p.add_argument("--format", default=None, choices=FORMAT_CHOICES, help="the folder's format, if detection is wrong")
    p.add_argument("--sweep", type=_values(float, None, "--sweep"), default=None, metavar="SCALE[,...]",
                   help="instead of generating, sweep the added scale (e.g. 0,4,8,16) and plot the next token's "
                   "log-probabilities against it")
    p.add_argument("--watch", nargs="+", default=None, metavar="TOKEN",
                   help="with --sweep: the tokens to follow, each one token of the model (e.g. ' Paris'); default: "
                   "the three likeliest without steering and at the largest scale")
    p.add_argument("--plot", default=None, help="with --sweep: the PNG to write (default steer-sweep-featureN.png)")
    p.add_argument("--json", default=None, help="also write both continuations (or the sweep) to this JSON file")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", help="model dtype")
    p.set_defaults(func=_cmd_steer)

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
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (2) or --help (0), already printed
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():  # a warning printed through tqdm does not tear a bar apart
            return ns.func(ns)
    except SaekitError as e:
        print(f"saekit {ns.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\nsaekit {ns.verb}: {_interrupted(e)}", file=sys.stderr)
        return 130


def _interrupted(e: KeyboardInterrupt) -> str:
    """What to say on Ctrl-C: the run's own account (what was kept, how to continue) when it gives one."""
    said = str(e) if isinstance(e, RunInterrupted) else ""
    if not said:
        return "interrupted"
    return said if said.lower().startswith("interrupted") else f"interrupted; {said}"


if __name__ == "__main__":
    sys.exit(main())
