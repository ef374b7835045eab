"""Edges, circuits and faithfulness for sparse feature circuits, checked against their definitions.

On a tiny random model with random dictionaries: edge weights equal a dense reference
computed here one downstream node and one upstream point at a time, with the points
between set to their clean values (another way of holding them); they match a finite
difference of the downstream node for a small move of one upstream node; through a
residual stream they add up to the upstream node's effect, and the edges to the metric
from the last point are its node effects; mean ablation of nothing gives the model's
metric and of everything the metric with every point at its means, so faithfulness is 1
and 0 there; circuits keep what passes the thresholds, survive a JSON round trip, and
bad input is refused saying what to do.
"""

import json

import pytest
import torch

from saekit.circuits import (
    Circuit,
    MeanAblation,
    Node,
    Nodes,
    SplicedModel,
    ablated_metric,
    attribution_patching,
    circuit_examples,
    edge_effects,
    faithfulness,
    faithfulness_curve,
    find_circuit,
    integrated_gradients,
    logit_difference,
    plot_faithfulness_curve,
    read_circuit,
)
from saekit.errors import ConfigError, DataError, HookPointError

from circuit_fixtures import RECORDS, circuit_dictionary, mixed_dictionaries
from conftest import tiny_loaded_model

F = 24  # features per dictionary: small, so every node can be a node of the tests


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded_model("llama")


def dictionary(lm, hook, seed, arch="relu", **kw):
    return circuit_dictionary(lm, hook, seed, arch, d_sae=F, **kw)


@pytest.fixture(scope="module")
def mixed(lm):
    """A residual stream, an attention and an MLP output after it, a skip transcoder."""
    return SplicedModel(lm, mixed_dictionaries(lm, d_sae=F))


@pytest.fixture(scope="module")
def resids(lm):
    return SplicedModel(lm, [dictionary(lm, f"resid_post.{i}", 10 + i) for i in range(3)])


@pytest.fixture(scope="module")
def data(lm):
    return circuit_examples(RECORDS, lm.tokenizer)


def all_nodes(model, positions=None):
    """Every feature and error node (summed over positions, or at each of ``positions``)."""
    out = []
    for p in model.points:
        for t in positions or [None]:
            out += [Node(p, f, t) for f in range(F)] + [Node(p, None, t)]
    return out


def some_nodes(model, data, per_point=5):
    """The largest nodes of each point by AtP, per position, and the error at the last two positions."""
    atp = attribution_patching(model, data)
    T = data.max_length
    out = []
    for p in model.points:
        mine = sorted((e for e in atp.entries() if e.node.point == p and e.node.feature is not None),
                      key=lambda e: -abs(e.effect))
        out += [e.node for e in mine[:per_point]] + [Node(p, None, T - 1), Node(p, None, T - 2)]
    return out


def reference_edges(model, data, nodes):
    """w(u → d) = ∇_d m · ∂d/∂u · Δu, one downstream node and one upstream point at a time:
    u's nodes are leaves, the points between u and d set to their clean values, ∇_d m from a
    pass with d alone spliced. Dense (len(nodes) + 1, len(nodes)); the last row is the metric."""
    T, n = data.max_length, len(nodes)
    W = torch.zeros(n + 1, n, dtype=torch.float64)
    order = {p: i for i, p in enumerate(model.points)}
    for batch in data.batches(8):
        off = T - batch.length
        with torch.no_grad():
            clean = model.run(batch.clean_ids, bos=batch.bos).computed
            patch = model.run(batch.patch_ids, bos=batch.bos).computed
        left = {}
        for d in model.points:
            run = model.run(batch.clean_ids, bos=batch.bos, points=[d], track=True)
            logit_difference(run.logits, batch).sum().backward()
            left[d] = Nodes(run.nodes[d].features.grad, run.nodes[d].error.grad)
        targets = [(i, nd) for i, nd in enumerate(nodes)] + [(n, None)]
        for row, down in targets:
            if down is not None and down.position is not None and down.position < off:
                continue
            for u in model.points:
                if down is not None and order[u] >= order[down.point]:
                    continue
                leaf = clean[u].leaves()
                later = [q for q in model.points if order[q] > order[u] and (down is None or order[q] < order[down.point])]
                run = model.run(batch.clean_ids, bos=batch.bos, set_nodes={u: leaf, **{q: clean[q] for q in later}})
                if down is None:
                    scalar = logit_difference(run.logits, batch).sum()
                else:
                    c, g = run.computed[down.point], left[down.point]
                    t = slice(None) if down.position is None else down.position - off
                    scalar = ((g.error * c.error).sum(-1)[:, t].sum() if down.feature is None
                              else (g.features * c.features)[:, t, down.feature].sum())
                gf, ge = torch.autograd.grad(scalar, [leaf.features, leaf.error], allow_unused=True)
                gf = torch.zeros_like(leaf.features) if gf is None else gf
                ge = torch.zeros_like(leaf.error) if ge is None else ge
                pf = gf * (patch[u].features - clean[u].features)
                pe = (ge * (patch[u].error - clean[u].error)).sum(-1)
                for col, up in enumerate(nodes):
                    if up.point != u or (up.position is not None and up.position < off):
                        continue
                    t = slice(None) if up.position is None else up.position - off
                    v = pe[:, t] if up.feature is None else pf[:, t, up.feature]
                    W[row, col] += float(v.double().sum())
    return W / len(data)


# ---------------------------------------------------------------------------
# Edges against their definition


def test_edges_equal_a_dense_reference_per_position(mixed, data):
    nodes = some_nodes(mixed, data)
    edges = edge_effects(mixed, data, nodes, batch_size=2, nodes_per_pass=3)
    assert edges.nodes == sorted(edges.nodes, key=lambda n: (mixed.points.index(n.point),)) and len(edges.nodes) == len(nodes)
    ref = reference_edges(mixed, data, edges.nodes)
    got = edges.weights.to_dense().double()
    assert ref.abs().max() > 0.1 and (ref != 0).sum() > 20, "the test needs edges with weight"
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    # Edges run only forward, and an upstream position never reaches an earlier one.
    for e in edges.edges():
        if e.downstream is not None:
            assert mixed.points.index(e.upstream.point) < mixed.points.index(e.downstream.point)
            assert e.upstream.position <= e.downstream.position
    # How downstream nodes share passes and examples share batches changes nothing.
    again = edge_effects(mixed, data, nodes, batch_size=8, nodes_per_pass=50)
    torch.testing.assert_close(again.weights.to_dense(), edges.weights.to_dense(), rtol=1e-4, atol=1e-6)


def test_edges_equal_a_dense_reference_summed_over_positions(mixed, data):
    nodes = all_nodes(mixed)
    edges = edge_effects(mixed, data, nodes)
    assert edges.summed and len(edges.nodes) == len(nodes)
    ref = reference_edges(mixed, data, edges.nodes)
    torch.testing.assert_close(edges.weights.to_dense().double(), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_edges_through_a_residual_stream_add_up_to_the_node_effect(resids, data):
    """Everything from resid_post.0 reaches the metric through resid_post.1: the edges from a
    node to all of resid_post.1's nodes add up to its AtP effect; none skip to resid_post.2;
    the edges from the last point to the metric are its node effects."""
    nodes = all_nodes(resids)
    edges = edge_effects(resids, data, nodes)
    atp = attribution_patching(resids, data)
    W = edges.weights.to_dense()
    index = {n: i for i, n in enumerate(edges.nodes)}
    into_1 = [index[n] for n in edges.nodes if n.point == "resid_post.1"]
    into_2 = [index[n] for n in edges.nodes if n.point == "resid_post.2"]
    for n in edges.nodes:
        if n.point == "resid_post.0":
            effect = float(atp.error_effects(n.point, summed=True) if n.feature is None
                           else atp.feature_effects(n.point, summed=True)[n.feature])
            assert float(W[into_1, index[n]].sum()) == pytest.approx(effect, rel=1e-4, abs=1e-5)
            assert (W[into_2, index[n]] == 0).all()
            assert W[-1, index[n]] == 0  # no direct path to the metric
        if n.point == "resid_post.2":
            effect = float(atp.error_effects(n.point, summed=True) if n.feature is None
                           else atp.feature_effects(n.point, summed=True)[n.feature])
            assert edges.weight(n, None) == pytest.approx(effect, rel=1e-5, abs=1e-6)
    assert float(W[into_1].abs().sum()) > 0.1


class OneNodeMoved:
    """Patch values equal to the clean ones except one node, moved by ``by``."""

    name = "one node moved"

    def __init__(self, node, by, n_positions):
        self.node, self.by, self.T = node, by, n_positions

    def states(self, model, batch, clean, metric):
        moved = {p: Nodes(n.features.clone(), n.error.clone()) for p, n in clean.items()}
        t = self.node.position - (self.T - batch.length)
        if t >= 0:
            if self.node.feature is None:
                moved[self.node.point].error[:, t] += self.by
            else:
                moved[self.node.point].features[:, t, self.node.feature] += self.by
        return moved, None


def test_atp_edges_match_a_finite_difference_for_a_small_move(mixed, data):
    """Move one upstream node by a small δ, hold the points between at their clean values,
    and the change of ∇_d m · d at each downstream node is the AtP edge weight."""
    T = data.max_length
    up = Node("resid_post.0", None, T - 3)  # an error node: it moves every position after it
    eps = 1e-3
    source = OneNodeMoved(up, eps, T)
    downs = [n for n in some_nodes(mixed, data) if n.point != "resid_post.0"]
    edges = edge_effects(mixed, data, [up] + downs, source=source)
    checked = 0
    for down in downs:
        exact = 0.0
        for batch in data.batches():
            off = T - batch.length
            if down.position < off:
                continue
            t = down.position - off
            with torch.no_grad():
                clean = mixed.run(batch.clean_ids, bos=batch.bos).computed
            moved, _ = source.states(mixed, batch, clean, logit_difference)
            run = mixed.run(batch.clean_ids, bos=batch.bos, points=[down.point], track=True)
            logit_difference(run.logits, batch).sum().backward()
            g = run.nodes[down.point]
            between = [q for q in mixed.points if mixed.points.index("resid_post.0") < mixed.points.index(q)
                       < mixed.points.index(down.point)]
            with torch.no_grad():
                after = mixed.run(batch.clean_ids, bos=batch.bos, set_nodes={
                    "resid_post.0": moved["resid_post.0"], **{q: clean[q] for q in between}}).computed[down.point]
                before = clean[down.point]
                if down.feature is None:
                    exact += float((g.error.grad[:, t] * (after.error - before.error)[:, t]).sum())
                else:
                    exact += float((g.features.grad[:, t, down.feature]
                                    * (after.features - before.features)[:, t, down.feature]).sum())
        exact /= len(data)
        got = edges.weight(up, down)
        if abs(exact) > 1e-7:  # (an MLP output at a later position does not see the moved position directly)
            checked += 1
            assert got == pytest.approx(exact, rel=0.03), down.label()
    assert checked >= 10


def test_ig_edges_with_one_step_are_atp_and_move_with_more_steps(mixed, data):
    nodes = some_nodes(mixed, data, per_point=3)
    atp = edge_effects(mixed, data, nodes)
    ig1 = edge_effects(mixed, data, nodes, method="ig", steps=1)
    torch.testing.assert_close(ig1.weights.to_dense(), atp.weights.to_dense(), rtol=1e-4, atol=1e-6)
    ig = edge_effects(mixed, data, nodes, method="ig", steps=8)
    assert ig.method == "ig" and ig.steps == 8
    assert not torch.allclose(ig.weights.to_dense(), atp.weights.to_dense(), atol=1e-4)
    # Edges to the metric from the last point are its IG node effects.
    effects = integrated_gradients(mixed, data, steps=8)
    for n in ig.nodes:
        if n.point == mixed.points[-1]:
            v = effects.error_effects(n.point)[n.position] if n.feature is None else \
                effects.feature_effects(n.point)[n.position, n.feature]
            assert ig.weight(n, None) == pytest.approx(float(v), rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------------------
# Circuits


def test_a_circuit_keeps_what_passes_the_thresholds(mixed, data, tmp_path):
    atp = attribution_patching(mixed, data)
    for summed in (False, True):
        c = find_circuit(mixed, data, node_threshold=0.05, edge_threshold=0.02, summed=summed, sources={
            "resid_post.0": "runs/r0"})
        entries = [e for e in atp.entries(summed) if abs(e.effect) >= 0.05]
        assert {n.node for n in c.nodes} == {e.node for e in entries}
        assert c.summed == summed and all(abs(e.weight) >= 0.02 for e in c.edges)
        assert any(e.downstream is None for e in c.edges) and any(e.downstream is not None for e in c.edges)
        edges = edge_effects(mixed, data, c.node_list())
        assert {(e.upstream, e.downstream) for e in c.edges} == {(e.upstream, e.downstream) for e in edges.edges(0.02)}
        md = c.metadata
        assert md["model"] == "tiny-llama" and md["method"] == "atp" and md["n_examples"] == 3
        assert md["node_threshold"] == 0.05 and md["edge_threshold"] == 0.02 and md["data_file"] == "<records>"
        assert [d["hook_point"] for d in md["dictionaries"]] == mixed.points
        assert md["dictionaries"][0]["source"] == "runs/r0" and md["dictionaries"][3]["transcoder"]
        # JSON round trip.
        path = tmp_path / f"circuit-{summed}.json"
        c.write_json(path)
        obj = json.loads(path.read_text())
        assert obj["nodes"][0].keys() >= {"hook", "feature", "position", "effect"}
        assert any(r["feature"] == "error" for r in obj["nodes"]) and any(r["to"] == "metric" for r in obj["edges"])
        assert all((r["position"] is None) == summed for r in obj["nodes"])
        back = read_circuit(path)
        assert back.to_json() == c.to_json() and back.nodes == c.nodes and back.edges == c.edges
    ig = find_circuit(mixed, data, node_threshold=0.05, edge_threshold=0.0, method="ig", steps=2)
    assert ig.metadata["method"] == "ig" and ig.metadata["steps"] == 2


def test_thresholds_that_keep_no_node_say_what_would(mixed, data):
    atp = attribution_patching(mixed, data)
    largest = abs(atp.top(1)[0].effect)
    with pytest.raises(ConfigError, match=f"largest is {largest:.4g}"):
        find_circuit(mixed, data, node_threshold=largest * 2, edge_threshold=0.0, effects=atp)
    for bad in (-1, float("nan"), "0.1", None):
        with pytest.raises(ConfigError, match="threshold"):
            find_circuit(mixed, data, node_threshold=bad, edge_threshold=0.0)
        with pytest.raises(ConfigError, match="threshold"):
            find_circuit(mixed, data, node_threshold=0.1, edge_threshold=bad)
    with pytest.raises(ConfigError, match="'atp' or 'ig'"):
        find_circuit(mixed, data, node_threshold=0.1, edge_threshold=0.0, method="exact")


def test_bad_nodes_and_options_are_refused(mixed, data):
    T = data.max_length
    with pytest.raises(ConfigError, match="at least one node"):
        edge_effects(mixed, data, [])
    with pytest.raises(ConfigError, match="not a mix"):
        edge_effects(mixed, data, [Node("resid_post.0", 1, 2), Node("attn_out.1", 1)])
    with pytest.raises(ConfigError, match="not a feature"):
        edge_effects(mixed, data, [Node("resid_post.0", F)])
    with pytest.raises(ConfigError, match="outside"):
        edge_effects(mixed, data, [Node("resid_post.0", 1, T)])
    with pytest.raises(HookPointError, match="resid_post.2"):
        edge_effects(mixed, data, [Node("resid_post.2", 1)])
    with pytest.raises(ConfigError, match="Node"):
        edge_effects(mixed, data, [("resid_post.0", 1, 2)])
    for bad in (dict(method="exact"), dict(steps=0), dict(nodes_per_pass=0), dict(batch_size=0)):
        with pytest.raises(ConfigError):
            edge_effects(mixed, data, [Node("resid_post.0", 1)], **bad)
    # Negative positions count from the end.
    e = edge_effects(mixed, data, [Node("resid_post.0", None, -1), Node("mlp_out.2", None, -1)])
    assert e.nodes[0].position == T - 1


def test_bad_circuit_files_are_refused(tmp_path):
    good = {"nodes": [{"hook": "resid_post.0", "feature": 3, "position": 1, "effect": 0.5},
                      {"hook": "mlp_out.1", "feature": "error", "position": 2, "effect": -0.1}],
            "edges": [{"from": "resid_post.0/f3@1", "to": "mlp_out.1/error@2", "weight": 0.2},
                      {"from": "mlp_out.1/error@2", "to": "metric", "weight": -0.1}]}
    c = Circuit.from_json(good)
    assert c.edges[1].downstream is None and c.nodes[1].node == Node("mlp_out.1", None, 2)
    cases = [
        ([], "not a saekit circuit"),
        ({**good, "nodes": [{**good["nodes"][0], "feature": -1}]}, "feature"),
        ({**good, "nodes": [{**good["nodes"][0], "position": "1"}]}, "position"),
        ({**good, "nodes": [{**good["nodes"][0], "effect": "big"}]}, "effect"),
        ({**good, "edges": [{"from": "resid_post.0/f4@1", "to": "metric", "weight": 1}]}, "not a node of the circuit"),
        ({**good, "edges": [{"from": "metric", "to": "resid_post.0/f3@1", "weight": 1}]}, "not a node"),
        ({"nodes": [good["nodes"][0], {**good["nodes"][1], "position": None}], "edges": []}, "not a mix"),
        ({"nodes": [], "edges": []}, "at least one node"),
    ]
    for obj, message in cases:
        with pytest.raises((DataError, ConfigError), match=message):
            Circuit.from_json(obj)
    with pytest.raises(DataError, match="no such file"):
        read_circuit(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_circuit(tmp_path / "bad.json")


# ---------------------------------------------------------------------------
# Faithfulness


def test_mean_ablation_of_nothing_and_of_everything(mixed, data):
    # The means are the nodes' means over the prompts, per aligned position: by default over
    # the patch prompts (the file has them; Marks et al.'s convention), or the clean ones, or both.
    with torch.no_grad():
        clean, patch = [], []
        for batch in data.batches(1):
            clean.append(mixed.run(batch.clean_ids, bos=batch.bos).computed["mlp_out.1"].features[0, -3:])
            patch.append(mixed.run(batch.patch_ids, bos=batch.bos).computed["mlp_out.1"].features[0, -3:])
    means = MeanAblation.from_data(mixed, data, prompts="clean")
    torch.testing.assert_close(means.means["mlp_out.1"].features[-3:], torch.stack(clean).mean(0))
    default = MeanAblation.from_data(mixed, data)
    assert default.prompts == "patch"
    torch.testing.assert_close(default.means["mlp_out.1"].features[-3:], torch.stack(patch).mean(0))
    torch.testing.assert_close(MeanAblation.from_data(mixed, data, prompts="both").means["mlp_out.1"].features[-3:],
                               torch.stack(clean + patch).mean(0))
    # Active: nonzero on some clean or patch prompt at that position.
    torch.testing.assert_close(default.active["mlp_out.1"][-3:], (torch.stack(clean + patch) != 0).any(0))
    with pytest.raises(ConfigError, match="prompts"):
        MeanAblation.from_data(mixed, data, prompts="corrupt")
    atp = attribution_patching(mixed, data)
    assert ablated_metric(mixed, data, None, ablation=means) == pytest.approx(atp.metric_clean, rel=1e-5)
    # Everything ablated: every point at its means, computed here by setting the nodes.
    with torch.no_grad():
        empty = 0.0
        for batch in data.batches():
            fixed = means.nodes_for(mixed, batch)
            empty += float(logit_difference(mixed.run(batch.clean_ids, bos=batch.bos, set_nodes=fixed).logits,
                                            batch).sum())
    assert ablated_metric(mixed, data, [], ablation=means) == pytest.approx(empty / len(data), rel=1e-5)
    # As a patch source, the patch metric is the everything-ablated one.
    effects = attribution_patching(mixed, data, source=means)
    assert effects.metric_patch == pytest.approx(empty / len(data), rel=1e-5)


def test_faithfulness_of_the_whole_and_the_empty_circuit(mixed, data):
    T = data.max_length
    everything = all_nodes(mixed, positions=list(range(T)))
    whole = faithfulness(mixed, data, everything)
    assert whole.faithfulness == pytest.approx(1.0, abs=1e-5)
    assert whole.complement_faithfulness == pytest.approx(0.0, abs=1e-5)
    summed = faithfulness(mixed, data, all_nodes(mixed))
    assert summed.faithfulness == pytest.approx(1.0, abs=1e-5)
    empty = faithfulness(mixed, data, [])
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-6) and empty.complement_faithfulness == pytest.approx(1.0)
    assert abs(whole.m_model - whole.m_empty) > 0.05
    # A real circuit lies in between and its JSON says so.
    c = find_circuit(mixed, data, node_threshold=0.05, edge_threshold=0.02)
    f = faithfulness(mixed, data, c)
    assert f.n_nodes == len(c.nodes) and f.m_circuit not in (f.m_model, f.m_empty)
    assert f.to_json()["faithfulness"] == f.faithfulness


def test_corpus_means_pool_tokens_and_keep_bos_apart(lm, mixed, data, corpus):
    from saekit.data import document_batches

    batches = list(document_batches(str(corpus), lm.tokenizer, max_length=24, batch_size=8, split="train",
                                    max_documents=24))
    means = MeanAblation.from_batches(mixed, batches)
    with torch.no_grad():
        errs, bos = [], []
        for b in batches:
            c = mixed.run(b.input_ids, bos=True).computed["attn_out.1"].error
            errs.append(c[b.token_mask()])
            bos.append(c[b.bos_mask])
    torch.testing.assert_close(means.means["attn_out.1"].error[1], torch.cat(errs).mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(means.means["attn_out.1"].error[0], torch.cat(bos).mean(0), rtol=1e-4, atol=1e-6)
    f = faithfulness(mixed, data, all_nodes(mixed), ablation=means)
    assert f.faithfulness == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError, match="no tokens"):
        MeanAblation.from_batches(mixed, [])


def test_the_faithfulness_curve_runs_from_empty_to_whole(mixed, data, tmp_path):
    atp = attribution_patching(mixed, data)
    n_all = sum(1 for _ in atp.entries())
    curve = faithfulness_curve(mixed, data, atp, [0, 2, 8, n_all + 100])
    assert curve.sizes[0] == 0 and curve.values[0] == pytest.approx(0.0, abs=1e-6)
    # Every node with an effect, not every node: features off in these prompts still have
    # nonzero means, so ablating them moves the metric.
    assert curve.sizes[-1] == n_all
    every = faithfulness(mixed, data, [e.node for e in atp.entries()])
    assert curve.values[-1] == pytest.approx(every.faithfulness, rel=1e-6)
    assert curve.points[-1].complement_faithfulness == pytest.approx(every.complement_faithfulness, rel=1e-6)
    assert curve.sizes == sorted(curve.sizes)
    c = find_circuit(mixed, data, node_threshold=0.05, edge_threshold=0.02)
    by_circuit = faithfulness_curve(mixed, data, c, [1, len(c.nodes)])
    assert by_circuit.values[-1] == pytest.approx(faithfulness(mixed, data, c).faithfulness)
    png = tmp_path / "curve.png"
    plot_faithfulness_curve({"atp": curve, "circuit": by_circuit}, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="sizes"):
        faithfulness_curve(mixed, data, atp, [-1])
    with pytest.raises(ConfigError, match="NodeEffects or a Circuit"):
        faithfulness_curve(mixed, data, [Node("resid_post.0", 1)], [1])
