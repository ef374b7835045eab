"""Explanations of features, written and scored by a language model, kept in a resumable file.

For each feature, an explainer model reads its top-activating contexts and a few from lower
activation quantiles (the activating tokens marked ``<<like this>>``, the strongest listed
with their activation on a 1-10 scale, after two worked examples) and writes one short phrase. A scorer model then
judges the phrase as in Paulo et al. 2024, "Automatically Interpreting Millions of Features
in Large Language Models":

* detection: told the explanation, does the feature fire in this context? Activating
  contexts are held out from those the explainer saw (the quantile sample not shown);
  non-activating ones are the random contexts where the feature stays at 0;
* fuzzing: in activating contexts, are the marked tokens the ones the explanation is
  about? Half are marked where the feature fires, half at as many random other tokens.

Each gets a balanced accuracy and an AUROC (``explanation_scoring``). Results go to a JSON
file (``SCHEMA``), rewritten atomically after every feature, so an interrupted run keeps
what finished and a rerun skips it. Features whose explanation failed are kept apart under
``"errors"`` and retried by the next run.

Which explainer and prompt version wrote an explanation, and which scorer scored it, are
recorded per feature. A rerun with another explainer or scorer over features already done
by a different one is refused before any model loads, unless ``overwrite``: mixing two
models' explanations in one file under one name would make their scores incomparable.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, DataError, FormatError, RunInterrupted
from ..io.files import atomic_write_text
from .chat import ChatClient, EndpointError, Messages, PromptTooLongError
from .explanation_scoring import Score, Verdict, score_verdicts

logger = logging.getLogger(__name__)

SCHEMA = "saekit.explanations/1"
PROMPT_VERSION = 1
"""Bumped whenever the prompts change, so that explanations from another prompt are redone."""

MAX_EXPLANATION_CHARS = 200
HIGHLIGHT = ("<<", ">>")

EXPLAINER_SYSTEM = (
    "You study one feature of a language model: something inside it that fires on certain tokens. "
    "You are shown text excerpts where it fires, the tokens it fires on marked <<like this>>, then the tokens it "
    "fires on most strongly, with how strongly from 1 (weakly) to 10 (most strongly). Say in one short phrase "
    "(at most 15 words) what the feature responds to. Reply with the phrase only."
)
# Two worked examples before the real question: small models copy the form of an answer far
# better than they follow a description of it. Without them SmolLM2-135M echoed an excerpt
# ("The Walloon Region and the French Community of Belgium, ..."); with one, it still did
# for most features; with two, it answered "words for suffering" where the feature fires
# on "suffer".
EXPLAINER_DEMONSTRATION = (
    {"role": "user", "content": "Excerpts:\n1. the barge drifted slowly down the <<Thames>> towards London\n"
                                "2. they went fishing on the banks of the <<Danube>> near Vienna\n"
                                "3. rafting on the <<Colorado River>> in summer\n\n"
                                "Strongest tokens: Thames (10), Danube (9), Colorado (6), River (3)\n\n"
                                "In one short phrase, what does the feature respond to?"},
    {"role": "assistant", "content": "names of rivers"},
    {"role": "user", "content": "Excerpts:\n1. a ceremony full of <<joyful>> songs and dances\n"
                                "2. she felt <<happy>> and relieved when the letter came\n"
                                "3. the crowd stayed <<cheerful>> despite the rain\n\n"
                                "Strongest tokens: happy (10), joyful (8), cheerful (7)\n\n"
                                "In one short phrase, what does the feature respond to?"},
    {"role": "assistant", "content": "words for happiness"},
)
DETECTION_SYSTEM = (
    "A feature of a language model fires on certain tokens; an explanation says which. You are shown the "
    "explanation and one text excerpt. Answer Yes if, given the explanation, the feature fires somewhere in "
    "the excerpt, and No if it does not. Answer with Yes or No only."
)
FUZZING_SYSTEM = (
    "A feature of a language model fires on certain tokens; an explanation says which. You are shown the "
    "explanation and one text excerpt with some tokens marked <<like this>>. Answer Yes if the marked tokens "
    "are the ones the explanation describes, and No if they are not. Answer with Yes or No only."
)


@dataclass(frozen=True)
class ExplainSettings:
    """How many examples each step uses, and how hard to try for an explanation."""

    top: int = 8                 # top-activating contexts shown to the explainer
    per_quantile: int = 1        # and this many from each activation-quantile group of the sample
    quantile_groups: int = 4
    detection: int = 10          # held-out activating contexts judged (and up to as many random ones)
    fuzzing: int = 10            # held-out activating contexts, about half marked at random tokens
    max_explanation_tokens: int = 48
    retries: int = 2             # further tries (sampled, not greedy) after an unusable explanation
    retry_temperature: float = 0.7
    chunk: int = 8               # features whose explanations are asked for in one batch
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top", "quantile_groups", "max_explanation_tokens", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("per_quantile", "detection", "fuzzing", "retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")


# ------------------------------------------------------------------ rendering and prompts
class TokenText:
    """Each token id's text under the subject model's tokenizer (cached), on one line.

    Special tokens (the end-of-text between packed documents) read "¶": written out as
    ``<|im_end|>`` they would end the chat turn of an explainer that shares the tokenizer.
    """

    SPECIAL = " ¶ "

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = set(getattr(tokenizer, "all_special_ids", None) or [])
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            if int(token) in self.special:
                text = self.SPECIAL
            else:
                text = self.tokenizer.decode([int(token)]).replace("\r", " ").replace("\n", "↵")  # one excerpt, one line
            self.cache[token] = text
        return self.cache[token]


def render(tokens: Sequence[int], marked: Sequence[bool], text: Callable[[int], str]) -> str:
    """The excerpt's text with each run of marked tokens wrapped in << >>."""
    parts: list[str] = []
    inside = False
    for token, mark in zip(tokens, marked):
        if mark and not inside:
            parts.append(HIGHLIGHT[0])
        elif not mark and inside:
            parts.append(HIGHLIGHT[1])
        inside = bool(mark)
        parts.append(text(token))
    if inside:
        parts.append(HIGHLIGHT[1])
    return "".join(parts).strip()


def explainer_prompt(examples: Sequence[Any], text: Callable[[int], str], strongest: int = 8) -> Messages:
    """The explainer's chat: each example with its firing tokens marked, then the ``strongest``
    distinct tokens it fires on, each with its largest activation in tenths of the largest shown."""
    peak = max((max(e.acts) for e in examples if e.acts), default=0.0)
    lines = [f"{n}. {render(e.tokens, [a > 0 for a in e.acts], text)}" for n, e in enumerate(examples, 1)]
    best: dict[str, float] = {}
    for example in examples:
        for token, act in zip(example.tokens, example.acts):
            word = text(token).strip() or repr(text(token))
            if act > 0 and act > best.get(word, 0.0):
                best[word] = act
    listed = sorted(best.items(), key=lambda item: -item[1])[:strongest]
    user = "Excerpts:\n" + "\n".join(lines) + "\n\n"
    if listed and peak > 0:
        user += "Strongest tokens: " + ", ".join(f"{w} ({max(1, round(10 * a / peak))})" for w, a in listed) + "\n\n"
    user += "In one short phrase, what does the feature respond to?"
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, *EXPLAINER_DEMONSTRATION, {"role": "user", "content": user}]


def detection_prompt(explanation: str, excerpt: str) -> Messages:
    user = f"Explanation: {explanation}\n\nExcerpt: {excerpt}\n\nDoes the feature fire in this excerpt?"
    return [{"role": "system", "content": DETECTION_SYSTEM}, {"role": "user", "content": user}]


def fuzzing_prompt(explanation: str, excerpt: str) -> Messages:
    user = f"Explanation: {explanation}\n\nExcerpt: {excerpt}\n\nAre the marked tokens the ones the feature fires on?"
    return [{"role": "system", "content": FUZZING_SYSTEM}, {"role": "user", "content": user}]


_PREAMBLE = re.compile(r"^\s*(?:\*\*)?(?:the\s+)?(?:explanation|answer|feature|phrase|response|output)(?:\*\*)?\s*"
                       r"(?:\d+\s*)?[:：\-–—]+\s*", re.IGNORECASE)
# "The feature responds to X" says no more than "X".
_RESTATEMENT = re.compile(r"^(?:this|the)\s+feature\s+(?:responds|fires|activates|reacts)\s+(?:to|on)(?:\s+|$)",
                          re.IGNORECASE)
_WRAPPERS = "\"'`*“”‘’ \t"


def parse_explanation(reply: str) -> str | None:
    """The explanation in a model's reply, or None when there is none.

    Models wrap the phrase: "Explanation: …", quotes, markdown bold, a trailing full stop, a
    second paragraph of reasoning. Keep the first line with words in it, strip those, and cap
    the length (at a word boundary) so one rambling reply cannot swamp a table.
    """
    for line in reply.splitlines():
        line = line.strip()
        previous = None
        while line != previous:  # "**Explanation:** 'x'" needs more than one pass
            previous = line
            line = _PREAMBLE.sub("", line).strip(_WRAPPERS).rstrip(".").strip(_WRAPPERS)
            line = _RESTATEMENT.sub("", line)
        if re.search(r"[^\W\d_]", line):  # a letter of any script
            if len(line) > MAX_EXPLANATION_CHARS:
                line = line[:MAX_EXPLANATION_CHARS].rsplit(" ", 1)[0].rstrip(",;:") + "…"
            return line
        if line:
            return None  # the first non-empty line is digits or punctuation: nonsense
    return None


# ------------------------------------------------------------------ which examples go where
def _key(example: Any) -> tuple:
    return tuple(example.tokens), example.centre


def _interleave(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """Round robin over the groups, so a prefix of the result spans every quantile."""
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


@dataclass
class FeaturePlan:
    """The examples one feature's explanation and scoring use."""

    shown: list[Any]               # to the explainer, strongest first
    held_out: list[Any]            # activating, never shown: for detection and fuzzing
    silent: list[Any]              # random contexts where the feature stays at 0


def plan_feature(examples: Any, feature: int, settings: ExplainSettings) -> FeaturePlan:
    top = examples.top_examples(feature)
    groups = examples.quantile_groups(feature, settings.quantile_groups)
    shown = top[:settings.top]
    seen = {_key(e) for e in shown}
    for group in groups:
        for example in group[:settings.per_quantile]:
            if _key(example) not in seen:
                shown.append(example)
                seen.add(_key(example))
    # Held out: the sample the explainer did not see, then (for a feature with a small
    # sample) the top examples beyond those shown.
    held_out = [e for e in _interleave(groups) if _key(e) not in seen]
    seen |= {_key(e) for e in held_out}
    held_out += [e for e in top[settings.top:] if _key(e) not in seen]
    silent = [e for e in examples.random_examples(feature) if not any(a > 0 for a in e.acts)]
    return FeaturePlan(shown=shown, held_out=held_out, silent=silent)


def fit_examples(plan: FeaturePlan, client: ChatClient, text: Callable[[int], str], answer_tokens: int) -> Messages:
    """The explainer prompt with as many of the shown examples as the model's context holds
    (the weakest dropped first); PromptTooLongError when not even the strongest one fits."""
    shown = list(plan.shown)
    while True:
        messages = explainer_prompt(shown, text)
        limit, used = client.context_limit, client.count_tokens(messages)
        if limit is None or used is None or used + answer_tokens <= limit:
            return messages
        if len(shown) == 1:
            raise PromptTooLongError(f"the explainer prompt with a single example takes {used} tokens; "
                                     f"{client.label} takes {limit} (with {answer_tokens} for the answer)")
        shown = shown[:max(1, len(shown) * 3 // 4)]


@dataclass
class ScoringSet:
    """The prompts one feature's scoring asks and the true answer to each."""

    detection: list[Messages] = field(default_factory=list)
    detection_labels: list[bool] = field(default_factory=list)
    fuzzing: list[Messages] = field(default_factory=list)
    fuzzing_labels: list[bool] = field(default_factory=list)


def scoring_set(explanation: str, plan: FeaturePlan, text: Callable[[int], str], settings: ExplainSettings,
                rng: random.Random) -> ScoringSet:
    out = ScoringSet()
    activating = plan.held_out[:settings.detection]
    silent = list(plan.silent)
    rng.shuffle(silent)
    cases = [(e, True) for e in activating] + [(e, False) for e in silent[:settings.detection]]
    rng.shuffle(cases)
    for example, fires in cases:
        out.detection.append(detection_prompt(explanation, render(example.tokens, [False] * len(example.tokens), text)))
        out.detection_labels.append(fires)
    fuzzed = plan.held_out[:settings.fuzzing]
    correct = [i % 2 == 0 for i in range(len(fuzzed))]
    rng.shuffle(correct)
    for example, right in zip(fuzzed, correct):
        firing = [a > 0 for a in example.acts]
        if not right:
            quiet = [i for i, f in enumerate(firing) if not f]
            if not quiet:
                continue  # every token fires: no wrong marking exists
            picked = set(rng.sample(quiet, min(len(quiet), max(1, sum(firing)))))
            firing = [i in picked for i in range(len(firing))]
        out.fuzzing.append(fuzzing_prompt(explanation, render(example.tokens, firing, text)))
        out.fuzzing_labels.append(right)
    return out


# ------------------------------------------------------------------ the file
class ExplanationsFile:
    """The explanations JSON of one dictionary, kept in memory and rewritten atomically after
    every change: a few hundred bytes per feature, so rewriting it whole is cheap until it
    holds tens of thousands of features. From then on a write waits until ten times its own
    duration has passed since the last one, so writing never takes more than a tenth of the
    run; ``flush`` (which explain_features calls however it ends, Ctrl-C included) writes
    what is pending.
    """

    def __init__(self, path: str | Path, *, dictionary: str, hook: str | None, model: str | None,
                 overwrite: bool = False):
        self.path = Path(path)
        fresh = {"schema": SCHEMA, "dictionary": str(dictionary), "hook": hook, "model": model,
                 "features": {}, "errors": {}}
        if self.path.exists():
            data = _read(self.path)
            if not _same_dictionary(data.get("dictionary"), str(dictionary)) or data.get("hook") != hook:
                if not overwrite:
                    raise ConfigError(
                        f"{self.path} holds explanations of {data.get('dictionary')} at {data.get('hook')}, not of "
                        f"{dictionary} at {hook}; choose another --out, or --overwrite to start it afresh")
                data = fresh
            data.setdefault("errors", {})
            self.data = data
        else:
            self.data = fresh
        self.pending = False
        self.last_write = -math.inf
        self.pause = 0.0  # seconds to wait between writes: ten times the last write's duration

    @property
    def features(self) -> dict[str, dict]:
        return self.data["features"]

    def get(self, feature: int) -> dict | None:
        return self.features.get(str(feature))

    def save(self, record: dict) -> None:
        self.features[str(record["feature"])] = record
        self.data["errors"].pop(str(record["feature"]), None)
        self.write()

    def fail(self, feature: int, error: str, explainer: str, retry: bool = True) -> None:
        """File an error for ``feature``; ``retry`` False: a rerun skips it (nothing a rerun
        could change: a feature that never fired), unless told to overwrite."""
        self.data["errors"][str(feature)] = {"feature": feature, "error": error, "explainer": explainer,
                                             "prompt_version": PROMPT_VERSION, "retry": retry}
        # An older explanation being redone (--overwrite) must not outlive its failed redo.
        self.features.pop(str(feature), None)
        self.write()

    def write(self) -> None:
        self.pending = True
        if time.monotonic() - self.last_write >= self.pause:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        start = time.monotonic()
        ordered = dict(self.data)
        for part in ("features", "errors"):
            ordered[part] = {k: self.data[part][k] for k in sorted(self.data[part], key=int)}
        atomic_write_text(self.path, json.dumps(ordered, indent=1, ensure_ascii=False) + "\n")
        self.pending = False
        self.last_write = time.monotonic()
        self.pause = 10 * (self.last_write - start)


def _same_dictionary(recorded: Any, given: str) -> bool:
    """Whether the file's dictionary is this one: the same folder however it is spelled
    (relative, absolute, a trailing slash), or the same Hub name."""
    if not isinstance(recorded, str):
        return False
    if recorded.rstrip("/") == given.rstrip("/"):
        return True
    a, b = Path(recorded).expanduser(), Path(given).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"no explanations file at {path}; write one with `saekit explain`") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{path} is not a readable explanations file ({e}); move it aside or choose another "
                          "--out") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("features"), dict):
        found = data.get("schema") if isinstance(data, dict) else None
        raise FormatError(f"{path} is not an explanations file of schema {SCHEMA} (its schema: {found!r}); "
                          "move it aside or choose another --out")
    return data


def read_explanations(path: str | Path) -> dict[int, dict]:
    """Each explained feature's record, by feature index (features whose explanation failed
    are not included). DataError when the file is missing, FormatError when it is not an
    explanations file of this schema."""
    data = _read(Path(path))
    try:
        return {int(k): v for k, v in data["features"].items() if isinstance(v, dict)}
    except ValueError:
        raise FormatError(f"{path}: feature keys must be integers") from None


# ------------------------------------------------------------------ the pipeline
@dataclass(frozen=True)
class Work:
    """What a rerun must still do for one feature."""

    explain: bool
    score: bool


def plan_work(store: ExplanationsFile, features: Sequence[int], explainer: str, scorer: str | None,
              overwrite: bool) -> dict[int, Work]:
    """What each feature still needs; ConfigError (before any model loads) when features are
    done by another explainer, prompt version or scorer and ``overwrite`` is not set."""
    work: dict[int, Work] = {}
    clashes: list[str] = []
    for feature in features:
        record = store.get(feature)
        if record is None:
            error = store.data["errors"].get(str(feature)) or {}
            if error.get("retry") is False and not overwrite:
                continue  # it never fired: another try would find the same
            work[feature] = Work(explain=True, score=scorer is not None)
            continue
        same_explainer = record.get("explainer") == explainer and record.get("prompt_version") == PROMPT_VERSION
        if not same_explainer:
            clashes.append(f"feature {feature} explained by {record.get('explainer')} "
                           f"(prompt version {record.get('prompt_version')})")
            work[feature] = Work(explain=True, score=scorer is not None)
            continue
        scored = "scores" in record
        if scorer is None or (scored and record.get("scorer") == scorer):
            continue  # done
        if scored:
            clashes.append(f"feature {feature} scored by {record.get('scorer')}")
        work[feature] = Work(explain=False, score=True)
    if clashes and not overwrite:
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise ConfigError(
            f"{store.path} already holds {'; '.join(clashes[:3])}{more}, not by {explainer}"
            + (f" scored by {scorer}" if scorer else "")
            + "; rerun with the same models to continue it, choose another --out, or --overwrite to redo them")
    return work


@dataclass
class ExplainResult:
    """What a run did: the records of the chosen features (done before or now), and counts."""

    records: dict[int, dict]
    errors: dict[int, str]
    skipped: int
    explained: int
    scored: int


def explain_features(examples: Any, features: Sequence[int], explainer: ChatClient, scorer: ChatClient | None,
                     text: Callable[[int], str], store: ExplanationsFile, *, settings: ExplainSettings | None = None,
                     overwrite: bool = False, progress: Callable[[dict], None] | None = None) -> ExplainResult:
    """Explain (and unless ``scorer`` is None, score) each feature, writing ``store`` after
    each one. ``examples`` is a FeatureExamples holding the features; ``text`` renders a token
    id of the model they came from.

    A feature that never fired, or whose explainer gave no usable answer after the retries,
    is recorded under "errors" and the run goes on. An endpoint that fails for good stops the
    run with an EndpointError; what finished before it is in the file.
    """
    settings = settings or ExplainSettings()
    work = plan_work(store, features, explainer.label, scorer.label if scorer else None, overwrite)
    result = ExplainResult(records={}, errors={}, skipped=len(features) - len(work), explained=0, scored=0)
    todo = [f for f in features if f in work]
    done = 0

    def report() -> None:
        if progress is not None:
            progress({"phase": "explain", "done": done, "total": len(todo), "unit": "feature"})

    report()
    try:
        for start in range(0, len(todo), settings.chunk):
            chunk = todo[start:start + settings.chunk]
            plans = {f: plan_feature(examples, f, settings) for f in chunk}
            written = _explain_chunk(chunk, plans, work, explainer, text, store, settings, result)
            for feature in chunk:
                if feature in written:
                    record = written[feature]
                    if work[feature].score and scorer is not None:
                        record = _score(record, plans[feature], scorer, text, settings, store, result)
                    store.save(record)
                done += 1
                report()
    except EndpointError as e:
        store.flush()
        raise EndpointError(f"{e}. {_kept(store)}") from None
    except KeyboardInterrupt:
        store.flush()
        raise RunInterrupted(f"interrupted. {_kept(store)}") from None
    finally:
        store.flush()
    for feature in features:
        record = store.get(feature)
        if record is not None:
            result.records[feature] = record
    return result


def _kept(store: ExplanationsFile) -> str:
    finished = len(store.features)
    return f"{store.path} keeps the {finished} feature{'' if finished == 1 else 's'} finished so far; a rerun continues from there"


def _explain_chunk(chunk: list[int], plans: dict[int, FeaturePlan], work: dict[int, Work], explainer: ChatClient,
                   text: Callable[[int], str], store: ExplanationsFile, settings: ExplainSettings,
                   result: ExplainResult) -> dict[int, dict]:
    """Explanations for the chunk's features, asked for in one batch (retries in another);
    records for those that got one, errors filed for the rest."""
    records: dict[int, dict] = {}
    prompts: dict[int, Messages] = {}
    for feature in chunk:
        if not work[feature].explain:
            records[feature] = dict(store.get(feature) or {})
            continue
        if not plans[feature].shown:
            _fail(feature, "it never fired on the tokens looked at, so there is nothing to explain (a rerun skips "
                  "it; --overwrite retries it)", explainer, store, result, retry=False)
            continue
        try:
            prompts[feature] = fit_examples(plans[feature], explainer, text, settings.max_explanation_tokens)
        except PromptTooLongError as e:
            _fail(feature, str(e), explainer, store, result)
    spent = {f: [0, 0] for f in prompts}
    last_reply = {f: "" for f in prompts}
    pending = list(prompts)
    for attempt in range(settings.retries + 1):
        if not pending:
            break
        # Greedy first; a greedy retry would repeat itself, so retries sample.
        temperature = 0.0 if attempt == 0 else settings.retry_temperature
        replies = explainer.complete([prompts[f] for f in pending], max_tokens=settings.max_explanation_tokens,
                                     temperature=temperature, seed=settings.seed + attempt)
        still = []
        for feature, reply in zip(pending, replies):
            spent[feature][0] += reply.prompt_tokens
            spent[feature][1] += reply.completion_tokens
            last_reply[feature] = reply.text
            explanation = parse_explanation(reply.text)
            if explanation is None:
                still.append(feature)
                continue
            records[feature] = {
                "feature": feature, "explanation": explanation, "explainer": explainer.label,
                "prompt_version": PROMPT_VERSION, "scorer": None,
                "tokens_used": {"prompt": spent[feature][0], "completion": spent[feature][1]},
            }
            result.explained += 1
        pending = still
    for feature in pending:
        _fail(feature, f"the explainer gave no usable explanation in {settings.retries + 1} tries "
                       f"(last reply: {last_reply[feature][:120]!r})", explainer, store, result)
    return records


def _fail(feature: int, error: str, explainer: ChatClient, store: ExplanationsFile, result: ExplainResult,
          retry: bool = True) -> None:
    logger.info("feature %d: %s", feature, error)
    result.errors[feature] = error
    store.fail(feature, error, explainer.label, retry)


def _score(record: dict, plan: FeaturePlan, scorer: ChatClient, text: Callable[[int], str],
           settings: ExplainSettings, store: ExplanationsFile, result: ExplainResult) -> dict:
    rng = random.Random(settings.seed * 1_000_003 + record["feature"])
    cases = scoring_set(record["explanation"], plan, text, settings, rng)
    try:
        verdicts = scorer.judge(cases.detection + cases.fuzzing)
    except PromptTooLongError as e:
        logger.warning("feature %d: not scored: %s", record["feature"], e)
        return {**record, "scorer": scorer.label, "scores": {"detection": None, "fuzzing": None},
                "score_error": str(e)}
    detection = verdicts[:len(cases.detection)]
    fuzzing = verdicts[len(cases.detection):]
    used = dict(record.get("tokens_used") or {"prompt": 0, "completion": 0})
    used["prompt"] = used.get("prompt", 0) + sum(v.prompt_tokens for v in verdicts)
    used["completion"] = used.get("completion", 0) + sum(v.completion_tokens for v in verdicts)
    result.scored += 1
    return {**{k: v for k, v in record.items() if k != "score_error"}, "scorer": scorer.label,
            "scores": {"detection": _figures(cases.detection_labels, detection),
                       "fuzzing": _figures(cases.fuzzing_labels, fuzzing)},
            "tokens_used": used}


def _figures(labels: list[bool], verdicts: list[Verdict]) -> dict | None:
    """A score's record, or None where it cannot be computed (no contexts of one kind)."""
    score: Score = score_verdicts(labels, verdicts)
    if score.balanced_accuracy is None:
        return None
    return score.to_json()


def mean_scores(records: Sequence[dict]) -> dict[str, float | None]:
    """Mean balanced accuracy and AUROC of each method over the records that have them."""
    out: dict[str, float | None] = {}
    for method in ("detection", "fuzzing"):
        for figure in ("balanced_accuracy", "auroc"):
            values = [r["scores"][method][figure] for r in records
                      if (r.get("scores") or {}).get(method) and r["scores"][method].get(figure) is not None]
            out[f"{method}_{figure}"] = sum(values) / len(values) if values else None
    return out
