"""Issue 8: the trainer as a careless user meets it (odd sizes, short runs, Ctrl-C,
crashes, two runs in one folder, corrupt files). Each test failed before its fix."""

import dataclasses
import json
import multiprocessing
import os
import signal

import numpy as np
import pytest
import torch

import saekit
from saekit import TrainConfig, train
from saekit.activations import ActivationBuffer, ArrayActivations, CachedActivations, write_activation_cache
from saekit.dictionaries import DictionaryConfig, LossParams, build_dictionary
from saekit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    FolderBusyError,
    OutputError,
    RunInterrupted,
)
from saekit.io.files import FolderLock
from saekit.training import DictionaryTrainer
from saekit.training.log_interval import TIMING_FIELDS


def array_cfg(tmp_path, **kw):
    base = dict(arch="topk", k=4, dict_size=64, tokens=4000, batch_size=256, buffer_tokens=1000,
                eval_tokens=0, out=str(tmp_path / "run"), log_every=1)
    base.update(kw)
    if base["arch"] not in ("topk", "batchtopk") and "k" not in kw:
        del base["k"]
    return TrainConfig(**base)


def gaussian(n, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def read_log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ item 1: short batches
@pytest.mark.parametrize("buffer_tokens, max_norm_ratio", [(1000, None), (2049, None), (1000, 2.0)])
def test_every_batch_is_full(tmp_path, buffer_tokens, max_norm_ratio):
    """A buffer that is not a multiple of the batch, or tokens dropped by the norm cap,
    used to yield the chunk's remainder as a short batch of its own."""
    x = gaussian(20_000)
    x[::7] *= 10
    cfg = array_cfg(tmp_path, tokens=5000, buffer_tokens=buffer_tokens, max_norm_ratio=max_norm_ratio)
    buffer = ActivationBuffer(ArrayActivations([x.numpy()]), cfg)
    if max_norm_ratio:
        buffer.set_norm_cap(float(max_norm_ratio * buffer.peek_sample().norm(dim=-1).median()))
    sizes = [b.shape[0] for b in buffer]
    assert set(sizes) == {256} and sum(sizes) == 5000 // 256 * 256


def test_carried_rows_survive_an_exact_resume(tmp_path):
    """The rows carried between chunks are part of the buffer's state."""
    x = gaussian(20_000)
    cfg = array_cfg(tmp_path, tokens=5000, buffer_tokens=1000)
    source = ArrayActivations([x.numpy()])
    whole = list(ActivationBuffer(source, cfg))
    first = ActivationBuffer(source, cfg)
    it = iter(first)
    head = [next(it) for _ in range(6)]  # mid-chunk, with rows carried into it
    state = first.state()
    assert state["carry"].shape[0] > 0
    rest = list(ActivationBuffer(source, cfg, state=state))
    assert len(head) + len(rest) == len(whole)
    assert all(torch.equal(a, b) for a, b in zip(head + rest, whole))


def test_auxk_loss_is_bounded_on_a_one_token_batch():
    """It was divided by the batch's residual variance: 0 for one token, so ~1e9."""
    sae = build_dictionary(DictionaryConfig(arch="topk", d_in=16, d_sae=64, k=4))
    x = torch.randn(1, 16)
    pre = sae.pre_acts(x)
    x_hat = sae.decode(sae.batch_activate(pre))
    aux = sae.auxk_loss(x, x_hat, pre, LossParams(dead_mask=torch.ones(64, dtype=torch.bool)))
    assert 0 <= float(aux.detach()) < 100  # was ~1e9


# ----------------------------------------------------------- item 2: BatchTopK's threshold
def test_batchtopk_threshold_does_not_depend_on_a_short_last_batch(tmp_path):
    x = gaussian(26_000)
    l0 = {}
    for tokens in (4000, 4001):
        cfg = array_cfg(tmp_path, arch="batchtopk", tokens=tokens, batch_size=500, buffer_tokens=2000,
                        eval_tokens=4000, out=str(tmp_path / f"run{tokens}"))
        result = train(cfg, source=ArrayActivations([x[:20_000].numpy()], heldout=x[20_000:].numpy()))
        l0[tokens] = result.heldout.l0
    assert 3.0 < l0[4000] < 5.0 and l0[4001] == pytest.approx(l0[4000], rel=0.05)


def test_batchtopk_threshold_is_set_on_many_recent_batches(tmp_path):
    """Calibrated with the final weights on the last 8,192 training inputs (41 batches of 200)."""
    x = gaussian(30_000)
    cfg = array_cfg(tmp_path, arch="batchtopk", tokens=20_000, batch_size=200, buffer_tokens=2000)
    result = train(cfg, source=ArrayActivations([x.numpy()]))
    sample = saekit.io.checkpoint.load_checkpoint(tmp_path / "run")["calibration"]["data"]
    assert sample.shape[0] == 8200
    sae = result.dictionary
    raw = sample * sae.cfg.act_scale
    assert (sae.encode(raw) > 0).sum(-1).float().mean() == pytest.approx(4.0, abs=0.01)


# ------------------------------------------------------- item 3: figures on tiny batches
def test_batch_size_one_logs_meaningful_figures(tmp_path):
    x = gaussian(3000)
    cfg = array_cfg(tmp_path, tokens=600, batch_size=1, buffer_tokens=100, log_every=50, lr_warmup=0.0)
    train(cfg, source=ArrayActivations([x.numpy()]))
    log = read_log(tmp_path / "run")
    assert all(r["fvu"] is not None and 0 < r["fvu"] < 3 for r in log)


def test_fvu_is_not_known_from_a_single_token(tmp_path):
    x = gaussian(3000)
    train(array_cfg(tmp_path, tokens=20, batch_size=1, buffer_tokens=100, log_every=1),
          source=ArrayActivations([x.numpy()]))
    assert all(r["fvu"] is None for r in read_log(tmp_path / "run"))


# ------------------------------------------------------------ item 4: dead not yet known
def test_dead_fraction_is_unknown_until_a_window_has_passed(tmp_path):
    x = gaussian(20_000)
    train(array_cfg(tmp_path, tokens=6000, dead_after_tokens=3000, log_every=2), source=ArrayActivations([x.numpy()]))
    log = read_log(tmp_path / "run")
    assert all(r["dead_frac"] is None for r in log if r["tokens"] < 3000)
    assert all(isinstance(r["dead_frac"], float) for r in log if r["tokens"] >= 3000)


# ------------------------------------------- item 5: resampling counters, first step's lr
def test_first_step_learns():
    cfg = TrainConfig(arch="relu", dict_size=64, tokens=10_000, batch_size=100, lr_warmup=0.5)
    trainer = DictionaryTrainer(cfg, DictionaryConfig(arch="relu", d_in=16, d_sae=64), torch.device("cpu"))
    trainer.init_from_sample(gaussian(1000))
    before = trainer.sae.W_enc.detach().clone()
    trainer.train_step(gaussian(100, seed=1))
    assert trainer.opt.param_groups[0]["lr"] > 0
    assert not torch.equal(before, trainer.sae.W_enc)


def test_resampling_resets_only_the_features_it_resampled(monkeypatch):
    import saekit.training.trainer as trainer_module

    cfg = TrainConfig(arch="relu", dict_size=64, tokens=10_000, batch_size=100, dead_after_tokens=100)
    trainer = DictionaryTrainer(cfg, DictionaryConfig(arch="relu", d_in=16, d_sae=64), torch.device("cpu"))
    trainer.init_from_sample(gaussian(1000))
    with torch.no_grad():
        trainer.sae.b_enc[:10] = -1e6  # features 0-9 never fire
    monkeypatch.setattr(trainer_module, "resample_dead", lambda sae, opt, x, x_hat, dead, gen, target=None: dead.nonzero().squeeze(1)[:3])
    trainer.train_step(gaussian(100, seed=1))
    counters = trainer.tracker.tokens_since_fired
    assert counters[:3].tolist() == [0, 0, 0] and bool((counters[3:10] >= 100).all())


# --------------------------------------------------------------- item 7: one run per folder
def test_a_second_run_into_a_locked_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    x = gaussian(5000)
    with FolderLock(out, "train"):
        with pytest.raises(FolderBusyError, match=f"pid {os.getpid()}"):
            train(array_cfg(tmp_path), source=ArrayActivations([x.numpy()]))
    train(array_cfg(tmp_path), source=ArrayActivations([x.numpy()]))  # free again once released


def _hold_lock(folder, ready):
    lock = FolderLock(folder, "train")
    lock.acquire()
    ready.set()
    signal.pause()


def test_a_killed_run_does_not_leave_its_folder_locked(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(tmp_path, ready))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(FolderBusyError, match=f"pid {proc.pid}"):
            FolderLock(tmp_path, "train").acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    with FolderLock(tmp_path, "train"):
        pass


# --------------------------------------------------------- item 8: --overwrite is complete
def test_overwrite_removes_every_file_a_run_wrote(tmp_path):
    x = gaussian(8000)
    source = ArrayActivations([x[:6000].numpy()], heldout=x[6000:].numpy())
    train(array_cfg(tmp_path, eval_tokens=500), source=source)
    assert (tmp_path / "run" / "report.html").exists() and (tmp_path / "run" / "eval.json").exists()
    train(array_cfg(tmp_path, overwrite=True), source=source)
    assert not (tmp_path / "run" / "report.html").exists() and not (tmp_path / "run" / "eval.json").exists()


def test_overwrite_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="notes.txt"):
        train(array_cfg(tmp_path, overwrite=True), source=ArrayActivations([gaussian(5000).numpy()]))
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


class _Chunks:
    """A model-like source that returns more than asked for, like a forward batch does."""

    model_name, hooks, d, context_length, dataset, keep_bos, seed, dataset_name = "m", ("resid_post.0",), 4, 8, None, False, 0, "d"

    def start_position(self):
        return {"token": 0}

    def read_chunk(self, position, min_tokens):
        n = min_tokens + 700
        start = position["token"]
        return torch.arange(start, start + n, dtype=torch.float32)[:, None, None].expand(n, 1, 4).clone(), {"token": start + n}

    def heldout(self, n):
        return torch.zeros(n, 1, 4)


def test_cache_shards_hold_exactly_shard_tokens_and_lose_nothing(tmp_path):
    res = write_activation_cache(_Chunks(), tmp_path / "cache", 5000, shard_tokens=1000, heldout_tokens=10)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert [s["tokens"] for s in manifest["shards"]] == [1000] * 5 and res.tokens == 5000
    values = np.concatenate([np.load(tmp_path / "cache" / s["file"])[:, 0, 0] for s in manifest["shards"]])
    assert np.array_equal(values, np.arange(5000))  # in order, none skipped or repeated


def test_cache_overwrite_leaves_no_stale_shard(tmp_path):
    write_activation_cache(_Chunks(), tmp_path / "cache", 5000, shard_tokens=1000, heldout_tokens=10)
    write_activation_cache(_Chunks(), tmp_path / "cache", 1500, shard_tokens=1000, heldout_tokens=10, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "cache").glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    assert CachedActivations(tmp_path / "cache").total == 1500


# ------------------------------------------------------------ item 9: unwritable outputs
def test_out_naming_a_file_fails_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        train(array_cfg(tmp_path, out=str(tmp_path / "afile")), source=ArrayActivations([gaussian(5000).numpy()]))


def test_read_only_output_folder_fails_before_any_work(tmp_path, monkeypatch):
    # Checked through os.access, which is what a non-root user's read-only folder fails
    # (these tests may run as root, for whom chmod does not stop writes).
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "ro") else real(p, mode))
    with pytest.raises(OutputError, match="read-only|permission denied"):
        train(array_cfg(tmp_path, out=str(tmp_path / "ro" / "run")), source=ArrayActivations([gaussian(5000).numpy()]))
    assert not (tmp_path / "ro" / "run").exists()


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import safetensors.torch

    real, calls = safetensors.torch.save_file, []

    def save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise safetensors.SafetensorError("No space left on device (os error 28)")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    cfg = array_cfg(tmp_path, tokens=4000, batch_size=250, checkpoint_every=1000)
    with pytest.raises(OutputError, match=r"disk is full.*checkpoint at 1,000 tokens is kept"):
        train(cfg, source=ArrayActivations([gaussian(5000).numpy()]))
    assert saekit.io.checkpoint.load_checkpoint(tmp_path / "run")["tokens_done"] == 1000
    assert not list((tmp_path / "run").glob(".*.tmp"))


# ---------------------------------------------------------------- item 11: blame the source
def test_nan_in_an_activation_cache_names_the_shard(tmp_path):
    write_activation_cache(_Chunks(), tmp_path / "cache", 3000, shard_tokens=1000, heldout_tokens=10)
    shard = tmp_path / "cache" / "shard-00001.npy"
    arr = np.load(shard)
    arr[17] = np.nan
    np.save(shard, arr)
    # The checksum would catch the change first; record it, as if the NaN had been written by the model.
    from saekit.activations.cache import file_checksum

    manifest_path = tmp_path / "cache" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][1].update(bytes=shard.stat().st_size, checksum=file_checksum(shard))
    manifest_path.write_text(json.dumps(manifest))
    cfg = TrainConfig(activation_cache=str(tmp_path / "cache"), k=2, dict_size=16, tokens=3000, batch_size=100,
                      buffer_tokens=1000, eval_tokens=0, out=str(tmp_path / "run"))
    with pytest.raises(DataError, match=r"shard-00001\.npy.*row 17.*saekit cache"):
        train(cfg)


def test_nan_in_a_checkpoint_is_called_corrupt(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    cfg = array_cfg(tmp_path, tokens=2000, checkpoint_every=1000)
    x = gaussian(5000)
    train(cfg, source=ArrayActivations([x.numpy()]))
    path = tmp_path / "run" / "checkpoint.safetensors"
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    name = next(k for k in tensors if "W_dec" in k)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=r"corrupt.*W_dec.*NaN"):
        train(array_cfg(tmp_path, tokens=3000, checkpoint_every=1000, resume=True), source=ArrayActivations([x.numpy()]))


# ------------------------------------------------------------ item 13: resume, types, Ctrl-C
def _crash_after(tokens):
    def crash(record):
        if record.get("tokens", 0) >= tokens:
            raise KeyboardInterrupt

    return crash


def test_ctrl_c_says_where_resume_continues(tmp_path):
    x = gaussian(8000)
    cfg = array_cfg(tmp_path, tokens=4000, batch_size=250, checkpoint_every=1000)
    with pytest.raises(RunInterrupted, match=r"checkpoint at 2,000 tokens.*--resume"):
        train(cfg, source=ArrayActivations([x.numpy()]), progress=_crash_after(2500))


def test_resume_accepts_spelled_out_defaults_and_rejects_changes_without_training_json(model_dir, corpus, tmp_path):
    from test_train import small_cfg

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(model_dir, corpus, out, hook=None, lr=None, tokens=4000, checkpoint_every=1000),
              progress=_crash_after(2000))
    hook = saekit.load_model(str(model_dir)).n_layers  # the default: 30% of the depth
    spelled = f"resid_post.{min(hook - 1, round(0.3 * hook))}"
    same_path = str(model_dir.parent / "." / model_dir.name)
    result = train(small_cfg(model_dir, corpus, out, hook=spelled, model=same_path, lr=None, tokens=4000,
                             checkpoint_every=1000, resume=True))
    assert result.tokens == 4000 // 256 * 256  # whole batches
    (out / "training.json").unlink()
    with pytest.raises(ConfigError, match="k: 4 → 3"):
        train(small_cfg(model_dir, corpus, out, hook=spelled, k=3, lr=None, tokens=4000, checkpoint_every=1000,
                        resume=True))


@pytest.mark.parametrize("kw, match", [(dict(tokens="100"), "--tokens.*integer"), (dict(k=2.5), "--k.*integer"),
                                       (dict(keep_bos="yes"), "--keep-bos"), (dict(out=" "), "--out is empty"),
                                       (dict(context_length=2), "at least 3 .*and the token it predicts"),
                                       (dict(context_length=1, keep_bos=True), "at least 2")])
def test_config_types_are_checked(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)


def test_a_context_of_two_keeps_one_spliced_prediction_only_with_bos():
    """[BOS, t]: without BOS spliced, the one prediction scored is BOS's own, which no
    splice changes (a perfect-looking loss recovered); with BOS spliced it is changed."""
    assert TrainConfig(context_length=2, keep_bos=True).context_length == 2
    assert TrainConfig(context_length=3).context_length == 3


def test_k_against_expansion_is_checked_before_the_model_loads(model_dir, corpus, tmp_path, monkeypatch):
    from test_train import small_cfg

    import saekit.activations.sources

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(saekit.activations.sources, "load_model", no_load)
    with pytest.raises(ConfigError, match="--k 200 must be smaller than the dictionary size 128"):
        train(small_cfg(model_dir, corpus, tmp_path / "run", k=200, expansion=4))


# ------------------------------------------------------------------ item 17, 18: units, BOS
def test_log_mse_is_in_raw_units_and_loss_terms_are_named(tmp_path):
    x = gaussian(8000) * 7.0
    result = train(array_cfg(tmp_path, tokens=3000, log_every=3), source=ArrayActivations([x.numpy()]))
    scale = result.dictionary.cfg.act_scale
    for r in read_log(tmp_path / "run"):
        assert r["mse"] == pytest.approx(r["loss_mse"] * scale**2, rel=1e-4)
        assert {"loss", "loss_mse", "loss_auxk"} <= set(r) and "auxk" not in r


def test_keep_bos_is_recorded_in_the_dictionary(model_dir, corpus, tmp_path):
    from test_train import small_cfg

    result = train(small_cfg(model_dir, corpus, tmp_path / "run", tokens=1000, keep_bos=True, eval_tokens=0))
    assert result.dictionary.cfg.keep_bos and saekit.load(tmp_path / "run").cfg.keep_bos
    info = json.loads((tmp_path / "run" / "training.json").read_text())
    assert info["resolved"]["keep_bos"] is True and info["resolved"]["hook"] == "resid_post.1"


def test_resampling_on_an_unlogged_step_reaches_the_log(tmp_path):
    x = gaussian(20_000)
    x[:, :8] *= 20  # a few directions dominate, so many features die
    cfg = array_cfg(tmp_path, arch="relu", l1_coeff=5.0, tokens=12_000, batch_size=100, dead_after_tokens=1000,
                    log_every=13)  # resampling every 10 steps never falls on a logged step
    train(cfg, source=ArrayActivations([x.numpy()]))
    assert sum(r.get("resampled", 0) for r in read_log(tmp_path / "run")) > 0


def test_the_calibration_sample_is_the_last_rows_trained_on():
    from saekit.training.trainer import CalibrationSample

    sample = CalibrationSample(batch_size=3000, d=2, device=torch.device("cpu"))  # 9,000 rows: 3 batches
    batches = [torch.full((3000, 2), float(i)) for i in range(5)]
    for b in batches:
        sample.add(b)
    assert sorted(set(sample.sample()[:, 0].tolist())) == [2.0, 3.0, 4.0]
    restored = CalibrationSample(batch_size=3000, d=2, device=torch.device("cpu"))
    restored.load(sample.state())
    restored.add(batches[0])
    sample.add(batches[0])
    assert torch.equal(restored.sample(), sample.sample())


def test_a_full_disk_while_logging_is_one_clear_error(tmp_path, monkeypatch):
    import errno

    import saekit.training.run_folder as run_folder

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(run_folder, "open", lambda *a, **k: FullDisk(), raising=False)
    with pytest.raises(OutputError, match=r"log\.jsonl: the disk is full"):
        train(array_cfg(tmp_path), source=ArrayActivations([gaussian(5000).numpy()]))


def test_ctrl_c_during_a_write_leaves_no_temporary_file(tmp_path):
    from saekit.io.files import atomic_write_with

    def write(tmp):
        tmp.write_bytes(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(tmp_path / "checkpoint.safetensors", write)
    assert list(tmp_path.iterdir()) == []


def test_resume_from_a_cache_named_by_another_path(model_dir, corpus, tmp_path, monkeypatch):
    from saekit.activations import ModelActivations

    src = ModelActivations(saekit.load_model(str(model_dir)), "resid_post.1", dataset=str(corpus), context_length=16)
    write_activation_cache(src, tmp_path / "cache", 3000, heldout_tokens=0)
    monkeypatch.chdir(tmp_path)
    cfg = dict(activation_cache="cache", k=4, expansion=2, tokens=3000, batch_size=100, buffer_tokens=1000,
               checkpoint_every=1000, eval_tokens=0, out="run")
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg), progress=_crash_after(1500))
    cfg["activation_cache"] = str(tmp_path / "cache")
    assert train(TrainConfig(**cfg, resume=True)).tokens == 3000


def test_resume_refuses_data_that_changed_since(model_dir, corpus, tmp_path):
    """The same path with other contents (rewritten, reordered, cut short; a cache written
    again with another seed) would feed other batches and hold out other text: refused
    before the model loads, naming the change. A moved copy of the same text resumes."""
    from saekit.activations import ModelActivations
    from test_train import small_cfg

    text = tmp_path / "texts.jsonl"
    text.write_text(corpus.read_text())
    cfg = small_cfg(model_dir, text, tmp_path / "run", tokens=4000, checkpoint_every=1000, eval_tokens=0)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=_crash_after(2000))
    lines = corpus.read_text().splitlines()
    text.write_text("\n".join(reversed(lines)) + "\n")  # the same documents, in another order
    with pytest.raises(ConfigError, match="the data the run in .* trained on has changed since"):
        train(dataclasses.replace(cfg, resume=True))
    text.write_text(corpus.read_text())
    assert train(dataclasses.replace(cfg, resume=True)).tokens == 4000 // 256 * 256

    lm = saekit.load_model(str(model_dir))
    for seed in (0, 5):
        src = ModelActivations(lm, "resid_post.1", dataset=str(corpus), context_length=16, seed=seed)
        write_activation_cache(src, tmp_path / "cache", 3000, heldout_tokens=0, overwrite=seed > 0)
        if seed == 0:
            cached = TrainConfig(activation_cache=str(tmp_path / "cache"), k=4, expansion=2, tokens=3000,
                                 batch_size=100, buffer_tokens=1000, checkpoint_every=1000, eval_tokens=0,
                                 out=str(tmp_path / "cached"))
            with pytest.raises(KeyboardInterrupt):
                train(cached, progress=_crash_after(1500))
    with pytest.raises(ConfigError, match="has changed since"):
        train(dataclasses.replace(cached, resume=True))


def test_a_diverged_run_says_so(tmp_path, caplog):
    x = gaussian(8000)
    with caplog.at_level("WARNING", logger="saekit.training"):
        train(array_cfg(tmp_path, tokens=4000, lr=10.0, lr_warmup=0.0), source=ArrayActivations([x.numpy()]))
    assert "worse than predicting the mean" in caplog.text and "lower --lr" in caplog.text


def test_a_resumed_run_writes_the_log_of_an_uninterrupted_one(tmp_path):
    """The log interval's partial sums are in the checkpoint (resampling counts included)."""
    x = gaussian(30_000)
    x[:, :4] *= 20
    kw = dict(arch="relu", l1_coeff=5.0, tokens=12_000, batch_size=100, buffer_tokens=1500, dead_after_tokens=700,
              checkpoint_every=1000, log_every=7)
    train(array_cfg(tmp_path, out=str(tmp_path / "full"), **kw), source=ArrayActivations([x.numpy()]))
    with pytest.raises(KeyboardInterrupt):
        train(array_cfg(tmp_path, out=str(tmp_path / "cut"), **kw), source=ArrayActivations([x.numpy()]),
              progress=_crash_after(6400))
    train(array_cfg(tmp_path, out=str(tmp_path / "cut"), resume=True, **kw), source=ArrayActivations([x.numpy()]))

    def strip(log):
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in log]

    full, cut = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    assert any("resampled" in r for r in full)
    assert strip(cut) == strip(full)


def test_a_failed_run_or_conversion_leaves_no_empty_folder(tmp_path):
    from saekit.io.formats import convert

    x = gaussian(5000)
    x[100] = float("nan")
    with pytest.raises(DataError):
        train(array_cfg(tmp_path), source=ArrayActivations([x.numpy()]))
    assert not (tmp_path / "run").exists()
    sae = build_dictionary(DictionaryConfig(arch="jumprelu", d_in=8, d_sae=16))
    saekit.save(sae, tmp_path / "jr")
    with pytest.raises(saekit.SaekitError, match="sparsify"):
        convert(tmp_path / "jr", tmp_path / "as-sparsify", "sparsify")
    assert not (tmp_path / "as-sparsify").exists()


def test_ctrl_c_while_caching_says_the_cache_is_incomplete(tmp_path):
    def stop(done):
        if done >= 2000:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted, match="incomplete cache.*--overwrite"):
        write_activation_cache(_Chunks(), tmp_path / "cache", 5000, shard_tokens=1000, heldout_tokens=10, progress=stop)
    with pytest.raises(DataError, match="manifest.json is missing"):
        CachedActivations(tmp_path / "cache")
    write_activation_cache(_Chunks(), tmp_path / "cache", 3000, shard_tokens=1000, heldout_tokens=10, overwrite=True)
    assert CachedActivations(tmp_path / "cache").total == 3000
