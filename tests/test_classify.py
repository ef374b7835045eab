"""``saekit classify``: dictionary features as classifiers, beside a raw-activation probe.

Reading labelled texts (CSV, JSONL, truth datasets; labels mapped), the rankings against
their formulas, the split and its subsets; on synthetic activations and on the tiny
model with a planted feature, the selection finds it and one feature classifies; the
pooled activations equal a direct per-text computation (mean and last; a transcoder's
input); every bad input is refused before the model loads; the CLI end to end.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

import saekit
from saekit.cli import main
from saekit.errors import ConfigError, DataError, DimensionError
from saekit.hooks import read_activations
from saekit.probes import LogisticRegressionProbe, TruthDataset, accuracy, auroc, statement_activations
from saekit.probes.feature_classifiers import (ClassifyConfig, CurvePoint, PooledActivations, RankedFeature, check_classify,
                                    classify, classify_activations, default_train_sizes, pooled_activations,
                                    rank_features, split, stratified_subset, write_curve_plot)
from saekit.probes.text_data import LabelledTexts, load_labelled_texts, map_labels, read_labelled_texts

from conftest import random_dictionary

WORDS = "the of and a to in is was for on that by river city king war".split()
HOOK = "resid_post.1"


def texts_ending(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` short texts of random words; class 1 ends in '!', class 0 in '.'."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))
        texts.append(words + ("!" if i % 2 else "."))
        labels.append(i % 2)
    return texts, labels


def write_csv(path, rows, header=("text", "label")):
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ----------------------------------------------------------------------------- reading labelled texts


def test_a_csv_with_0_1_labels_and_a_jsonl_with_two_names_are_read(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", [(f"text {i}", i % 2) for i in range(10)])
    data = read_labelled_texts(csv_path)
    assert data.labels == tuple(i % 2 for i in range(10)) and data.classes == ("0", "1") and data.counts == (5, 5)
    records = [{"text": f"t{i}", "label": ["sports", "politics"][i % 2]} for i in range(10)]
    data = read_labelled_texts(write_jsonl(tmp_path / "d.jsonl", records))
    assert data.classes == ("politics", "sports")  # sorted: the first is 0
    assert data.labels == tuple(int(r["label"] == "sports") for r in records)
    data = read_labelled_texts(tmp_path / "d.jsonl", positive="politics")
    assert data.classes == ("sports", "politics")
    assert data.labels == tuple(int(r["label"] == "politics") for r in records)


def test_booleans_and_true_false_words_keep_their_meaning(tmp_path):
    data = read_labelled_texts(write_jsonl(tmp_path / "b.jsonl", [{"text": f"t{i}", "label": i % 2 == 0}
                                                                   for i in range(8)]))
    assert data.labels == tuple(int(i % 2 == 0) for i in range(8)) and data.classes == ("false", "true")
    assert map_labels(["TRUE", "False", "TRUE"], "x") == ([1, 0, 1], ("False", "TRUE"))
    assert map_labels(["1", "0"], "x") == ([1, 0], ("0", "1"))


def test_other_fields_and_truth_datasets_are_read(tmp_path):
    path = write_jsonl(tmp_path / "o.jsonl", [{"body": f"t{i}", "y": i % 2} for i in range(8)])
    assert len(read_labelled_texts(path, text_field="body", label_field="y")) == 8
    truth = write_csv(tmp_path / "truth.csv", [(f"claim {i}.", i % 2) for i in range(8)], ("statement", "label"))
    data = load_labelled_texts(str(truth))
    assert data.classes == ("false", "true") and data.texts[0] == "claim 0."


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("binary", "UTF-8"),
    ("no_text", "no 'text' column"),
    ("no_label", "no 'label' column"),
    ("one_class", "one class"),
    ("three", "3 values"),
    ("few", "too small to split"),
    ("bad_json", "line 2: not valid JSON"),
    ("unlabelled", "has no 'label'"),
    ("empty_text", "is empty"),
    ("suffix", "reads .csv and .jsonl"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path, case, message):
    ten = [(f"t{i}", i % 2) for i in range(10)]
    files = {
        "missing": lambda: tmp_path / "nope.csv",
        "no_text": lambda: write_csv(tmp_path / "a.csv", ten, ("body", "label")),
        "no_label": lambda: write_csv(tmp_path / "a.csv", ten, ("text", "class")),
        "one_class": lambda: write_csv(tmp_path / "a.csv", [(f"t{i}", 1) for i in range(10)]),
        "three": lambda: write_csv(tmp_path / "a.csv", [(f"t{i}", i % 3) for i in range(12)]),
        "few": lambda: write_csv(tmp_path / "a.csv", [(f"t{i}", int(i < 2)) for i in range(10)]),
        "bad_json": lambda: (tmp_path / "a.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n') and tmp_path / "a.jsonl",
        "unlabelled": lambda: write_jsonl(tmp_path / "a.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(9)]
                                          + [{"text": "x"}]),
        "empty_text": lambda: write_csv(tmp_path / "a.csv", ten + [("  ", 1)]),
        "suffix": lambda: write_csv(tmp_path / "a.tsv", ten),
    }
    if case == "binary":
        path = tmp_path / "a.csv"
        path.write_bytes(b"text,label\n\xff\xfe\x00bad,1\n")
    else:
        path = files[case]()
    with pytest.raises((DataError, ConfigError), match=message):
        load_labelled_texts(str(path))


def test_labelled_texts_check_themselves():
    with pytest.raises(DataError, match="one class"):
        LabelledTexts("x", ("a",) * 8, (1,) * 8)
    with pytest.raises(ConfigError, match="two different names"):
        LabelledTexts("x", ("a",) * 8, (0, 1) * 4, ("same", "same"))
    with pytest.raises(ConfigError, match="--positive 'maybe'"):
        map_labels(["yes", "no"], "x", positive="maybe")


# ----------------------------------------------------------------------------- ranking, splitting, subsets


def test_the_rankings_are_their_formulas():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 20)
    f = torch.rand(40, 6, generator=g)
    f[:, 2] += 3 * y  # a large, reliable difference
    f[:, 4] = 10 * y * torch.rand(40, generator=g)  # larger, but noisy
    f[:, 5] = 0.5 * y  # constant within each class
    order, m0, m1, score = rank_features(f, y, "mean-diff")
    fd = f.double()
    torch.testing.assert_close(score, (fd[y == 1].mean(0) - fd[y == 0].mean(0)).abs())
    assert order[0] == 4 and order[1] == 2
    order, _, _, t = rank_features(f, y, "standardised")
    pooled = (fd[y == 0].var(0) * 19 + fd[y == 1].var(0) * 19) / 38
    expected = (m1 - m0).abs() / pooled.sqrt()
    torch.testing.assert_close(t[:5], expected[:5])
    assert order[0] == 5 and t[5] == float("inf")  # constant within classes: a perfect separator
    assert RankedFeature(5, 0.0, 0.5, float("inf")).to_dict()["score"] is None  # JSON has no infinity
    assert order[1] == 2  # the reliable feature beats the noisy larger one
    zero = torch.zeros(40, 3)
    assert rank_features(zero, y, "standardised")[3].tolist() == [0, 0, 0]


def test_subsets_are_stratified_deterministic_and_hold_both_classes():
    labels = [0] * 30 + [1] * 10
    train = list(range(40))
    for n in (2, 8, 20):
        a = stratified_subset(train, labels, n, random.Random("s"))
        assert a == stratified_subset(train, labels, n, random.Random("s")) and len(a) == n and len(set(a)) == n
        assert {labels[i] for i in a} == {0, 1}
    assert sum(labels[i] for i in stratified_subset(train, labels, 20, random.Random(1))) == 5
    assert stratified_subset(train, labels, 40, random.Random(0)) == train
    assert default_train_sizes(100) == (8, 16, 32, 64, 100) and default_train_sizes(6) == (6,)


def test_config_and_split_checks():
    data = LabelledTexts("x", tuple(f"text {i}" for i in range(40)), (0, 1) * 20)
    with pytest.raises(ConfigError, match="--sizes asks for 50"):
        check_classify(data, 24, ClassifyConfig(sizes=(1, 50)))
    with pytest.raises(ConfigError, match="--train-sizes asks for 64 .* holds 30"):
        check_classify(data, 24, ClassifyConfig(sizes=(1,), train_sizes=(8, 64)))
    with pytest.raises(ConfigError, match="position 40 is outside text"):
        check_classify(data, 24, ClassifyConfig(sizes=(1,), position=40))
    with pytest.raises(ConfigError, match="at least 2"):
        ClassifyConfig(train_sizes=(1, 8))
    with pytest.raises(ConfigError, match="no ranking"):
        ClassifyConfig(rank="t")
    with pytest.raises(ConfigError, match="position 'middle'"):
        ClassifyConfig(position="middle")
    with pytest.raises(DataError, match="too few"):
        check_classify(LabelledTexts("x", tuple("abcdefgh"), (0, 1) * 4), 24, ClassifyConfig(test_fraction=0.9))
    train, test = split(data, ClassifyConfig())
    assert len(test) == 10 and not set(train) & set(test)


# ----------------------------------------------------------------------------- synthetic: a planted feature


def planted_activations(n: int = 120, d: int = 16, d_sae: int = 60, feature: int = 17, seed: int = 0):
    """Raw activations with the label along one direction; sparse features of which one,
    ``feature``, fires on class 1 only (and a few others fire at random, some of them large)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([i % 2 for i in range(n)])
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    raw = torch.randn(n, d, generator=g) + 3.0 * (2 * y[:, None] - 1) * direction
    feats = torch.relu(torch.randn(n, d_sae, generator=g) - 1.5) * 2
    feats[:, feature] = y * (1.0 + torch.rand(n, generator=g))
    data = LabelledTexts("planted", tuple(f"text {i}" for i in range(n)), tuple(y.tolist()))
    return PooledActivations(raw, feats, "mean"), data


def test_the_selection_finds_a_planted_feature_and_one_feature_classifies():
    pooled, data = planted_activations()
    result = classify_activations(pooled, data, ClassifyConfig(sizes=(1, 5), repeats=2))
    assert result.top_features[0].index == 17 and result.top_features[0].sign == 1
    assert result.score("top 1").accuracy == 1.0 and result.score("top 1").features == (17,)
    assert result.score("raw").accuracy >= 0.9
    # the curve: every method at 8, 16, 32, 64 (two draws) and the whole split (90: the table's own fit)
    sizes = sorted({p.n_train for p in result.curve})
    assert sizes == [8, 16, 32, 64, 90] and result.n_train == 90
    for p in result.curve:
        assert len(p.accuracies) == (1 if p.n_train == 90 else 2)
        if p.n_train == 90:
            assert p.accuracy == result.score(p.method).accuracy
    assert result.examples_needed("top 1") <= 16
    # a method whose accuracy is within 0.02 of chance gets no count: every size is "within" of it
    scores = [dataclasses.replace(result.score("top 1"), accuracy=0.51)]
    curve = [CurvePoint("top 1", 8, (0.5,), (0.5,)), CurvePoint("top 1", 90, (0.51,), (0.5,))]
    assert dataclasses.replace(result, scores=scores, curve=curve).examples_needed("top 1") is None
    scores = [dataclasses.replace(result.score("top 1"), accuracy=0.6)]
    curve = [CurvePoint("top 1", 8, (0.57,), (0.5,)), CurvePoint("top 1", 16, (0.59,), (0.5,)),
             CurvePoint("top 1", 90, (0.6,), (0.5,))]
    assert dataclasses.replace(result, scores=scores, curve=curve).examples_needed("top 1") == 16
    record = result.to_dict()
    assert record["held_out"][1]["features"] == [17] and record["top_features"][0]["index"] == 17
    assert {p["method"] for p in record["learning_curve"]} == {"raw", "top 1", "top 5"}
    json.dumps(record)  # all plain values


def test_features_are_selected_on_the_training_split_only():
    pooled, data = planted_activations(feature=3)
    train, test = split(data, ClassifyConfig())
    # A feature that is the label itself on the held-out texts and noise on the training texts
    # must not be chosen: the ranking may not look at held-out labels.
    leaky = pooled.features.clone()
    leaky[:, 40] = 0.0
    leaky[test, 40] = 50.0 * torch.tensor(data.labels, dtype=torch.float)[test]
    result = classify_activations(PooledActivations(pooled.raw, leaky, "mean"), data,
                                  ClassifyConfig(sizes=(1,)), curve=False)
    assert result.score("top 1").features == (3,) and 40 not in [f.index for f in result.top_features]


def test_the_learning_curve_plot_is_written(tmp_path):
    pooled, data = planted_activations()
    result = classify_activations(pooled, data, ClassifyConfig(sizes=(1, 2), repeats=2))
    write_curve_plot(tmp_path / "c.png", result)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


def direct(lm, sae, text: str, position):
    """The raw activations and features of one text, alone in its batch: its own tokens
    (special ones excluded), encoded token by token, then pooled."""
    enc = lm.tokenizer(text, return_special_tokens_mask=True)
    own = [i for i, s in enumerate(enc["special_tokens_mask"]) if not s]
    with torch.no_grad():
        acts = read_activations(lm, [sae.cfg.hook], torch.tensor([enc["input_ids"]]))[sae.cfg.hook][0].float()
        at = acts[own] if position == "mean" else acts[own][[-1 if position == "last" else position]]
        return at.mean(0), sae.encode(at).mean(0)


@pytest.mark.parametrize("position", ["mean", "last", 1])
def test_pooled_activations_equal_a_direct_computation(lm, tmp_path, position):
    sae = random_dictionary("relu", lm.d_model, 40, 0, hook=HOOK, model=lm.name, scale=0.2)
    texts, labels = texts_ending(12)
    data = LabelledTexts("t", tuple(texts), tuple(labels))
    pooled = pooled_activations(lm, sae, data, position, cache_dir=tmp_path, batch_size=5)
    for i, text in enumerate(texts):
        raw, feats = direct(lm, sae, text, position)
        torch.testing.assert_close(pooled.raw[i], raw, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pooled.features[i], feats, atol=1e-5, rtol=1e-5)
    # the same raw activations the truth probes read at that position
    truth = TruthDataset("t", tuple(texts), tuple(labels), (1,) * len(texts))
    torch.testing.assert_close(pooled.raw, statement_activations(lm, truth, [HOOK], position, use_cache=False)[HOOK],
                               atol=1e-5, rtol=1e-5)


def test_the_mean_pass_is_cached_per_dictionary(lm, tmp_path, monkeypatch):
    sae = random_dictionary("topk", lm.d_model, 40, 0, hook=HOOK, model=lm.name)
    texts, labels = texts_ending(10)
    data = LabelledTexts("t", tuple(texts), tuple(labels))
    first = pooled_activations(lm, sae, data, "mean", cache_dir=tmp_path)
    assert list(tmp_path.rglob("classify-t-mean-*.safetensors"))
    import saekit.hooks

    def no_pass(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(saekit.hooks, "read_activations", no_pass)
    again = pooled_activations(lm, sae, data, "mean", cache_dir=tmp_path)
    assert torch.equal(again.raw, first.raw) and torch.equal(again.features, first.features)
    other = random_dictionary("topk", lm.d_model, 40, 1, hook=HOOK, model=lm.name)
    with pytest.raises(AssertionError, match="cache should have answered"):  # other weights: not the cached entry
        pooled_activations(lm, other, data, "mean", cache_dir=tmp_path)


def test_a_transcoder_is_read_at_its_input(lm, tmp_path):
    tc = random_dictionary("relu", lm.d_model, 40, 0, hook="mlp_in.1", model=lm.name, transcoder=True,
                           target="mlp_out.1")
    texts, labels = texts_ending(8)
    pooled = pooled_activations(lm, tc, LabelledTexts("t", tuple(texts), tuple(labels)), "last", use_cache=False)
    raw, feats = direct(lm, tc, texts[3], "last")
    torch.testing.assert_close(pooled.raw[3], raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled.features[3], feats, atol=1e-5, rtol=1e-5)


def planted_dictionary(lm, data: LabelledTexts, feature: int = 7):
    """A ReLU dictionary whose feature ``feature`` reads a direction that separates the two
    classes' last-token activations (a logistic regression's, fitted on every text) and
    fires on the class-1 side of it; the other features are random."""
    truth = TruthDataset("t", data.texts, data.labels, (1,) * len(data))
    acts = statement_activations(lm, truth, [HOOK], "last", use_cache=False)[HOOK]
    probe = LogisticRegressionProbe(1e-3).fit(acts, torch.tensor(data.labels))
    assert probe.predict(acts).tolist() == list(data.labels), "the planted task needs separable classes"
    scale = 5.0 / float((acts @ probe.weight).std())
    sae = random_dictionary("relu", lm.d_model, 40, 0, hook=HOOK, model=lm.name, scale=0.2)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc[:, feature] = scale * probe.weight
        sae.b_enc[feature] = scale * probe.bias
    return sae


def test_on_the_tiny_model_the_planted_feature_is_found_and_the_raw_probe_reads_the_same_tokens(lm, tmp_path):
    texts, labels = texts_ending(64)
    data = LabelledTexts("ends", tuple(texts), tuple(labels), ("full stop", "exclamation"))
    sae = planted_dictionary(lm, data)
    config = ClassifyConfig(position="last", sizes=(1, 3), repeats=2)
    result = classify(lm, sae, data, config, cache_dir=tmp_path)
    assert result.top_features[0].index == 7 and result.top_features[0].sign == 1
    assert result.score("top 1").accuracy >= 0.95
    # the raw baseline is a logistic regression on exactly the activations of a direct computation
    raw = torch.stack([direct(lm, sae, t, "last")[0] for t in texts])
    train, test = split(data, config)
    y = torch.tensor(labels)
    probe = LogisticRegressionProbe(config.l2).fit(raw[train], y[train])
    assert result.score("raw").accuracy == pytest.approx(accuracy(probe.scores(raw[test]), y[test]), abs=1e-9)
    assert result.score("raw").auroc == pytest.approx(auroc(probe.scores(raw[test]), y[test]), abs=1e-9)
    assert "top 1 feature" in result.table() and "exclamation" in result.table()


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def saved(lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dict") / "d"
    saekit.save(random_dictionary("topk", lm.d_model, 40, 0, hook=HOOK, model=lm.name), folder)
    return folder


@pytest.fixture
def no_model(monkeypatch):
    """Fail if a command loads the model: its checks must come first."""
    import saekit.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(saekit.models, "load_model", refuse)


def test_the_cli_end_to_end_with_a_csv_and_a_jsonl(saved, model_dir, tmp_path, capsys):
    texts, labels = texts_ending(40)
    csv_path = write_csv(tmp_path / "d.csv", list(zip(texts, labels)))
    args = ["classify", str(saved), "--sizes", "1,2,5", "--repeats", "2", "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--data", str(csv_path), "--json", str(tmp_path / "c.json"), "--plot",
                        str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "raw activations (32)" in out and "top 5 features" in out and "learning curve" in out
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["schema"] == "saekit.classify/1" and record["hook"] == HOOK and record["n_train"] == 30
    assert [s["method"] for s in record["held_out"]] == ["raw", "top 1", "top 2", "top 5"]
    assert record["config"]["position"] == "mean" and len(record["top_features"]) == 5
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

    jsonl = write_jsonl(tmp_path / "d.jsonl", [{"body": t, "topic": ["calm", "loud"][y]} for t, y in zip(texts, labels)])
    assert main(["classify", str(saved), "--data", str(jsonl), "--text-field", "body", "--label-field", "topic",
                 "--position", "last", "--sizes", "1", "--no-curve", "--no-cache", "--json", str(tmp_path / "j.json")]) == 0
    out = capsys.readouterr().out
    assert "20 'calm' = 0, 20 'loud' = 1" in out and "learning curve" not in out
    record = json.loads((tmp_path / "j.json").read_text())
    assert record["classes"] == {"0": "calm", "1": "loud"} and record["learning_curve"] == []


@pytest.mark.parametrize("extra, message", [
    (["--data", "{tmp}/missing.csv"], "no such file"),
    (["--data", "{tmp}/one.csv"], "one class"),
    (["--data", "{tmp}/ok.csv", "--position", "400"], "position 400 is outside text"),
    (["--data", "{tmp}/ok.csv", "--sizes", "1,100"], "--sizes asks for 100 features"),
    (["--data", "{tmp}/ok.csv", "--train-sizes", "8,500"], "--train-sizes asks for 500"),
    (["--data", "{tmp}/ok.csv", "--model", "{tmp}/other-model"], "trained on .*tiny-llama"),
    (["--data", "{tmp}/ok.csv", "--hook", "resid_post.2"], "trained on resid_post.1"),
    (["--data", "{tmp}/ok.csv", "--plot", "{tmp}/no/such/dir/p.png"], "does not exist"),
    (["--data", "{tmp}/ok.csv", "--plot", "{tmp}/p.png", "--no-curve"], "drop --no-curve"),
])
def test_bad_input_is_refused_before_the_model_loads(saved, tmp_path, capsys, no_model, extra, message):
    texts, labels = texts_ending(40)
    write_csv(tmp_path / "ok.csv", list(zip(texts, labels)))
    write_csv(tmp_path / "one.csv", [(t, 1) for t in texts])
    assert main(["classify", str(saved), *[a.format(tmp=tmp_path) for a in extra]]) == 2
    err = capsys.readouterr().err
    assert "saekit classify: error:" in err
    import re

    assert re.search(message, err), err


def test_a_dictionary_for_a_model_of_another_width_is_refused_before_the_model_loads(model_dir, tmp_path, capsys,
                                                                                     no_model):
    wide = random_dictionary("topk", 48, 96, 0, hook=HOOK, model="EleutherAI/pythia-70m")
    saekit.save(wide, tmp_path / "wide")
    texts, labels = texts_ending(40)
    write_csv(tmp_path / "ok.csv", list(zip(texts, labels)))
    # named model differs from the recorded one: refused by name
    assert main(["classify", str(tmp_path / "wide"), "--data", str(tmp_path / "ok.csv"), "--model", str(model_dir)]) == 2
    assert "trained on EleutherAI/pythia-70m" in capsys.readouterr().err
    # allowed to differ, but of another width: refused by width, naming the recorded model
    assert main(["classify", str(tmp_path / "wide"), "--data", str(tmp_path / "ok.csv"), "--model", str(model_dir),
                 "--allow-other-model"]) == 2
    err = capsys.readouterr().err
    assert "width 48" in err and "width 32" in err and "pythia-70m" in err


def test_the_library_refuses_a_dictionary_for_another_width(lm):
    sae = random_dictionary("topk", 48, 96, 0, hook=HOOK, model=lm.name)
    texts, labels = texts_ending(16)
    with pytest.raises(DimensionError, match="width 48"):
        classify(lm, sae, LabelledTexts("t", tuple(texts), tuple(labels)), ClassifyConfig(sizes=(1,)), use_cache=False)
