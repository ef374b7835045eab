"""Node effects for sparse feature circuits, checked against their definitions.

On a tiny random model with random dictionaries (SAEs at a residual stream, an
attention and an MLP output, and a skip transcoder): splicing changes neither the
logits nor the model's gradients; attribution patching matches exact patching for a
small perturbation (a wrong sign or factor fails the tolerance); integrated gradients
converge to exact patching as N grows, equal attribution patching at N = 1, and are
complete (the nodes of a residual-stream point add up to m(patch) − m(clean)); exact
patching agrees with steering's ablation; bad files, dictionaries and options are
refused before any model work, saying what is wrong.
"""

import json

import pytest
import torch

from saekit.circuits import (
    Node,
    Nodes,
    SplicedModel,
    ZeroAblation,
    answer_logprob,
    attribution_patching,
    circuit_examples,
    exact_patching,
    integrated_gradients,
    logit_difference,
    node_effects,
    read_circuit_data,
)
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import ConfigError, DataError, DimensionError, HookPointError
from saekit.hooks import edit_activations
from saekit.interpret import AblateFeatures, steer

from circuit_fixtures import Nudged, RECORDS, circuit_dictionary, mixed_dictionaries
from conftest import random_dictionary, tiny_loaded_model, tiny_tokenizer


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded_model("llama")


dictionary = circuit_dictionary


@pytest.fixture(scope="module")
def dictionaries(lm):
    return mixed_dictionaries(lm)


@pytest.fixture(scope="module")
def model(lm, dictionaries):
    return SplicedModel(lm, dictionaries)


@pytest.fixture(scope="module")
def data(lm):
    return circuit_examples(RECORDS, lm.tokenizer)


class OneNodeMoved:
    """Patch values equal to the clean ones except one feature, moved by ``by``."""

    name = "one node moved"

    def __init__(self, node: Node, by: float, n_positions: int):
        self.node, self.by, self.T = node, by, n_positions

    def states(self, model, batch, clean, metric):
        moved = {p: Nodes(n.features.clone(), n.error.clone()) for p, n in clean.items()}
        t = self.node.position - (self.T - batch.length)
        if t >= 0:
            moved[self.node.point].features[:, t, self.node.feature] += self.by
        return moved, None


def effect_at(effects, node):
    if node.feature is None:
        return float(effects.error_effects(node.point)[node.position])
    return float(effects.feature_effects(node.point)[node.position, node.feature])


# ---------------------------------------------------------------------------
# The spliced model


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_spliced_logits_equal_the_models_own(family):
    lm = tiny_loaded_model(family)
    ds = [dictionary(lm, "resid_pre.0", 0), dictionary(lm, "attn_out.0", 1), dictionary(lm, "mlp_out.1", 2),
          dictionary(lm, "mlp_in.2", 3, target="mlp_out.2", transcoder=True, skip=True),
          dictionary(lm, "resid_post.2", 4, arch="topk")]
    model = SplicedModel(lm, ds)
    assert model.points == ["resid_pre.0", "attn_out.0", "mlp_out.1", "mlp_out.2", "resid_post.2"]
    batch = next(circuit_examples(RECORDS, lm.tokenizer).batches())
    with torch.no_grad():
        clean = lm.model(input_ids=batch.clean_ids).logits
        run = model.run(batch.clean_ids, bos=batch.bos)
    torch.testing.assert_close(run.logits, clean, rtol=1e-5, atol=1e-5)
    # The nodes are the dictionaries' features and x − decode(f), at the point a dictionary
    # writes (a transcoder's features from its input; its skip path is in the error).
    from saekit.hooks import read_activations

    with torch.no_grad():
        acts = read_activations(lm, ["mlp_out.1", "mlp_in.2", "mlp_out.2"], batch.clean_ids)
    sae, tc = ds[2], ds[3]
    f = sae.encode(acts["mlp_out.1"])
    f[:, 0] = 0  # BOS: not trained on it, no feature nodes there
    torch.testing.assert_close(run.nodes["mlp_out.1"].features, f)
    torch.testing.assert_close(run.nodes["mlp_out.1"].error, acts["mlp_out.1"] - sae.decode(f))
    g = tc.encode(acts["mlp_in.2"])
    g[:, 0] = 0
    torch.testing.assert_close(run.nodes["mlp_out.2"].error, acts["mlp_out.2"] - tc.decode(g), rtol=1e-5, atol=1e-5)
    # The nodes really are the dictionaries' features and x − decode(f) (not, say, x itself).
    assert all((run.nodes[p].features > 0).any() for p in model.points)
    # Changing a feature changes the output: the features are in the path, not decoration.
    with torch.no_grad():
        bumped = model.run(batch.clean_ids, bos=batch.bos, set_nodes={
            "mlp_out.1": lambda n: Nodes(n.features + 1.0, n.error)})
    assert not torch.allclose(bumped.logits, clean, atol=1e-3)


def test_splicing_keeps_the_models_gradients_upstream(model, data, lm):
    """A computed point's derivative in its input is the identity, as the model's: the
    gradient of the metric at the embeddings is the same with the dictionaries in."""
    batch = next(data.batches())

    def grad_at_embeddings(spliced: bool) -> torch.Tensor:
        delta = torch.zeros(batch.size, batch.length, lm.d_model, requires_grad=True)
        with edit_activations(lm, {"resid_pre.0": lambda x: x + delta}):
            logits = (model.run(batch.clean_ids, bos=batch.bos, track=True).logits if spliced
                      else lm.model(input_ids=batch.clean_ids).logits)
        logit_difference(logits, batch).sum().backward()
        return delta.grad

    torch.testing.assert_close(grad_at_embeddings(True), grad_at_embeddings(False), rtol=1e-4, atol=1e-6)


def test_a_held_point_cuts_the_gradient_upstream(model, data):
    """Holding a point: upstream nodes get the gradient of the model in which that point
    does not respond to them (the same as with its nodes set to their values)."""
    batch = next(data.batches())
    downstream = ["attn_out.1", "mlp_out.1", "mlp_out.2"]

    def grad_at_resid(**kw):
        run = model.run(batch.clean_ids, bos=batch.bos, track=True, **kw)
        logit_difference(run.logits, batch).sum().backward()
        return run.nodes["resid_post.0"].error.grad

    with torch.no_grad():
        values = model.run(batch.clean_ids, bos=batch.bos).computed
    held = grad_at_resid(hold=downstream)
    torch.testing.assert_close(held, grad_at_resid(set_nodes={p: values[p] for p in downstream}), rtol=1e-4, atol=1e-6)
    free = grad_at_resid()
    assert held.abs().sum() > 0  # the residual stream still carries resid_post.0 to the logits
    assert not torch.allclose(held, free, atol=1e-4)


def test_bos_has_no_feature_nodes_for_dictionaries_not_trained_on_it(model, data):
    assert data.bos
    batch = next(data.batches())
    with torch.no_grad():
        run = model.run(batch.clean_ids, bos=True)
    for p in model.points:
        assert (run.nodes[p].features[:, 0] == 0).all()
    effects = attribution_patching(model, data)
    for p in model.points:
        assert (effects.feature_effects(p)[effects.n_positions - batch.length] == 0).all()


# ---------------------------------------------------------------------------
# Node effects against their definitions


def test_attribution_patching_matches_exact_patching_for_a_small_perturbation(model, data):
    source = Nudged(1e-4)
    atp = attribution_patching(model, data, source=source)
    nodes = [e.node for p in model.points for e in
             sorted((e for e in atp.entries() if e.node.point == p), key=lambda e: -abs(e.effect))[:4]]
    assert {n.point for n in nodes} == set(model.points)
    assert any(n.feature is None for n in nodes) and any(n.feature is not None for n in nodes)
    exact = exact_patching(model, data, nodes, source=source)
    a = torch.tensor([effect_at(atp, n) for n in nodes])
    x = torch.tensor([effect_at(exact, n) for n in nodes])
    assert x.abs().min() > 1e-6, "the test needs nodes with an effect"
    # First order in eps: the relative gap is O(eps); a wrong sign or factor is O(1).
    torch.testing.assert_close(a, x, rtol=0.02, atol=1e-3 * float(x.abs().max()))


def test_integrated_gradients_approach_exact_patching_as_steps_grow(model, data):
    node = Node("mlp_out.1", 5, data.max_length - 1)
    source = OneNodeMoved(node, 4.0, data.max_length)  # a large move: first order is not enough
    exact = effect_at(exact_patching(model, data, [node], source=source), node)
    atp = attribution_patching(model, data, source=source)
    errors = []
    for steps in (1, 4, 16, 64):
        ig = integrated_gradients(model, data, steps=steps, source=source)
        if steps == 1:
            assert effect_at(ig, node) == pytest.approx(effect_at(atp, node), rel=1e-5)  # N = 1 is AtP
        errors.append(abs(effect_at(ig, node) - exact))
        others = ig.total() - effect_at(ig, node)
        assert others == pytest.approx(0.0, abs=1e-6)  # nothing else moved
    assert errors[0] > 0.02 * abs(exact), "the move must be large enough for AtP to be off"
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.05 * errors[0]


def test_integrated_gradients_are_complete_at_a_residual_stream_point(lm, dictionaries, data):
    one = SplicedModel(lm, [dictionaries[0]])  # resid_post.0 alone
    errors = []
    for steps in (2, 8, 32):
        ig = integrated_gradients(one, data, steps=steps)
        errors.append(abs(ig.total() - ig.total_effect))
    assert abs(ig.total_effect) > 0.1
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.03 * abs(ig.total_effect)


def test_with_several_points_what_adds_up(model, data):
    steps = 32
    per_point = integrated_gradients(model, data, steps=steps)
    joint = integrated_gradients(model, data, steps=steps, path="joint")
    total = per_point.total_effect
    # Per point: the residual stream's nodes add up to the whole effect; an MLP output's to
    # the effect of patching that point alone.
    assert per_point.point_total("resid_post.0") == pytest.approx(total, rel=0.03)
    with torch.no_grad():
        m_alone = 0.0
        for batch in data.batches():
            clean = model.run(batch.clean_ids, bos=batch.bos).computed
            patch = model.run(batch.patch_ids, bos=batch.bos).computed
            logits = model.run(batch.clean_ids, bos=batch.bos, points=["mlp_out.1"],
                               set_nodes={"mlp_out.1": patch["mlp_out.1"]}).logits
            m_alone += float((logit_difference(logits, batch) - logit_difference(
                model.run(batch.clean_ids, bos=batch.bos).logits, batch)).sum())
            assert clean["mlp_out.1"].features.shape == patch["mlp_out.1"].features.shape
    assert per_point.point_total("mlp_out.1") == pytest.approx(m_alone / len(data), rel=0.05, abs=0.01)
    # Jointly: all nodes of all points add up to the whole effect (resid_post.0 is among them).
    assert joint.total() == pytest.approx(total, rel=0.03)


def test_exact_zero_ablation_agrees_with_steerings_ablation(lm, dictionaries, data):
    model = SplicedModel(lm, dictionaries)
    nofile = circuit_examples([{"clean_prefix": "the cat", "clean_answer": "s"}], lm.tokenizer)
    batch = next(nofile.batches())
    d = dictionaries[2]  # mlp_out.1
    with torch.no_grad():
        f = model.run(batch.clean_ids, bos=True).nodes["mlp_out.1"].features
    t = batch.length - 1
    feature = int(f[0, t].argmax())
    assert f[0, t, feature] > 0
    exact = exact_patching(model, nofile, [Node("mlp_out.1", feature, t)])
    assert exact.patch == ZeroAblation.name and exact.metric == "answer_logprob"
    with torch.no_grad():
        base = answer_logprob(lm.model(input_ids=batch.clean_ids).logits, batch)
        with steer(lm, AblateFeatures(d, [feature], positions=[t])):
            ablated = answer_logprob(lm.model(input_ids=batch.clean_ids).logits, batch)
    assert effect_at(exact, Node("mlp_out.1", feature, t)) == pytest.approx(float(ablated - base), rel=1e-4, abs=1e-6)


def test_exact_patching_does_not_depend_on_how_nodes_share_passes(model, data):
    T = data.max_length
    nodes = [Node("attn_out.1", i, T - 1) for i in range(6)] + [Node("mlp_out.2", None, -2), Node("resid_post.0", 3, 1)]
    one = exact_patching(model, data, nodes, nodes_per_pass=1, batch_size=1)
    many = exact_patching(model, data, nodes, nodes_per_pass=8, batch_size=8)
    for n in one.measured:
        assert effect_at(one, n) == pytest.approx(effect_at(many, n), rel=1e-4, abs=1e-6)
    assert Node("mlp_out.2", None, T - 2) in one.measured  # negative positions count from the end


def test_effects_are_means_over_examples_whatever_the_batching(model, data):
    a = attribution_patching(model, data, batch_size=1)
    b = attribution_patching(model, data, batch_size=8)
    for p in model.points:
        torch.testing.assert_close(a.feature_effects(p), b.feature_effects(p), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.error_effects(p), b.error_effects(p), rtol=1e-4, atol=1e-6)
    assert a.metric_clean == pytest.approx(b.metric_clean) and a.n_examples == 3
    # the means of single examples
    firsts = [attribution_patching(model, circuit_examples([r], model.lm.tokenizer)) for r in RECORDS]
    assert a.metric_clean == pytest.approx(sum(f.metric_clean for f in firsts) / 3, rel=1e-5)


def test_the_result_lists_sums_and_writes_the_nodes(model, data, tmp_path):
    e = node_effects(model, data, method="atp")
    top = e.top(5)
    assert len(top) == 5 and all(abs(top[i].effect) >= abs(top[i + 1].effect) for i in range(4))
    for summed in (False, True):
        by_sorting = sorted(e.entries(summed), key=lambda x: -abs(x.effect))[:12]
        fast = e.top(12, summed)
        assert [x.node for x in fast] == [x.node for x in by_sorting]
        assert [x.effect for x in fast] == pytest.approx([x.effect for x in by_sorting], rel=1e-5)
    for p in model.points:
        torch.testing.assert_close(e.feature_effects(p, summed=True), e.feature_effects(p).sum(0))
    summed = e.top(3, summed=True)
    assert all(n.node.position is None for n in summed)
    assert e.total() == pytest.approx(sum(x.effect for x in e.entries(summed=True)), rel=1e-4)
    doc = e.to_json(min_abs=1e-3)
    assert doc["method"] == "atp" and doc["metric"] == "logit_difference" and doc["patch"] == "patch prefixes"
    assert doc["nodes"][0]["effect"] == pytest.approx(top[0].effect)
    assert all(abs(n["effect"]) >= 1e-3 for n in doc["nodes"])
    e.write_json(tmp_path / "effects.json")
    assert json.loads((tmp_path / "effects.json").read_text())["n_examples"] == 3


# ---------------------------------------------------------------------------
# Bad input


def write(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


def test_bad_files_are_refused_saying_what_and_where(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(DataError, match="empty"):
        read_circuit_data(write(tmp_path, "\n  \n"), tok)
    with pytest.raises(DataError, match="no such file"):
        read_circuit_data(tmp_path / "missing.jsonl", tok)
    good = json.dumps(RECORDS[0])
    with pytest.raises(DataError, match=r"line 3: not valid JSON"):
        read_circuit_data(write(tmp_path, f"{good}\n\n{{oops\n"), tok)
    with pytest.raises(DataError, match=r"line 1: missing clean_answer"):
        read_circuit_data(write(tmp_path, json.dumps({"clean_prefix": "the"}) + "\n"), tok)
    with pytest.raises(DataError, match=r"line 1: clean_answer must be a string"):
        read_circuit_data(write(tmp_path, json.dumps({"clean_prefix": "the", "clean_answer": 3}) + "\n"), tok)
    # ' is' is three tokens of the byte-level tokenizer: say which
    with pytest.raises(DataError, match=r"line 1: clean_answer: the answer ' is' is 3 tokens .*\[' ', 'i', 's'\]"):
        read_circuit_data(write(tmp_path, json.dumps({"clean_prefix": "the", "clean_answer": " is"}) + "\n"), tok)
    with pytest.raises(DataError, match=r"line 2: the clean prefix is 8 tokens and the patch prefix 9"):
        read_circuit_data(write(tmp_path, good + "\n" + json.dumps(
            {**RECORDS[0], "patch_prefix": "the dogs"}) + "\n"), tok)
    with pytest.raises(DataError, match=r"line 2: patch_prefix is missing here but given on the first line"):
        read_circuit_data(write(tmp_path, good + "\n" + json.dumps({"clean_prefix": "a", "clean_answer": "s"}) + "\n"), tok)
    with pytest.raises(DataError, match="prefix is empty"):
        read_circuit_data(write(tmp_path, json.dumps({"clean_prefix": "", "clean_answer": "s"}) + "\n"), tok)
    # unaligned prefixes are fine where asked for
    data = read_circuit_data(write(tmp_path, json.dumps({**RECORDS[0], "patch_prefix": "the dogs"}) + "\n"), tok,
                             aligned=False)
    assert len(data) == 1 and data.examples[0].line == 1


def test_a_good_file_reads_with_its_line_numbers(tmp_path):
    tok = tiny_tokenizer()
    data = read_circuit_data(write(tmp_path, "\n".join(json.dumps(r) for r in RECORDS[:2]) + "\n\n"), tok)
    assert [e.line for e in data.examples] == [1, 2]
    assert data.has_patch and data.has_patch_answer and data.bos and not data.lengths_equal
    assert data.examples[0].clean_ids[0] == tok.bos_token_id and data.examples[0].length == 8
    batches = list(data.batches(8))
    assert [b.length for b in batches] == [8, 10]  # one length per batch, no padding


def test_dictionaries_that_do_not_fit_are_refused_before_any_pass(lm):
    with pytest.raises(HookPointError, match="two dictionaries write mlp_out.1"):
        SplicedModel(lm, [dictionary(lm, "mlp_out.1", 0), dictionary(lm, "mlp_out.1", 1)])
    with pytest.raises(HookPointError, match="two dictionaries write mlp_out.2"):
        SplicedModel(lm, [dictionary(lm, "mlp_out.2", 0),
                          dictionary(lm, "mlp_in.2", 1, target="mlp_out.2", transcoder=True)])
    with pytest.raises(HookPointError, match="layer 7 does not exist"):
        SplicedModel(lm, [dictionary(lm, "resid_post.7", 0)])
    other = random_dictionary("relu", lm.d_model, 40, 0, hook="resid_post.1", model="gpt2")
    with pytest.raises(DimensionError, match="trained on gpt2"):
        SplicedModel(lm, [other])
    SplicedModel(lm, [other], allow_other_model=True)
    with pytest.raises(DimensionError, match="different models"):
        SplicedModel(lm, [other, random_dictionary("relu", lm.d_model, 40, 0, hook="resid_post.0", model="pythia")],
                     allow_other_model=True)
    narrow = build_dictionary(DictionaryConfig(arch="relu", d_in=16, d_sae=32, hook="resid_post.0", model=lm.name))
    with pytest.raises(DimensionError, match="width 16"):
        SplicedModel(lm, [narrow])
    with pytest.raises(ConfigError, match="at least one dictionary"):
        SplicedModel(lm, [])


def test_bad_options_are_refused(model, data):
    with pytest.raises(ConfigError, match="steps"):
        integrated_gradients(model, data, steps=0)
    with pytest.raises(ConfigError, match="path"):
        integrated_gradients(model, data, path="sideways")
    with pytest.raises(ConfigError, match="unknown method"):
        node_effects(model, data, method="shapley")
    with pytest.raises(ConfigError, match="needs the nodes"):
        node_effects(model, data, method="exact")
    with pytest.raises(ConfigError, match="not a feature"):
        exact_patching(model, data, [Node("mlp_out.1", 40, 0)])
    with pytest.raises(ConfigError, match="outside the prompts' 10 positions"):
        exact_patching(model, data, [Node("mlp_out.1", 0, 10)])
    with pytest.raises(HookPointError, match="no dictionary writes resid_post.2"):
        exact_patching(model, data, [Node("resid_post.2", 0, 0)])
    with pytest.raises(ConfigError, match="batch_size"):
        attribution_patching(model, data, batch_size=0)
    with pytest.raises(ConfigError, match="one value per example"):
        attribution_patching(model, data, metric=lambda logits, batch: logits[:, -1, 0].sum())
    nopatch = circuit_examples([{"clean_prefix": "the", "clean_answer": "s"}], model.lm.tokenizer)
    with pytest.raises(ConfigError, match="needs a patch_answer"):
        attribution_patching(model, nopatch, metric=logit_difference)
    with pytest.raises(ConfigError, match="differentiable"):
        attribution_patching(model, data, metric=lambda logits, batch: logits[:, -1, 0].detach())
    with pytest.raises(HookPointError, match="resid_post.2 is not a spliced point"):
        model.run(next(data.batches()).clean_ids, hold=["resid_post.2"])
    with pytest.raises(HookPointError, match="mlp_out.1 is not a spliced point"):
        model.run(next(data.batches()).clean_ids, points=["attn_out.1"], set_nodes={"mlp_out.1": lambda n: n})
