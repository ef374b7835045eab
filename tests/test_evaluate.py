"""Evaluation figures checked against dictionaries whose answers are known exactly."""

import json

import pytest
import torch

import saekit
from saekit.data import ContextStream
from saekit.dictionaries import DictionaryConfig, build_dictionary
from saekit.errors import DimensionError, HookPointError
from saekit.evaluation import evaluate, evaluate_reconstruction
from saekit.hooks import edit_activations, read_activations

HOOK = "resid_post.1"


@pytest.fixture(scope="module")
def lm(model_dir):
    return saekit.load_model(str(model_dir))


def linear_dictionary(lm, c: float = 1.0, hook: str = HOOK):
    """x̂ = c·x exactly: a ReLU dictionary with W_enc = [I, −I] and W_dec = c·[I; −I]."""
    d = lm.d_model
    sae = build_dictionary(DictionaryConfig(arch="relu", d_in=d, d_sae=2 * d, hook=hook, model=lm.name, context_length=32))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(c * torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def run(sae, lm, corpus, **kw):
    kw.setdefault("tokens", 1500)
    kw.setdefault("max_length", 64)
    return evaluate(sae, lm, dataset=str(corpus), **kw)


def test_identity_dictionary(lm, corpus):
    res = run(linear_dictionary(lm), lm, corpus)
    for regime in (res.fixed, res.documents):
        assert regime.fvu == pytest.approx(0.0, abs=1e-10)
        assert regime.relative_reconstruction_bias == pytest.approx(1.0, abs=1e-6)
        assert regime.ce_spliced == pytest.approx(regime.ce_clean, abs=1e-5)
        assert regime.loss_recovered == pytest.approx(1.0, abs=1e-4)
        assert regime.kl == pytest.approx(0.0, abs=1e-6)
        assert regime.cosine == pytest.approx(1.0, abs=1e-6)
    assert 1500 <= res.fixed.n_tokens < 1500 + 31  # whole sequences, overshooting by less than one
    assert res.documents.n_tokens < 1500 and res.documents.requested_tokens == 1500  # the held-out split is smaller


def test_scaled_dictionary_has_known_fvu_and_gamma(lm, corpus):
    c = 0.7
    res = run(linear_dictionary(lm, c), lm, corpus, regimes=["fixed"])
    # The same tokens, read by hand: fixed contexts of 32 from the held-out split, BOS dropped.
    stream = ContextStream(str(corpus), lm.tokenizer, context_length=32, batch_size=64, split="heldout")
    rows, n = [], 0
    for batch in stream:
        x = read_activations(lm, [HOOK], batch.input_ids, batch.attention_mask)[HOOK]
        for row, keep in zip(x, batch.token_mask()):  # whole sequences until 1500 tokens
            if n < 1500:
                rows.append(row[keep].double())
                n += rows[-1].shape[0]
        if n >= 1500:
            break
    x = torch.cat(rows)
    assert res.fixed.n_tokens == x.shape[0]
    expected_fvu = (1 - c) ** 2 * x.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert res.fixed.fvu == pytest.approx(float(expected_fvu), rel=1e-6)
    assert res.fixed.relative_reconstruction_bias == pytest.approx(c, rel=1e-6)
    assert res.fixed.mse == pytest.approx(float((1 - c) ** 2 * x.pow(2).sum(-1).mean()), rel=1e-6)


def test_zero_dictionary_is_the_zero_ablation(lm, corpus):
    res = run(linear_dictionary(lm, 0.0), lm, corpus)
    for regime in (res.fixed, res.documents):
        assert regime.ce_spliced == pytest.approx(regime.ce_zero, abs=1e-6)
        assert regime.loss_recovered == pytest.approx(0.0, abs=1e-6)
        assert regime.ce_zero > regime.ce_clean  # ablating the residual stream hurts


def test_splicing_reconstruction_plus_error_gives_clean_loss(lm, corpus):
    """docs/metrics.md's sanity check: x̂ + (x − x̂) spliced in gives ce_clean to fp precision."""
    torch.manual_seed(0)
    sae = build_dictionary(DictionaryConfig(arch="topk", d_in=lm.d_model, d_sae=64, k=4, hook=HOOK, model=lm.name))
    batch = next(iter(ContextStream(str(corpus), lm.tokenizer, context_length=32, batch_size=4, split="heldout")))
    with torch.no_grad():
        clean = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with edit_activations(lm, {HOOK: lambda a: sae.reconstruct(a) + (a - sae.reconstruct(a))}):
            spliced = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with edit_activations(lm, {HOOK: sae.reconstruct}):
            reconstructed = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(clean, spliced, atol=1e-5)
    assert not torch.allclose(clean, reconstructed, atol=1e-3)  # the test would notice a no-op splice


def test_padding_never_counts(lm, corpus):
    torch.manual_seed(0)
    sae = build_dictionary(DictionaryConfig(arch="topk", d_in=lm.d_model, d_sae=64, k=4, hook=HOOK, model=lm.name, context_length=32))
    one = run(sae, lm, corpus, regimes=["documents"], batch_tokens=64)  # one document per batch
    many = run(sae, lm, corpus, regimes=["documents"], batch_tokens=320)  # five per batch, padded
    a, b = one.documents.to_dict(), many.documents.to_dict()
    assert a["n_tokens"] == b["n_tokens"] and a["n_ce_tokens"] == b["n_ce_tokens"]
    for key in ("mse", "fvu", "cosine", "l0", "ce_clean", "ce_spliced", "ce_zero", "ce_mean", "kl"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_position_buckets_cover_the_tokens(lm, corpus):
    res = run(linear_dictionary(lm, 0.5), lm, corpus, max_length=96, regimes=["documents"], bucket_tokens=32)
    buckets = res.documents.by_position
    assert [b["start"] for b in buckets] == [0, 32, 64][: len(buckets)] and len(buckets) >= 2
    assert sum(b["n_tokens"] for b in buckets) == res.documents.n_tokens
    assert sum(b["n_ce_tokens"] for b in buckets) == res.documents.n_ce_tokens


def test_json_has_both_regimes_and_counts(lm, corpus, tmp_path):
    res = run(linear_dictionary(lm, 0.9), lm, corpus)
    d = json.loads(json.dumps(res.to_dict()))
    for regime in ("fixed", "documents"):
        for key in ("mse", "fvu", "variance_explained", "cosine", "l0", "l1", "l1_weighted", "frac_alive", "n_dead",
                    "n_dense", "relative_reconstruction_bias", "ce_clean", "ce_spliced", "ce_zero", "ce_mean",
                    "ce_diff", "loss_recovered", "kl", "n_tokens", "n_ce_tokens", "by_position", "feature_density"):
            assert key in d[regime], (regime, key)
    assert d["hook"] == HOOK and d["fixed"]["context_length"] == 32 and d["documents"]["context_length"] == 64


def test_fewer_tokens_than_asked_evaluates_what_there_is(lm, corpus, caplog):
    res = run(linear_dictionary(lm), lm, corpus, tokens=10**7, regimes=["fixed"])
    assert res.fixed.requested_tokens == 10**7 and 0 < res.fixed.n_tokens < 10**7
    assert "only" in caplog.text


def test_non_finite_figures_are_reported_not_dropped(lm, corpus):
    sae = linear_dictionary(lm)
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    d = run(sae, lm, corpus, regimes=["fixed"], tokens=200).to_dict()["fixed"]
    assert d["fvu"] == "nan" and d["mse"] == "nan"


def test_dictionary_for_another_hook_or_model(lm, corpus):
    with pytest.raises(DimensionError, match="width 16"):
        sae = build_dictionary(DictionaryConfig(arch="relu", d_in=16, d_sae=32, hook=HOOK, model=lm.name))
        run(sae, lm, corpus)
    with pytest.raises(HookPointError, match="layer 7"):
        run(linear_dictionary(lm, hook="resid_post.7"), lm, corpus)
    other = linear_dictionary(lm)
    other.cfg.model = "some/other-model"
    with pytest.raises(DimensionError, match="trained on some/other-model"):
        run(other, lm, corpus)
    assert run(other, lm, corpus, tokens=100, regimes=["fixed"], allow_other_model=True).fixed.n_tokens > 0


def test_bad_options_fail_before_any_work(lm, corpus):
    from saekit.errors import ConfigError

    sae = linear_dictionary(lm)
    for kw, match in ((dict(regimes="fixd"), "unknown regime"), (dict(tokens=0), "tokens must be positive"),
                      (dict(max_length=1), "at least 2"), (dict(bucket_tokens=0), "bucket_tokens")):
        with pytest.raises(ConfigError, match=match):
            run(sae, lm, corpus, **kw)
    assert run(sae, lm, corpus, regimes="fixed", tokens=100).documents is None  # one regime as a string


def test_model_paths_compare_resolved(lm, corpus, model_dir, monkeypatch):
    sae = linear_dictionary(lm)
    sae.cfg.model = str(model_dir) + "/"
    monkeypatch.chdir(model_dir.parent)
    assert run(sae, model_dir.name, corpus, tokens=100, regimes="fixed").fixed.n_tokens > 0


def test_prefix_cache_does_not_change_the_figures(lm, corpus, monkeypatch):
    import importlib

    ev = importlib.import_module("saekit.evaluation")

    torch.manual_seed(0)
    sae = build_dictionary(DictionaryConfig(arch="topk", d_in=lm.d_model, d_sae=64, k=4, hook=HOOK, model=lm.name, context_length=32))
    cached = run(sae, lm, corpus, tokens=600).to_dict()
    monkeypatch.setattr(ev, "PREFIX_CACHE_BYTES", 0)  # recompute the prefix for every batch
    recomputed = run(sae, lm, corpus, tokens=600).to_dict()
    for regime in ("fixed", "documents"):
        for key in ("fvu", "ce_clean", "ce_spliced", "ce_zero", "ce_mean", "kl"):
            assert cached[regime][key] == pytest.approx(recomputed[regime][key], rel=1e-6), (regime, key)


# ---------------------------------------------------------------- progress, BOS policy, fingerprint


def test_progress_reports_every_phase_as_it_advances(lm, corpus):
    """`saekit eval` printed nothing for minutes, and the training bar froze at 100% while
    the end-of-run evaluation ran: evaluate reported no progress at all."""
    records = []
    res = run(linear_dictionary(lm), lm, corpus, tokens=600, batch_tokens=128, progress=records.append)
    assert all(set(r) == {"phase", "done", "total", "unit"} and r["unit"] == "tok" for r in records)
    phases = list(dict.fromkeys(r["phase"] for r in records))
    assert phases == [f"evaluating {label}: {step}" for label in ("fixed contexts", "whole documents")
                      for step in ("reading text", "mean activation", "clean, spliced, zero and mean passes")]
    for phase in phases:
        mine = [r for r in records if r["phase"] == phase]
        assert mine[0]["done"] == 0 and len(mine) >= 3  # started, then once per batch (128 tokens, 600 asked)
        assert [r["done"] for r in mine] == sorted(r["done"] for r in mine)
        regime = res.fixed if "fixed" in phase else res.documents
        if "reading" in phase:
            assert mine[-1]["total"] == 600
        else:
            assert mine[-1]["done"] == mine[-1]["total"] == regime.n_tokens


def test_evaluate_reconstruction_reports_progress():
    sae = build_dictionary(DictionaryConfig(arch="topk", d_in=8, d_sae=16, k=2))
    records = []
    evaluate_reconstruction(sae, torch.randn(100, 8), batch_size=30, progress=records.append)
    assert [r["done"] for r in records] == [0, 30, 60, 90, 100] and {r["total"] for r in records} == {100}


def test_bos_policy_follows_the_dictionary_and_an_override_is_recorded(lm, corpus):
    """A --keep-bos run's dictionary was evaluated without BOS by `saekit eval`, and its
    eval.json overwritten with figures of another policy, saying nothing."""
    sae = linear_dictionary(lm, 0.5)
    sae.cfg.keep_bos = True
    as_trained = run(sae, lm, corpus, regimes="fixed", tokens=300)
    explicit = run(sae, lm, corpus, regimes="fixed", tokens=300, splice_bos=True)
    overridden = run(sae, lm, corpus, regimes="fixed", tokens=300, splice_bos=False)
    assert as_trained.fixed.n_tokens == explicit.fixed.n_tokens
    assert as_trained.fixed.fvu == explicit.fixed.fvu != overridden.fixed.fvu
    d = as_trained.to_dict()
    assert (d["keep_bos"], d["keep_bos_source"]) == (True, "dictionary")
    assert (explicit.to_dict()["keep_bos_source"]) == "dictionary"  # the same as trained
    d = overridden.to_dict()
    assert (d["keep_bos"], d["keep_bos_source"]) == (False, "override")
    assert "excluded (overridden" in overridden.table()
    # Kept, the 32-token contexts contribute 32 tokens each instead of 31.
    assert as_trained.fixed.n_tokens % 32 == 0 and overridden.fixed.n_tokens % 31 == 0
    from saekit.errors import ConfigError

    with pytest.raises(ConfigError, match="splice_bos"):
        run(sae, lm, corpus, splice_bos="yes")


def test_eval_json_carries_the_fingerprint_of_the_weights(lm, corpus):
    sae = linear_dictionary(lm, 0.9)
    d = json.loads(json.dumps(run(sae, lm, corpus, regimes="fixed", tokens=100).to_dict()))
    assert d["fingerprint"] == sae.fingerprint() and len(d["fingerprint"]) > 4


def test_evaluate_many_gives_each_dictionary_its_own_figures(lm, corpus):
    """A sweep evaluated together (sharing the clean, zero and mean runs per hook point)
    gets exactly the figures each dictionary gets alone, in the order given, across two
    hook points and a transcoder."""
    def made(seed, **kw):
        torch.manual_seed(seed)
        d = build_dictionary(DictionaryConfig(d_in=lm.d_model, d_sae=48, model=lm.name, context_length=12, **kw))
        with torch.no_grad():
            d.b_enc.sub_(0.2)
        return d

    dicts = [made(0, arch="relu", hook="resid_post.1"), made(1, arch="topk", k=5, hook="resid_post.0"),
             made(2, arch="topk", k=3, hook="resid_post.1"),
             made(3, arch="relu", hook="mlp_in.1", target="mlp_out.1", transcoder=True, skip=True)]
    kw = dict(dataset=str(corpus), tokens=200, batch_tokens=128)
    together = saekit.evaluate_many(dicts, lm, **kw)
    for d, got in zip(dicts, together):
        alone = saekit.evaluate(d, lm, **kw)
        assert got.fingerprint == alone.fingerprint
        for regime in ("fixed", "documents"):
            a, b = alone.to_dict()[regime], got.to_dict()[regime]
            assert a.keys() == b.keys()
            for key, value in a.items():
                assert b[key] == (pytest.approx(value, rel=1e-9, abs=1e-12) if isinstance(value, float) else value), key
