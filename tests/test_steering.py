"""Steering: interventions with features on a running model, checked exactly.

With α = 0, or a clamp to each feature's own value, the logits are the clean ones;
ablating a feature that never fires changes nothing; adding a feature's direction at
the last residual stream raises the logits of the tokens its decoder row points to;
interventions act only where asked, compose across dictionaries and hook points, and
are undone on exit; a transcoder's read its input and change its target.
"""

import pytest
import torch

import saekit
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import ConfigError, DimensionError
from saekit.interpret import AblateFeatures, AddFeature, ClampFeatures, steer

from conftest import random_dictionary

ARCHS = ["relu", "topk", "batchtopk", "gated", "jumprelu"]


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


@pytest.fixture(scope="module")
def ids(lm):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, lm.tokenizer.vocab_size, (3, 11), generator=g)


def dictionary(lm, arch="relu", hook="resid_post.0", seed=0, **kw):
    d = random_dictionary(arch, lm.d_model, 40, seed, hook=hook, model=lm.name, scale=0.2, **kw)
    with torch.no_grad():
        d.after_step()  # unit-norm decoder rows, as trained ones have
    return d.requires_grad_(False)


def logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def features_at(lm, d, ids, features):
    acts = saekit.read_activations(lm, [d.cfg.hook], ids)[d.cfg.hook]
    return d.encode(acts.float(), features=torch.tensor(features))


@pytest.mark.parametrize("arch", ARCHS)
def test_a_zero_step_and_a_clamp_to_the_own_value_change_nothing(lm, ids, arch):
    d = dictionary(lm, arch)
    clean = logits(lm, ids)
    with steer(lm, AddFeature(d, 3, 0.0)):
        torch.testing.assert_close(logits(lm, ids), clean, rtol=0, atol=0)
    own = features_at(lm, d, ids, [2, 5])
    assert (own > 0).any(), "the test needs features that fire"
    with steer(lm, ClampFeatures(d, [2, 5], own)):
        torch.testing.assert_close(logits(lm, ids), clean, atol=1e-5, rtol=1e-5)
    with steer(lm, ClampFeatures(d, [2, 5], own + 3.0)):
        assert not torch.allclose(logits(lm, ids), clean, atol=1e-3)
    torch.testing.assert_close(logits(lm, ids), clean, rtol=0, atol=0)  # undone on exit


def test_ablating_features_that_never_fire_changes_nothing_and_firing_ones_do(lm, ids):
    d = dictionary(lm, "relu")
    f = features_at(lm, d, ids, list(range(40)))
    silent = [i for i in range(40) if not (f[..., i] > 0).any()]
    with torch.no_grad():
        d.b_enc[7] = -1e4  # feature 7 never fires
    silent = sorted(set(silent) | {7})
    active = int((f > 0).sum((0, 1)).argmax())
    clean = logits(lm, ids)
    with steer(lm, AblateFeatures(d, silent)):
        torch.testing.assert_close(logits(lm, ids), clean, rtol=0, atol=0)
    with steer(lm, AblateFeatures(d, [active])):
        assert not torch.allclose(logits(lm, ids), clean, atol=1e-3)
    # mean ablation to each position's own value is the identity
    own_mean = torch.zeros(40)
    with steer(lm, AblateFeatures(d, silent, mean=own_mean)):
        torch.testing.assert_close(logits(lm, ids), clean, rtol=0, atol=0)


def test_steering_raises_the_logits_of_the_features_output_tokens(lm, ids):
    """At the last residual stream a feature's direction reaches the unembedding through
    the final norm only: adding it raises the logits of the tokens it points to most."""
    last = f"resid_post.{lm.n_layers - 1}"
    d = dictionary(lm, "relu", hook=last)
    W_U = lm.model.get_output_embeddings().weight.detach()
    top = (W_U @ d.W_dec[4]).topk(5).indices
    clean = logits(lm, ids)
    with steer(lm, AddFeature(d, 4, 30.0)):
        steered = logits(lm, ids)
    rise = steered - clean
    assert float(rise[..., top].mean()) > float(rise.mean()) + 1.0


def test_positions_and_conditions_limit_where_an_intervention_acts(lm, ids):
    d = dictionary(lm, "relu")
    clean = logits(lm, ids)
    with steer(lm, AddFeature(d, 1, 10.0, positions=[6])):
        steered = logits(lm, ids)
    # causal: positions before 6 see nothing of it; position 6 does
    torch.testing.assert_close(steered[:, :6], clean[:, :6], rtol=0, atol=0)
    assert not torch.allclose(steered[:, 6], clean[:, 6], atol=1e-3)
    mask = torch.zeros(3, 11, dtype=torch.bool)
    mask[1, 4] = True
    with steer(lm, AddFeature(d, 1, 10.0, positions=mask)):
        steered = logits(lm, ids)
    torch.testing.assert_close(steered[[0, 2]], clean[[0, 2]], rtol=0, atol=0)
    # conditional on a feature: never (threshold above every value) and always (below every value)
    with torch.no_grad():
        d.b_enc[9] = -1e4
    with steer(lm, AddFeature(d, 1, 10.0, when=(9, 0.0))):
        torch.testing.assert_close(logits(lm, ids), clean, rtol=0, atol=0)
    with steer(lm, AddFeature(d, 1, 10.0, when=(9, -1.0))):
        always = logits(lm, ids)
    with steer(lm, AddFeature(d, 1, 10.0)):
        torch.testing.assert_close(logits(lm, ids), always)


def test_interventions_compose_across_dictionaries_and_hook_points(lm, ids):
    a, b = dictionary(lm, "relu", "resid_post.0", seed=1), dictionary(lm, "topk", "mlp_out.1", seed=2)
    first, second = AddFeature(a, 2, 5.0), ClampFeatures(b, [3], 4.0)
    with steer(lm, [first, second]):
        together = logits(lm, ids)
    with steer(lm, first), steer(lm, second):
        nested = logits(lm, ids)
    torch.testing.assert_close(together, nested)
    with steer(lm, first):
        only_first = logits(lm, ids)
    assert not torch.allclose(together, only_first, atol=1e-4)


def test_a_transcoder_reads_its_input_and_changes_its_target(lm, ids):
    tc = dictionary(lm, "relu", hook="mlp_in.1", target="mlp_out.1", transcoder=True, skip=True)
    acts = saekit.read_activations(lm, ["mlp_in.1"], ids)["mlp_in.1"]
    own = tc.encode(acts.float(), features=torch.tensor([0, 6]))
    clean = logits(lm, ids)
    with steer(lm, ClampFeatures(tc, [0, 6], own)):
        torch.testing.assert_close(logits(lm, ids), clean, atol=1e-5, rtol=1e-5)
    with steer(lm, ClampFeatures(tc, [0, 6], own + 2.0)):
        changed = saekit.read_activations(lm, ["mlp_in.1", "mlp_out.1"], ids)
    torch.testing.assert_close(changed["mlp_in.1"], acts)  # the input is read, not changed
    expected = saekit.read_activations(lm, ["mlp_out.1"], ids)["mlp_out.1"] + 2.0 * tc.W_dec[[0, 6]].sum(0)
    torch.testing.assert_close(changed["mlp_out.1"], expected, atol=1e-5, rtol=1e-5)


def test_generation_runs_steered(lm, ids):
    d = dictionary(lm, "relu")
    with steer(lm, AddFeature(d, 1, 8.0)):
        out = lm.model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_bad_interventions_are_refused_by_name(lm):
    d = dictionary(lm, "relu")
    with pytest.raises(ConfigError, match=r"feature 40 is not a feature of this dictionary \(0 to 39\)"):
        AddFeature(d, 40, 1.0)
    with pytest.raises(ConfigError, match="finite"):
        AddFeature(d, 1, float("nan"))
    with pytest.raises(DimensionError, match="one value per feature"):
        AblateFeatures(d, [1], mean=torch.zeros(3))
    other = build_dictionary(DictionaryConfig(arch="relu", d_in=lm.d_model + 1, d_sae=8, hook="resid_post.0", model=lm.name))
    with pytest.raises(DimensionError, match="width"):
        with steer(lm, AddFeature(other, 1, 1.0)):
            pass
    with pytest.raises(ConfigError, match="position 20"):
        with steer(lm, AddFeature(d, 1, 1.0, positions=[20])):
            logits(lm, torch.zeros(1, 5, dtype=torch.long))


def test_saekit_steer_prints_and_writes_both_continuations(lm, model_dir, tmp_path, capsys):
    import json

    from saekit.cli import main
    from saekit.interpret import generate_with_and_without

    d = dictionary(lm, "relu")
    saekit.save(d, tmp_path / "d")
    args = ["steer", str(tmp_path / "d"), "--model", str(model_dir), "--feature", "3", "--scale", "50",
            "--prompt", "the river city", "--max-new-tokens", "6", "--json", str(tmp_path / "out.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["feature"] == 3 and record["scale"] == 50 and record["clamp"] is None
    assert f"without: {record['without']}" in printed and f"with 50 x feature 3 at resid_post.0: {record['with']}" in printed
    direct = generate_with_and_without(lm, "the river city", AddFeature(d, 3, 50.0), max_new_tokens=6)
    assert (direct.without, direct.steered) == (record["without"], record["with"])
    assert direct.without != direct.steered  # a scale this large changes a greedy continuation
    assert main(["steer", str(tmp_path / "d"), "--feature", "40", "--prompt", "x"]) == 2
    assert "feature 40 is not a feature of this dictionary" in capsys.readouterr().err


def test_a_scale_sweep_follows_the_next_token_and_plots_it(lm, model_dir, tmp_path, capsys):
    import json

    from saekit.cli import main
    from saekit.interpret import scale_sweep

    last = f"resid_post.{lm.n_layers - 1}"
    d = dictionary(lm, "relu", hook=last)
    W_U = lm.model.get_output_embeddings().weight.detach()
    # the token the feature points to most, among those whose text encodes back to them
    ranked = (W_U @ d.W_dec[4]).argsort(descending=True).tolist()
    target = next(t for t in ranked if lm.tokenizer.encode(lm.tokenizer.decode([t]), add_special_tokens=False) == [t])
    word = lm.tokenizer.decode([target])
    sweep = scale_sweep(lm, "the river city", d, 4, [0, 10, 40], [word])
    ids = lm.tokenizer("the river city", return_tensors="pt").input_ids
    clean = torch.log_softmax(logits(lm, ids)[0, -1], -1)[target]
    assert sweep.logprobs[0][0] == pytest.approx(float(clean), abs=1e-5)
    assert sweep.logprobs[2][0] > sweep.logprobs[0][0]  # steering along the feature raises its top token
    default = scale_sweep(lm, "the river city", d, 4, [0, 40])
    assert 1 <= len(default.tokens) <= 6 and len(default.logprobs) == 2
    with pytest.raises(ConfigError, match="not one"):
        scale_sweep(lm, "the river city", d, 4, [0, 1], ["the river"])

    saekit.save(d, tmp_path / "d")
    args = ["steer", str(tmp_path / "d"), "--model", str(model_dir), "--feature", "4", "--sweep", "0,40",
            "--prompt", "the river city", "--plot", str(tmp_path / "p.png"), "--json", str(tmp_path / "s.json")]
    assert main(args) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["scales"] == [0.0, 40.0] and len(record["logprobs"]) == 2
    assert "next-token log-probabilities" in capsys.readouterr().out
    assert main(["steer", str(tmp_path / "d"), "--feature", "4", "--sweep", "0,4", "--clamp", "1", "--prompt", "x"]) == 2
