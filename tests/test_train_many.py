"""Many dictionaries from one pass: several hook points and a sweep of configurations,
each with its own folder, all resumable together."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import small_cfg

import saekit
from saekit import TrainConfig, train, train_many
from saekit.activations import ArrayActivations
from saekit.cli import main
from saekit.errors import CheckpointError, ConfigError
from saekit.io.checkpoint import (
    CHECKPOINT_FILE,
    PENDING_FILE,
    load_checkpoint,
    recover_checkpoints,
    save_checkpoint,
    save_checkpoints,
)


def weights(folder):
    return saekit.load(folder).state_dict()


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_each_member_of_a_sweep_equals_the_run_that_trains_it_alone(model_dir, corpus, tmp_path):
    """Same seed, same batches: a dictionary of the sweep is bit-identical to a run with its flags."""
    results = train_many([small_cfg(model_dir, corpus, tmp_path / "sweep", hook="resid_post.0,resid_post.1", k=k,
                                    tokens=3000) for k in (4, 8)])
    names = [r.out.name for r in results]
    assert names == ["resid_post.0-topk-k4-x4-lr0.002", "resid_post.0-topk-k8-x4-lr0.002", "resid_post.1-topk-k4-x4-lr0.002", "resid_post.1-topk-k8-x4-lr0.002"]
    for r in results:
        for name in ("config.json", "weights.safetensors", "training.json", "log.jsonl", "eval.json", CHECKPOINT_FILE):
            assert (r.out / name).exists(), (r.out, name)
        info = json.loads((r.out / "training.json").read_text())
        assert info["config"]["hook"] == r.dictionary.cfg.hook and info["config"]["out"] == str(r.out)
    alone = train(small_cfg(model_dir, corpus, tmp_path / "alone", hook="resid_post.1", k=8, tokens=3000))
    assert same(weights(tmp_path / "sweep" / "resid_post.1-topk-k8-x4-lr0.002"), weights(alone.out))
    assert not same(weights(tmp_path / "sweep" / "resid_post.1-topk-k4-x4-lr0.002"), weights(alone.out))
    logged = [json.loads(line) for line in (alone.out / "log.jsonl").read_text().splitlines()]
    swept = [json.loads(line) for line in (tmp_path / "sweep" / "resid_post.1-topk-k8-x4-lr0.002" / "log.jsonl").read_text().splitlines()]
    from saekit.training.log_interval import TIMING_FIELDS as drop
    assert [{k: v for k, v in r.items() if k not in drop} for r in logged] == [
        {k: v for k, v in r.items() if k not in drop} for r in swept]


def test_without_out_a_sweep_goes_under_runs_and_the_model_name(model_dir, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfgs = [dataclasses.replace(small_cfg(model_dir, corpus, "unused", hook="resid_post.0,resid_post.1", tokens=512,
                                          eval_tokens=0, k=k), out=None) for k in (4, 8)]
    results = train_many(cfgs)
    assert {r.out.parent for r in results} == {Path("runs") / model_dir.name}


def test_a_setting_given_as_its_default_names_the_same_folder_as_left_out():
    """`--expansion 8` or `--l1 2` train what leaving them out trains, so a later command
    with or without them finds the same folders."""
    from saekit.training.plan import plan_members

    def names(l1_coeff=None, **given):
        cfgs = [TrainConfig(arch="relu", l1_coeff=l1_coeff, tokens=1000, batch_size=100, out="s", **given),
                TrainConfig(arch="topk", tokens=1000, batch_size=100, out="s", **given)]
        return [m.out.name for m in plan_members(cfgs, [("resid_post.1", None)], ["resid_post.1"], "m")]

    assert names() == names(expansion=8) == names(expansion=8, l1_coeff=2.0) == ["resid_post.1-relu", "resid_post.1-topk-k32"]
    assert names(expansion=4, l1_coeff=1.0) == ["resid_post.1-relu-x4-l1_1", "resid_post.1-topk-k32-x4"]


def test_a_hook_pattern_trains_every_matching_point_in_forward_order(model_dir, corpus, tmp_path):
    n_layers = saekit.load_model(str(model_dir)).n_layers
    results = train_many([small_cfg(model_dir, corpus, tmp_path / "all", hook="resid_post.*", tokens=1024,
                                    eval_tokens=0)])
    assert [r.dictionary.cfg.hook for r in results] == [f"resid_post.{i}" for i in range(n_layers)]
    with pytest.raises(ConfigError, match="matches no hook point"):
        train_many([small_cfg(model_dir, corpus, tmp_path / "none", hook="resid_mid.*", tokens=1024)])
    with pytest.raises(ConfigError, match="train_many"):
        train(small_cfg(model_dir, corpus, tmp_path / "one", hook="resid_post.0,resid_post.1", tokens=1024))
    # A point named by a name and by a pattern (or spelled twice) is one dictionary asked for
    # twice: refused by name, not merged.
    with pytest.raises(ConfigError, match=r"names the hook point resid_post.1 twice \(by 'resid_post.1' and by 'resid_post.\*'\)"):
        train_many([small_cfg(model_dir, corpus, tmp_path / "twice", hook="resid_post.1,resid_post.*", tokens=1024)])
    with pytest.raises(ConfigError, match="names resid_post.1 twice"):
        train_many([small_cfg(model_dir, corpus, tmp_path / "spelt", hook="resid_post.1,resid_post.01", tokens=1024)])
    assert not any((tmp_path / name).exists() for name in ("none", "one", "twice", "spelt"))


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_an_interrupted_sweep_resumes_every_member_to_the_weights_of_an_uninterrupted_one(model_dir, corpus, tmp_path, arch):
    def cfgs(out, **kw):
        values = {"k": (4, 8)} if arch == "topk" else {"l0_coeff": (0.5, 2.0)}
        (name, vals), = values.items()
        return [small_cfg(model_dir, corpus, out, arch=arch, hook="resid_post.0,resid_post.1", tokens=6000,
                          checkpoint_every=1024, **{name: v}, **kw) for v in vals]

    whole = train_many(cfgs(tmp_path / "whole"))

    def crash(record):
        if record.get("tokens", 0) >= 3500:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="same command with --resume"):
        train_many(cfgs(tmp_path / "cut"), progress=crash)
    steps = {load_checkpoint(r.out.parent.parent / "cut" / r.out.name)["tokens_done"] for r in whole}
    assert len(steps) == 1 and 0 < steps.pop() < 6000  # every member checkpointed at the same point
    resumed = train_many(cfgs(tmp_path / "cut", resume=True))
    for a, b in zip(whole, resumed):
        assert a.out.name == b.out.name and same(weights(a.out), weights(b.out)), a.out.name


def test_group_checkpoints_commit_all_or_none(tmp_path):
    folders = [tmp_path / name for name in ("a", "b", "c")]
    for f in folders:
        f.mkdir()
    save_checkpoints({f: {"tokens_done": 1, "w": torch.ones(2)} for f in folders})
    # A crash while the pending files are written: the old checkpoints all stay.
    for f in folders[:2]:
        save_checkpoint({"tokens_done": 2, "w": torch.ones(2)}, f, PENDING_FILE)
    recover_checkpoints(folders)
    assert [load_checkpoint(f)["tokens_done"] for f in folders] == [1, 1, 1]
    assert not any((f / PENDING_FILE).exists() for f in folders)
    # A crash while they are renamed: every folder ends at the new step.
    for f in folders:
        save_checkpoint({"tokens_done": 2, "w": torch.ones(2)}, f, PENDING_FILE)
    os.replace(folders[0] / PENDING_FILE, folders[0] / CHECKPOINT_FILE)
    recover_checkpoints(folders)
    assert [load_checkpoint(f)["tokens_done"] for f in folders] == [2, 2, 2]


def test_members_that_stopped_at_different_points_are_refused(model_dir, corpus, tmp_path):
    cfgs = [small_cfg(model_dir, corpus, tmp_path / "s", k=k, tokens=4000, checkpoint_every=1024) for k in (4, 8)]

    def crash(record):
        if record.get("tokens", 0) >= 2500:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_many(cfgs, progress=crash)
    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(model_dir, corpus, other, k=8, tokens=4000, checkpoint_every=1500), progress=crash)
    os.replace(other / CHECKPOINT_FILE, tmp_path / "s" / "resid_post.1-topk-k8-x4-lr0.002" / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="different points"):
        train_many([small_cfg(model_dir, corpus, tmp_path / "s", k=k, tokens=4000, checkpoint_every=1024, resume=True)
                    for k in (4, 8)])


def test_configurations_of_one_pass_must_share_the_data_settings(tmp_path):
    a = TrainConfig(k=4, batch_size=100, tokens=1000, out=str(tmp_path / "s"))
    b = TrainConfig(k=8, batch_size=200, tokens=1000, out=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="must share --batch-size"):
        train_many([a, b])
    with pytest.raises(ConfigError, match="same dictionary"):
        train_many([a, a])
    assert not (tmp_path / "s").exists()


def test_a_sweep_from_arrays_with_several_hook_points(tmp_path):
    """Rows (N, H, d) from memory: each dictionary reads its own hook point's column."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 2, 8)).astype(np.float32)
    x[:, 1] *= 10  # the second point's activations are ten times larger
    src = ArrayActivations([x[:5000]], hooks=("a.0", "b.0"), heldout=x[5000:])
    cfgs = [TrainConfig(arch="relu", dict_size=32, tokens=2000, batch_size=100, buffer_tokens=1000, eval_tokens=500,
                        out=str(tmp_path / "s"))]
    results = train_many(cfgs, source=src)
    assert [r.out.name for r in results] == ["a.0-relu-F32", "b.0-relu-F32"]
    scales = [r.dictionary.cfg.act_scale for r in results]
    assert scales[1] / scales[0] == pytest.approx(10, rel=0.05)


def test_cli_sweep_flags(model_dir, corpus, tmp_path, capsys):
    args = ["train", "--model", str(model_dir), "--dataset", str(corpus), "--hook", "resid_post.1", "--tokens", "1024",
            "--context-length", "32", "--batch-size", "256", "--buffer-tokens", "1024", "--expansion", "2",
            "--eval-tokens", "0", "--out", str(tmp_path / "s")]
    assert main(args + ["--arch", "relu,topk", "--k", "4,8"]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "resid_post.1-relu-x2", "resid_post.1-topk-k4-x2", "resid_post.1-topk-k8-x2"]
    assert "trained 3 dictionaries from one pass" in capsys.readouterr().out
    assert main(args[:-1] + [str(tmp_path / "s" / "resid_post.1-relu-x2"), "--k", "4,8"]) == 2
    assert "holds a run of one dictionary" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "s")]) == 2
    assert f"saekit compare {tmp_path / 's'}/*" in capsys.readouterr().err
    # a value added on --resume cannot join the others mid-run; the sweep cut to fewer values finds its folders
    assert main(args + ["--arch", "topk", "--k", "4,16", "--resume"]) == 2
    assert "topk-k16-x2 never started in this run" in capsys.readouterr().err
    assert main(args + ["--arch", "relu,topk", "--k", "8", "--resume"]) == 0  # finished: found by name, re-evaluated
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "resid_post.1-relu-x2", "resid_post.1-topk-k4-x2", "resid_post.1-topk-k8-x2"]
    # one dictionary of the sweep: its --out is its own folder, which the refusal names
    assert main(args + ["--arch", "topk", "--k", "8", "--resume"]) == 2
    assert f"pass --out {tmp_path / 's' / 'resid_post.1-topk-k8-x2'}" in capsys.readouterr().err
    assert main(args + ["--arch", "topk", "--k", "16"]) == 2
    assert f"trains just one dictionary, so --out is that dictionary's own folder: pass --out {tmp_path / 's'}/<its folder>" in (
        capsys.readouterr().err)
    assert main(args + ["--k", "4,4"]) == 2
    assert "gives a value twice" in capsys.readouterr().err
    assert main(args + ["--arch", "topk,lstm"]) == 2
    assert "invalid choice: 'lstm'" in capsys.readouterr().err
    assert main(args + ["--arch", "relu", "--k", "4,8"]) == 2  # --k applies to neither dictionary
    assert "--k applies to batchtopk and topk, not relu" in capsys.readouterr().err
    assert main(args + ["--arch", "relu,gated", "--k", "4,8"]) == 2  # nor to any swept one: not dropped silently
    assert "--k applies to batchtopk and topk, none of --arch relu,gated" in capsys.readouterr().err
    assert main(args + ["--arch", "relu,topk", "--l0-coeff", "2"]) == 2
    assert "--l0-coeff applies to jumprelu, none of --arch relu,topk" in capsys.readouterr().err
