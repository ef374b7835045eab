"""Feature examples from one streaming pass, checked against a brute-force reference.

The reference keeps the dense activations of the whole (small) corpus in memory and
computes every statistic, the top examples and their windows directly; the streaming
collection must agree with it, whatever the batch size, and keep its sample uniform.
"""

import dataclasses
import json

import pytest
import torch

import saekit
from saekit.data import ContextStream
from saekit.errors import ConfigError, DataError, DimensionError, FormatError, HookPointError
from saekit.interpret import examples as ex
from saekit.interpret.examples import FeatureExamples, collect_examples

from conftest import random_dictionary

T = 24
TOKENS = 1500
WINDOW = (5, 3)
TOP, SAMPLES, RANDOM = 6, 9, 7


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


def dictionary(lm, arch="relu", hook="resid_post.1", d_sae=40, seed=0, **kw):
    d = random_dictionary(arch, lm.d_model, d_sae, seed, hook=hook, model=lm.name, scale=0.2, **kw)
    return d.requires_grad_(False)


def collect(d, lm, corpus, **kw):
    args = dict(dataset=str(corpus), tokens=TOKENS, context_length=T, top=TOP, samples=SAMPLES, window=WINDOW,
                random_contexts=RANDOM, batch_size=8)
    return collect_examples(d, lm, **{**args, **kw})


class Reference:
    """Dense activations of the contexts a collection sees, and what they imply."""

    def __init__(self, d, lm, corpus, features, tokens=TOKENS):
        stream = ContextStream(str(corpus), lm.tokenizer, context_length=T, batch_size=10_000)
        ids = next(stream).input_ids
        contexts = -(-tokens // (T - 1))
        self.ids = ids[:contexts]
        x = saekit.read_activations(lm, [d.cfg.hook], self.ids)[d.cfg.hook]
        self.f = d.encode(x)[..., features].clone()  # (C, T, n)
        self.f[:, 0] = 0  # BOS
        self.C = contexts

    def flat(self, i):
        return self.f[..., i].reshape(-1)

    def window(self, c, t, i):
        toks, acts = [], []
        for p in range(t - WINDOW[0], t + WINDOW[1] + 1):
            inside = 0 < p < T  # position 0 is BOS: outside the text
            toks.append(int(self.ids[c, p]) if inside else -1)
            acts.append(float(self.f[c, p, i]) if inside else 0.0)
        return toks, acts


@pytest.fixture(scope="module", params=["relu", "topk"])
def relu_case(lm, corpus, request):
    """A ReLU dictionary (dense encoding), and a TopK one (found through its sparse codes)."""
    d = dictionary(lm, request.param)
    features = [0, 3, 4, 17, 39]
    return d, collect(d, lm, corpus, features=features), Reference(d, lm, corpus, features), features


def test_statistics_and_top_examples_equal_the_brute_force_reference(relu_case):
    d, got, ref, features = relu_case
    assert got.features.tolist() == features and got.tokens_seen == ref.C * (T - 1)
    assert got.hook == "resid_post.1" and got.window == WINDOW
    f = ref.f.reshape(-1, len(features))
    assert torch.equal(got.count, (f > 0).sum(0))
    torch.testing.assert_close(got.activation_sum, f.double().sum(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.max_activation, f.amax(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(got.histogram.sum(1), got.count)
    edges = got.bin_edges
    assert len(edges) == 8 * ex.BINS_PER_DECADE + 1 and bool((edges[1:] > edges[:-1]).all())
    for i in range(len(features)):
        v = ref.flat(i)
        v = v[v > 0]
        expected = torch.bincount(torch.bucketize(v, edges[1:-1], right=True), minlength=len(edges) - 1)
        assert torch.equal(got.histogram[i], expected)
        order = torch.sort(ref.flat(i), descending=True, stable=True).indices[:TOP]
        torch.testing.assert_close(got.top_values[i], ref.flat(i)[order], rtol=1e-5, atol=1e-6)
        for slot, p in enumerate(order.tolist()):
            toks, acts = ref.window(p // T, p % T, i)
            assert got.top_tokens[i, slot].tolist() == toks
            torch.testing.assert_close(got.top_acts[i, slot], torch.tensor(acts), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.density, got.count.double() / got.tokens_seen)
    torch.testing.assert_close(got.mean_activation, got.activation_sum / got.count)


def test_the_sample_is_a_uniform_sorted_subset_of_the_activating_tokens(relu_case):
    d, got, ref, features = relu_case
    quantiles = []
    for i in range(len(features)):
        v = ref.flat(i)
        active = v[v > 0]
        size = min(SAMPLES, len(active))
        sample = got.sample_values[i]
        assert int((~sample.isnan()).sum()) == size and bool(sample[size:].isnan().all())
        kept = sample[:size]
        assert bool((kept[1:] <= kept[:-1]).all()), "sorted by value, descending"
        for slot, value in enumerate(kept.tolist()):
            match = ((v - value).abs() <= 1e-5 * max(1.0, abs(value))).nonzero().squeeze(1)
            assert len(match) >= 1, "every sampled value is an activating token's"
            windows = [ref.window(int(p) // T, int(p) % T, i)[0] for p in match]
            assert got.sample_tokens[i, slot].tolist() in windows
            quantiles.append(float((active > value).sum()) / len(active))
        ex_list = got.sample_examples(features[i])
        assert [e.value for e in ex_list] == pytest.approx(kept.tolist())
    # a uniform sample sits around the median of the feature's activations, not at its top
    assert 0.35 < sum(quantiles) / len(quantiles) < 0.65


def test_random_contexts_carry_every_features_activations(relu_case):
    d, got, ref, features = relu_case
    assert got.random_tokens.shape == (RANDOM, sum(WINDOW) + 1)
    assert got.random_acts.shape == (len(features), RANDOM, sum(WINDOW) + 1)
    centres = set()
    for slot in range(RANDOM):
        toks = got.random_tokens[slot].tolist()
        found = False
        for c in range(ref.C):
            for t in range(1, T):
                if ref.window(c, t, 0)[0] != toks:
                    continue
                acts = torch.stack([torch.tensor(ref.window(c, t, i)[1]) for i in range(len(features))])
                if torch.allclose(got.random_acts[:, slot].float(), acts, rtol=1e-5, atol=1e-5):
                    found = True
                    centres.add((c, t))
        assert found, f"random context {slot} is not a window of the stream with the encoder's activations"
    assert len(centres) >= RANDOM - 1, "the random contexts are distinct positions"
    examples = got.random_examples(features[1])
    assert len(examples) == RANDOM and all(e.centre <= WINDOW[0] for e in examples)


def test_the_result_does_not_depend_on_the_batch_size(lm, corpus, relu_case):
    d, got, _, features = relu_case
    other = collect(d, lm, corpus, features=features, batch_size=3)
    for name in FeatureExamples._TENSORS:
        a, b = getattr(got, name), getattr(other, name)
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)
        else:
            assert torch.equal(a, b), name
    assert got.tokens_seen == other.tokens_seen


def test_a_features_sample_does_not_depend_on_the_other_features_chosen(lm, corpus, relu_case):
    d, got, _, features = relu_case
    alone = collect(d, lm, corpus, features=[features[2]], random_contexts=0)
    torch.testing.assert_close(alone.sample_values[0], got.sample_values[2], equal_nan=True)
    assert torch.equal(alone.sample_tokens[0], got.sample_tokens[2])


def test_blocks_of_contexts_give_the_same_result(lm, corpus, relu_case, monkeypatch):
    d, got, _, features = relu_case
    monkeypatch.setattr(ex, "ENCODE_BLOCK", 1)  # one context per encoded block
    other = collect(d, lm, corpus, features=features)
    torch.testing.assert_close(other.top_values, got.top_values, equal_nan=True)
    assert torch.equal(other.sample_tokens, got.sample_tokens) and torch.equal(other.random_tokens, got.random_tokens)


def test_a_feature_that_never_fires_and_all_features_of_a_topk_dictionary(lm, corpus):
    d = dictionary(lm, "topk", d_sae=32)
    with torch.no_grad():
        d.W_enc[:, 5] = 0
        d.b_enc[5] = -100.0  # feature 5 is never among the top k with a positive value
    got = collect(d, lm, corpus)
    assert got.features.tolist() == list(range(32))
    assert int(got.count[5]) == 0 and float(got.max_activation[5]) == 0 and int(got.histogram[5].sum()) == 0
    assert bool(got.top_values[5].isnan().all()) and bool((got.top_tokens[5] == -1).all())
    assert bool((got.top_acts[5] == 0).all()) and bool(got.sample_values[5].isnan().all())
    assert got.top_examples(5) == [] and got.sample_examples(5) == []
    assert got.quantile_groups(5, 3) == [[], [], []] and bool(got.mean_activation[5].isnan())
    assert int(got.count.sum()) <= got.tokens_seen * 4  # k = 4
    assert len(got.sample_examples(0)) == SAMPLES
    groups = got.quantile_groups(0, 4)
    assert [len(g) for g in groups] == [3, 2, 2, 2]  # 9 samples, the larger groups first
    flat = [e.value for g in groups for e in g]
    assert flat == sorted(flat, reverse=True)


def test_examples_drop_the_padding_and_point_at_their_token(relu_case):
    _, got, ref, features = relu_case
    for e in got.top_examples(features[2]):
        assert -1 not in e.tokens and len(e.tokens) == len(e.acts)
        assert e.acts[e.centre] == pytest.approx(e.value)
    with pytest.raises(ConfigError, match="feature 5 was not collected"):
        got.row(5)
    with pytest.raises(KeyError):
        got.top_examples(1)


def test_a_transcoder_is_about_its_input(lm, corpus):
    d = dictionary(lm, "relu", hook="mlp_in.1", transcoder=True, target="mlp_out.1")
    got = collect(d, lm, corpus, features=[2, 7], random_contexts=0, samples=0)
    ref = Reference(d, lm, corpus, [2, 7])
    for i in range(2):
        top = torch.sort(ref.flat(i), descending=True, stable=True).values[:TOP]
        torch.testing.assert_close(got.top_values[i], top, rtol=1e-5, atol=1e-6)
    assert got.hook == "mlp_in.1" and got.random_tokens.shape == (0, 9) and got.sample_values.shape == (2, 0)


def test_progress_is_reported_in_tokens(lm, corpus):
    records = []
    collect(dictionary(lm), lm, corpus, features=[1], progress=records.append, batch_size=16)
    assert records and all(r["phase"] == "collect" and r["unit"] == "tok" and r["total"] == TOKENS for r in records)
    assert records[-1]["done"] == TOKENS and [r["done"] for r in records] == sorted(r["done"] for r in records)


def test_save_and_load_round_trip_and_refuse_bad_files(relu_case, tmp_path):
    _, got, _, _ = relu_case
    got.save(tmp_path / "out")
    back = FeatureExamples.load(tmp_path / "out")
    for name in FeatureExamples._TENSORS:
        a, b = getattr(got, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        if name.endswith("_acts"):  # stored in float16: the window's colours, not the selected values
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(a.nan_to_num(-7), b.nan_to_num(-7)), name
    assert (back.dictionary, back.hook, back.model, back.tokens_seen, back.window) == (
        got.dictionary, got.hook, got.model, got.tokens_seen, got.window)
    assert [(e.tokens, e.centre, e.value) for e in back.top_examples(4)] == [
        (e.tokens, e.centre, e.value) for e in got.top_examples(4)]
    huge = dataclasses.replace(got, top_acts=got.top_acts * 1e5)  # beyond float16: kept in float32
    huge.save(tmp_path / "huge")
    assert torch.equal(FeatureExamples.load(tmp_path / "huge").top_acts, huge.top_acts)

    with pytest.raises(FormatError, match="does not exist"):
        FeatureExamples.load(tmp_path / "nothing")
    meta = tmp_path / "out" / ex.METADATA_FILE
    tensors = tmp_path / "out" / ex.TENSORS_FILE
    good_meta, good_tensors = meta.read_text(), tensors.read_bytes()
    tensors.write_bytes(good_tensors[:100])
    with pytest.raises(FormatError, match="cannot be read"):
        FeatureExamples.load(tmp_path / "out")
    tensors.write_bytes(good_tensors)
    meta.write_text("{not json")
    with pytest.raises(FormatError, match="not valid JSON"):
        FeatureExamples.load(tmp_path / "out")
    meta.write_text(json.dumps({**json.loads(good_meta), "schema": "other/9"}))
    with pytest.raises(FormatError, match="schema"):
        FeatureExamples.load(tmp_path / "out")
    meta.write_text(json.dumps({**json.loads(good_meta), "id": "another run"}))
    with pytest.raises(FormatError, match="different runs"):
        FeatureExamples.load(tmp_path / "out")
    meta.write_text(json.dumps({k: v for k, v in json.loads(good_meta).items() if k != "hook"}))
    with pytest.raises(FormatError, match="hook"):
        FeatureExamples.load(tmp_path / "out")
    (tmp_path / "out" / ex.TENSORS_FILE).unlink()
    with pytest.raises(FormatError, match="does not exist"):
        FeatureExamples.load(tmp_path / "out")


@pytest.fixture
def no_model_pass(monkeypatch):
    """Fail the test if the model runs: bad input must be refused before."""
    import saekit.hooks

    def refuse(*a, **k):
        raise AssertionError("the model ran before the input was checked")

    monkeypatch.setattr(saekit.hooks, "read_activations", refuse)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(features=[3, 40]), ConfigError, r"feature 40 is out of range.*0 to 39"),
    (dict(features=[-1]), ConfigError, r"out of range.*0 to 39"),
    (dict(features=[2, 5, 2]), ConfigError, "feature 2 is given more than once"),
    (dict(features=[]), ConfigError, "at least one feature"),
    (dict(features=[1.5]), ConfigError, "integers"),
    (dict(tokens=0), ConfigError, "tokens must be an integer >= 1"),
    (dict(tokens=-5), ConfigError, "tokens must be"),
    (dict(window=(-1, 3)), ConfigError, "non-negative"),
    (dict(window=(2,)), ConfigError, "window"),
    (dict(top=0), ConfigError, "top must be"),
    (dict(samples=-1), ConfigError, "samples must be"),
    (dict(context_length=1000), ConfigError, "longer than"),
])
def test_bad_arguments_are_refused_before_the_model_runs(lm, corpus, no_model_pass, kwargs, error, match):
    with pytest.raises(error, match=match):
        collect(dictionary(lm), lm, corpus, **kwargs)


def test_a_dictionary_for_another_model_or_hook_point_is_refused(lm, corpus, no_model_pass):
    with pytest.raises(HookPointError):
        collect(dictionary(lm, hook="resid_post.9"), lm, corpus)
    wide = random_dictionary("relu", 48, 20, hook="resid_post.1", model=lm.name)
    with pytest.raises(DimensionError, match="width 48"):
        collect(wide, lm, corpus)
    other = random_dictionary("relu", lm.d_model, 20, hook="resid_post.1", model="some/other-model")
    with pytest.raises(DimensionError, match="some/other-model"):
        collect(other, lm, corpus)
    unhooked = random_dictionary("relu", lm.d_model, 20, hook="", model=lm.name)
    with pytest.raises(ConfigError, match="hook point"):
        collect(unhooked, lm, corpus)


def test_another_model_is_allowed_when_asked(lm, corpus):
    other = random_dictionary("relu", lm.d_model, 20, hook="resid_post.1", model="some/other-model")
    got = collect(other, lm, corpus, features=[0], allow_other_model=True, tokens=100)
    assert got.tokens_seen >= 100 and got.model == lm.name


def test_an_empty_corpus_is_refused(lm, tmp_path, no_model_pass):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match="no non-empty documents"):
        collect_examples(dictionary(lm), lm, dataset=str(empty), tokens=100)
    with pytest.raises(DataError, match="does not exist"):
        collect_examples(dictionary(lm), lm, dataset=str(tmp_path / "missing.txt"), tokens=100)


def test_a_corpus_too_small_for_one_context_says_so(lm, tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a few words")
    with pytest.raises(DataError, match="fewer than one context"):
        collect_examples(dictionary(lm), lm, dataset=str(tiny), tokens=100, context_length=64)


def test_a_bfloat16_dictionary_encodes_in_bfloat16(lm, corpus, relu_case):
    d, got, _, features = relu_case
    half = collect(dictionary(lm, d.cfg.arch).to(torch.bfloat16), lm, corpus, features=features)
    assert half.top_values.dtype == torch.float32 and half.top_acts.dtype == torch.float32
    torch.testing.assert_close(half.top_values[:, :3], got.top_values[:, :3], rtol=2e-2, atol=2e-2)
