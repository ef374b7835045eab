"""Truth probes: each probe recovers a planted direction, LDA is Fisher's closed form, the
builders are deterministic and balanced, CSV errors name the fix, activations are cached
and recomputed when the statements change, and ``saekit probe`` runs end to end."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import saekit
from saekit.cli import main
from saekit.errors import ConfigError, DataError
from saekit.probes import (BUILDERS, TruthDataset, accuracy, auroc, build_dataset, load_probe, make_probe,
                           paired_rows, read_csv_dataset, statement_activations, train_test_split)

D = 24
MARGIN = 2.0  # class means at ±2 along a unit direction, unit noise: Bayes accuracy Φ(2) = 0.977
BAYES = 0.5 * (1 + math.erf(MARGIN / math.sqrt(2)))


def planted(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(D, generator=g)
    v /= v.norm()
    y = torch.randint(0, 2, (n,), generator=g)
    X = torch.randn(n, D, generator=g) + MARGIN * (2 * y - 1)[:, None].float() * v + 5.0  # an offset too
    return X, y, v


def orthogonal_unit(v, seed):
    u = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    u -= (u @ v) * v
    return u / u.norm()


@pytest.mark.parametrize("name", ["logistic", "mass_mean", "lda"])
def test_supervised_probes_recover_a_planted_direction(name):
    X, y, v = planted()
    probe = make_probe(name).fit(X[:750], y[:750])
    assert float(probe.direction @ v) > 0.95
    acc = accuracy(probe.scores(X[750:]), y[750:])
    assert abs(acc - BAYES) < 0.04, (acc, BAYES)
    assert auroc(probe.scores(X[750:]), y[750:]) > 0.98
    assert torch.equal(probe.predict(X[:5]), (probe.scores(X[:5]) > 0).long())


def test_ccs_recovers_the_direction_from_pairs_without_labels_but_the_sign():
    X, y, v = planted(800, seed=1)
    g = torch.Generator().manual_seed(2)
    polarity = orthogonal_unit(v, 3)
    base = torch.randn(800, D, generator=g)
    signed = MARGIN * (2 * y - 1)[:, None].float()
    pos = base + signed * v + 4 * polarity + 0.3 * torch.randn(800, D, generator=g)
    neg = base - signed * v - 4 * polarity + 0.3 * torch.randn(800, D, generator=g)
    probe = make_probe("ccs", restarts=3, epochs=300).fit(pos[:600], y[:600], partners=neg[:600])
    assert float(probe.direction @ v) > 0.95
    assert accuracy(probe.paired_scores(pos[600:], neg[600:]), y[600:]) > 0.95
    assert accuracy(probe.scores(pos[600:]), y[600:]) > 0.9
    with pytest.raises(ConfigError, match="negation"):
        make_probe("ccs").fit(pos, y)


def test_the_two_direction_probe_separates_truth_from_polarity():
    g = torch.Generator().manual_seed(4)
    n = 1200
    _, _, t_g = planted()
    t_p = orthogonal_unit(t_g, 5)
    pol_dir = orthogonal_unit(t_g, 6)
    pol_dir -= (pol_dir @ t_p) * t_p
    pol_dir /= pol_dir.norm()
    y = torch.randint(0, 2, (n,), generator=g)
    pol = torch.where(torch.arange(n) % 2 == 0, 1, -1)
    s = (2 * y - 1).float()
    X = torch.randn(n, D, generator=g) + MARGIN * s[:, None] * t_g + MARGIN * (s * pol)[:, None] * t_p \
        + 3 * pol[:, None] * pol_dir
    probe = make_probe("ttpd").fit(X[:900], y[:900], polarities=pol[:900])
    assert float(probe.direction @ t_g) > 0.95
    assert float(probe.t_p @ t_p / probe.t_p.norm()) > 0.95
    for p in (1, -1):
        rows = pol[900:] == p
        assert accuracy(probe.scores(X[900:][rows]), y[900:][rows]) > BAYES - 0.05
    # A probe fitted on affirmative statements alone finds t_G + t_P, which negation flips.
    affirmative = pol[:900] == 1
    mm = make_probe("mass_mean").fit(X[:900][affirmative], y[:900][affirmative])
    negated = pol[900:] == -1
    assert accuracy(mm.scores(X[900:][negated]), y[900:][negated]) < 0.7


def test_lda_equals_the_closed_form_fisher_discriminant():
    g = torch.Generator().manual_seed(7)
    n1, n0 = 300, 200
    mix = torch.randn(D, D, generator=g) / 3 + torch.eye(D)  # correlated noise: LDA differs from mass-mean
    X1 = torch.randn(n1, D, generator=g) @ mix + 1.0
    X0 = torch.randn(n0, D, generator=g) @ mix
    X = torch.cat([X1, X0])
    y = torch.cat([torch.ones(n1), torch.zeros(n0)]).long()
    a1, a0 = X1.double().numpy(), X0.double().numpy()
    m1, m0 = a1.mean(0), a0.mean(0)
    pooled = ((a1 - m1).T @ (a1 - m1) + (a0 - m0).T @ (a0 - m0)) / (n1 + n0 - 2)
    for shrinkage in (0.0, 0.2):
        cov = (1 - shrinkage) * pooled + shrinkage * np.trace(pooled) / D * np.eye(D)
        w = np.linalg.solve(cov, m1 - m0)
        b = -w @ (m1 + m0) / 2 + np.log(n1 / n0)
        probe = make_probe("lda", shrinkage=shrinkage).fit(X, y)
        np.testing.assert_allclose(probe.weight.numpy(), w, rtol=1e-4, atol=1e-5)
        assert probe.bias == pytest.approx(b, rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(probe.scores(X).numpy(), X.double().numpy() @ w + b, rtol=1e-3, atol=1e-3)
    assert float(make_probe("lda", shrinkage=0.0).fit(X, y).direction @ make_probe("mass_mean").fit(X, y).direction) < 0.99


def test_auroc_and_split():
    assert auroc(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auroc(torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0, 1, 0, 1])) == 0.5
    assert auroc(torch.tensor([0.4, 0.3, 0.2, 0.1]), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.25)
    labels = [0, 1] * 50
    groups = [i // 4 for i in range(100)]  # each group has both labels, so it follows its first one
    train, test = train_test_split(labels, 0.25, seed=3, groups=groups)
    assert (train, test) == train_test_split(labels, 0.25, seed=3, groups=groups)
    assert train != train_test_split(labels, 0.25, seed=4, groups=groups)[0]
    assert not {groups[i] for i in train} & {groups[i] for i in test}
    assert set(train) | set(test) == set(range(100))


def test_builders_are_deterministic_balanced_and_paired():
    for name in BUILDERS:
        a, b = build_dataset(name, seed=0), build_dataset(name, seed=0)
        assert a == b, name
        assert len(a) >= 500 and a.n_true * 2 == len(a), name
        assert len(set(a.statements)) == len(a), name
        assert build_dataset(name, seed=1).statements != a.statements, name
    cities, neg = build_dataset("cities"), build_dataset("neg_cities")
    rows = paired_rows(cities, neg)
    assert len(rows) == len(cities) and all(i == j for i, j in rows)
    for i in (0, 1, 2):
        assert neg.statements[i] == cities.statements[i].replace(" is in ", " is not in ")
        assert neg.labels[i] == 1 - cities.labels[i]
    assert set(neg.polarities) == {-1}
    # No shortcut through the country alone: each is named about as often in true and false claims.
    named = {}
    for statement, label in zip(cities.statements, cities.labels):
        named.setdefault(statement.split(" is in ")[1], [0, 0])[label] += 1
    assert sum(max(counts) for counts in named.values()) / len(cities) < 0.56
    # Truth against likelihood: each city and each country phrase occurs once true and once false.
    mixed = build_dataset("cities_mixed")
    assert sorted(set(mixed.polarities)) == [-1, 1]
    assert abs(sum(p == -1 for p in mixed.polarities) - len(mixed) / 2) <= 2
    true_words = sorted(s.replace(" not", "").split(" in ")[1] for s, l in zip(mixed.statements, mixed.labels) if l)
    false_words = sorted(s.replace(" not", "").split(" in ")[1] for s, l in zip(mixed.statements, mixed.labels) if not l)
    assert true_words == false_words
    true_cities = sorted(s.split(" is ")[0] for s, l in zip(mixed.statements, mixed.labels) if l)
    assert true_cities == sorted(s.split(" is ")[0] for s, l in zip(mixed.statements, mixed.labels) if not l)
    larger, smaller = build_dataset("larger_than"), build_dataset("smaller_than")
    assert larger.pairs == smaller.pairs and all(a != b for a, b in zip(larger.labels, smaller.labels))


def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_datasets_and_their_errors(tmp_path):
    rows = "".join(f'"Statement {i}, with a comma.",{i % 2}\n' for i in range(10))
    ds = read_csv_dataset(write(tmp_path, "statement,label\n" + rows))
    assert len(ds) == 10 and ds.statements[0] == "Statement 0, with a comma." and ds.labels[:2] == (0, 1)
    assert ds.name == "d" and ds.polarities == (1,) * 10 and ds.pairs is None
    with pytest.raises(DataError, match=r"no 'label' column.*'statement' and 'label'"):
        read_csv_dataset(write(tmp_path, "statement,truth\nA.,1\n"))
    with pytest.raises(DataError, match=r"line 3: label 'yes' is not 0 or 1"):
        read_csv_dataset(write(tmp_path, "statement,label\nA.,1\nB.,yes\n"))
    with pytest.raises(DataError, match=r"d.csv.*every statement is true.*other label"):
        read_csv_dataset(write(tmp_path, "statement,label\n" + "".join(f"S{i}.,1\n" for i in range(10))))
    with pytest.raises(DataError, match=r"too small to split.*2 true and 2 false.*at least 4"):
        read_csv_dataset(write(tmp_path, "statement,label\nA.,1\nB.,0\nC.,1\nD.,0\n"))
    with pytest.raises(DataError, match="no such file"):
        read_csv_dataset(tmp_path / "missing.csv")


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


def small_dataset(n=16, name="small", suffix=""):
    statements = tuple(f"The number {i} is {'even' if i % 2 == 0 else 'odd'}{suffix}." for i in range(n))
    return TruthDataset(name, statements, tuple(int(i % 4 < 2) for i in range(n)), (1,) * n)


def test_activations_are_cached_and_a_changed_dataset_misses(lm, tmp_path, monkeypatch):
    calls = []
    import saekit.hooks as hooks

    real = hooks.read_activations

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hooks, "read_activations", counting)
    ds = small_dataset()
    first = statement_activations(lm, ds, ["resid_post.0", "resid_post.2"], cache_dir=tmp_path, batch_size=8)
    assert len(calls) == 2 and first["resid_post.0"].shape == (16, lm.d_model)
    again = statement_activations(lm, ds, ["resid_post.2", "resid_post.0"], cache_dir=tmp_path, batch_size=8)
    assert len(calls) == 2  # all from the cache
    torch.testing.assert_close(again["resid_post.0"], first["resid_post.0"], rtol=0, atol=0)
    statement_activations(lm, small_dataset(suffix="!"), ["resid_post.0"], cache_dir=tmp_path, batch_size=8)
    assert len(calls) == 4  # other statements: recomputed
    relabelled = TruthDataset("small", ds.statements, tuple(1 - label for label in ds.labels), ds.polarities)
    statement_activations(lm, relabelled, ["resid_post.0"], cache_dir=tmp_path, batch_size=8)
    assert len(calls) == 4  # only the labels differ: the activations are the same
    # Batching and padding do not change a statement's activation; "last" is the last own token.
    ids = lm.tokenizer(ds.statements[3], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        alone = real(lm, ["resid_post.0"], ids)["resid_post.0"][0]
    torch.testing.assert_close(first["resid_post.0"][3], alone[-1], rtol=1e-4, atol=1e-5)
    mean = statement_activations(lm, ds, ["resid_post.0"], "mean", use_cache=False)["resid_post.0"]
    torch.testing.assert_close(mean[3], alone[1:].mean(0), rtol=1e-4, atol=1e-5)  # BOS excluded
    second = statement_activations(lm, ds, ["resid_post.0"], 1, use_cache=False)["resid_post.0"]
    torch.testing.assert_close(second[3], alone[2], rtol=1e-4, atol=1e-5)


def test_bad_positions_and_long_statements_fail_before_the_model_runs(lm, tmp_path, monkeypatch):
    import saekit.hooks as hooks

    def fail(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(hooks, "read_activations", fail)
    with pytest.raises(ConfigError, match=r"position 40 is outside statement 0"):
        statement_activations(lm, small_dataset(), ["resid_post.0"], 40, cache_dir=tmp_path)
    long = TruthDataset("long", tuple("word " * 200 + f"{i}." for i in range(8)), (0, 1) * 4, (1,) * 8)
    with pytest.raises(DataError, match=r"reads at most 128"):
        statement_activations(lm, long, ["resid_post.0"], cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="position 'middle'"):
        statement_activations(lm, small_dataset(), ["resid_post.0"], "middle", cache_dir=tmp_path)


def test_saekit_probe_trains_scores_saves_and_sweeps(model_dir, tmp_path, capsys):
    n = 40
    rows = "".join(f"The river {i} is {'long' if i % 2 else 'short'}.,{int(i % 4 < 2)}\n" for i in range(n))
    data = write(tmp_path, "statement,label\n" + rows, "rivers.csv")
    other = write(tmp_path, "statement,label\n" + rows.replace("river", "lake"), "lakes.csv")
    cache = tmp_path / "cache"
    args = ["probe", "train", "--dataset", str(data), "--probe", "logistic", "--hook", "resid_post.1",
            "--model", str(model_dir), "--cache-dir", str(cache), "--test-dataset", str(other)]
    out_json, saved = tmp_path / "out.json", tmp_path / "probe.safetensors"
    assert main(args + ["--json", str(out_json), "--save", str(saved)]) == 0
    printed = capsys.readouterr().out
    assert "held-out" in printed and "lakes" in printed and "resid_post.1" in printed
    record = json.loads(out_json.read_text())
    scores = record["results"][0]["scores"]
    assert [s["dataset"] for s in scores] == ["held-out", "lakes"] and scores[0]["n"] == 10
    assert all(0 <= s["accuracy"] <= 1 and 0 <= s["auroc"] <= 1 for s in scores)
    probe, info = load_probe(saved)
    assert info["hook"] == "resid_post.1" and probe.name == "logistic"
    lm = saekit.load_model(str(model_dir))
    acts = statement_activations(lm, read_csv_dataset(other), ["resid_post.1"], cache_dir=cache)["resid_post.1"]
    labels = torch.tensor(read_csv_dataset(other).labels)
    assert accuracy(probe.scores(acts), labels) == pytest.approx(scores[1]["accuracy"])

    plot = tmp_path / "sweep.png"
    assert main(["probe", "train", "--dataset", str(data), "--probe", "mass_mean", "--layers", "0-2",
                 "--model", str(model_dir), "--cache-dir", str(cache), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert all(f"resid_post.{k}" in printed for k in range(3))
    assert plot.read_bytes()[:4] == b"\x89PNG"

    assert main(["probe", "datasets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in BUILDERS)


@pytest.mark.parametrize("extra, message", [
    (["--hook", "resid_post.1", "--probe", "ccs"], "--paired"),
    (["--hook", "resid_post.9"], "layer 9 does not exist"),
    (["--hook", "resid_post.1", "--position", "99"], "position 99 is outside"),
    (["--layers", "2-0"], "runs backwards"),
    (["--hook", "resid_post.1", "--shrinkage", "0.1"], "lda probe only"),
    ([], "give --hook"),
])
def test_saekit_probe_refuses_bad_input(model_dir, tmp_path, capsys, extra, message):
    data = write(tmp_path, "statement,label\n" + "".join(f"S {i}.,{i % 2}\n" for i in range(12)))
    code = main(["probe", "train", "--dataset", str(data), "--model", str(model_dir),
                 "--cache-dir", str(tmp_path / "c"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_saekit_probe_refuses_a_bad_csv_before_loading_the_model(tmp_path, capsys):
    data = write(tmp_path, "text,label\nA.,1\n")
    assert main(["probe", "train", "--dataset", str(data), "--hook", "resid_post.1",
                 "--model", str(tmp_path / "no-model")]) == 2
    assert "no 'statement' column" in capsys.readouterr().err


def test_a_bom_and_pair_columns_are_read(tmp_path):
    rows = "".join(f"S {i}.,{i % 2},-1,k{i}\n" for i in range(8))
    ds = read_csv_dataset(write(tmp_path, "\ufeffstatement,label,polarity,pair\n" + rows))
    assert ds.polarities == (-1,) * 8 and ds.pairs[:2] == ("k0", "k1")


def test_ccs_and_ttpd_run_on_paired_csv_datasets(lm, tmp_path):
    from saekit.probes.training import ProbeRun, run_probe

    n = 24
    affirm = TruthDataset("rivers", tuple(f"River {i} is long." for i in range(n)), tuple(i % 2 for i in range(n)),
                          (1,) * n, tuple(f"r{i}" for i in range(n)))
    negated = TruthDataset("neg_rivers", tuple(f"River {i} is not long." for i in range(n)),
                           tuple(1 - i % 2 for i in range(n)), (-1,) * n, tuple(f"r{i}" for i in range(n)))
    ccs = run_probe(lm, ProbeRun("ccs", {"restarts": 2, "epochs": 20}), [affirm], ["resid_post.1"],
                    paired=negated, test_sets=[negated], cache_dir=tmp_path)
    assert [s.dataset for s in ccs[0].scores] == ["held-out", "neg_rivers"] and ccs[0].n_train == 18
    ttpd = run_probe(lm, ProbeRun("ttpd", centre=True), [affirm, negated], ["resid_post.0", "resid_post.1"],
                     cache_dir=tmp_path)
    assert [r.hook for r in ttpd] == ["resid_post.0", "resid_post.1"]
    assert ttpd[0].n_train == 36 and ttpd[0].scores[0].n == 12  # a river's two statements stay together
    assert ttpd[0].probe.t_p is not None
    with pytest.raises(ConfigError, match="ccs probe trains on one dataset and its negations"):
        run_probe(lm, ProbeRun("ccs"), [affirm], ["resid_post.1"], cache_dir=tmp_path)


def test_layer_specs_and_writing_the_built_datasets(tmp_path, capsys):
    from saekit.cli.probe import parse_layers

    assert parse_layers("0-29:3") == list(range(0, 30, 3))
    assert parse_layers("3,6, 9") == [3, 6, 9] and parse_layers("2") == [2]
    with pytest.raises(ConfigError, match="neither a layer"):
        parse_layers("a-b")
    assert main(["probe", "datasets", "--write", str(tmp_path / "sets")]) == 0
    path = tmp_path / "sets" / "neg_cities.csv"
    assert read_csv_dataset(path) == dataclasses.replace(build_dataset("neg_cities"), source=str(path), description="")
