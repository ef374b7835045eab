"""Transcoders: a dictionary that reads one hook point and reconstructs a later one.

Trained by the same trainer, from the same pass, with their own folder names; judged on
their target (FVU of the target, the model's loss with the target replaced); scaled
back to raw units on both sides; refused clearly when the pairing makes no sense.
"""

import json

import pytest
import torch

import saekit
from saekit.activations import ArrayActivations
from saekit.config import TrainConfig
from saekit.dictionaries import ARCHITECTURES, DictionaryConfig, build_dictionary
from saekit.errors import ConfigError, DimensionError
from saekit.evaluation import evaluate, evaluate_reconstruction
from saekit.hooks import edit_activations, read_activations
from saekit.models import load_model
from saekit.training import train, train_many
from saekit.training.plan import pair_hook_points

from test_train import small_cfg

ARCHS = sorted(ARCHITECTURES)


def linear_source(n=20_000, d=12, seed=0, noise=0.0):
    """Inputs x and targets y = x A + c (+ noise), as a two-point source; and A, c."""
    g = torch.Generator().manual_seed(seed)
    A, c = torch.randn(d, d, generator=g) / d**0.5, torch.randn(d, generator=g)

    def rows(m):
        x = torch.randn(m, d, generator=g) * 3 + 1
        y = x @ A + c + noise * torch.randn(m, d, generator=g)
        return torch.stack([x, 2.5 * y], 1)  # targets on another scale than inputs

    return ArrayActivations([rows(n)], hooks=("mlp_in.1", "mlp_out.1"), heldout=rows(2000)), A, c


def tiny_linear_cfg(tmp_path, **kw):
    base = dict(hook="mlp_in.1", target="mlp_out.1", arch="topk", k=4, expansion=4, tokens=16_000, batch_size=256,
                buffer_tokens=4096, eval_tokens=1000, out=str(tmp_path / "run"), log_every=20)
    base.update(kw)
    if base["arch"] not in ("topk", "batchtopk"):
        base.pop("k")
    return TrainConfig(**base)


# ------------------------------------------------------------------ the dictionary
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("skip", [False, True])
def test_scale_folding_gives_raw_outputs(arch, skip):
    """Weights trained on x/s_in → y/s_out, once folded, map raw x to raw y: the output is
    s_out times the scaled output, the features s_out times theirs, decoder rows unit norm."""
    torch.manual_seed(0)
    cfg = DictionaryConfig(arch=arch, d_in=10, d_sae=40, k=5 if ARCHITECTURES[arch].uses_k else None,
                           transcoder=True, target="mlp_out.3", d_out=7, skip=skip)
    tc = build_dictionary(cfg)
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(0.2 * torch.randn_like(p))
        tc.after_step()
    if arch == "batchtopk":
        tc.calibrate(torch.randn(200, 10))
    s_in, s_out = 3.0, 0.4
    x = torch.randn(50, 10)
    f_scaled, y_scaled = tc.encode(x), tc.reconstruct(x)
    tc.fold_activation_scale(s_in, s_out)
    assert (tc.cfg.act_scale, tc.cfg.target_scale) == (s_in, s_out)
    torch.testing.assert_close(tc.encode(x * s_in), f_scaled * s_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tc.reconstruct(x * s_in), y_scaled * s_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tc.W_dec.norm(dim=1), torch.ones(40))


def test_a_transcoder_has_no_pre_bias_and_adds_its_skip_path():
    torch.manual_seed(0)
    tc = build_dictionary(DictionaryConfig(arch="relu", d_in=6, d_sae=20, transcoder=True, d_out=4, skip=True))
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(3, 6)
    f = (x @ tc.W_enc + tc.b_enc).relu()
    torch.testing.assert_close(tc.encode(x), f)
    torch.testing.assert_close(tc.reconstruct(x), f @ tc.W_dec + tc.b_dec + x @ tc.W_skip)
    torch.testing.assert_close(tc.decode(f), f @ tc.W_dec + tc.b_dec)  # decode: the features' part
    with pytest.raises(DimensionError, match="needs its target"):
        tc(x)


def test_contradictory_dictionary_configs_are_refused():
    with pytest.raises(ConfigError, match="transcoder=True"):
        DictionaryConfig(arch="relu", d_in=4, d_sae=8, d_out=5)
    with pytest.raises(ConfigError, match="transcoder=True"):
        DictionaryConfig(arch="relu", d_in=4, d_sae=8, skip=True)
    with pytest.raises(ConfigError, match="sparse autoencoder"):
        DictionaryConfig(arch="relu", d_in=4, d_sae=8, transcoder=True, hook="mlp_in.1", target="mlp_in.1")


# ---------------------------------------------------------------------- pairing
def test_pairs_in_forward_order_or_one_for_all():
    assert pair_hook_points(["mlp_in.0", "mlp_in.1"], ["mlp_out.0", "mlp_out.1"]) == [
        ("mlp_in.0", "mlp_out.0"), ("mlp_in.1", "mlp_out.1")]
    assert pair_hook_points(["resid_post.0", "resid_post.1"], ["resid_post.3"]) == [
        ("resid_post.0", "resid_post.3"), ("resid_post.1", "resid_post.3")]
    assert pair_hook_points(["resid_pre.0"], ["mlp_out.0", "resid_post.1"]) == [
        ("resid_pre.0", "mlp_out.0"), ("resid_pre.0", "resid_post.1")]
    with pytest.raises(ConfigError, match="before"):
        pair_hook_points(["mlp_out.1"], ["mlp_in.1"])
    with pytest.raises(ConfigError, match="same point"):
        pair_hook_points(["mlp_out.1"], ["mlp_out.1"])
    with pytest.raises(ConfigError, match="one target per input"):
        pair_hook_points(["mlp_in.0", "mlp_in.1", "mlp_in.2"], ["mlp_out.1", "mlp_out.2"])


def test_train_config_refuses_a_half_given_transcoder():
    with pytest.raises(ConfigError, match="--skip"):
        TrainConfig(hook="mlp_in.1", skip=True)
    with pytest.raises(ConfigError, match="needs --hook"):
        TrainConfig(target="mlp_out.1")


def test_a_target_before_its_input_fails_before_the_model_loads(model_dir, corpus, tmp_path):
    cfg = small_cfg(model_dir, corpus, tmp_path / "run", hook="mlp_out.1", target="mlp_in.1")
    with pytest.raises(ConfigError, match="before --hook mlp_out.1"):
        train(cfg)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------- training
@pytest.mark.parametrize("arch", ARCHS)
def test_a_skip_transcoder_learns_a_linear_map(arch, tmp_path):
    """y = x A + c is all skip path: with it every architecture explains most of the
    target's variance (at most half the error left without it), and with the scales
    folded raw x gives raw y."""
    source, A, c = linear_source()
    with_skip = train(tiny_linear_cfg(tmp_path, arch=arch, skip=True), source=source).heldout.fvu
    without = train(tiny_linear_cfg(tmp_path, arch=arch, out=str(tmp_path / "plain")), source=linear_source()[0]).heldout.fvu
    assert with_skip < 0.12 and with_skip < 0.5 * without, (with_skip, without)
    tc = saekit.load(tmp_path / "run")
    assert tc.cfg.transcoder and tc.cfg.skip and tc.cfg.target == "mlp_out.1" and tc.cfg.hook == "mlp_in.1"
    x = torch.randn(500, 12) * 3 + 1
    y = 2.5 * (x @ A + c)
    fvu = (tc.reconstruct(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert float(fvu) < 0.15


def test_without_the_skip_path_the_features_do_the_work(tmp_path):
    source, _, _ = linear_source()
    result = train(tiny_linear_cfg(tmp_path, k=8, tokens=24_000), source=source)
    tc = result.dictionary
    assert not hasattr(tc, "W_skip")
    assert result.heldout.fvu < 0.4
    assert float(result.heldout.l0) == pytest.approx(8, abs=0.5)


def test_transcoder_log_figures_are_about_the_target(tmp_path):
    source, _, _ = linear_source()
    train(tiny_linear_cfg(tmp_path, skip=True), source=source)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    last = [r for r in records if "fvu" in r][-1]
    assert last["fvu"] < 0.1
    # mse in raw target units (targets were 2.5× larger than the map's output): consistent with fvu
    info = json.loads((tmp_path / "run" / "training.json").read_text())
    assert info["resolved"]["target"] == "mlp_out.1" and info["resolved"]["target_scale"] > 0


def test_transcoder_resume_is_exact(tmp_path):
    """Interrupted after its first checkpoint and resumed, a transcoder ends with the weights
    of an uninterrupted run (the target scale and the pairing come back from the checkpoint)."""
    import saekit.training.loop as loop

    source, _, _ = linear_source()
    whole = train(tiny_linear_cfg(tmp_path / "a", skip=True, checkpoint_every=4096), source=source).dictionary

    real = loop.DictionaryTrainer.train_step
    calls = {"n": 0}

    def dies(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    cfg = tiny_linear_cfg(tmp_path / "b", skip=True, checkpoint_every=4096)
    loop.DictionaryTrainer.train_step = dies
    try:
        with pytest.raises(saekit.errors.RunInterrupted):
            train(cfg, source=linear_source()[0])
    finally:
        loop.DictionaryTrainer.train_step = real
    import dataclasses

    resumed = train(dataclasses.replace(cfg, resume=True), source=linear_source()[0]).dictionary
    for name, p in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], p, msg=name)
    assert resumed.cfg.target_scale == whole.cfg.target_scale


def test_many_transcoders_from_one_pass(model_dir, corpus, tmp_path):
    """Two transcoders (paired in forward order) from one pass of the model, in folders
    named by both points; each is judged on its own target in both regimes."""
    cfgs = [small_cfg(model_dir, corpus, tmp_path / "sweep", hook="mlp_in.0,mlp_in.1", target="mlp_out.0,mlp_out.1",
                      k=k, tokens=3072, eval_tokens=256) for k in (4, 6)]
    results = train_many(cfgs)
    names = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    assert names == [f"mlp_in.{i}-to-mlp_out.{i}-topk-k{k}-x4-lr0.002" for i in (0, 1) for k in (4, 6)]
    for r in results:
        ev = json.loads((r.out / "eval.json").read_text())
        assert ev["dictionary"]["transcoder"] and ev["dictionary"]["target"] == r.dictionary.cfg.target
        for regime in ("fixed", "documents"):
            assert ev[regime]["fvu"] > 0 and ev[regime]["ce_spliced"] > 0 and ev[regime]["ce_zero"] > 0


# ----------------------------------------------------------------------- evaluation
def test_evaluation_reconstructs_and_replaces_the_target(model_dir, corpus, tmp_path):
    """FVU is the target's, and the spliced loss is the model's loss with the target
    replaced by the transcoder's output, recomputed here by hand."""
    lm = load_model(str(model_dir))
    torch.manual_seed(0)
    tc = build_dictionary(DictionaryConfig(arch="relu", d_in=32, d_sae=64, hook="mlp_in.1", target="mlp_out.1",
                                           transcoder=True, skip=True, model=str(model_dir), context_length=16))
    with torch.no_grad():
        tc.W_skip.copy_(0.3 * torch.randn(32, 32))
        tc.b_enc.sub_(0.5)
    result = evaluate(tc, lm, dataset=str(corpus), tokens=300, regimes="fixed", context_length=16)
    from saekit.data import ContextStream

    batch = next(iter(ContextStream(str(corpus), lm.tokenizer, context_length=16, batch_size=128, split="heldout")))
    ids, attn = batch.input_ids, batch.attention_mask
    acts = read_activations(lm, ["mlp_in.1", "mlp_out.1"], ids, attn)
    keep = batch.token_mask(keep_bos=False)
    n_seq = result.fixed.n_sequences
    x, y = acts["mlp_in.1"][:n_seq][keep[:n_seq]], acts["mlp_out.1"][:n_seq][keep[:n_seq]]
    with torch.no_grad():
        err = (tc.reconstruct(x) - y).double().pow(2).sum()
    assert result.fixed.fvu == pytest.approx(float(err / (y.double() - y.double().mean(0)).pow(2).sum()), rel=1e-4)

    def replaced(a):
        out = a.clone()
        out[keep[:n_seq]] = tc.reconstruct(acts["mlp_in.1"][:n_seq][keep[:n_seq]])
        return out

    with torch.no_grad(), edit_activations(lm, {"mlp_out.1": replaced}):
        logits = lm.model(input_ids=ids[:n_seq], attention_mask=attn[:n_seq]).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:n_seq, 1:].reshape(-1))
    assert result.fixed.ce_spliced == pytest.approx(float(ce), rel=1e-4)
    assert result.table().splitlines()[0] == f"relu skip transcoder from mlp_in.1 to mlp_out.1 of {model_dir}"


def test_a_sparsify_transcoder_is_evaluated_with_the_target_it_does_not_record(model_dir, corpus, tmp_path, capsys):
    from saekit.cli import main
    from saekit.io.formats import convert
    from saekit.io.saekit_format import save_dictionary

    torch.manual_seed(0)
    tc = build_dictionary(DictionaryConfig(arch="topk", d_in=32, d_sae=64, k=4, hook="mlp_in.1", target="mlp_out.1",
                                           transcoder=True, model=str(model_dir), context_length=16))
    convert(save_dictionary(tc, tmp_path / "tc"), tmp_path / "sparsify", "sparsify")
    args = ["eval", str(tmp_path / "sparsify"), "--hook", "mlp_in.1", "--model", str(model_dir), "--dataset",
            str(corpus), "--tokens", "100", "--regimes", "fixed"]
    assert main(args) == 2
    assert "does not record the hook point it reconstructs; pass --target" in capsys.readouterr().err
    assert main([*args, "--target", "mlp_out.1"]) == 0
    assert "topk transcoder from mlp_in.1 to mlp_out.1" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "tc"), "--target", "mlp_out.2", "--dataset", str(corpus)]) == 2
    assert "--target mlp_out.2: " in capsys.readouterr().err


def test_a_dictionary_says_what_it_is():
    sae = DictionaryConfig(arch="topk", d_in=8, d_sae=16, k=2, hook="resid_post.3", model="m")
    tc = DictionaryConfig(arch="gated", d_in=8, d_sae=16, hook="mlp_in.3", target="mlp_out.3", transcoder=True)
    assert sae.describe() == "topk dictionary on resid_post.3 of m"
    assert tc.describe() == "gated transcoder from mlp_in.3 to mlp_out.3"


def test_reconstruction_figures_need_the_targets():
    tc = build_dictionary(DictionaryConfig(arch="topk", d_in=4, d_sae=8, k=2, transcoder=True))
    with pytest.raises(ConfigError, match="targets="):
        evaluate_reconstruction(tc, torch.randn(10, 4))
    m = evaluate_reconstruction(tc, torch.randn(10, 4), targets=torch.randn(10, 4))
    assert m.n_tokens == 10


def test_a_transcoder_trains_from_an_activation_cache(model_dir, corpus, tmp_path):
    """A cache of both points trains a transcoder and judges it on the cache's held-out
    targets; a cache without the target is refused by name before training."""
    from saekit.activations.cache import cache_activations
    from saekit.config import CacheConfig

    cache_activations(CacheConfig(model=str(model_dir), dataset=str(corpus), hook="mlp_in.1,mlp_out.1",
                                  context_length=32, tokens=3000, heldout_tokens=300, out=str(tmp_path / "c")))
    cfg = small_cfg(model_dir, corpus, tmp_path / "run", hook="mlp_in.1", target="mlp_out.1", skip=True,
                    activation_cache=str(tmp_path / "c"), tokens=2560, eval_tokens=256,
                    model_batch_size=32)  # the default: with a cache the model does not run
    result = train(cfg)
    assert result.dictionary.cfg.target == "mlp_out.1" and result.heldout.n_tokens == 256
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["fixed"]["fvu"] == pytest.approx(result.heldout.fvu)
    with pytest.raises(ConfigError, match="resid_post.1"):
        train(small_cfg(model_dir, corpus, tmp_path / "run2", hook="mlp_in.1", target="resid_post.1",
                        activation_cache=str(tmp_path / "c"), tokens=2560, model_batch_size=32))


@pytest.mark.parametrize("arch", ARCHS)
def test_reset_features_reads_and_writes_along_their_own_directions(arch):
    tc = build_dictionary(DictionaryConfig(arch=arch, d_in=6, d_sae=20, k=3 if ARCHITECTURES[arch].uses_k else None,
                                           transcoder=True, d_out=4))
    idx = torch.tensor([2, 7])
    writes, reads = torch.randn(2, 4), torch.randn(2, 6)
    tc.reset_features(idx, writes, 0.5, reads)
    torch.testing.assert_close(tc.W_dec[idx].detach(), writes / writes.norm(dim=1, keepdim=True))
    torch.testing.assert_close(tc.W_enc[:, idx].detach().T, 0.5 * reads / reads.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("arch", ["relu", "gated"])
def test_a_transcoders_dead_features_are_resampled_along_input_and_target(arch, tmp_path):
    """Resampling points a dead feature's decoder at a badly reconstructed token's target
    and its encoder at that token's input (two different spaces for a transcoder)."""
    source, _, _ = linear_source()
    train(tiny_linear_cfg(tmp_path, arch=arch, expansion=16, dead_after_tokens=600, l1_coeff=40.0), source=source)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("resampled", 0) for r in records) > 0
