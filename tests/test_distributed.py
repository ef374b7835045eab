"""torch.distributed: `torchrun … -m saekit train` with CPU processes (gloo).

Data parallel: N ranks over the same global batches end with the weights, the log and
the dead-feature history of one process (to floating-point tolerance), for every
architecture and for transcoders, at a batch the ranks cannot split evenly; a run
killed mid-way resumes on two ranks or on one. Dealt out: each rank trains its own
dictionaries and writes their folders.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import saekit
from saekit.training.distributed import Ranks

from saekit.training.log_interval import TIMING_FIELDS

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without torch.distributed")

COMMON = ["--context-length", "32", "--model-batch-size", "8", "--buffer-tokens", "1000", "--log-every", "3"]


def saekit_cmd(ranks: int) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "saekit"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "saekit"]


def env() -> dict[str, str]:
    # One thread per rank: two ranks on a 2-core machine must not oversubscribe it.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_train(ranks: int, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    done = subprocess.run([*saekit_cmd(ranks), "train", *COMMON, *args], env=env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def log_records(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in (folder / "log.jsonl").read_text().splitlines()]


def assert_same_run(one: Path, many: Path) -> None:
    """The same weights (each tensor to a small fraction of its norm) and the same log.

    The ranks sum their gradients in another order than one process does, so the two
    agree to float32 rounding (measured: 1e-7 of each tensor's norm, the same dead
    features resampled at the same steps), with two ways for rounding to grow: a TopK
    selection at a near-tie flips (once in 150 steps gave 2.5e-4), and Adam's update
    ``g / (√v + ε)`` turns a gradient that cancels to ~1e-9 into a step of 0.1·lr whose
    size is set by the rounding. BatchTopK's batch-wide selection leaves such gradients
    (seen on b_enc after one step), and ends within ~5e-3 after 24 steps.
    """
    a, b = saekit.load(one), saekit.load(many)
    loose = a.cfg.arch == "batchtopk"
    for name, t in a.state_dict().items():
        diff = float((b.state_dict()[name] - t).norm() / t.norm().clamp_min(1e-12))
        assert diff <= (1e-2 if loose else 1e-3), f"{one.name}: {name} differs by {diff:.3g} of its norm"
    la, lb = log_records(one), log_records(many)
    assert len(la) == len(lb)
    for ra, rb in zip(la, lb):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if isinstance(value, float):
                assert rb[key] == pytest.approx(value, rel=5e-3 if loose else 1e-3, abs=1e-6), (one.name, key, ra, rb)
            else:
                assert rb[key] == value, (one.name, key)


def test_shares_cover_a_batch_that_does_not_divide():
    for world in (1, 2, 3, 7):
        shares = [Ranks(rank=r, world=world).share(251) for r in range(world)]
        assert [i for s in shares for i in range(251)[s]] == list(range(251))
        assert Ranks(world=world).share_sizes(251) == [len(range(251)[s]) for s in shares]


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), ("auto", "nccl"), ("cuda", "nccl")])
def test_the_backend_follows_the_device_not_the_machine(device, backend, monkeypatch):
    """On a machine with GPUs, `--device cpu` ranks hold CPU tensors, which NCCL cannot
    reduce: they get gloo."""
    from saekit.training import distributed

    started = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: started.setdefault("gpu", i))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda b, **kw: started.setdefault("backend", b))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    ranks = distributed.ranks_from_environment(device)
    assert started["backend"] == backend and (ranks.rank, ranks.world, ranks.local_rank) == (1, 2, 1)
    assert started.get("gpu") == (1 if backend == "nccl" else None)


def test_data_parallel_matches_one_process_for_every_architecture(model_dir, corpus, tmp_path):
    """Three ranks, a global batch of 251 (shares of 83 and 84), every architecture from
    one pass, with features dying (aux-k, resampling): each dictionary ends as in one
    process."""
    args = ["--model", str(model_dir), "--dataset", str(corpus), "--hook", "resid_post.1",
            "--arch", "relu,topk,batchtopk,gated,jumprelu", "--expansion", "64", "--k", "4", "--l1", "20",
            "--tokens", "6000", "--batch-size", "251", "--dead-after-tokens", "500", "--eval-tokens", "0"]
    run_train(1, [*args, "--out", str(tmp_path / "one")])
    run_train(3, [*args, "--out", str(tmp_path / "three")])
    members = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert members == sorted(p.name for p in (tmp_path / "three").iterdir()) and len(members) == 5
    resampled = 0
    for name in members:
        assert_same_run(tmp_path / "one" / name, tmp_path / "three" / name)
        resampled += sum(r.get("resampled", 0) for r in log_records(tmp_path / "one" / name))
    dead = [r["dead_frac"] for name in members for r in log_records(tmp_path / "one" / name) if r.get("dead_frac")]
    assert resampled > 0 and dead, "the comparison must cover resampling and dead features"


def test_data_parallel_transcoders_match_one_process(model_dir, corpus, tmp_path):
    args = ["--model", str(model_dir), "--dataset", str(corpus), "--hook", "mlp_in.1", "--target", "mlp_out.1",
            "--skip", "--arch", "relu", "--expansion", "4", "--tokens", "4000",
            "--batch-size", "125", "--eval-tokens", "256"]
    run_train(1, [*args, "--out", str(tmp_path / "one")])
    run_train(2, [*args, "--out", str(tmp_path / "two")])
    assert_same_run(tmp_path / "one", tmp_path / "two")
    one, two = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two"))
    assert two["fixed"]["fvu"] == pytest.approx(one["fixed"]["fvu"], rel=1e-4)


def _killed_after_first_checkpoint(args: list[str], out: Path) -> None:
    """Start two ranks and kill -9 the whole job once its first checkpoint is on disk."""
    proc = subprocess.Popen([*saekit_cmd(2), "train", *COMMON, *args, "--out", str(out)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while not (out / "checkpoint.safetensors").exists():
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "weights.safetensors").exists(), "killed too late: the run had finished"


def test_a_killed_two_rank_run_resumes_on_two_ranks_or_on_one(model_dir, corpus, tmp_path):
    args = ["--model", str(model_dir), "--dataset", str(corpus), "--hook", "resid_post.1", "--arch", "topk",
            "--k", "4", "--expansion", "4", "--tokens", "30000", "--batch-size", "200", "--checkpoint-every", "2000",
            "--eval-tokens", "0"]
    run_train(1, [*args, "--out", str(tmp_path / "whole")])
    _killed_after_first_checkpoint(args, tmp_path / "killed")
    shutil.copytree(tmp_path / "killed", tmp_path / "killed-then-one")
    run_train(2, [*args, "--out", str(tmp_path / "killed"), "--resume"])
    run_train(1, [*args, "--out", str(tmp_path / "killed-then-one"), "--resume"])
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    assert_same_run(tmp_path / "whole", tmp_path / "killed-then-one")


def test_a_run_rank_0_refuses_ends_on_every_rank_with_its_one_line(model_dir, corpus, tmp_path):
    """Rank 0 alone checks the folders; the error it meets reaches the other ranks, which
    would otherwise die in their next collective with a traceback of their own."""
    args = ["--model", str(model_dir), "--dataset", str(corpus), "--hook", "resid_post.1", "--k", "4",
            "--expansion", "2", "--tokens", "2000", "--batch-size", "200", "--eval-tokens", "0",
            "--out", str(tmp_path / "run")]
    run_train(1, args)
    done = subprocess.run([*saekit_cmd(2), "train", *COMMON, *args], env=env(), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if line.startswith("saekit train: error: ")]
    assert len(said) == 1 and "already holds a run; pass --resume" in said[0], done.stderr[-3000:]
    assert "Connection closed by peer" not in done.stderr and "RuntimeError" not in done.stderr, done.stderr[-3000:]


def test_dictionaries_dealt_out_to_ranks(model_dir, corpus, tmp_path):
    """--parallel dictionaries: each rank trains its own hook points (its own model pass) and
    writes their folders; each ends as a one-process run of that dictionary alone."""
    args = ["--model", str(model_dir), "--dataset", str(corpus), "--arch", "topk", "--k", "4", "--expansion", "4",
            "--tokens", "3000", "--batch-size", "200", "--eval-tokens", "0"]
    run_train(2, [*args, "--hook", "resid_post.0,resid_post.1,mlp_out.1", "--parallel", "dictionaries",
                  "--out", str(tmp_path / "dealt")])
    assert sorted(p.name for p in (tmp_path / "dealt").iterdir()) == [
        "mlp_out.1-topk-k4-x4", "resid_post.0-topk-k4-x4", "resid_post.1-topk-k4-x4"]
    run_train(1, [*args, "--hook", "mlp_out.1", "--out", str(tmp_path / "alone")])
    assert_same_run(tmp_path / "alone", tmp_path / "dealt" / "mlp_out.1-topk-k4-x4")


def _selection_worker(rank: int, world: int, init_file: str, results: str) -> None:
    import torch.distributed as dist

    from saekit.dictionaries import DictionaryConfig, build_dictionary
    from saekit.training.distributed import RankGroup, gather_rows

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ranks = Ranks(rank=rank, world=world)
    torch.manual_seed(0)
    sae = build_dictionary(DictionaryConfig(arch="batchtopk", d_in=8, d_sae=300, k=3))
    found = []
    for B in (251, 40, 3):  # shares of 83/84, 13/14, and 1 (or none) per rank
        pre = torch.randn(B, 300)
        mine = sae.select(pre[ranks.share(B)], RankGroup(ranks))
        flat = mine.flat_index() + ranks.share(B).start * 300
        everyone = gather_rows(flat, ranks)
        found.append(sorted(everyone.tolist()) == sorted(sae.select(pre).flat_index().tolist()))
    if rank == 0:
        Path(results).write_text(json.dumps(found))
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_batchtopk_selects_the_whole_batch_top_entries_across_ranks(world, tmp_path):
    """Each rank keeps exactly its part of the one-process selection (the k·B largest
    pre-activations of the global batch), even with a rank holding a single token."""
    import torch.multiprocessing as mp

    results = tmp_path / "found.json"
    mp.spawn(_selection_worker, args=(world, str(tmp_path / "init"), str(results)), nprocs=world)
    assert json.loads(results.read_text()) == [True, True, True]
