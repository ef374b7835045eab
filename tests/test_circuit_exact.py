"""Exact patching of a node at every position at once: the reference for summed effects.

On a tiny random model with random dictionaries: a feature (or error term) with no
position is patched at all positions of every example in one pass, which is what a
hand-made pass with those values gives; for a small perturbation it matches attribution
patching's effects summed over positions (a wrong sign, factor or missing position fails
the tolerance); on one-token prompts, where no two positions carry features, it equals
the per-position effect; the summed views of the result report it; bad nodes are refused.
"""

import json

import pytest
import torch

from saekit.circuits import (
    Node,
    Nodes,
    SplicedModel,
    attribution_patching,
    circuit_examples,
    exact_patching,
    logit_difference,
    node_effects,
)
from saekit.errors import ConfigError

from circuit_fixtures import Nudged, RECORDS, circuit_dictionary
from conftest import tiny_loaded_model

ONE_TOKEN = [
    {"clean_prefix": "a", "clean_answer": "s", "patch_prefix": "b", "patch_answer": "x"},
    {"clean_prefix": "q", "clean_answer": "s", "patch_prefix": "z", "patch_answer": "x"},
]


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded_model("llama")


dictionary = circuit_dictionary


@pytest.fixture(scope="module")
def model(lm):
    return SplicedModel(lm, [
        dictionary(lm, "resid_post.0", 0),
        dictionary(lm, "mlp_out.1", 2, arch="jumprelu"),
        dictionary(lm, "mlp_in.2", 3, target="mlp_out.2", transcoder=True, skip=True),
    ])


@pytest.fixture(scope="module")
def data(lm):
    return circuit_examples(RECORDS, lm.tokenizer)


def by_hand(model, data, node, metric=logit_difference):
    """m(clean | node := patch at every position) − m(clean), averaged: the definition."""
    total = 0.0
    with torch.no_grad():
        for batch in data.batches():
            clean = model.run(batch.clean_ids, bos=batch.bos)
            patch = model.run(batch.patch_ids, bos=batch.bos).computed[node.point]

            def patched(computed):
                f, e = computed.features.clone(), computed.error.clone()
                if node.feature is None:
                    e[:] = patch.error
                else:
                    f[:, :, node.feature] = patch.features[:, :, node.feature]
                return Nodes(f, e)

            logits = model.run(batch.clean_ids, bos=batch.bos, set_nodes={node.point: patched}).logits
            total += float((metric(logits, batch) - metric(clean.logits, batch)).sum())
    return total / len(data)


def active_features(model, data, point, n):
    """``n`` features of ``point`` active at two or more positions of some prompt."""
    with torch.no_grad():
        counts = sum((model.run(b.clean_ids, bos=b.bos).computed[point].features != 0).sum(1).max(0).values
                     for b in data.batches())
    chosen = (counts >= 2).nonzero().squeeze(1)[:n].tolist()
    assert len(chosen) == n, "the test needs features active at several positions"
    return chosen


def test_a_node_without_position_is_patched_at_every_position(model, data):
    nodes = [Node("mlp_out.1", f) for f in active_features(model, data, "mlp_out.1", 3)]
    nodes += [Node("resid_post.0", None), Node("mlp_out.2", None)]
    exact = exact_patching(model, data, nodes)
    for n in nodes:
        want = by_hand(model, data, n)
        assert exact.all_positions[n] == pytest.approx(want, rel=1e-4, abs=1e-6)
        assert exact.effect(n) == pytest.approx(want, rel=1e-4, abs=1e-6)
    # resid_post.0 carries everything downstream: its error term with the features kept at
    # their clean values is most of the effect, and not nothing.
    assert abs(exact.effect(Node("resid_post.0", None))) > 1e-3


def test_summed_exact_effects_match_summed_attribution_for_a_small_perturbation(model, data):
    source = Nudged(1e-4)
    atp = attribution_patching(model, data, source=source)
    nodes = [e.node for p in model.points for e in atp.top(40, summed=True) if e.node.point == p][:12]
    nodes += [Node(p, None) for p in model.points]
    exact = exact_patching(model, data, nodes, source=source)
    a = torch.tensor([atp.effect(n) for n in nodes])
    x = torch.tensor([exact.effect(n) for n in nodes])
    assert x.abs().min() > 1e-7, "the test needs nodes with an effect"
    # First order in eps: the gap is second order (measured: the error term of resid_post.0,
    # whose first-order terms nearly cancel over positions, is off by 5% of itself, 0.6% of
    # the largest effect); a wrong sign, a factor or a missing position is O(1).
    torch.testing.assert_close(a, x, rtol=0.02, atol=1e-2 * float(x.abs().max()))


def test_on_one_token_prompts_every_position_is_the_last(lm, model):
    data = circuit_examples(ONE_TOKEN, lm.tokenizer)
    assert data.max_length == 2  # BOS, then the prompt's token: only the last carries features
    with torch.no_grad():
        f = torch.cat([model.run(b.clean_ids, bos=b.bos).computed["mlp_out.1"].features for b in data.batches()])
    features = (f[:, -1] != 0).any(0).nonzero().squeeze(1)[:4].tolist()
    assert features
    nodes = [Node("mlp_out.1", i) for i in features] + [Node("resid_post.0", None), Node("mlp_out.2", None)]
    at_last = [Node(n.point, n.feature, 1) for n in nodes]
    exact = exact_patching(model, data, nodes + at_last)
    for whole, last in zip(nodes, at_last):
        # The BOS position is the same token in both runs, so patching it changes nothing.
        assert exact.effect(whole) == pytest.approx(exact.effect(last), rel=1e-4, abs=1e-6)
    assert any(abs(exact.effect(n)) > 1e-4 for n in nodes)


def test_prompts_of_several_lengths_without_patch_prompts(lm, model):
    records = [{"clean_prefix": p, "clean_answer": "s"} for p in ("the cat", "a big one", "xy")]
    data = circuit_examples(records, lm.tokenizer)
    assert not data.lengths_equal
    node = Node("mlp_out.1", active_features(model, data, "mlp_out.1", 1)[0])
    exact = exact_patching(model, data, [node, Node("mlp_out.2", None)])
    assert exact.patch == "zero ablation"
    from saekit.circuits import answer_logprob

    total = 0.0
    with torch.no_grad():
        for batch in data.batches():
            base = answer_logprob(model.run(batch.clean_ids, bos=batch.bos).logits, batch)

            def zeroed(computed):
                f = computed.features.clone()
                f[:, :, node.feature] = 0
                return Nodes(f, computed.error)

            logits = model.run(batch.clean_ids, bos=batch.bos, set_nodes={node.point: zeroed}).logits
            total += float((answer_logprob(logits, batch) - base).sum())
    assert exact.effect(node) == pytest.approx(total / len(data), rel=1e-4, abs=1e-6)


def test_the_summed_views_report_the_whole_patch(model, data, tmp_path):
    f = active_features(model, data, "mlp_out.1", 2)
    T = data.max_length
    nodes = [Node("mlp_out.1", f[0]), Node("mlp_out.1", f[0], T - 1), Node("mlp_out.1", f[1], T - 2),
             Node("mlp_out.2", None), Node("mlp_out.2", None, -1)]
    one = exact_patching(model, data, nodes, nodes_per_pass=1, batch_size=1)
    many = node_effects(model, data, method="exact", nodes=nodes, nodes_per_pass=8)
    for n in nodes:
        assert one.effect(n) == pytest.approx(many.effect(n), rel=1e-4, abs=1e-6)
    e = many
    assert set(e.all_positions) == {Node("mlp_out.1", f[0]), Node("mlp_out.2", None)}
    whole = e.all_positions[Node("mlp_out.1", f[0])]
    # Summed views: the whole patch where measured, else the sum of the measured positions.
    assert float(e.feature_effects("mlp_out.1", summed=True)[f[0]]) == pytest.approx(whole)
    assert float(e.feature_effects("mlp_out.1", summed=True)[f[1]]) == pytest.approx(e.effect(nodes[2]))
    assert float(e.error_effects("mlp_out.2", summed=True)) == pytest.approx(e.all_positions[Node("mlp_out.2", None)])
    # Per-position views hold only the positioned nodes.
    assert float(e.feature_effects("mlp_out.1")[T - 1, f[0]]) == pytest.approx(e.effect(nodes[1]))
    assert e.feature_effects("mlp_out.1")[:, f[0]].count_nonzero() == 1
    summed = {x.node: x.effect for x in e.entries(summed=True)}
    assert summed[Node("mlp_out.1", f[0])] == pytest.approx(whole)
    assert summed[Node("mlp_out.2", None)] == pytest.approx(e.all_positions[Node("mlp_out.2", None)])
    assert Node("mlp_out.1", f[0]) in {x.node for x in e.top(10, summed=True)}
    assert all(x.node.position is not None for x in e.entries())
    path = tmp_path / "effects.json"
    e.write_json(path)
    rows = json.loads(path.read_text())["nodes_summed_over_positions"]
    assert {"hook": "mlp_out.1", "feature": f[0], "effect": pytest.approx(whole)} in rows


def test_only_exact_results_hold_whole_patches_of_known_nodes(model, data):
    atp = attribution_patching(model, data)
    assert atp.all_positions == {}
    assert atp.effect(Node("mlp_out.1", 3)) == pytest.approx(float(atp.feature_effects("mlp_out.1")[:, 3].sum()))
    with pytest.raises(ConfigError, match="not a feature of the dictionary"):
        exact_patching(model, data, [Node("mlp_out.1", 40)])
    with pytest.raises(ConfigError, match="not a feature"):
        atp.effect(Node("mlp_out.1", 99))
    with pytest.raises(ConfigError, match="outside"):
        atp.effect(Node("mlp_out.1", 1, data.max_length))
