"""The throughput benchmark's device, precision and peer-site plumbing (benchmarks/
train_throughput.py and throughput_worker.py), on the CPU: saekit's step under
``--autocast bf16`` really runs in bf16 and still trains, the worker's batches and FVU
follow the spec's device, ``--peer-site`` puts the peer's folder first on PYTHONPATH or
says which folder is missing and what makes it, and the table marks a library whose own
precision differs from the run's. The peers themselves are not needed.
"""

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    # benchmarks/ is a folder of scripts, not a package; the coordinator imports the worker by name.
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


worker = _load("throughput_worker")
coordinator = _load("train_throughput")


def _spec(tmp_path: Path, autocast: str, arch: str = "topk") -> dict:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6 * 64, 16)) + 0.3).astype(np.float32)
    np.save(tmp_path / "train.npy", x[: 4 * 64])
    np.save(tmp_path / "heldout.npy", x[4 * 64 :])
    return dict(
        data_name="synthetic", arch=arch, expansion=2, d=16, k=4, batch_size=64, steps=2, warmup=1,
        total_steps=16, threads=1, sample_rows=128, seed=0, hook="resid_post.15",
        train=str(tmp_path / "train.npy"), heldout=str(tmp_path / "heldout.npy"), device="cpu", autocast=autocast,
    )


def _train(tmp_path: Path, autocast: str, arch: str = "topk"):
    session = worker.Session(worker.SaekitRunner, _spec(tmp_path, autocast, arch))
    for i in range(3):
        session.runner.step(i, session.batch(i))
    return session


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_saekit_step_under_bf16_autocast_runs_in_bf16_and_trains(tmp_path, arch):
    fp32, bf16 = _train(tmp_path, "none", arch), _train(tmp_path, "bf16", arch)
    assert (fp32.runner.precision, bf16.runner.precision) == ("fp32", "bf16 autocast")
    # saekit's own option (`saekit train --autocast`) runs the step in bf16.
    assert (fp32.runner.trainer.cfg.autocast, bf16.runner.trainer.cfg.autocast) == ("none", "bf16")
    # Same data, same seed: the weights part by bf16 rounding alone, and both still learn.
    w32 = fp32.runner.trainer.finished_dictionary().state_dict()
    w16 = bf16.runner.trainer.finished_dictionary().state_dict()
    assert all(w.dtype == torch.float32 for w in w16.values())  # autocast keeps the weights fp32
    assert any(not torch.equal(w32[k], w16[k]) for k in w32)
    for s in (fp32, bf16):
        value = worker.fvu(s.runner.reconstructor(), s.heldout, 64, s.device)
        assert math.isfinite(value) and value < 1.0


def test_worker_batches_follow_the_spec_device(tmp_path):
    session = worker.Session(worker.SaekitRunner, _spec(tmp_path, "none"))
    assert session.batch(1).device == torch.device("cpu")
    assert torch.equal(session.batch(1), torch.from_numpy(np.load(tmp_path / "train.npy")[64:128]))


def test_peer_site_puts_the_peer_folder_first_on_pythonpath(tmp_path):
    (tmp_path / "sae-lens").mkdir()
    launch = coordinator.launch_for("sae-lens", {"PYTHONPATH": "/x/src"}, tmp_path / "no-venvs", tmp_path)
    assert launch.python == sys.executable
    assert launch.env["PYTHONPATH"].split(":") == [str((tmp_path / "sae-lens").resolve()), "/x/src"]
    saekit = coordinator.launch_for("saekit", {"PYTHONPATH": "/x/src"}, tmp_path / "no-venvs", tmp_path)
    assert saekit.env["PYTHONPATH"] == "/x/src"


def test_missing_peer_site_folder_names_it_and_the_script_that_makes_it(tmp_path):
    with pytest.raises(SystemExit) as err:
        coordinator.launch_for("sparsify", {}, tmp_path / "no-venvs", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "sparsify") in message and "benchmarks/peer_wheels.sh" in message


def _row(library: str, precision: str) -> "coordinator.Row":
    row = coordinator.Row("synthetic", "topk", 8, library, 576, 4608, 4096, 2, 1, 2, precision=precision)
    row.step_seconds, row.tokens_per_s, row.dense_bound_tokens_per_s = [0.5, 0.5], 8192.0, 10_000.0
    row.fvu_after_warmup, row.fvu, row.peak_rss_mb = 0.8, 0.7, 900.0
    return row


def test_table_header_names_device_and_precision_and_stars_a_library_that_ran_its_own(capsys):
    args = argparse.Namespace(batch_size=4096, threads=2, steps=2, warmup=1, device="cpu", autocast="none")
    rows = [_row("saekit", "fp32"), _row("sparsify", "bf16 autocast (its own, always on CUDA)")]
    coordinator.set_ratios(rows)
    coordinator.print_table(rows, args)
    out = capsys.readouterr().out
    assert "batch 4096, cpu, fp32," in out
    assert "peak RSS MB" in out
    assert "sparsify*" in out and "* sparsify ran bf16 autocast (its own, always on CUDA)." in out
    assert "saekit*" not in out
