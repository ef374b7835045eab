"""Probe analyses: the generalisation matrix and the prompting baseline, PCA, FPR calibration
on control texts, and truth against likelihood; the maths on synthetic data, the commands
end to end on a tiny random model."""

import json
import math
import string

import numpy as np
import pytest
import torch
from conftest import tiny_loaded_model, tiny_model, tiny_tokenizer

import saekit
from saekit.cli import main
from saekit.errors import ConfigError, DataError
from saekit.probes import (TruthDataset, accuracy, auroc, calibrate_fpr, controls_needed, generalisation_matrix,
                           make_probe, principal_components, read_csv_dataset, recall_at_fpr, statement_activations,
                           statement_log_probs, threshold_at_fpr)
from saekit.probes.likelihood import point_biserial
from saekit.probes.matrix import dataset_split
from saekit.probes.prompting import PromptFormat, ShotPool, prompting_baseline
from saekit.probes.verdicts import answer_logprobs, answer_token_ids, verdict_log_odds
from saekit.probes.training import ProbeRun

# ----------------------------------------------------------------------------- helpers


def write_csv(path, statements, labels):
    lines = ["statement,label"] + [f'"{s}",{y}' for s, y in zip(statements, labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


def parity_set(tmp_path, name, n=24, word="number"):
    statements = [f"The {word} {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(n)]
    return write_csv(tmp_path / f"{name}.csv", statements, [int(i % 4 < 2) for i in range(n)])


def answer_tokenizer():
    """The tiny byte-level tokenizer with " TRUE" and " FALSE" as single tokens (ids 259 and
    260, rows the tiny model's embedding has)."""
    from tokenizers import AddedToken

    tok = tiny_tokenizer()
    tok.add_tokens([AddedToken(" TRUE", normalized=False), AddedToken(" FALSE", normalized=False)])
    return tok


@pytest.fixture(scope="module")
def answer_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-answers")
    tiny_model("llama").save_pretrained(folder)
    answer_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def answer_lm(answer_model_dir):
    return saekit.load_model(str(answer_model_dir))


# ----------------------------------------------------------------------------- matrix


def test_the_matrix_fits_on_training_splits_and_scores_held_out_on_the_diagonal(answer_lm, tmp_path):
    a = read_csv_dataset(parity_set(tmp_path, "a"))
    b = read_csv_dataset(parity_set(tmp_path, "b", n=20, word="count"))
    run = ProbeRun("logistic", seed=3)
    m = generalisation_matrix(answer_lm, run, [a, b], [a, b], "resid_post.1", cache_dir=tmp_path / "c")
    train_a, held_a = dataset_split(a, 0.25, 3)
    assert [row.train for row in m.rows] == ["a", "b"] and m.test == ["a", "b"]
    assert m.rows[0].held_out == (True, False) and m.rows[1].held_out == (False, True)
    assert m.rows[0].scores[0].n == len(held_a) and m.rows[0].scores[1].n == len(b) and m.rows[0].n_train == len(train_a)
    # The cells are what fitting by hand gives.
    X = {ds.name: statement_activations(answer_lm, ds, ["resid_post.1"], cache_dir=tmp_path / "c")["resid_post.1"]
         for ds in (a, b)}
    probe = make_probe("logistic").fit(X["a"][train_a], torch.tensor(a.labels)[train_a])
    yb = torch.tensor(b.labels)
    assert m.rows[0].scores[1].accuracy == pytest.approx(accuracy(probe.scores(X["b"]), yb))
    assert m.rows[0].scores[1].auroc == pytest.approx(auroc(probe.scores(X["b"]), yb))
    ya = torch.tensor(a.labels)[held_a]
    assert m.rows[0].scores[0].accuracy == pytest.approx(accuracy(probe.scores(X["a"][held_a]), ya))
    with pytest.raises(ConfigError, match="ccs"):
        generalisation_matrix(answer_lm, ProbeRun("ccs"), [a], [b], "resid_post.1", cache_dir=tmp_path / "c")


def test_saekit_probe_matrix_prints_writes_json_and_draws_the_heat_map(answer_model_dir, tmp_path, capsys):
    a, b = parity_set(tmp_path, "a"), parity_set(tmp_path, "b", n=20, word="count")
    out, plot = tmp_path / "m.json", tmp_path / "m.png"
    code = main(["probe", "matrix", "--train", str(a), "--test", str(a), str(b), "--probe", "mass_mean",
                 "--hook", "resid_post.2", "--model", str(answer_model_dir), "--cache-dir", str(tmp_path / "c"),
                 "--shots", "2", "--json", str(out), "--plot", str(plot)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "prompting 2-shot" in printed and "*" in printed
    record = json.loads(out.read_text())
    assert record["train"] == ["a"] and record["test"] == ["a", "b"]
    assert record["n"] == [[6, 20]] and record["held_out"] == [[True, False]]
    prompting = record["prompting"]
    assert prompting["n"] == [6, 20] and prompting["shots"] == 2 and len(prompting["shot_examples"]) == 2
    assert all(0 <= v <= 1 for v in prompting["accuracy"] + prompting["auroc"] + record["accuracy"][0])
    assert plot.read_bytes()[:4] == b"\x89PNG"

    assert main(["probe", "matrix", "--train", str(a), "--test", str(b), "--hook", "resid_post.2", "--no-prompting",
                 "--model", str(answer_model_dir), "--cache-dir", str(tmp_path / "c"), "--json", str(out),
                 "--plot", str(plot)]) == 0
    assert "prompting" not in json.loads(out.read_text())


@pytest.mark.parametrize("extra, message", [
    (["--test", "no_such_set"], "neither a built-in dataset"),
    (["--test", "A", "--probe", "ccs"], "invalid choice"),
    (["--test", "A", "--hook", "resid_pots.1"], "resid_pots"),
    (["--test", "A", "--shots", "-1"], "--shots"),
])
def test_saekit_probe_matrix_refuses_bad_input_before_loading_the_model(tmp_path, capsys, extra, message):
    a = parity_set(tmp_path, "a")
    args = ["probe", "matrix", "--train", str(a), "--hook", "resid_post.1", "--model", str(tmp_path / "no-model"),
            "--plot", str(tmp_path / "m.png")]
    extra = [str(a) if e == "A" else e for e in extra]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- prompting


def test_shots_are_balanced_seeded_and_never_the_scored_statement():
    rows = [(f"T{i}.", 1) for i in range(6)] + [(f"F{i}.", 0) for i in range(6)]
    pool = ShotPool.from_rows(rows, seed=1)
    shots = pool.shots(4, seed=1)
    assert sorted(y for _, y in shots) == [0, 0, 1, 1]
    assert ShotPool.from_rows(list(reversed(rows)), seed=1).shots(4, seed=1) == shots  # the seed fixes them
    first_true = next(s for s, y in shots if y == 1)
    swapped = pool.shots(4, seed=1, exclude=first_true)
    assert first_true not in [s for s, _ in swapped] and sorted(y for _, y in swapped) == [0, 0, 1, 1]
    assert ShotPool.from_rows(rows, seed=2).shots(4, seed=2) != shots
    with pytest.raises(DataError, match="shots need"):
        ShotPool.from_rows(rows[:7], seed=0).shots(4, seed=0)
    fmt = PromptFormat(shots=1)
    assert fmt.prompt([("A is red.", 1)], "B is blue.") == "A is red. This statement is: TRUE\nB is blue. This statement is:"


def test_the_prompt_score_is_the_answers_log_odds(answer_lm):
    tok = answer_lm.tokenizer
    answers = answer_token_ids(tok, (" TRUE", " FALSE"))
    prompts = ["The sky is green. This statement is:", "A much longer statement about rivers. This statement is:"]
    got = verdict_log_odds(answer_lm, prompts, answers, batch_size=2)  # padded together
    for prompt, value in zip(prompts, got):
        ids = tok(prompt)["input_ids"]
        logp = []
        for answer in answers:  # by hand: each answer token given the prompt and the answer's tokens before it
            full = torch.tensor([ids + answer])
            lp = torch.log_softmax(answer_lm.model(full).logits[0].double(), -1)
            logp.append(sum(float(lp[len(ids) - 1 + k, t]) for k, t in enumerate(answer)))
        assert float(value) == pytest.approx(logp[0] - logp[1], abs=1e-5)


def test_a_multi_token_answer_is_scored_by_its_whole_probability():
    lm = tiny_loaded_model()  # a byte-level tokenizer: " TRUE" is five tokens
    answers = answer_token_ids(lm.tokenizer, (" TRUE", " FALSE"))
    assert [len(a) for a in answers] == [5, 6]
    prompt = "Rome is in Italy. This statement is:"
    ids = lm.tokenizer(prompt)["input_ids"]
    got = float(verdict_log_odds(lm, [prompt], answers)[0])
    logp = []
    for answer in answers:
        lp = torch.log_softmax(lm.model(torch.tensor([ids + answer])).logits[0].double(), -1)
        logp.append(sum(float(lp[len(ids) - 1 + k, t]) for k, t in enumerate(answer)))
    assert got == pytest.approx(logp[0] - logp[1], abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_running_the_shots_once_gives_the_scores_of_whole_prompts(family):
    from saekit.models import LoadedModel
    from saekit.probes.verdicts import EncodedPrompt

    lm = LoadedModel(model=tiny_model(family), tokenizer=answer_tokenizer(), name=f"tiny-{family}")
    fmt = PromptFormat(shots=2)  # prompts within the tiny model's 128 positions
    shots = ShotPool.from_rows([(f"S{i}.", i % 2) for i in range(6)], 0).shots(2, 0)
    prompts = [fmt.prompt(shots, s) for s in ("Short.", "A longer statement about rivers.", "")]
    answers = answer_token_ids(lm.tokenizer, (fmt.true_word, fmt.false_word))
    encoded = [EncodedPrompt(lm.tokenizer(p)["input_ids"], (0, 0), []) for p in prompts]
    with torch.no_grad():
        whole = answer_logprobs(lm, encoded, answers, {}, 0.0, batch_size=8, share_prefix=False)
    shared = verdict_log_odds(lm, prompts, answers, batch_size=2)
    assert torch.allclose(shared, whole[:, 0] - whole[:, 1], atol=1e-4)


def test_prompting_is_calibrated_on_content_free_inputs(answer_lm):
    n = 12
    ds = TruthDataset("s", tuple(f"Item {i} is here." for i in range(n)), tuple(i % 2 for i in range(n)), (1,) * n)
    shot_rows = [(f"Shot {i} is there.", i % 2) for i in range(8)]
    fmt = PromptFormat(shots=2, seed=0)
    result = prompting_baseline(answer_lm, shot_rows, [ds], [list(range(n))], fmt)
    shots = ShotPool.from_rows(shot_rows, 0).shots(2, 0)
    answers = answer_token_ids(answer_lm.tokenizer, (fmt.true_word, fmt.false_word))
    free = verdict_log_odds(answer_lm, [fmt.prompt(shots, t) for t in fmt.content_free], answers, 4)
    raw = verdict_log_odds(answer_lm, [fmt.prompt(shots, s) for s in ds.statements], answers, 4)
    y = torch.tensor(ds.labels)
    assert result.content_free_offset == pytest.approx(float(free.mean()))
    assert result.scores[0].accuracy == pytest.approx(accuracy(raw - free.mean(), y))
    assert result.raw_accuracy[0] == pytest.approx(accuracy(raw, y))
    assert result.scores[0].auroc == pytest.approx(auroc(raw, y))
    limited = prompting_baseline(answer_lm, shot_rows, [ds], [list(range(n))], fmt, limit=6)
    assert limited.scores[0].n == 6


def test_prompting_refuses_prompts_past_the_context_and_takes_any_answers(answer_lm, model_dir, tmp_path):
    long = "x" * 40
    ds = TruthDataset("long", tuple(f"{long} {i}." for i in range(8)), tuple(i % 2 for i in range(8)), (1,) * 8)
    with pytest.raises(DataError, match="tokens long .* but the model reads at most 128; use fewer --shots"):
        prompting_baseline(answer_lm, [(s, y) for s, y in zip(ds.statements, ds.labels)], [ds], [[0, 1]],
                           PromptFormat(shots=4))
    a = parity_set(tmp_path, "a")  # the byte-level tokenizer splits ' TRUE' into five tokens: scored whole
    for answers in ([], ["--answers", "Y", "N"]):
        out = tmp_path / f"m{len(answers)}.json"
        assert main(["probe", "matrix", "--train", str(a), "--test", str(a), "--hook", "resid_post.1", "--model",
                     str(model_dir), "--cache-dir", str(tmp_path / "c"), "--plot", str(tmp_path / "m.png"),
                     "--shots", "1", "--json", str(out), *answers]) == 0  # 1 shot: within 128 bytes
        prompting = json.loads(out.read_text())["prompting"]
        assert prompting["answers"] == (answers[1:] or [" TRUE", " FALSE"]) and len(prompting["accuracy"]) == 1


# ----------------------------------------------------------------------------- PCA


def test_a_planted_label_direction_with_the_largest_variance_is_pc1():
    g = torch.Generator().manual_seed(0)
    d, n = 20, 600
    v = torch.randn(d, generator=g)
    v /= v.norm()
    y = torch.randint(0, 2, (n,), generator=g)
    X = torch.randn(n, d, generator=g) + 4.0 * (2 * y - 1)[:, None].float() * v + 3.0
    comps = principal_components(X, 3)
    assert abs(float(comps.directions[0] @ v)) > 0.99
    ref = np.linalg.svd(X.double().numpy() - X.double().numpy().mean(0), compute_uv=False) ** 2
    assert np.allclose(comps.explained.numpy(), (ref / ref.sum())[:3], atol=1e-5)
    assert torch.allclose(comps.directions @ comps.directions.T, torch.eye(3), atol=1e-5)
    proj = comps.project(X)
    assert abs(float(proj[y == 1, 0].mean() - proj[y == 0, 0].mean())) > 6  # the classes sit at ±4 along it
    from saekit.probes import PCAResult

    result = PCAResult("h", "m", False, ["a"], comps, proj, y, torch.zeros(n, dtype=torch.long))
    gap = result.label_gaps()[0][0]  # ±4 apart in a component of SD about √17: about 8/4.1 SDs
    assert 1.8 < abs(gap) < 2.1 and abs(result.label_gaps()[1][0]) < 0.3
    with pytest.raises(ConfigError, match="at most"):
        principal_components(X[:3], 3)


def test_saekit_probe_pca_prints_the_variance_and_draws_the_scatter(model_dir, tmp_path, capsys):
    a, b = parity_set(tmp_path, "a"), parity_set(tmp_path, "b", n=20, word="count")
    out, js = tmp_path / "p.png", tmp_path / "p.json"
    assert main(["probe", "pca", "--dataset", str(a), str(b), "--hook", "resid_post.1", "--components", "3",
                 "--centre", "--model", str(model_dir), "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                 "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert "PC1" in printed and "PC3" in printed and "each dataset centred" in printed
    record = json.loads(js.read_text())
    ratios = record["explained_variance_ratio"]
    assert len(ratios) == 3 and ratios == sorted(ratios, reverse=True) and sum(ratios) <= 1
    assert record["n"] == [24, 20] and out.read_bytes()[:4] == b"\x89PNG"
    assert len(record["true_minus_false_sd"]) == 3 and all(len(row) == 2 for row in record["true_minus_false_sd"])
    assert main(["probe", "pca", "--dataset", str(a), "--hook", "resid_post.1", "--components", "1",
                 "--model", str(model_dir)]) == 2
    assert "--components" in capsys.readouterr().err


# ----------------------------------------------------------------------------- FPR calibration


def test_the_fpr_holds_on_fresh_control_samples_within_sampling_error():
    g = torch.Generator().manual_seed(0)
    for fpr in (0.01, 0.05, 0.2):
        calib = torch.randn(4000, generator=g)
        fresh = torch.randn(200_000, generator=g)
        threshold = threshold_at_fpr(calib, fpr)
        realised = float((fresh > threshold).double().mean())
        # The threshold's own sampling error (4000 scores) and the fresh sample's.
        sd = math.sqrt(fpr * (1 - fpr) * (1 / 4000 + 1 / 200_000))
        assert abs(realised - fpr) < 3 * sd, (fpr, realised, sd)
    cal = calibrate_fpr(torch.randn(2000, generator=g), 0.05, seed=1)
    assert cal.n_calibration == cal.n_heldout == 1000
    assert abs(cal.calibration_fpr - 0.05) < 0.002  # the quantile of its own half, to interpolation
    assert abs(cal.heldout_fpr - 0.05) < 3 * math.sqrt(2) * cal.heldout_fpr_sd


def test_recall_at_the_calibrated_threshold_for_either_class():
    g = torch.Generator().manual_seed(1)
    control = torch.randn(1000, generator=g)
    labels = [1] * 200 + [0] * 200
    scores = torch.cat([torch.randn(200, generator=g) + 3, torch.randn(200, generator=g) - 3])
    got = recall_at_fpr(control, scores, labels, 0.05, positive="true", dataset="d")
    # True statements sit 3 SDs up: recall is P(N(3,1) > q_0.95 = 1.645) = Φ(1.355) ≈ 0.91.
    assert abs(got.recall - 0.912) < 0.06 and got.dataset_fpr < 0.01
    assert got.own_recall > 0.99 and abs(got.own_control_fpr - 0.5) < 0.06
    flipped = recall_at_fpr(control, scores, labels, 0.05, positive="false")
    assert abs(flipped.recall - 0.912) < 0.06 and flipped.calibration.threshold == pytest.approx(
        threshold_at_fpr(-control[_calibration_half(1000, 0)], 0.05))
    with pytest.raises(ConfigError, match="between 0 and 1"):
        calibrate_fpr(control, 1.0)
    with pytest.raises(DataError, match="takes at least 1000 control texts"):
        calibrate_fpr(control[:999], 0.01)
    assert controls_needed(0.01) == 1000 and controls_needed(0.1) == 100


def _calibration_half(n, seed):
    """The half of n control scores calibrate_fpr sets the threshold on (the other is held out)."""
    import random

    order = list(range(n))
    random.Random(f"controls-{seed}").shuffle(order)
    return order[n // 2:]


@pytest.fixture()
def saved_probe(model_dir, tmp_path):
    data = parity_set(tmp_path, "train", n=40)
    saved = tmp_path / "p.safetensors"
    assert main(["probe", "train", "--dataset", str(data), "--probe", "logistic", "--hook", "resid_post.1",
                 "--model", str(model_dir), "--cache-dir", str(tmp_path / "c"), "--save", str(saved)]) == 0
    return saved, data


def test_saekit_probe_calibrate_reports_recall_and_the_held_out_fpr(model_dir, saved_probe, tmp_path, capsys):
    saved, data = saved_probe
    controls = tmp_path / "controls.txt"
    rng = np.random.default_rng(0)
    controls.write_text("\n".join(" ".join(rng.choice(list(string.ascii_lowercase), 6)) for _ in range(240)) + "\n")
    out = tmp_path / "cal.json"
    capsys.readouterr()
    assert main(["probe", "calibrate", "--probe-file", str(saved), "--control", str(controls), "--fpr", "0.05",
                 "--dataset", str(data), "--cache-dir", str(tmp_path / "c"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "threshold at FPR 0.05" in printed and "recall on train" in printed
    assert "the probe was trained on part of train" in printed
    record = json.loads(out.read_text())
    assert record["n_control"] == 240 and record["n_calibration"] == record["n_heldout"] == 120
    assert record["hook"] == "resid_post.1" and record["positive"] == "true"
    assert record["calibration_fpr"] <= 0.05 and 0 <= record["heldout_fpr"] <= 1 and 0 <= record["recall"] <= 1
    # The figures are the library's on the probe's scores.
    from saekit.probes import load_probe
    from saekit.probes.calibration import read_control_texts

    probe, _ = load_probe(saved)
    lm = saekit.load_model(str(model_dir))
    texts = read_control_texts(str(controls))
    control_scores = probe.scores(statement_activations(lm, texts, ["resid_post.1"], cache_dir=tmp_path / "c")["resid_post.1"])
    ds = read_csv_dataset(data)
    data_scores = probe.scores(statement_activations(lm, ds, ["resid_post.1"], cache_dir=tmp_path / "c")["resid_post.1"])
    direct = recall_at_fpr(control_scores, data_scores, ds.labels, 0.05)
    assert record["threshold"] == pytest.approx(direct.calibration.threshold)
    assert record["recall"] == pytest.approx(direct.recall)


@pytest.mark.parametrize("extra, message", [
    (["--fpr", "1.5"], "between 0 and 1"),
    (["--fpr", "0"], "between 0 and 1"),
    (["--fpr", "0.001"], "takes at least 10000 control texts"),
    (["--hook", "resid_post.2"], "trained at resid_post.1, not resid_post.2"),
    (["--model", "OTHER"], "was trained on the model"),
    (["--dataset", "no_such_set"], "neither a built-in dataset"),
])
def test_saekit_probe_calibrate_refuses_bad_input_before_loading_the_model(saved_probe, tmp_path, capsys, extra,
                                                                          message, monkeypatch):
    saved, data = saved_probe
    controls = tmp_path / "controls.txt"
    controls.write_text("".join(f"Control text number {i}.\n" for i in range(300)))
    other = tmp_path / "other-model"
    other.mkdir()
    import saekit.models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(saekit.models, "load_model", no_load)
    extra = [str(other) if e == "OTHER" else e for e in extra]
    args = ["probe", "calibrate", "--probe-file", str(saved), "--control", str(controls), "--fpr", "0.05",
            "--dataset", str(data), "--cache-dir", str(tmp_path / "c")]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("add_bos", [True, False])
def test_statement_log_prob_is_the_sum_from_the_model_logits(add_bos):
    lm = tiny_loaded_model(add_bos=add_bos)
    statements = ("Rivers run.", "A longer statement, padded less.", "Sky is up.", "Cats sit on mats.")
    ds = TruthDataset("t", statements * 2, (1, 0, 1, 0, 0, 1, 0, 1), (1,) * 8)
    got = statement_log_probs(lm, ds, batch_size=3)
    for i, s in enumerate(statements):
        ids = lm.tokenizer(s)["input_ids"]
        first = 1 if add_bos else 0  # the statement's own first token
        logp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].double(), -1)
        hand = sum(float(logp[p - 1, ids[p]]) for p in range(first + 1, len(ids)))
        assert float(got.total[i]) == pytest.approx(hand, rel=1e-6)  # float32 logits, padded or not
        assert int(got.n_tokens[i]) == len(ids) - first - 1
    assert torch.allclose(got.mean, got.total / got.n_tokens)
    ones = TruthDataset("one", ("A",) * 4 + ("B",) * 4, (1,) * 4 + (0,) * 4, (1,) * 8)
    with pytest.raises(DataError, match="one token long"):
        statement_log_probs(lm, ones)


def test_point_biserial_is_pearson_with_the_labels():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, generator=g), torch.randint(0, 2, (50,), generator=g)
    assert point_biserial(x, y) == pytest.approx(np.corrcoef(x.numpy(), y.numpy())[0, 1])
    assert math.isnan(point_biserial(torch.ones(5), torch.tensor([0, 1, 0, 1, 1])))


def greedy_text(lm, start, n, allowed):
    """``n`` characters continuing ``start``, each the tiny model's likeliest among ``allowed``."""
    ids = lm.tokenizer(start)["input_ids"]
    allowed_ids = [lm.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in allowed]
    for _ in range(n):
        logits = lm.model(torch.tensor([ids])).logits[0, -1]
        ids.append(allowed_ids[int(logits[allowed_ids].argmax())])
    return lm.tokenizer.decode(ids, skip_special_tokens=True)


def test_saekit_probe_likelihood_finds_a_label_that_tracks_likelihood(model_dir, tmp_path, capsys):
    lm = saekit.load_model(str(model_dir))
    letters = string.ascii_lowercase
    rng = np.random.default_rng(0)
    statements, labels = [], []
    for i in range(12):  # true: the model's own greedy continuation; false: random letters
        start = letters[i]
        statements.append(greedy_text(lm, start, 12, letters))
        labels.append(1)
        statements.append(start + "".join(rng.choice(list(letters), 12)))
        labels.append(0)
    data = write_csv(tmp_path / "likely.csv", statements, labels)
    out = tmp_path / "l.json"
    assert main(["probe", "likelihood", "--dataset", str(data), "--model", str(model_dir), "--json", str(out)]) == 0
    assert "likely" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())["results"]
    assert result["n"] == 24 and result["auroc_total"] > 0.95 and result["r_total"] > 0.5
    assert result["mean_logprob_true"] > result["mean_logprob_false"]
    assert main(["probe", "likelihood", "--dataset", "no_such_set", "--model", str(tmp_path / "none")]) == 2
