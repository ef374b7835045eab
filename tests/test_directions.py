"""Decoder directions read on their own: output tokens through the final norm and the
unembedding, against a hand computation; nearest features against a dense cosine matrix."""

import pytest
import torch

from saekit.errors import ConfigError, DimensionError
from saekit.interpret import directions
from saekit.interpret.directions import final_norm, final_norm_gain, nearest_features, output_tokens

from conftest import random_dictionary, tiny_loaded_model


def dictionary(lm, d_sae=50, **kw):
    return random_dictionary("relu", lm.d_model, d_sae, 0, hook="resid_post.2", model=lm.name, scale=0.2, **kw)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_output_tokens_equal_a_hand_computation(family):
    lm = tiny_loaded_model(family)
    norm = final_norm(lm)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-1.5, 2.0, lm.d_model))  # a gain far from 1, so leaving it out shows
    gain = norm.weight + (1.0 if family == "gemma" else 0.0)  # Gemma's RMSNorm multiplies by 1 + weight
    torch.testing.assert_close(final_norm_gain(lm), gain, rtol=1e-5, atol=1e-5)
    d = dictionary(lm)
    W_U = lm.model.get_output_embeddings().weight[: len(lm.tokenizer)]
    got = output_tokens(d, lm, [7, 0, 31], k=4)
    assert got.features.tolist() == [7, 0, 31]
    for row, feature in enumerate([7, 0, 31]):
        logits = W_U @ (gain * d.W_dec[feature])
        top = logits.topk(4)
        bottom = (-logits).topk(4)
        assert got.top_ids[row].tolist() == top.indices.tolist()
        torch.testing.assert_close(got.top_logits[row], top.values, rtol=1e-5, atol=1e-5)
        assert got.bottom_ids[row].tolist() == bottom.indices.tolist()
        torch.testing.assert_close(got.bottom_logits[row], -bottom.values, rtol=1e-5, atol=1e-5)
        assert bool((got.top_logits[row][1:] <= got.top_logits[row][:-1]).all())
        assert bool((got.bottom_logits[row][1:] >= got.bottom_logits[row][:-1]).all())


def test_output_tokens_in_blocks_and_only_over_real_tokens(monkeypatch):
    lm = tiny_loaded_model()
    d = dictionary(lm)
    whole = output_tokens(d, lm, list(range(50)), k=3)
    monkeypatch.setattr(directions, "LOGIT_BLOCK", 1)
    blocked = output_tokens(d, lm, list(range(50)), k=3)
    assert torch.equal(whole.top_ids, blocked.top_ids) and torch.equal(whole.bottom_ids, blocked.bottom_ids)
    assert int(whole.top_ids.max()) < len(lm.tokenizer) <= lm.model.get_output_embeddings().weight.shape[0]


def test_a_transcoder_writing_another_width_is_refused():
    lm = tiny_loaded_model()
    tc = random_dictionary("relu", lm.d_model, 20, hook="mlp_in.1", model=lm.name, transcoder=True,
                           target="mlp_out.1", d_out=64)
    with pytest.raises(DimensionError, match="width 64"):
        output_tokens(tc, lm, [0])
    ok = random_dictionary("relu", lm.d_model, 20, hook="mlp_in.1", model=lm.name, transcoder=True, target="mlp_out.1")
    W_U = lm.model.get_output_embeddings().weight[: len(lm.tokenizer)]
    expected = (W_U @ (final_norm(lm).weight * ok.W_dec[3])).topk(2).indices
    assert output_tokens(ok, lm, [3], k=2).top_ids[0].tolist() == expected.tolist()


def test_output_tokens_refuse_bad_arguments():
    lm = tiny_loaded_model()
    d = dictionary(lm)
    with pytest.raises(ConfigError, match="out of range.*0 to 49"):
        output_tokens(d, lm, [50])
    with pytest.raises(ConfigError, match="k must be"):
        output_tokens(d, lm, [1], k=0)
    with pytest.raises(ConfigError, match="k must be"):
        output_tokens(d, lm, [1], k=10_000)


def test_nearest_features_equal_a_dense_cosine_matrix(monkeypatch):
    lm = tiny_loaded_model()
    d = dictionary(lm, d_sae=300)
    with torch.no_grad():
        d.W_dec[11] = 3.0 * d.W_dec[40] + 0.01 * d.W_dec[12]  # a near-copy (of another norm) of feature 40
    W = d.W_dec / d.W_dec.norm(dim=1, keepdim=True)
    cos = W @ W.T
    cos.fill_diagonal_(float("-inf"))
    chosen = [40, 0, 299, 11]
    monkeypatch.setattr(directions, "COSINE_BLOCK", 1000)  # several blocks of both rows and columns
    ids, values = nearest_features(d, chosen, k=5)
    expected = cos[chosen].topk(5)
    assert ids.tolist() == expected.indices.tolist()
    torch.testing.assert_close(values, expected.values, rtol=1e-5, atol=1e-5)
    assert int(ids[0, 0]) == 11 and int(ids[3, 0]) == 40 and float(values[0, 0]) > 0.99
    assert all(f not in row for f, row in zip(chosen, ids.tolist()))
    with pytest.raises(ConfigError, match="k must be"):
        nearest_features(d, [0], k=300)
    with pytest.raises(ConfigError, match="out of range"):
        nearest_features(d, [300])
