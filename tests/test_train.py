"""The trainer end to end on a tiny random-weight model: outputs, exact resume, bad input."""

import json
import math

import pytest
import torch

import saekit
from saekit import TrainConfig, train
from saekit.activations import ArrayActivations
from saekit.errors import CheckpointError, ConfigError, DataError, HookPointError, ModelLoadError


def small_cfg(model_dir, corpus, out, **kw):
    base = dict(
        model=str(model_dir), dataset=str(corpus), hook="resid_post.1", arch="topk", k=4, expansion=4,
        tokens=12_000, context_length=32, batch_size=256, buffer_tokens=2048, model_batch_size=8,
        checkpoint_every=3000, eval_tokens=1024, out=str(out), lr=2e-3, log_every=5,
    )
    base.update(kw)
    if base["arch"] not in ("topk", "batchtopk") and "k" not in kw:
        del base["k"]  # k belongs to the TopK family
    return TrainConfig(**base)


def test_train_writes_a_loadable_run(model_dir, corpus, tmp_path):
    records = []
    result = train(small_cfg(model_dir, corpus, tmp_path / "run"), progress=records.append)
    out = tmp_path / "run"
    for name in ("config.json", "weights.safetensors", "training.json", "log.jsonl", "eval.json", "checkpoint.safetensors"):
        assert (out / name).exists(), name
    assert result.tokens == 12_000 // 256 * 256  # whole batches only
    sae = saekit.load(out)
    assert sae.cfg.hook == "resid_post.1" and sae.cfg.model == str(model_dir) and sae.cfg.arch == "topk"
    assert sae.cfg.act_scale > 0 and sae.cfg.d_in == 32 and sae.cfg.d_sae == 128
    x = torch.randn(2, 5, 32)
    assert sae.encode(x).shape == (2, 5, 128) and sae.reconstruct(x).shape == x.shape
    statuses = [r["status"] for r in records if "status" in r]
    assert statuses[:2] == ["loading the model", "checking the held-out split"] and "training" in statuses
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    phases = [r for r in records if "phase" in r]
    assert {r["phase"] for r in phases} >= {"reading activations from the model"}
    assert all(0 < r["done"] <= r["total"] for r in phases if r["phase"] == "reading activations from the model")
    assert any(r["phase"].startswith("evaluating") for r in phases)  # the final evaluation shows progress
    assert log == [r for r in records if "step" in r] and {"tokens", "loss", "l0", "fvu", "dead_frac", "tokens_per_s", "lr"} <= set(log[-1])
    assert log[-1]["l0"] <= 4
    evaluation = json.loads((out / "eval.json").read_text())
    heldout = evaluation["fixed"]
    assert heldout["n_tokens"] >= 1024 and heldout["fvu"] < 1.0  # better than predicting the mean
    assert result.heldout.fvu == pytest.approx(heldout["fvu"])
    assert evaluation["documents"]["n_tokens"] > 0 and "ce_spliced" in evaluation["documents"]
    assert (out / "report.html").exists()


def test_activation_scale_is_folded(model_dir, corpus, tmp_path):
    """Saved weights act on raw activations: the held-out FVU is computed on raw ones."""
    result = train(small_cfg(model_dir, corpus, tmp_path / "run", tokens=4000, eval_tokens=512))
    lm = saekit.load_model(str(model_dir))
    from saekit.activations import ModelActivations

    n = result.heldout.n_tokens
    raw = ModelActivations(lm, "resid_post.1", dataset=str(corpus), context_length=32).heldout(n)
    assert raw.pow(2).sum(-1).mean().sqrt() == pytest.approx(result.dictionary.cfg.act_scale * math.sqrt(32), rel=0.3)
    metrics = saekit.evaluate_reconstruction(result.dictionary, raw)
    assert metrics.fvu == pytest.approx(result.heldout.fvu, rel=1e-5)


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_interrupted_run_resumes_to_the_same_weights(model_dir, corpus, tmp_path, arch):
    extra = {"relu": dict(l1_coeff=0.5, dead_after_tokens=2000), "jumprelu": dict(l0_coeff=0.1)}.get(arch, {})
    full = train(small_cfg(model_dir, corpus, tmp_path / "full", arch=arch, **extra))

    class Crash(Exception):
        pass

    def crash_after(record):
        if record.get("tokens", 0) >= 7000:  # past the checkpoint at 6000, before the one at 9000
            raise Crash

    with pytest.raises(Crash):
        train(small_cfg(model_dir, corpus, tmp_path / "cut", arch=arch, **extra), progress=crash_after)
    resumed = train(small_cfg(model_dir, corpus, tmp_path / "cut", arch=arch, resume=True, **extra))
    assert resumed.tokens == full.tokens and resumed.steps == full.steps
    for (name, a), b in zip(full.dictionary.state_dict().items(), resumed.dictionary.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), name
    log = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log == sorted(set(log)), "the log repeats steps after resuming"


def test_train_from_cache_for_several_epochs(model_dir, corpus, tmp_path):
    from saekit.activations import ModelActivations, write_activation_cache

    lm = saekit.load_model(str(model_dir))
    src = ModelActivations(lm, "resid_post.1", dataset=str(corpus), context_length=32, model_batch_size=8)
    res = write_activation_cache(src, tmp_path / "cache", 3000, shard_tokens=1000, heldout_tokens=512)
    assert res.tokens == 3000 and res.shards == 3 and res.heldout_tokens == 512
    # the cache holds exactly what the live model source yields
    live, _ = ModelActivations(lm, "resid_post.1", dataset=str(corpus), context_length=32).read_chunk({"contexts": 0}, 3000)
    cached = saekit.activations.CachedActivations(tmp_path / "cache")
    assert torch.allclose(cached.read_chunk({"token": 0}, 3000)[0], live[:3000])
    result = train(TrainConfig(activation_cache=str(tmp_path / "cache"), arch="topk", k=4, expansion=4, tokens=7000,
                               batch_size=256, buffer_tokens=1024, eval_tokens=512, out=str(tmp_path / "run")))
    assert result.tokens == 7000 // 256 * 256 and result.dictionary.cfg.hook == "resid_post.1"
    with pytest.raises(ConfigError, match="contradicts the activation cache"):
        train(TrainConfig(activation_cache=str(tmp_path / "cache"), hook="resid_post.0", tokens=1000, batch_size=100,
                          out=str(tmp_path / "x")))


def test_bos_and_padding_never_reach_the_trainer(model_dir, corpus):
    from saekit.activations import ModelActivations

    lm = saekit.load_model(str(model_dir))
    src = ModelActivations(lm, "resid_post.1", dataset=str(corpus), context_length=32, model_batch_size=8)
    acts, pos = src.read_chunk({"contexts": 0}, 1)
    assert pos["contexts"] == 8 and acts.shape == (8 * 31, 1, 32)  # 8 contexts, BOS dropped; one hook point
    keep = ModelActivations(lm, "resid_post.1", dataset=str(corpus), context_length=32, model_batch_size=8, keep_bos=True)
    assert keep.read_chunk({"contexts": 0}, 1)[0].shape == (8 * 32, 1, 32)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(hook="resid_post.9"), HookPointError, "layer 9"),
        (dict(hook="resid_mid.1"), HookPointError, "resid_post"),
        (dict(dataset="/no/such/file.jsonl"), DataError, "does not exist"),
        (dict(model="/no/such/model"), ModelLoadError, "no such file or folder"),
    ],
)
def test_bad_input_fails_before_training(model_dir, corpus, tmp_path, kw, error, match):
    with pytest.raises(error, match=match):
        train(small_cfg(model_dir, corpus, tmp_path / "run", **kw))
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(arch="sparse"), "unknown architecture"),
        (dict(tokens=0), "--tokens must be positive"),
        (dict(dict_size=32, k=32), "must be smaller than --dict-size"),
        (dict(expansion=4, dict_size=64), "not both"),
        (dict(lr_warmup=0.6, lr_decay=0.6), "exceed"),
        (dict(l1_coeff=1.0), "--l1 applies to gated and relu, not topk"),
        (dict(arch="relu", l0_coeff=1.0), "--l0-coeff applies to jumprelu, not relu"),
        (dict(arch="relu", k=7), "--k applies to batchtopk and topk, not relu"),
        (dict(seed=-1), "--seed"),
        (dict(device="gpu"), "not a device"),
        (dict(batch_size=4096, buffer_tokens=1024), "--buffer-tokens"),
        (dict(resume=True, overwrite=True), "choose one"),
    ],
)
def test_contradictory_config_is_rejected_at_construction(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)


def test_k_not_below_dictionary_size(model_dir, corpus, tmp_path):
    with pytest.raises(ConfigError, match="smaller than the dictionary size"):
        train(small_cfg(model_dir, corpus, tmp_path / "run", k=64, expansion=2))


def test_empty_dataset(model_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError):
        train(small_cfg(model_dir, empty, tmp_path / "run"))


def test_not_a_model(tmp_path, corpus):
    (tmp_path / "folder").mkdir()
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    for bad in (tmp_path / "folder", tmp_path / "bad.gguf"):
        with pytest.raises(ModelLoadError):
            train(TrainConfig(model=str(bad), dataset=str(corpus), out=str(tmp_path / "run"), tokens=1000, batch_size=100))


def test_output_folder_protection_and_resume_errors(model_dir, corpus, tmp_path):
    out = tmp_path / "run"
    train(small_cfg(model_dir, corpus, out, tokens=2000))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(small_cfg(model_dir, corpus, out, tokens=2000, seed=1))
    with pytest.raises(ConfigError, match="differ"):
        train(small_cfg(model_dir, corpus, out, tokens=2000, seed=1, resume=True))
    train(small_cfg(model_dir, corpus, out, tokens=2000, seed=1, overwrite=True))
    assert json.loads((out / "training.json").read_text())["config"]["seed"] == 1
    ckpt = out / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(small_cfg(model_dir, corpus, out, tokens=2000, seed=1, resume=True))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(small_cfg(model_dir, corpus, tmp_path / "fresh", resume=True))


def test_nan_activations_stop_with_the_last_checkpoint_kept(tmp_path):
    x = torch.randn(6000, 16)
    x[4500:] = float("nan")
    cfg = TrainConfig(arch="topk", k=4, dict_size=64, tokens=6000, batch_size=250, buffer_tokens=1500,
                      checkpoint_every=1000, eval_tokens=0, out=str(tmp_path / "run"))
    with pytest.raises(DataError, match=r"NaN or Inf activations in activations: array 0.*row 4500.*checkpoint at 4,000 tokens is kept"):
        train(cfg, source=ArrayActivations([x.numpy()]))
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_bfloat16_model(model_dir, corpus, tmp_path):
    result = train(small_cfg(model_dir, corpus, tmp_path / "run", tokens=2000, dtype="bfloat16"))
    assert result.dictionary.W_dec.dtype == torch.float32  # the dictionary trains in fp32 whatever the model runs in
    assert math.isfinite(result.heldout.fvu)


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_bf16_autocast_trains_in_bf16_and_keeps_fp32_weights(model_dir, corpus, tmp_path, arch, monkeypatch):
    """--autocast bf16: the dictionary's products run in bf16 (seen at the encoder's
    matmul), its weights stay fp32, it learns, and the run may resume in fp32 (a
    precision, like a device, is how a run executes, not what it is)."""
    seen = []
    real_addmm = torch.addmm

    def watching(*args, **kw):
        out = real_addmm(*args, **kw)
        seen.append(out.dtype)
        return out

    class Crash(Exception):
        pass

    def crash_after(record):
        if record.get("tokens", 0) >= 4500:  # past the checkpoint at 4000
            raise Crash

    extra = {"jumprelu": dict(l0_coeff=0.1)}.get(arch, {})
    cfg = dict(arch=arch, tokens=8000, checkpoint_every=2000, **extra)
    monkeypatch.setattr(torch, "addmm", watching)
    result = train(small_cfg(model_dir, corpus, tmp_path / "run", autocast="bf16", **cfg))
    assert torch.bfloat16 in seen and all(p.dtype == torch.float32 for p in result.dictionary.parameters())
    assert result.heldout.fvu < 1.0
    monkeypatch.setattr(torch, "addmm", real_addmm)
    with pytest.raises(Crash):
        train(small_cfg(model_dir, corpus, tmp_path / "cut", autocast="bf16", **cfg), progress=crash_after)
    resumed = train(small_cfg(model_dir, corpus, tmp_path / "cut", resume=True, **cfg))
    assert resumed.tokens == result.tokens and math.isfinite(resumed.heldout.fvu)
    with pytest.raises(ConfigError, match="--autocast"):
        small_cfg(model_dir, corpus, tmp_path / "x", autocast="fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(model_dir, corpus, tmp_path):
    with pytest.raises(ConfigError, match="no GPU"):
        train(small_cfg(model_dir, corpus, tmp_path / "run", device="cuda"))


def test_wandb_offline(model_dir, corpus, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(small_cfg(model_dir, corpus, tmp_path / "run", tokens=2000, wandb=True))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


def test_resampling_revives_dead_features_and_resets_their_adam_moments():
    from saekit.dictionaries import DictionaryConfig, build_dictionary
    from saekit.training.dead_features import resample_dead

    torch.manual_seed(0)
    sae = build_dictionary(DictionaryConfig(arch="relu", d_in=8, d_sae=32))
    with torch.no_grad():
        sae.b_enc[:16] = -100.0  # features 0..15 can never fire
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(64, 8)
    sae(x, params=saekit.dictionaries.LossParams(sparsity_coeff=0.1)).loss.backward()
    sae.remove_parallel_decoder_grad()
    opt.step()
    sae.after_step()
    dead = torch.arange(32) < 16
    x_hat = sae.reconstruct(x).detach()
    idx = resample_dead(sae, opt, x, x_hat, dead, torch.Generator().manual_seed(0))
    assert idx.tolist() == list(range(16))
    assert (sae.encode(x)[:, :16] > 0).any(0).sum() >= 8  # revived features fire again
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-5)
    # each new decoder row points at some input's offset from b_dec
    cands = (x - sae.b_dec).detach()
    cands = cands / cands.norm(dim=1, keepdim=True)
    assert ((sae.W_dec[:16] @ cands.T).max(1).values > 0.999).all()
    state = opt.state[sae.W_dec]
    assert (state["exp_avg"][:16] == 0).all() and (state["exp_avg"][16:] != 0).any()
    assert (opt.state[sae.W_enc]["exp_avg_sq"][:, :16] == 0).all()


# ------------------------------------------------- regressions from code review


def test_overwrite_with_a_bad_config_keeps_the_old_run(model_dir, corpus, tmp_path):
    out = tmp_path / "run"
    train(small_cfg(model_dir, corpus, out, tokens=2000))
    with pytest.raises(ConfigError, match="smaller than the dictionary size"):
        train(small_cfg(model_dir, corpus, out, tokens=2000, k=500, overwrite=True))
    assert saekit.load(out).cfg.k == 4  # untouched


def test_a_run_that_died_before_its_first_checkpoint_can_start_again(model_dir, corpus, tmp_path):
    out = tmp_path / "run"

    def crash(record):
        if "step" in record:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(model_dir, corpus, out, tokens=4000, checkpoint_every=3000), progress=crash)
    assert (out / "training.json").exists() and not (out / "checkpoint.safetensors").exists()
    train(small_cfg(model_dir, corpus, out, tokens=4000, checkpoint_every=3000))  # no --overwrite needed


def test_norm_filter_counts_trained_tokens(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30_000, 16, generator=g)
    x[::10] *= 50  # one token in ten is extreme
    cfg = TrainConfig(arch="topk", k=4, dict_size=64, tokens=12_000, batch_size=200, buffer_tokens=2000,
                      eval_tokens=0, max_norm_ratio=5, out=str(tmp_path / "run"), log_every=1)
    result = train(cfg, source=ArrayActivations([x.numpy()]))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert result.tokens == 12_000 and log[-1]["tokens"] == 12_000
    # the decay schedule ran to its end (read at the middle of the last step)
    assert log[-1]["lr"] == pytest.approx(cfg.learning_rate(64) * (100 / 12_000) / cfg.lr_decay)


def test_heldout_problems_are_found_before_training(tmp_path):
    x = torch.randn(5000, 16)
    cfg = TrainConfig(arch="topk", k=4, dict_size=64, tokens=4000, batch_size=200, buffer_tokens=2000, out=str(tmp_path / "run"))
    with pytest.raises(DataError, match="--eval-tokens 0"):
        train(cfg, source=ArrayActivations([x.numpy()]))
    with pytest.raises(DataError, match="--eval-tokens 0"):
        train(cfg, source=ArrayActivations([x.numpy()], heldout=x[:0].numpy()))
    assert not (tmp_path / "run").exists()


def test_resume_survives_a_log_line_cut_by_the_crash(model_dir, corpus, tmp_path):
    out = tmp_path / "run"

    def crash(record):
        if record.get("tokens", 0) >= 4000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(model_dir, corpus, out, tokens=6000), progress=crash)
    with open(out / "log.jsonl", "a") as fh:
        fh.write('{"step": 99, "tok')
    train(small_cfg(model_dir, corpus, out, tokens=6000, resume=True))
    assert all(json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())


def test_resume_reads_the_checkpoint_once_unless_it_changed(model_dir, corpus, tmp_path, monkeypatch):
    import os

    from saekit.training import run_folder

    out = tmp_path / "run"

    def crash(record):
        if record.get("tokens", 0) >= 4000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(model_dir, corpus, out, tokens=6000), progress=crash)
    reads = []
    real = run_folder.load_checkpoint
    monkeypatch.setattr(run_folder, "load_checkpoint", lambda folder: reads.append(folder) or real(folder))
    train(small_cfg(model_dir, corpus, out, tokens=6000, resume=True))
    assert reads == [out]  # checked before the model loads and under the lock, read once

    # A checkpoint replaced between two checks is read again.
    cache = run_folder.CheckpointReads()
    first = cache.load(out)
    assert cache.load(out) is first and len(reads) == 2
    replaced = out / "replaced.tmp"
    replaced.write_bytes((out / "checkpoint.safetensors").read_bytes())
    os.replace(replaced, out / "checkpoint.safetensors")
    again = cache.load(out)
    assert again is not first and again["step"] == first["step"] and len(reads) == 3


def test_batchtopk_inference_keeps_about_k_features(tmp_path):
    x = torch.randn(24_000, 16)
    cfg = TrainConfig(arch="batchtopk", k=4, dict_size=64, tokens=4000, batch_size=500, buffer_tokens=2000,
                      eval_tokens=4000, out=str(tmp_path / "run"))
    result = train(cfg, source=ArrayActivations([x[:20_000].numpy()], heldout=x[20_000:].numpy()))
    assert 3.0 < result.heldout.l0 < 5.0


def test_dictionary_trained_from_cache_records_the_cache_context_length(model_dir, corpus, tmp_path):
    from saekit.activations import ModelActivations, write_activation_cache

    src = ModelActivations(saekit.load_model(str(model_dir)), "resid_post.1", dataset=str(corpus), context_length=16)
    write_activation_cache(src, tmp_path / "cache", 2000, heldout_tokens=256)
    result = train(TrainConfig(activation_cache=str(tmp_path / "cache"), k=4, expansion=2, tokens=2000,
                               batch_size=200, buffer_tokens=1000, eval_tokens=256, out=str(tmp_path / "run")))
    assert result.dictionary.cfg.context_length == 16
