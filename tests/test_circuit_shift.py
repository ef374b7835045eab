"""SHIFT: a probe that leans on a spurious concept, freed of it by ablating dictionary features.

On planted activations (concept directions that a hand-built dictionary's decoder holds,
the spurious one cleaner than the intended one, so that a probe trained where they
co-occur reads the spurious one): the automatic judge picks exactly the spurious
features, SHIFT brings the spurious accuracy to chance and SHIFT + retrain the intended
one near 1; the effects are those of the ablation, computed by hand. On a tiny model the
whole pipeline runs through the spliced model, its effects and edited activations match
a hand computation where the probe reads the dictionary's own point, ablating nothing
changes nothing, and bad input is refused before any pass, saying what is wrong. The
synthetic task's builder is deterministic and its sets are what they say.
"""

import json
import math

import pytest
import torch

from saekit.circuits import (
    LabelledSet,
    Node,
    ProbeLogit,
    SplicedModel,
    SpuriousTask,
    exact_patching,
    shift,
    spurious_task,
)
from saekit.circuits.data import CircuitBatch
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import ConfigError, DataError, HookPointError
from saekit.hooks import read_activations

from circuit_fixtures import circuit_dictionary
from conftest import random_dictionary, tiny_loaded_model

D = 16


# ---------------------------------------------------------------------------
# Planted activations


def planted_dictionary(seed=0):
    """A ReLU SAE whose features are an orthonormal basis: feature 0 sports, 1 cooking,
    2 male, 3 female, the rest other directions."""
    torch.manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, D))[0].T  # rows orthonormal
    d = build_dictionary(DictionaryConfig(arch="relu", d_in=D, d_sae=D, hook="resid_post.1", model="planted"))
    with torch.no_grad():
        d.W_dec.copy_(basis)
        d.W_enc.copy_(basis.T)
        d.b_enc.zero_()
        d.b_dec.zero_()
    return d.eval().requires_grad_(False), basis


def planted_set(name, basis, groups, n_per_group, generator):
    """Examples with the intended concept noisy (its coordinate |N(1, 0.8)|) and the spurious
    one clean (1 ± 0.05), plus small noise along the other directions."""
    rows, intended, spurious = [], [], []
    for i, s in groups:
        for _ in range(n_per_group):
            coords = 0.1 * torch.randn(D, generator=generator)
            coords[:4] = 0
            coords[0 if i else 1] = (1 + 0.8 * torch.randn((), generator=generator)).abs()
            coords[2 if s else 3] = 1 + 0.05 * torch.randn((), generator=generator)
            rows.append(coords @ basis)
            intended.append(i)
            spurious.append(s)
    return LabelledSet(name, intended, spurious, activations=torch.stack(rows))


def planted_task(basis, seed=0):
    g = torch.Generator().manual_seed(seed)
    ambiguous, every = [(1, 1), (0, 0)], [(1, 1), (0, 0), (1, 0), (0, 1)]
    return SpuriousTask(
        train=planted_set("train", basis, ambiguous, 100, g),
        ambiguous_test=planted_set("ambiguous test", basis, ambiguous, 100, g),
        balanced_test=planted_set("balanced test", basis, every, 100, g),
        judge=planted_set("judge", basis, every, 8, g),
        intended_name="topic", spurious_name="gender",
    )


def test_shift_removes_a_planted_spurious_signal_and_keeps_the_intended_one():
    d, basis = planted_dictionary()
    task = planted_task(basis)
    r = shift(d, task, top_k=6)
    # The probe trained where the concepts co-occur reads the cleaner one, gender.
    assert r.before.ambiguous > 0.95
    assert r.before.spurious > 0.9 and r.before.intended < 0.65 and r.before.worst_group < 0.4
    # The judge picks the two gender features, and only them.
    assert r.judge == "auto" and sorted(n.feature for n in r.ablated) == [2, 3]
    judged = {c.node.feature: c for c in r.candidates}
    assert {0, 1, 2, 3} <= set(judged)
    assert judged[2].spurious_association == pytest.approx(1.0) and judged[2].intended_association < 0.3
    assert judged[0].intended_association > 0.5 and not judged[0].ablated
    # SHIFT: gender is gone from what the probe sees; retrained, the probe reads the topic.
    assert abs(r.after.spurious - 0.5) < 0.1
    assert r.after.intended > r.before.intended
    assert abs(r.retrained.spurious - 0.5) < 0.1
    assert r.retrained.intended > 0.8 and r.retrained.worst_group > 0.7 and r.retrained.ambiguous > 0.8
    # The oracle, trained where the concepts are decorrelated, reads the topic from the start.
    assert r.oracle.intended > 0.85 and abs(r.oracle.spurious - 0.5) < 0.1 and r.oracle.worst_group > 0.7
    assert "oracle (balanced)" in r.table()
    assert r.method == "exact" and r.sizes == {"train": 200, "ambiguous_test": 200, "balanced_test": 400, "judge": 32}


def test_planted_effects_are_the_ablations_own():
    d, basis = planted_dictionary()
    task = planted_task(basis)
    for ablation in ("zero", "mean"):
        r = shift(d, task, top_k=D, ablation=ablation)
        x = task.train.activations
        f = d.encode(x)
        signs = torch.tensor([1.0 if y else -1.0 for y in task.train.intended])
        for c in r.candidates:
            i = c.node.feature
            moved = f.clone()
            moved[:, i] = 0.0 if ablation == "zero" else f[:, i].mean()
            edited = d.decode(moved) + (x - d.decode(f))
            by_hand = float((signs * (r.probe.scores(edited) - r.probe.scores(x))).mean())
            assert c.effect == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
        # Ablating a feature the probe leans on lowers the signed logit.
        assert min(c.effect for c in r.candidates if c.node.feature in (2, 3)) < -0.5


def test_given_features_are_ablated_as_given():
    d, basis = planted_dictionary()
    task = planted_task(basis)
    r = shift(d, task, features=[Node("resid_post.1", 2), Node("resid_post.1", 3)])
    assert r.judge == "given" and [c.node.feature for c in r.candidates] == [2, 3]
    assert all(c.ablated for c in r.candidates) and not math.isnan(r.candidates[0].spurious_association)
    assert abs(r.after.spurious - 0.5) < 0.1
    nothing = shift(d, task, features=[])
    assert nothing.ablated == [] and nothing.after == nothing.before == nothing.retrained
    from saekit.probes import LogisticRegressionProbe, MassMeanProbe

    mine = LogisticRegressionProbe(l2=1.0)
    with_mine = shift(d, task, features=[Node("resid_post.1", 2)], probe=mine)
    assert with_mine.probe.l2 == with_mine.retrained_probe.l2 == 1.0 and mine.weight is None  # copied, not fitted
    assert shift(d, task, features=[], probe="mass_mean").probe_kind == MassMeanProbe.name
    # A wrong judgement (the topic features) takes the intended signal instead.
    wrong = shift(d, task, features=[Node("resid_post.1", 0), Node("resid_post.1", 1)])
    assert wrong.retrained.spurious > 0.9 and abs(wrong.retrained.intended - 0.5) < 0.1


# ---------------------------------------------------------------------------
# Through a tiny model


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded_model("llama")


dictionary = circuit_dictionary


@pytest.fixture(scope="module")
def task():
    return spurious_task(0, n_train=16, n_test=16, n_judge=8)


def test_the_pipeline_runs_through_a_spliced_model(lm, task, tmp_path):
    model = SplicedModel(lm, [dictionary(lm, "resid_post.0", 0), dictionary(lm, "mlp_out.1", 1, arch="jumprelu")])
    seen = []
    r = shift(model, task, probe_point="resid_post.1", top_k=8, min_association=0.0, progress=seen.append)
    assert r.probe_point == "resid_post.1" and r.pooling == "mean" and r.method == "atp" and r.judge == "auto"
    assert 0 < len(r.candidates) <= 8 and {c.node.point for c in r.candidates} <= set(model.points)
    assert [abs(c.effect) for c in r.candidates] == sorted((abs(c.effect) for c in r.candidates), reverse=True)
    assert r.ablated == [c.node for c in r.candidates if c.ablated]
    assert all(c.spurious_association > c.intended_association for c in r.candidates if c.ablated)
    assert any(p["phase"].startswith("shift: probe inputs") for p in seen)
    path = tmp_path / "shift.json"
    r.write_json(path)
    saved = json.loads(path.read_text())
    assert saved["n_ablated"] == len(r.ablated) and set(saved["accuracy"]) == {"before", "shift", "shift_retrain", "oracle"}
    assert "SHIFT + retrain" in r.table()
    ig = shift(model, task, probe_point="resid_post.1", method="ig", steps=2, ablation="mean", top_k=4)
    assert ig.method == "ig" and ig.before == r.before and len(ig.candidates) == 4


def test_through_the_model_the_probe_reads_the_edited_activations(lm, task):
    """With the dictionary at the probe's own point, everything is linear in the features:
    the effects (AtP) are the ablations' exact effects, and the edited accuracies follow
    from the activations edited by hand."""
    d = dictionary(lm, "resid_post.1", 3)
    model = SplicedModel(lm, [d])
    features = [Node("resid_post.1", i) for i in (1, 5, 7)]
    r = shift(model, task, features=features, ablation="zero")
    probe = r.probe

    def pooled_by_hand(s, ablate):
        rows = []
        for text in s.texts:
            ids = torch.tensor([[lm.tokenizer.bos_token_id] + lm.tokenizer.encode(text, add_special_tokens=False)])
            with torch.no_grad():
                x = read_activations(lm, ["resid_post.1"], ids)["resid_post.1"][0, 1:]
                f = d.encode(x)
                if ablate:
                    x = x - f[:, [n.feature for n in features]] @ d.W_dec[[n.feature for n in features]]
            rows.append(x.mean(0))
        return torch.stack(rows)

    signs = torch.tensor([1.0 if y else -1.0 for y in task.train.intended])
    x = pooled_by_hand(task.train, False)
    for c in r.candidates:
        i = c.node.feature
        with torch.no_grad():
            moved = []
            for text in task.train.texts:
                ids = torch.tensor([[lm.tokenizer.bos_token_id] + lm.tokenizer.encode(text, add_special_tokens=False)])
                a = read_activations(lm, ["resid_post.1"], ids)["resid_post.1"][0, 1:]
                moved.append((a - d.encode(a)[:, i, None] * d.W_dec[i]).mean(0))
        by_hand = float((signs * (probe.scores(torch.stack(moved)) - probe.scores(x))).mean())
        assert c.effect == pytest.approx(by_hand, rel=1e-3, abs=1e-5)
    from saekit.probes import accuracy

    bal = pooled_by_hand(task.balanced_test, True)
    assert r.after.spurious == accuracy(probe.scores(bal), torch.tensor(task.balanced_test.spurious))
    assert r.after.intended == accuracy(probe.scores(bal), torch.tensor(task.balanced_test.intended))
    # The same effects by exact patching of each feature at every position, through the probe metric.
    data = _text_data_of(task.train, lm)
    metric = ProbeLogit(lm, "resid_post.1", probe.weight, probe.bias, task.train.intended, "mean")
    with metric.watch():
        exact = exact_patching(model, data, features, metric)
    for c in r.candidates:
        assert exact.effect(c.node) == pytest.approx(c.effect, rel=1e-3, abs=1e-5)


def _text_data_of(s, lm):
    from saekit.circuits.feature_trimming import _text_data

    return _text_data(s, lm.tokenizer, lm.max_length)


def test_the_probe_metric_must_watch_its_pass(lm):
    metric = ProbeLogit(lm, "resid_post.1", torch.ones(lm.d_model), 0.0, [1, 0], "mean")
    batch = CircuitBatch(clean_ids=torch.ones(2, 3, dtype=torch.long), clean_answer=torch.zeros(2, dtype=torch.long),
                         examples=[0, 1])
    with pytest.raises(ConfigError, match="watch"):
        metric(torch.zeros(2, 3, 5), batch)
    with metric.watch(), pytest.raises(ConfigError, match="no activation"):
        metric(torch.zeros(2, 3, 5), batch)


# ---------------------------------------------------------------------------
# The synthetic task and bad input


def test_the_synthetic_task_is_deterministic_and_what_it_says():
    a, b, c = spurious_task(1), spurious_task(1), spurious_task(2)
    assert a == b and a.train.texts != c.train.texts
    texts = [t for s in a.sets().values() for t in s.texts]
    assert len(texts) == len(set(texts)) == 64 + 64 + 64 + 16
    assert a.train.intended == a.train.spurious and set(a.train.groups().values()) == {0, 32}
    assert set(a.balanced_test.groups().values()) == {16} and set(a.judge.groups().values()) == {4}
    sports = ("football", "tennis", "marathon", "swimming", "basketball", "cycling", "rugby", "skiing", "boxing",
              "golf", "baseball", "hockey")
    for s in a.sets().values():
        for text, topic, gender in zip(s.texts, s.intended, s.spurious):
            assert any(w in text for w in sports) == bool(topic)
            words = set(text.replace(",", " ").replace(".", " ").lower().split())
            assert words & {"he", "his", "him"} == ({"he", "his", "him"} if gender else set())
            assert words & {"she", "her"} == (set() if gender else {"she", "her"})
    with pytest.raises(ConfigError, match="multiple of 4"):
        spurious_task(n_test=10)


def test_bad_input_is_refused_before_any_pass(lm, task):
    model = SplicedModel(lm, [dictionary(lm, "resid_post.1", 3)])
    with pytest.raises(ConfigError, match="after it"):
        shift(model, task, probe_point="resid_post.0")
    with pytest.raises(HookPointError):
        shift(model, task, probe_point="resid_post.7")
    with pytest.raises(ConfigError, match="every position"):
        shift(model, task, features=[Node("resid_post.1", 1, 3)])
    with pytest.raises(ConfigError, match="keeps the error"):
        shift(model, task, features=[Node("resid_post.1", None)])
    with pytest.raises(ConfigError, match="not a feature"):
        shift(model, task, features=[Node("resid_post.1", 40)])
    with pytest.raises(HookPointError, match="no dictionary writes"):
        shift(model, task, features=[Node("mlp_out.1", 1)])
    with pytest.raises(ConfigError, match="labels alone"):
        shift(model, task, probe="ccs")
    with pytest.raises(ConfigError, match="pooling"):
        shift(model, task, pooling="max")
    with pytest.raises(ConfigError, match="ablation"):
        shift(model, task, ablation="resample")
    no_judge = SpuriousTask(task.train, task.ambiguous_test, task.balanced_test)
    with pytest.raises(DataError, match="judge set"):
        shift(model, no_judge)
    d, basis = planted_dictionary()
    planted = planted_task(basis)
    with pytest.raises(ConfigError, match="must be texts"):
        shift(model, planted)
    with pytest.raises(ConfigError, match="must be activations"):
        shift(d, task)
    transcoder = random_dictionary("relu", D, 8, 0, hook="mlp_in.1", target="mlp_out.1", transcoder=True)
    with pytest.raises(ConfigError, match="sparse autoencoder"):
        shift(transcoder, planted)
    long = LabelledSet("long", [1, 0], [1, 0], texts=("x" * 200, "y"))
    with pytest.raises(DataError, match="more than the model"):
        shift(model, SpuriousTask(long, task.ambiguous_test, task.balanced_test, task.judge))


def test_sets_and_tasks_check_their_labels():
    with pytest.raises(DataError, match="0 or 1"):
        LabelledSet("s", [2], [0], texts=("a",))
    with pytest.raises(DataError, match="spurious ones"):
        LabelledSet("s", [1, 0], [0], texts=("a", "b"))
    with pytest.raises(ConfigError, match="either texts or activations"):
        LabelledSet("s", [1], [1])
    with pytest.raises(DataError, match="NaN"):
        LabelledSet("s", [1], [1], activations=torch.tensor([[math.nan]]))
    ok = LabelledSet("amb", [1, 0], [1, 0], texts=("a", "b"))
    bal = LabelledSet("bal", [1, 1, 0, 0], [1, 0, 1, 0], texts=tuple("abcd"))
    with pytest.raises(DataError, match="must be ambiguous"):
        SpuriousTask(bal, ok, bal)
    with pytest.raises(DataError, match="every \\(intended, spurious\\) pair"):
        SpuriousTask(ok, ok, ok)
    with pytest.raises(ConfigError, match="not a mixture"):
        SpuriousTask(ok, ok, LabelledSet("bal", [1, 1, 0, 0], [1, 0, 1, 0], activations=torch.zeros(4, 3)))


def test_the_oracle_is_cross_validated_on_the_balanced_set():
    """Each balanced example is judged by a probe that never saw it: with labels that no
    input predicts (pure noise) the oracle is at chance, where a probe scored on its own
    training set would be far above it; and a balanced set too small to split gives None."""
    from saekit.circuits.feature_trimming import _oracle
    from saekit.probes import make_probe

    g = torch.Generator().manual_seed(0)
    every = [(i, s) for i in (0, 1) for s in (0, 1)]

    def noise(name, groups, n):
        pairs = [p for p in groups for _ in range(n)]
        return LabelledSet(name, [i for i, _ in pairs], [s for _, s in pairs], activations=torch.randn(len(pairs), 64, generator=g))

    task = SpuriousTask(train=noise("train", [(0, 0), (1, 1)], 4), ambiguous_test=noise("amb", [(0, 0), (1, 1)], 50),
                        balanced_test=noise("bal", every, 25))
    probe = make_probe("logistic")
    X_bal, X_amb = task.balanced_test.activations, task.ambiguous_test.activations
    seen = make_probe("logistic").fit(X_bal, torch.tensor(task.balanced_test.intended))
    assert float(((seen.scores(X_bal) > seen.threshold).long() == torch.tensor(task.balanced_test.intended)).float().mean()) > 0.9
    oracle = _oracle(probe, X_amb, X_bal, task)
    assert abs(oracle.intended - 0.5) < 0.2 and abs(oracle.ambiguous - 0.5) < 0.2
    tiny = SpuriousTask(train=task.train, ambiguous_test=task.ambiguous_test, balanced_test=noise("bal", every, 1))
    assert _oracle(probe, X_amb, tiny.balanced_test.activations, tiny) is None
