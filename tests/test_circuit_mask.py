"""The mask baseline (subnetwork probing) over a circuit's nodes, checked on tiny models.

With every node kept the masked model is the full model (the metric bit for bit); with
none kept every node sits at its mean; a larger L0 penalty keeps fewer nodes; on a
planted case, where one feature of a hand-built dictionary carries the whole metric, the
mask keeps that feature and nothing else; a seed fixes the result; bad input is refused
before any pass, saying what is wrong.
"""

import json

import pytest
import torch

from saekit.circuits import (
    MaskCurve,
    MeanAblation,
    Node,
    Nodes,
    SplicedModel,
    circuit_examples,
    logit_difference,
    mask_candidates,
    mask_curve,
    masked_metric,
    train_mask,
)
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import ConfigError, DataError, HookPointError

from circuit_fixtures import RECORDS, circuit_dictionary, mixed_dictionaries
from conftest import tiny_loaded_model


@pytest.fixture(scope="module")
def lm():
    return tiny_loaded_model("llama")


dictionary = circuit_dictionary


@pytest.fixture(scope="module")
def model(lm):
    return SplicedModel(lm, mixed_dictionaries(lm))


@pytest.fixture(scope="module")
def data(lm):
    return circuit_examples(RECORDS, lm.tokenizer)


@pytest.fixture(scope="module")
def means(model, data):
    return MeanAblation.from_data(model, data)


def spliced_metric(model, data):
    """The metric of the spliced model with nothing set: the full model's."""
    total = 0.0
    with torch.no_grad():
        for b in data.batches():
            total += float(logit_difference(model.run(b.clean_ids, bos=b.bos).logits, b).double().sum())
    return total / len(data)


# ---------------------------------------------------------------------------
# The masked model at its two ends


@pytest.mark.parametrize("per_position", [False, True])
def test_every_node_kept_reproduces_the_full_models_metric_exactly(lm, model, data, means, per_position):
    candidates = mask_candidates(means, per_position=per_position)
    points = {n.point for n in candidates}
    assert points == set(model.points)
    # One error node per point (or per position), features only where active.
    errors = [n for n in candidates if n.feature is None]
    assert len(errors) == len(model.points) * (data.max_length if per_position else 1)
    assert len(candidates) - len(errors) < sum(model.dictionary(p).cfg.d_sae for p in model.points) * (
        data.max_length if per_position else 1)
    full = masked_metric(model, data, candidates, means=means)
    assert full == spliced_metric(model, data)
    # And the spliced model is the model itself (to float rounding).
    total = 0.0
    with torch.no_grad():
        for b in data.batches():
            total += float(logit_difference(lm.model(input_ids=b.clean_ids).logits, b).double().sum())
    assert full == pytest.approx(total / len(data), abs=1e-5)


def test_a_transcoder_reading_a_spliced_point_reads_what_is_written_there(lm, data):
    # An SAE writes mlp_in.2 and a transcoder reads it: the transcoder's features come
    # from the (masked) nodes written there, in the masked pass as in the spliced model.
    model = SplicedModel(lm, [dictionary(lm, "mlp_in.2", 5),
                              dictionary(lm, "mlp_in.2", 3, target="mlp_out.2", transcoder=True, skip=True)])
    means = MeanAblation.from_data(model, data)
    assert masked_metric(model, data, mask_candidates(means), means=means) == spliced_metric(model, data)
    # The SAE's nodes ablated, the transcoder's kept: the transcoder reads the means.
    transcoder_only = [n for n in mask_candidates(means) if n.point == "mlp_out.2"]
    partial = masked_metric(model, data, transcoder_only, means=means)
    total, T = 0.0, data.max_length
    with torch.no_grad():
        for b in data.batches():
            fixed = Nodes(means.means["mlp_in.2"].features[T - b.length:].expand(b.size, -1, -1),
                          means.means["mlp_in.2"].error[T - b.length:].expand(b.size, -1, -1))
            logits = model.run(b.clean_ids, bos=b.bos, set_nodes={"mlp_in.2": fixed}).logits
            total += float(logit_difference(logits, b).double().sum())
    assert partial == pytest.approx(total / len(data), abs=1e-5)
    assert abs(partial - spliced_metric(model, data)) > 0.01


def test_every_node_masked_gives_every_node_at_its_mean(model, data, means):
    empty = masked_metric(model, data, [], means=means)
    # The same by hand: every point set to its mean nodes, whatever the prompt.
    total = 0.0
    T = data.max_length
    with torch.no_grad():
        for b in data.batches():
            fixed = {p: Nodes(means.means[p].features[T - b.length:].expand(b.size, -1, -1),
                              means.means[p].error[T - b.length:].expand(b.size, -1, -1)) for p in model.points}
            total += float(logit_difference(model.run(b.clean_ids, bos=b.bos, set_nodes=fixed).logits, b).double().sum())
    assert empty == pytest.approx(total / len(data), abs=1e-5)
    assert abs(empty - spliced_metric(model, data)) > 0.1  # the ablation does something
    # The means are over the patch prompts (Marks et al.); a node there moves them.
    clean = MeanAblation.from_data(model, data, prompts="clean")
    assert means.prompts == "patch" and clean.prompts == "clean"
    assert not torch.equal(means.means["resid_post.0"].error, clean.means["resid_post.0"].error)


def test_a_kept_node_without_a_position_is_kept_everywhere(model, data, means):
    T = data.max_length
    point = "attn_out.1"
    everywhere = masked_metric(model, data, [Node(point, None)], means=means)
    per_position = masked_metric(model, data, [Node(point, None, t) for t in range(T)], means=means)
    assert everywhere == per_position
    assert masked_metric(model, data, [Node(point, None, -1)], means=means) == masked_metric(
        model, data, [Node(point, None, T - 1)], means=means)


# ---------------------------------------------------------------------------
# Training


def test_a_larger_penalty_keeps_fewer_nodes(model, data, means):
    curve = mask_curve(model, data, sparsities=[1e-4, 1e-2, 1e-1, 1.0], steps=120, means=means)
    sizes = [r.n_nodes for r in curve]
    assert sizes == sorted(sizes, reverse=True), sizes
    assert sizes[-1] < sizes[0]
    first = curve.results[0]
    assert first.faithfulness > 0.9  # little penalty: nearly the whole model
    assert all(r.n_candidates == len(mask_candidates(means)) for r in curve)
    assert all(r.metric_full == pytest.approx(spliced_metric(model, data), abs=1e-6) for r in curve)
    # Each result's metric is that of its kept nodes, everything else mean-ablated.
    last = curve.results[-1]
    assert last.metric_masked == masked_metric(model, data, last.nodes, means=means)
    assert curve.points() == [(r.n_nodes, r.faithfulness) for r in curve]


def test_a_huge_penalty_keeps_nothing_and_gives_m_empty(model, data, means):
    r = train_mask(model, data, sparsity=100.0, steps=100, means=means)
    assert r.nodes == [] and r.faithfulness == 0.0
    assert r.metric_masked == r.metric_empty == masked_metric(model, data, [], means=means)


def test_the_same_seed_gives_the_same_mask(model, data, means):
    a = train_mask(model, data, sparsity=1e-2, steps=40, seed=3, means=means)
    b = train_mask(model, data, sparsity=1e-2, steps=40, seed=3, means=means)
    c = train_mask(model, data, sparsity=1e-2, steps=40, seed=4, means=means)
    assert a.nodes == b.nodes and a.history == b.history and a.metric_masked == b.metric_masked
    assert a.history != c.history


def test_per_position_masks_name_positions(model, data, means):
    r = train_mask(model, data, sparsity=1e-2, steps=60, per_position=True, means=means)
    assert r.per_position and r.nodes
    assert all(n.position is not None and 0 <= n.position < data.max_length for n in r.nodes)
    assert r.n_candidates == len(mask_candidates(means, per_position=True))


@pytest.fixture(scope="module")
def planted():
    """One feature carries the metric: a dictionary at the last point whose features are
    ReLU(±q_k · x) for an orthonormal basis q (so the reconstruction is exact), with q_0
    the direction the logit difference reads and feature 0 shifted to be always positive,
    on a model whose final norm is made nearly linear (a huge epsilon), so that the
    other features move the metric only through the norm's tiny rest."""
    lm = tiny_loaded_model("llama")
    lm.model.model.norm.variance_epsilon = 1e4
    d, tok = lm.d_model, lm.tokenizer
    pairs = [("the cat", "the cap"), ("the dog", "the dot"), ("a man", "a map"), ("one hen", "one her"),
             ("my pot", "my pop"), ("an elk", "an eld")]
    data = circuit_examples([{"clean_prefix": c, "clean_answer": "s", "patch_prefix": p, "patch_answer": "x"}
                             for c, p in pairs], tok)
    s, x = tok.encode("s", add_special_tokens=False)[0], tok.encode("x", add_special_tokens=False)[0]
    W_U, w = lm.model.lm_head.weight.detach(), lm.model.model.norm.weight.detach()
    u = w * (W_U[x] - W_U[s])
    u = u / u.norm()
    rest = torch.randn(d, d - 1, generator=torch.Generator().manual_seed(0))
    Q = torch.linalg.qr(torch.cat([u[:, None], rest], 1))[0]
    Q[:, 0] = u
    sae = build_dictionary(DictionaryConfig(arch="relu", d_in=d, d_sae=2 * d, hook="resid_post.2", model=lm.name))
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([Q, -Q], 1))
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(-50.0 * u)  # feature 0 reads u · x + 50 > 0; the decoder takes the 50 back
    model = SplicedModel(lm, [sae.requires_grad_(False).eval()])
    return model, data, MeanAblation.from_data(model, data)


def test_the_construction_of_the_planted_case(planted):
    model, data, means = planted
    point = "resid_post.2"
    full = masked_metric(model, data, mask_candidates(means), means=means)
    empty = masked_metric(model, data, [], means=means)
    alone = masked_metric(model, data, [Node(point, 0)], means=means)
    others = masked_metric(model, data, [n for n in mask_candidates(means) if n.feature != 0], means=means)
    assert (alone - empty) / (full - empty) > 0.99
    assert abs((others - empty) / (full - empty)) < 0.01
    assert len(mask_candidates(means)) > 30  # many features are active: the mask has to choose


@pytest.mark.parametrize("per_position", [False, True])
def test_the_mask_finds_the_planted_feature(planted, per_position):
    model, data, means = planted
    r = train_mask(model, data, sparsity=1e-2, steps=150, per_position=per_position, means=means)
    last = data.max_length - 1
    assert r.nodes == [Node("resid_post.2", 0, last if per_position else None)]
    assert r.faithfulness > 0.99


def test_results_write_as_json(model, data, means, tmp_path):
    curve = mask_curve(model, data, sparsities=[1e-3, 1.0], steps=20, means=means)
    path = tmp_path / "mask.json"
    curve.write_json(path)
    saved = json.loads(path.read_text())
    assert [row["n_nodes"] for row in saved["curve"]] == [r.n_nodes for r in curve]
    assert saved["masks"][0]["nodes"][0].keys() == {"hook", "feature", "position"}
    assert saved["metric_full"] == curve.results[0].metric_full


# ---------------------------------------------------------------------------
# Bad input


def test_bad_options_are_refused_before_any_pass(model, data, means, lm):
    calls = []

    def counting(logits, batch):
        calls.append(1)
        return logit_difference(logits, batch)

    for kw, msg in [
        ({"sparsity": -1.0}, "sparsity"), ({"sparsity": float("nan")}, "sparsity"), ({"sparsity": True}, "sparsity"),
        ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"seed": 1.5}, "seed"), ({"per_position": "yes"}, "per_position"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            train_mask(model, data, metric=counting, **kw)
    with pytest.raises(ConfigError, match="sparsities"):
        mask_curve(model, data, sparsities=[])
    with pytest.raises(ConfigError, match="SplicedModel"):
        train_mask(lm, data)
    with pytest.raises(ConfigError, match="CircuitData"):
        train_mask(model, RECORDS)
    assert not calls
    with pytest.raises(ConfigError, match="at least one"):
        MaskCurve([])


def test_means_from_elsewhere_are_refused(model, data, means, lm):
    short = circuit_examples(RECORDS[:1], lm.tokenizer)
    with pytest.raises(ConfigError, match="positions"):
        train_mask(model, short, means=means)
    other = SplicedModel(lm, [dictionary(lm, "resid_post.0", 0)])
    with pytest.raises(ConfigError, match="points"):
        masked_metric(other, data, [], means=means)
    with pytest.raises(ConfigError, match="MeanAblation"):
        train_mask(model, data, means={"resid_post.0": 0})
    no_patch = circuit_examples([{"clean_prefix": "the cat", "clean_answer": "s"}], lm.tokenizer)
    with pytest.raises(DataError, match="prompts='clean'"):
        MeanAblation.from_data(model, no_patch, prompts="patch")
    with pytest.raises(ConfigError, match="'patch', 'clean' or 'both'"):
        MeanAblation.from_data(model, data, prompts="neither")
    with pytest.raises(ConfigError, match="from_batches"):
        masked_metric(model, data, [], ablation=MeanAblation(means.means, pooled=False))  # no active features
    with pytest.raises(ConfigError, match="once"):
        masked_metric(model, data, [], ablation=means, means=means)


def test_bad_nodes_are_refused(model, data, means):
    for kept, error, msg in [
        ([Node("resid_post.0", 40)], ConfigError, "not a feature"),
        ([Node("resid_post.0", 1, data.max_length)], ConfigError, "outside"),
        ([Node("mlp_out.0", 1)], HookPointError, "no dictionary writes mlp_out.0"),
        ([("resid_post.0", 1)], ConfigError, "Node"),
        (Node("resid_post.0", 1), ConfigError, "list"),
    ]:
        with pytest.raises(error, match=msg):
            masked_metric(model, data, kept, means=means)


def test_bad_metrics_are_refused(model, data, means):
    with pytest.raises(ConfigError, match="one value per example"):
        train_mask(model, data, metric=lambda logits, batch: logits[:, -1], steps=1, means=means)
    with pytest.raises(DataError, match="nothing for a mask to keep"):
        train_mask(model, data, metric=lambda logits, batch: logits[:, -1, 0] * 0, steps=1, means=means)
    with pytest.raises(ConfigError, match="differentiable"):
        train_mask(model, data, metric=lambda logits, batch: logit_difference(logits, batch).detach(), steps=1,
                   means=means)


def test_a_gates_gradient_passes_through_the_points_after_it(model, data, means):
    """The gradient of the metric by an upstream gate, through every later spliced point,
    matches a finite difference (graph hands setting functions the computed nodes live, so
    the gate's effect reaches the later points through them; a cut path would leave only the
    direct part)."""
    from saekit.circuits.mask import _hard_gates, _masked_logits, _prepare

    prepared = _prepare(model, data, logit_difference, 8)
    candidates = mask_candidates(means)

    def metric_at(value: float, grad: bool = False):
        gates = _hard_gates(model, means, candidates)
        g_f, g_e = gates["resid_post.0"]
        gate = torch.tensor(value, requires_grad=grad)
        gates["resid_post.0"] = (g_f, g_e * gate)  # the error term of the first point, at every position
        with torch.enable_grad():
            total = sum(logit_difference(_masked_logits(model, p, means, gates), p.batch).sum() for p in prepared)
        return total, gate

    total, gate = metric_at(0.5, grad=True)
    total.backward()
    eps = 1e-2
    numeric = (float(metric_at(0.5 + eps)[0]) - float(metric_at(0.5 - eps)[0])) / (2 * eps)
    assert abs(numeric) > 0.1
    assert float(gate.grad) == pytest.approx(numeric, rel=2e-2)


def test_the_mask_and_faithfulness_ablate_to_the_same_means(model, data, means):
    # One mean ablation for both: a set of kept nodes gives the same m(C) whether the mask's
    # hard gates or faithfulness's ablation keeps it, with the means passed or the defaults.
    from saekit.circuits import ablated_metric

    kept = [n for n in mask_candidates(means) if n.point in ("attn_out.1", "mlp_out.2")][:4]
    assert kept
    for ablation in (means, MeanAblation.from_data(model, data, prompts="clean")):
        assert masked_metric(model, data, kept, ablation=ablation) == pytest.approx(
            ablated_metric(model, data, kept, ablation=ablation), abs=1e-5)
    assert masked_metric(model, data, kept) == pytest.approx(ablated_metric(model, data, kept), abs=1e-5)
    assert masked_metric(model, data, []) == pytest.approx(ablated_metric(model, data, []), abs=1e-5)
